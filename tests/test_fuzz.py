"""The fuzz tier: the HTTP API from its own OpenAPI schema (schemathesis), the readers with random
bytes and random rows (Hypothesis), and a bounded soak of mixed valid and invalid requests. None
may end in a 5xx or an exception other than the project's own errors."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningServer, free_port, run_cli, write_jsonl
from matryoshka.data import read_beir, read_pairs, read_texts
from matryoshka.errors import MatryoshkaError

API_EXAMPLES = 40  # per operation and generation mode
SOAK_SECONDS = 40
SOAK_CLIENTS = 50


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """``matryoshka serve`` over a small wordllama index, for the fuzzers."""
    folder = tmp_path_factory.mktemp("fuzz")
    words = ["river", "stone", "music", "garden", "winter", "engine", "bread", "mountain", "letter", "silver"]
    rng = np.random.default_rng(0)
    corpus = write_jsonl(
        folder / "corpus.jsonl", [{"id": f"d{i}", "text": " ".join(rng.choice(words, size=6))} for i in range(400)]
    )
    result = run_cli("index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(folder / "index"))
    assert result.returncode == 0, result.stderr
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(folder / "index"), "--port", str(port), "--read-timeout", "2"],
        folder / "server.log",
        f"http://127.0.0.1:{port}/",
    )
    try:
        server.wait_healthy()
        server.port = port
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_api_answers_any_request_its_schema_allows_or_not_without_a_server_error(fuzz_server):
    """Every operation of the server's own OpenAPI schema, with requests schemathesis generates to
    fit it (positive) and to break it (negative): no 5xx, and every answer is JSON."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "openapi.json")
    base_url = fuzz_server.url.rstrip("/")
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # a GET without parameters has nothing to break
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=API_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                nonlocal tried
                response = case.call(base_url=base_url, timeout=30)
                tried += 1
                assert response.status_code < 500, (case.path, case.body, response.status_code, response.text[:300])
                assert response.headers.get("content-type", [""])[0].startswith("application/json")

            check()
    assert tried >= 100


@given(st.binary(max_size=2000), st.sampled_from([".jsonl", ".csv", ".tsv", ".txt", ".jsonl.gz"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_readers_take_any_bytes_or_say_what_is_wrong(tmp_path, data, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    for reader in (read_texts, read_pairs):
        try:
            reader(path)
        except MatryoshkaError as exc:
            assert str(path) in str(exc)


_cell = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
)


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "_id", "text", "title", "anchor", "positive", "score", "x"]), _cell, max_size=5
        ),
        max_size=6,
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_readers_take_any_rows_or_name_the_line(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for reader in (read_texts, read_pairs):
        try:
            reader(path)
        except MatryoshkaError as exc:
            assert str(path) in str(exc)


@given(st.lists(st.text(alphabet='abc\t,"\n\r \x00é', max_size=12), max_size=8))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_beir_folder_with_random_qrels_reads_or_names_the_file(tmp_path, lines):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": "a", "text": "alpha"}, {"_id": "b", "text": "beta"}])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q", "text": "which?"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines))
    try:
        read_beir(folder, "test")
    except MatryoshkaError as exc:
        assert str(folder) in str(exc)


def _request(port: int, rng: random.Random) -> tuple[str, bytes]:
    valid = [
        ("/search", {"query": rng.choice(["river", "cold winter", "old engine"]), "k": rng.randint(1, 20)}),
        ("/search", {"query": "music", "k": 5, "dim": rng.randint(1, 256)}),
        ("/search", {"query": "bread", "k": 3, "exact": True}),
        ("/embed", {"texts": ["stone", "silver"], "dim": 64}),
        ("/similarity", {"query": "garden", "texts": ["winter garden", "engine"]}),
    ]
    invalid = [
        ("/search", b'{"query": "\\ud800", "k": 3}'),
        ("/search", b'{"query": "x", "k": NaN}'),
        ("/search", b'{"query": '),
        ("/search", json.dumps({"query": "x", "k": 10_000}).encode()),
        ("/search", json.dumps({"query": "x" * 5000}).encode()),
        ("/embed", json.dumps({"texts": ["a"] * 500}).encode()),
        ("/similarity", b"[1, 2, 3]"),
        ("/search", json.dumps({"query": "x", "schedule": [[0, -1]]}).encode()),
    ]
    if rng.random() < 0.5:
        path, body = rng.choice(valid)
        return path, json.dumps(body).encode()
    return rng.choice(invalid)


@pytest.mark.slow
def test_soak_mixed_requests_no_server_error_and_bounded_memory(fuzz_server):
    """50 clients for 40 s, half valid and half invalid requests: no 5xx, no dropped connection,
    and the server's memory does not grow with the number of requests."""
    import psutil

    process = psutil.Process(fuzz_server.process.pid)
    counts = {"requests": 0, "server_errors": 0, "failures": 0}
    lock = threading.Lock()
    rss = []
    deadline = time.time() + SOAK_SECONDS

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=60)
        while time.time() < deadline:
            path, body = _request(fuzz_server.port, rng)
            try:
                connection.request("POST", path, body=body, headers={"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["failures"] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=60)
                continue
            with lock:
                counts["requests"] += 1
                counts["server_errors"] += status >= 500
        connection.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(SOAK_CLIENTS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        rss.append(process.memory_info().rss)
        time.sleep(1)
    for thread in threads:
        thread.join()
    assert counts["server_errors"] == 0 and counts["failures"] == 0, counts
    assert counts["requests"] > 500, counts
    settled = rss[len(rss) // 4 :]  # after warm-up: the second half must not keep climbing
    assert max(settled) - min(settled) < 150 * 2**20, [r // 2**20 for r in rss]
    Path(fuzz_server.log_path).with_name("soak.json").write_text(json.dumps({**counts, "peak_rss": max(rss)}))
