"""An OpenAI-compatible endpoint as the model, against a real loopback server that misbehaves
on purpose: batching within limits, retries, clear errors, nothing half-written, and the
embedding cache that makes a rerun send only what it has not yet been answered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from misbehaving_endpoint import MisbehavingEndpoint, expected_vector

from matryoshka.embedding_cache import CACHE_FILE, EmbeddingCache, cache_path_for_index
from matryoshka.errors import MatryoshkaError, ModelError, StoreError
from matryoshka.index import Index, build_index
from matryoshka.models import load_model
from matryoshka.remote import estimated_tokens, load_remote_model, plan_batches
from matryoshka.vectors import layer_norm, truncate

DIM = 32
# corpus texts are longer than autotune's word windows (12 words at most), so no window equals one
CORPUS_TEXT = re.compile(r"document number \d+ about topic \d – ünïcode ✓, told at some length to be long #\d+")
TEXTS = [f"document number {i} about topic {i % 7} – ünïcode ✓, told at some length to be long" for i in range(300)]


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def expected(texts, dim=None):
    return truncate(np.stack([expected_vector(text, DIM) for text in texts]), dim)


def remote(endpoint, **options):
    settings = dict(timeout=5.0, max_retries=2, concurrency=4)
    settings.update(options)
    return load_remote_model("fake-embedder", api_base=endpoint.url, **settings)


def test_batches_keep_to_count_and_token_limits():
    texts = ["a" * n for n in (10, 3000, 20, 5, 9600, 1, 1, 1)]
    batches = plan_batches(texts, max_count=3, max_tokens=3100)
    assert [t for batch in batches for t in batch] == texts  # order kept, nothing lost
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or sum(estimated_tokens(t) for t in batch) <= 3100
    assert ["a" * 9600] in batches  # alone: over the limit by itself
    assert estimated_tokens("日本語") >= 3  # three-byte characters count for more than ASCII


def test_encodes_through_the_endpoint_in_concurrent_batches():
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint)
        assert encoder.full_dim == DIM  # learned by one probe: this server lists no models
        probes = len(endpoint.bodies)
        vectors = encoder.encode(TEXTS, batch_size=25)
        np.testing.assert_allclose(vectors, expected(TEXTS), atol=1e-6)
        bodies = endpoint.bodies[probes:]
        assert len(bodies) == 12 and all(len(body["input"]) <= 25 for body in bodies)
        assert all("dimensions" not in body for body in bodies)  # full vectors unless asked
        assert all(body["encoding_format"] == "base64" for body in bodies)
        assert 2 <= endpoint.max_in_flight <= 4
        np.testing.assert_allclose(encoder.encode(TEXTS[:5], dim=8), expected(TEXTS[:5], 8), atol=1e-6)
        assert encoder.options == {"api_base": endpoint.url}


def test_dimensions_are_sent_only_when_asked():
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint, dimensions=16)
        assert encoder.full_dim == 16 and encoder.options["dimensions"] == 16
        vectors = encoder.encode(TEXTS[:10])
        assert {body["dimensions"] for body in endpoint.bodies} == {16}
        np.testing.assert_allclose(vectors, expected(TEXTS[:10], 16), atol=1e-6)


def test_prompts_are_prepended_by_kind():
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint, query_prompt="search_query: ", document_prompt="search_document: ")
        encoder.encode(["tides"], kind="query")
        encoder.encode(["the moon"], kind="document")
        encoder.encode(["plain"])
        assert endpoint.texts_sent()[-3:] == ["search_query: tides", "search_document: the moon", "plain"]


@pytest.mark.parametrize(
    "script, sent",
    [(["429"], 2), (["500"], 2), (["503", "500"], 3)],
    ids=["429 then ok", "500 then ok", "503, 500 then ok"],
)
def test_rate_limits_and_server_errors_are_retried(script, sent):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint)
        endpoint.script = list(script)
        endpoint.faults_served.clear()
        started = time.monotonic()
        vectors = encoder.encode(TEXTS[:10])
        np.testing.assert_allclose(vectors, expected(TEXTS[:10]), atol=1e-6)
        assert endpoint.faults_served == script + ["ok"] and len(endpoint.faults_served) == sent
        if script == ["429"]:
            assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured


@pytest.mark.parametrize(
    "fault, message",
    [
        ("401", "refused the API key (401)"),
        ("wrong_dim", "16-dim vector where 32 dims were expected"),
        ("wrong_count", "returned 9 vectors for 10 texts"),
        ("nan", "NaN or infinity"),
        ("not_json", "not an embeddings response"),
        ("bad_index", "indexes are not 0..9"),
    ],
)
def test_bad_answers_are_clear_errors_naming_endpoint_and_batch(tmp_path, fault, message):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint, cache=tmp_path / "cache.sqlite")
        endpoint.script = [fault]
        with pytest.raises(ModelError) as raised:
            encoder.encode(TEXTS[:10])
        text = str(raised.value)
        assert message in text and endpoint.url in text and "batch 1 of 1" in text
        assert len(encoder.cache) == 0  # nothing from a bad answer was kept
        if fault == "401":
            assert endpoint.faults_served[-1] == "401"  # not retried: a wrong key stays wrong
        np.testing.assert_allclose(encoder.encode(TEXTS[:10]), expected(TEXTS[:10]), atol=1e-6)  # the next try works


def test_an_endpoint_that_does_not_answer_times_out():
    with MisbehavingEndpoint(dim=DIM, hang_s=3) as endpoint:
        encoder = remote(endpoint, timeout=0.5, max_retries=1)
        endpoint.script = ["hang", "hang"]
        started = time.monotonic()
        with pytest.raises(ModelError, match=r"no answer within 0.5s, also after 1 retries"):
            encoder.encode(TEXTS[:3])
        assert time.monotonic() - started < 5


def test_an_endpoint_that_is_down_and_a_bad_url_are_clear_errors():
    with pytest.raises(ModelError, match="not an http"):
        load_remote_model("m", api_base="localhost:8000")
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        url = endpoint.url
    with pytest.raises(ModelError, match=f"{url}.*cannot connect|{url}.*probe"):
        load_remote_model("m", api_base=url, max_retries=0, timeout=1.0)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        load_model("openai:text-embedding-3-small")  # OpenAI itself, with no key set


def test_the_cache_sends_each_document_once(tmp_path):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        cache_file = tmp_path / "cache.sqlite"
        first = remote(endpoint, cache=cache_file)
        first.encode(TEXTS[:100], kind="document")
        assert first.texts_sent == 100
        again = remote(endpoint, cache=cache_file)  # a new process would open it the same way
        vectors = again.encode(TEXTS[:150] + TEXTS[:3], kind="document")
        assert again.texts_sent == 50  # only the new ones, and a repeated text once
        np.testing.assert_allclose(vectors, expected(TEXTS[:150] + TEXTS[:3]), atol=1e-6)
        again.encode(["a question?"], kind="query")
        again.encode(["a question?"], kind="query")
        assert again.texts_sent == 52  # queries are not cached
        other_dims = remote(endpoint, cache=cache_file, dimensions=16)
        other_dims.encode(TEXTS[:10], kind="document")
        assert other_dims.texts_sent == 10  # another dimensions setting is another vector


def test_a_failed_batch_keeps_the_batches_already_answered(tmp_path):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint, cache=tmp_path / "cache.sqlite", concurrency=1, max_retries=0)
        endpoint.script = ["ok", "ok", "500"]
        with pytest.raises(ModelError, match=r"batch 3 of 6, 10 texts\): HTTP 500"):
            encoder.encode(TEXTS[:60], batch_size=10, kind="document")
        assert len(encoder.cache) == 20  # the two answered batches, paid for, are kept
        endpoint.bodies.clear()
        encoder.encode(TEXTS[:60], batch_size=10, kind="document")
        assert len(endpoint.texts_sent()) == 40


def cli(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "matryoshka", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        **kwargs,
    )


def write_corpus(path: Path, count: int) -> Path:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"d{i}-é", "text": TEXTS[i % len(TEXTS)] + f" #{i}"}) + "\n")
    return path


def index_files(db: Path) -> dict[str, bytes]:
    """Every file of an index folder but the embedding cache and the writer's lock."""
    return {
        str(path.relative_to(db)): path.read_bytes()
        for path in db.rglob("*")
        if path.is_file() and "sqlite" not in path.name and path.name != ".lock"
    }


def documents_sent(endpoint) -> list[str]:
    """The corpus texts an endpoint was sent (not the probe, nor autotune's word windows)."""
    return [text for text in endpoint.texts_sent() if CORPUS_TEXT.fullmatch(text)]


@pytest.mark.slow
def test_killed_build_resumes_and_a_failed_one_leaves_the_index(tmp_path):
    """kill -9 of `index` midway: the rerun sends only texts not yet answered. A rebuild that
    fails leaves the previous index as it was, and records no key."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", 1200)
    db = tmp_path / "index"
    env = {"OPENAI_API_KEY": "sk-secret-key", "MATRYOSHKA_API_CONCURRENCY": "1", "MATRYOSHKA_API_RETRIES": "0"}
    args = ["index", "--model", "openai:fake-embedder", "--corpus", str(corpus), "--db", str(db)]
    with MisbehavingEndpoint(dim=DIM, hang_s=60) as endpoint:
        endpoint.script = ["ok"] * 4 + ["hang"]  # probe, 3 batches of 256 answered, then no answer
        process = subprocess.Popen(
            [sys.executable, "-m", "matryoshka", *args, "--api-base", endpoint.url],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while len(endpoint.faults_served) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the third batch's commit
        process.send_signal(signal.SIGKILL)
        process.wait()
        first_run = len(documents_sent(endpoint))
        assert first_run == 768
        assert not (db / "manifest.json").exists() or not Index(db).meta.count  # nothing built
        endpoint.bodies.clear()
        done = cli(*args, "--api-base", endpoint.url, env=env)
        assert done.returncode == 0, done.stderr
        resent = documents_sent(endpoint)
        assert len(resent) == 1200 - 768  # the rerun paid only for what the killed run had not
        manifest = (db / "manifest.json").read_text()
        assert "sk-secret-key" not in manifest and endpoint.url in manifest
        assert (db / CACHE_FILE).exists() and cache_path_for_index(db) == db / CACHE_FILE

        with Index(db) as opened:  # search encodes the query through the same endpoint
            found = opened.search([TEXTS[5] + " #5"], k=3)[0]
            assert found.ids[0] == "d5-é"
            assert endpoint.texts_sent()[-1].startswith("document number 5")
        before = index_files(db)

        endpoint.script = ["500"] * 50  # a rebuild of a changed corpus fails
        write_corpus(corpus, 1300)
        failed = cli(*args, "--api-base", endpoint.url, env=env)
        assert failed.returncode == 2 and "HTTP 500" in failed.stderr and endpoint.url in failed.stderr
        after = index_files(db)
        assert after == before  # the previous index, untouched
        endpoint.script = []
        endpoint.bodies.clear()
        added = cli("add", "--db", str(db), "--corpus", str(write_corpus(tmp_path / "more.jsonl", 1250)), env=env)
        assert added.returncode == 0, added.stderr
        assert len(documents_sent(endpoint)) == 50  # known texts send nothing


def test_index_through_an_endpoint_in_python(tmp_path):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        encoder = remote(endpoint, cache=cache_path_for_index(tmp_path / "idx"))
        ids = [f"d{i}" for i in range(200)]
        meta = build_index(tmp_path / "idx", ids, TEXTS[:200], encoder=encoder)
        assert meta.model == "openai:fake-embedder" and meta.model_options == {"api_base": endpoint.url}
        with Index(tmp_path / "idx") as opened:
            hits = opened.search([TEXTS[42]], k=1)[0]
            assert hits.ids[0] == "d42"
            assert isinstance(opened.encoder.cache, EmbeddingCache)


def test_remote_options_are_refused_for_local_models():
    with pytest.raises(MatryoshkaError, match="openai:NAME"):
        load_model("wordllama", api_base="http://localhost:1/v1")
    done = cli("encode", "--input", "x.txt", "--output", "x.npy", "--dimensions", "8")
    assert done.returncode == 2 and "openai:NAME" in done.stderr


def test_encode_through_an_endpoint_from_the_command_line_caches_in_the_users_cache(tmp_path):
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(TEXTS[:40]) + "\n")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "OPENAI_API_KEY": "sk-test"}
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        args = ["encode", "--model", "openai:fake-embedder", "--api-base", endpoint.url, "--input", str(corpus)]
        done = cli(*args, "--output", str(tmp_path / "v.npy"), "--dim", "16", env=env)
        assert done.returncode == 0, done.stderr
        np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected(TEXTS[:40], 16), atol=1e-6)
        assert len(endpoint.texts_sent()) == 41  # the probe, then each text once
        again = cli(*args, "--output", str(tmp_path / "w.npy"), env=env)
        assert again.returncode == 0, again.stderr
        assert len(endpoint.texts_sent()) == 42  # only the probe: every text came from the cache
        assert (tmp_path / "cache" / "matryoshka" / CACHE_FILE).exists()
        endpoint.script = ["401"]
        refused = cli(*args, "--output", str(tmp_path / "x.npy"), env={**env, "XDG_CACHE_HOME": str(tmp_path / "c2")})
        assert refused.returncode == 2 and "401" in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    "api_base, words",
    [
        ("http://[::1", "not an http(s) URL"),
        ("http://127.0.0.1:abc/v1", "not an http(s) URL"),
        ("ftp://example.com/v1", "not an http(s) URL"),
        ("http://user:secret@127.0.0.1:9/v1", "user name or password"),
    ],
)
def test_bad_endpoint_urls_are_one_line_errors(api_base, words):
    with pytest.raises(ModelError, match=re.escape(words)):
        load_remote_model("m", api_base=api_base)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "x"])
def test_bad_settings_in_the_environment_are_one_line_errors(monkeypatch, value):
    monkeypatch.setenv("MATRYOSHKA_API_TIMEOUT", value)
    with pytest.raises(ModelError, match="MATRYOSHKA_API_TIMEOUT"):
        load_remote_model("m", api_base="http://127.0.0.1:9/v1")


def test_the_cache_file_appears_only_when_a_vector_is_stored_and_a_corrupt_one_says_so(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = EmbeddingCache(path, "scope")
    assert cache.get_many(["a", "b"]) == [None, None] and len(cache) == 0
    assert not path.exists()  # a search or a refused build leaves no file
    cache.put_many(TEXTS[:100], expected(TEXTS[:100]))
    np.testing.assert_array_equal(cache.get_many(TEXTS[:2])[1], expected(TEXTS[:2])[1])
    cache.close()
    with path.open("r+b") as damaged:
        damaged.seek(4096)
        damaged.write(b"\xff" * (path.stat().st_size - 4096))
    with pytest.raises(StoreError, match="delete it and run again"):
        EmbeddingCache(path, "scope").get_many(TEXTS[:3])


def test_a_known_models_step_before_truncation_applies_through_an_endpoint():
    with MisbehavingEndpoint(dim=768) as endpoint:
        encoder = load_remote_model("nomic-embed-text", api_base=endpoint.url, timeout=5.0)
        assert encoder.pre_truncation == "layer_norm" and encoder.matryoshka_dims[-1] == 64
        assert encoder.query_prompt == "search_query: "
        raw = np.stack([expected_vector("search_document: tides", 768)])
        np.testing.assert_allclose(
            encoder.encode(["tides"], dim=64, kind="document"), truncate(layer_norm(raw), 64), atol=1e-5
        )
        sliced = load_remote_model("nomic-embed-text", api_base=endpoint.url, dimensions=256, timeout=5.0)
        assert sliced.pre_truncation is None  # the endpoint cut the vectors: too late for the step


def test_add_uses_the_cache_it_is_given(tmp_path):
    with MisbehavingEndpoint(dim=DIM) as endpoint:
        elsewhere = tmp_path / "elsewhere.sqlite"
        encoder = remote(endpoint, cache=elsewhere)
        build_index(tmp_path / "idx", [f"d{i}" for i in range(50)], TEXTS[:50], encoder=encoder)
        with Index(tmp_path / "idx", embedding_cache=elsewhere) as opened:
            endpoint.bodies.clear()
            opened.add(["x1", "x2"], TEXTS[:2])
            assert endpoint.texts_sent() == []  # both were embedded by the build
        with Index(tmp_path / "idx", embedding_cache=False) as opened:
            assert opened.encoder.cache is None


@pytest.mark.slow
def test_ctrl_c_keeps_the_answers_already_on_their_way(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 2000)
    db = tmp_path / "index"
    with MisbehavingEndpoint(dim=DIM, hang_s=3) as endpoint:
        endpoint.script = ["ok"] + ["hang"] * 4  # the probe, then four slow batches in flight at once
        process = subprocess.Popen(
            [sys.executable, "-m", "matryoshka", "index", "--model", "openai:fake-embedder", "--api-base", endpoint.url]
            + ["--corpus", str(corpus), "--db", str(db)],
            env={**os.environ, "OPENAI_API_KEY": "sk-test"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C must act even where the tests run as a background job, which inherits SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while len(endpoint.faults_served) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"finished before Ctrl-C; requests seen: {endpoint.faults_served}"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode != 0 and "Traceback" not in stderr, stderr
        assert len(EmbeddingCache(db / CACHE_FILE, "")) == 4 * 256  # answered after Ctrl-C, and kept


@pytest.mark.slow
def test_a_server_keeps_no_clients_texts_and_relays_endpoint_failures_as_502(tmp_path):
    from conftest import RunningServer, free_port

    with MisbehavingEndpoint(dim=DIM) as endpoint:
        db = tmp_path / "idx"
        build_index(db, [f"d{i}" for i in range(60)], TEXTS[:60], encoder=remote(endpoint, cache=db / CACHE_FILE))
        stored = len(EmbeddingCache(db / CACHE_FILE, ""))
        port, other = free_port(), free_port()
        os.environ["MATRYOSHKA_API_RETRIES"] = "0"
        try:
            server = RunningServer(["serve", "--db", str(db), "--port", str(port)], tmp_path / "s.log", "")
            relay = RunningServer(
                ["serve", "--model", "openai:fake-embedder", "--api-base", endpoint.url, "--port", str(other)],
                tmp_path / "r.log",
                "",
            )
        finally:
            del os.environ["MATRYOSHKA_API_RETRIES"]
        try:
            for running, url in ((server, f"http://127.0.0.1:{port}/"), (relay, f"http://127.0.0.1:{other}/")):
                running.url = url
                running.wait_healthy()
            import httpx

            body = {"model": "openai:fake-embedder", "input": ["a text no one embedded before"]}
            answer = httpx.post(server.url + "v1/embeddings", json=body, timeout=30)
            assert answer.status_code == 200
            assert httpx.post(server.url + "embed", json={"texts": ["another new text"]}, timeout=30).status_code == 200
            assert len(EmbeddingCache(db / CACHE_FILE, "")) == stored  # nothing a client sent was kept
            relayed = httpx.post(
                relay.url + "v1/embeddings", json={"model": "openai:fake-embedder", "input": ["x"]}, timeout=30
            )
            np.testing.assert_allclose(relayed.json()["data"][0]["embedding"], expected(["x"])[0], atol=1e-6)

            endpoint.script = ["500"] * 10
            failed = httpx.post(server.url + "v1/embeddings", json=body, timeout=30)
            assert failed.status_code == 502 and failed.json()["error"]["type"] == "server_error"
            assert endpoint.url not in failed.text  # the endpoint's address stays in the server's log
            assert httpx.post(server.url + "embed", json={"texts": ["t"]}, timeout=30).status_code == 502
        finally:
            server.stop()
            relay.stop()
