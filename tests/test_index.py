"""Index and search on every store: the local folder, a Milvus Lite file, a real Milvus server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_jsonl
from matryoshka.errors import ScheduleError, StoreError
from matryoshka.funnel import Schedule, recall_at_k
from matryoshka.index import Index, build_index
from matryoshka.vectors import stage_dims


@pytest.fixture(
    params=[
        "local",
        pytest.param("lite", marks=pytest.mark.slow),
        pytest.param("server", marks=pytest.mark.milvus_server),
    ]
)
def db(request, tmp_path):
    """A fresh --db value for each store."""
    if request.param == "local":
        return str(tmp_path / "index")
    if request.param == "lite":
        return str(tmp_path / "index.db")
    return request.getfixturevalue("milvus_server")


def _collection(db: str) -> str | None:
    return f"t{uuid.uuid4().hex[:10]}" if db.startswith("http") else None


@pytest.fixture(scope="module")
def squad_vectors(wordllama, squad_sample):
    return (
        wordllama.encode(squad_sample.corpus.texts, kind="document"),
        wordllama.encode(squad_sample.query_texts, kind="query"),
    )


def test_funnel_matches_exact_on_every_store(db, wordllama, squad_sample, squad_vectors):
    documents, queries = squad_vectors
    collection = _collection(db)
    meta = build_index(
        db,
        squad_sample.corpus.ids,
        squad_sample.corpus.texts,
        encoder=wordllama,
        vectors=documents,
        collection=collection,
    )
    assert meta.model == "wordllama" and meta.full_dim == 256 and meta.count == len(squad_sample.corpus)
    assert meta.autotune_recall >= 0.99 and Schedule.parse(meta.schedule).full_dim == 256
    index = Index(db, collection=collection)
    n = len(index.store)
    wide = Schedule.parse(f"{meta.head_dim}:{n},256:10")
    exact = index.search_vectors(queries[:60], 10, exact=True)
    funnel = index.search_vectors(queries[:60], 10, schedule=wide)
    np.testing.assert_array_equal(funnel.rows, exact.rows)
    np.testing.assert_allclose(funnel.scores, exact.scores, atol=1e-4)
    # through every intermediate stage too
    dims = stage_dims(256, meta.head_dim)
    every = Schedule.parse(",".join(f"{d}:{n}" for d in dims[:-1]) + ",256:10")
    np.testing.assert_array_equal(index.search_vectors(queries[:60], 10, schedule=every).rows, exact.rows)
    tuned = index.search_vectors(queries, 10)
    full_exact = index.search_vectors(queries, 10, exact=True)
    assert recall_at_k(tuned.rows, full_exact.rows) >= 0.98
    # asking for more than the tuned k widens every stage of the tuned schedule, keeping its shape
    tuned_schedule = Schedule.parse(meta.schedule)
    assert index.schedule_for(tuned_schedule.stages[-1].keep) == tuned_schedule
    wider = index.schedule_for(30)
    assert [s.dim for s in wider.stages] == [s.dim for s in tuned_schedule.stages] and wider.stages[-1].keep == 30
    assert all(w.keep >= t.keep for w, t in zip(wider.stages, tuned_schedule.stages))
    hits = index.hits(index.search_vectors(index.encode_queries(["Which NFL team won Super Bowl 50?"]), 3))
    assert hits[0].ids[0].startswith("Super_Bowl_50") and "Super Bowl" in hits[0].texts[0]


def test_binary_head_on_every_store(db, wordllama, squad_sample, squad_vectors):
    """Sign bits as the head: a BINARY_VECTOR collection searched by Hamming distance in Milvus, a
    FAISS binary index over packed codes in the local store; re-ranked by float prefixes."""
    documents, queries = squad_vectors
    collection = _collection(db)
    meta = build_index(
        db,
        squad_sample.corpus.ids,
        squad_sample.corpus.texts,
        encoder=wordllama,
        vectors=documents,
        head_index="binary",
        collection=collection,
    )
    tuned = Schedule.parse(meta.schedule)
    assert meta.head_dim == 256 and tuned.binary_head and tuned.head_dim == 256 and meta.head_index == "binary"
    with Index(db, collection=collection) as index:
        assert index.store.binary_head
        n = len(index.store)
        exact = index.search_vectors(queries[:60], 10, exact=True)
        wide = index.search_vectors(queries[:60], 10, schedule=Schedule.parse(f"256b:{n},128:{n},256:10"))
        np.testing.assert_array_equal(wide.rows, exact.rows)
        np.testing.assert_allclose(wide.scores, exact.scores, atol=1e-4)
        full_exact = index.search_vectors(queries, 10, exact=True)
        assert recall_at_k(index.search_vectors(queries, 10).rows, full_exact.rows) >= 0.98
        with pytest.raises(ScheduleError, match="head is binary"):  # a float schedule on a binary head
            index.search_vectors(queries[:2], 10, schedule=Schedule.parse("8:100,256:10"))
    with pytest.raises(StoreError, match="built with a binary head; it cannot be searched with a flat head"):
        Index(db, head_index="flat", collection=collection)
    if "://" not in db and not db.endswith(".db"):
        build = _segment(db)
        codes = np.load(build / "head_codes.npy")
        assert codes.shape == (n, 32) and codes.dtype == np.uint8 and not (build / "head.npy").exists()
        np.testing.assert_array_equal(codes, np.packbits(documents > 0, axis=1))


def _segment(db) -> Path:
    """The folder of a local index's one segment, as its manifest names it."""
    manifest = json.loads((Path(db) / "manifest.json").read_text())
    return Path(db) / "segments" / manifest["segments"][0]["name"]


def test_local_store_scores_candidates_in_place_as_gathering_would(
    tmp_path, wordllama, squad_sample, squad_vectors, monkeypatch
):
    import matryoshka.stores.memory as memory
    from matryoshka.vectors import prefix_norm_dims

    documents, queries = squad_vectors
    meta = build_index(
        tmp_path / "index", squad_sample.corpus.ids, squad_sample.corpus.texts, encoder=wordllama, vectors=documents
    )
    assert list(meta.prefix_norm_dims) == prefix_norm_dims(256) == [8, 16, 32, 64, 128]
    index = Index(tmp_path / "index")
    stored = np.load(_segment(tmp_path / "index") / "prefix_norms.npy")
    unit = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    for column, dim in enumerate(meta.prefix_norm_dims):
        np.testing.assert_allclose(stored[:, column], np.linalg.norm(unit[:, :dim], axis=1), rtol=1e-5)
    schedule = Schedule.halving(256, 10, 300, 16, first_cut=4)  # cuts at every stage, so each stage's order matters
    in_place = index.search_vectors(queries, 10, schedule=schedule)
    monkeypatch.setattr(memory, "prefix_cosines", lambda *args, **kwargs: None)  # the gathering path
    gathered = index.search_vectors(queries, 10, schedule=schedule)
    np.testing.assert_array_equal(in_place.rows, gathered.rows)
    np.testing.assert_allclose(in_place.scores, gathered.scores, atol=1e-5)


def test_search_uses_the_indexing_model(tmp_path, wordllama, squad_sample, squad_vectors):
    db = tmp_path / "index"
    build_index(db, squad_sample.corpus.ids, squad_sample.corpus.texts, encoder=wordllama, vectors=squad_vectors[0])
    with pytest.raises(StoreError, match="built with model 'wordllama', not 'default'"):
        Index(db, model="default")
    assert Index(db, model="wordllama").encoder.name == "wordllama"


def test_bring_your_own_vectors(tmp_path, squad_sample, squad_vectors):
    documents, queries = squad_vectors
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"id": i, "text": t} for i, t in zip(squad_sample.corpus.ids, squad_sample.corpus.texts)],
    )
    np.save(tmp_path / "docs.npy", documents.astype(np.float64) * 3.0)  # any float dtype and scale
    np.save(tmp_path / "queries.npy", queries[:5])
    result = run_cli(
        "index", "--corpus", str(corpus), "--vectors", str(tmp_path / "docs.npy"), "--db", str(tmp_path / "db")
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "hits.json"
    result = run_cli(
        "search",
        "--db",
        str(tmp_path / "db"),
        "--query-vectors",
        str(tmp_path / "queries.npy"),
        "--exact",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    top = np.argsort(-(queries[:5] @ documents.T), axis=1)[:, :10]
    assert [[h["id"] for h in r["hits"]] for r in rows] == [[squad_sample.corpus.ids[j] for j in row] for row in top]
    result = run_cli("search", "--db", str(tmp_path / "db"), "--query", "text needs a model")
    assert result.returncode == 2 and "precomputed vectors" in result.stderr
    # the Python API takes arrays directly, and checks them
    with pytest.raises(StoreError, match="2 rows but there are 3"):
        build_index(tmp_path / "x", ["a", "b", "c"], ["a", "b", "c"], vectors=np.ones((2, 8)))
    with pytest.raises(StoreError, match="floating point"):
        build_index(tmp_path / "x", ["a"], ["a"], vectors=np.ones((1, 8), dtype=np.int64))
    with pytest.raises(StoreError, match="row 1 contains NaN"):
        build_index(tmp_path / "x", ["a", "b"], ["a", "b"], vectors=np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(StoreError, match="row 0 is all zeros"):
        build_index(tmp_path / "x", ["a", "b"], ["a", "b"], vectors=np.array([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(StoreError, match="2-D"):
        build_index(tmp_path / "x", ["a"], ["a"], vectors=np.ones(8))
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_default_head_is_chosen_by_corpus_size(tmp_path, squad_sample, squad_vectors):
    """Below AUTO_BINARY_ROWS, and with a head dim in float dims, the default head stays a float
    prefix; the demo's index of 117,659 glosses (tests/test_cli.py) is where autotune picks the
    sign bits. An unknown head names every choice."""
    from matryoshka.index import AUTO_BINARY_ROWS

    documents, queries = squad_vectors
    ids, texts = squad_sample.corpus.ids, squad_sample.corpus.texts
    assert len(ids) < AUTO_BINARY_ROWS
    meta = build_index(tmp_path / "small", ids, texts, vectors=documents, tune_queries=queries[:200])
    assert meta.head_index == "flat" and not Schedule.parse(meta.schedule).binary_head
    meta = build_index(tmp_path / "dims", ids, texts, vectors=documents, head_dim=32, tune_queries=queries[:200])
    assert meta.head_index == "flat" and meta.head_dim == 32
    with pytest.raises(StoreError, match="choose one of auto, flat, hnsw, binary, binary-ivf"):
        build_index(tmp_path / "bad", ids, texts, vectors=documents, head_index="graph")
    assert not (tmp_path / "bad").exists()


def test_cli_binary_head(tmp_path, squad_sample, squad_vectors):
    documents, queries = squad_vectors
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"id": i, "text": t} for i, t in zip(squad_sample.corpus.ids, squad_sample.corpus.texts)],
    )
    np.save(tmp_path / "docs.npy", documents)
    np.save(tmp_path / "queries.npy", queries[:20])
    db = str(tmp_path / "db")
    result = run_cli(
        "index", "--corpus", str(corpus), "--vectors", str(tmp_path / "docs.npy"), "--db", db, "--head-index", "binary"
    )
    assert result.returncode == 0, result.stderr
    assert "head 256 bits (binary)" in result.stdout and "Default schedule 256b:" in result.stdout
    reports = {}
    for name, extra in (
        ("exact", ["--exact"]),
        ("wide", ["--schedule", f"256b:{len(documents)},256:10"]),
        ("tuned", []),
    ):
        out = tmp_path / f"{name}.json"
        result = run_cli(
            "search", "--db", db, "--query-vectors", str(tmp_path / "queries.npy"), "--json", str(out), *extra
        )
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads(out.read_text())
    ids = {name: [[h["id"] for h in r["hits"]] for r in report["results"]] for name, report in reports.items()}
    assert ids["wide"] == ids["exact"]
    assert reports["exact"]["results"][0]["mode"] == "exact"
    tuned = reports["tuned"]["results"][0]
    if tuned["mode"] == "funnel":  # the index picks the funnel or, where it timed it faster, exact search
        assert tuned["schedule"].startswith("256b:")
    else:
        assert tuned["plan"] == "exact (faster than the funnel on this index when it was tuned)"
        assert ids["tuned"] == ids["exact"]
    result = run_cli(
        "search", "--db", db, "--query-vectors", str(tmp_path / "queries.npy"), "--schedule", "8:100,256:10"
    )
    assert result.returncode == 2 and "start the schedule with 256b:N" in result.stderr


@pytest.mark.slow
def test_cli_index_and_search_with_the_default_model(tmp_path, squad_sample):
    """The real default model end to end through the command line: index, funnel, exact, JSON."""
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"id": i, "text": t} for i, t in list(zip(squad_sample.corpus.ids, squad_sample.corpus.texts))[:120]],
    )
    db = tmp_path / "db"
    result = run_cli("index", "--corpus", str(corpus), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "Default schedule" in result.stdout
    meta = json.loads((db / "manifest.json").read_text())["meta"]
    assert meta["model"] == "all-MiniLM-L6-v2" and meta["full_dim"] == 384 and meta["count"] == 120
    questions = tmp_path / "questions.txt"
    questions.write_text("Who won Super Bowl 50?\nWhat is the capital of Poland?\n")
    for extra in ([], ["--exact"], ["--schedule", "12:120,24:60,48:30,96:20,192:15,384:10"]):
        out = tmp_path / f"out{len(extra)}.json"
        result = run_cli(
            "search", "--db", str(db), "--queries", str(questions), "--k", "10", "--json", str(out), *extra
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(out.read_text())
        assert len(report["results"]) == 2
        first = report["results"][0]
        scores = [h["score"] for h in first["hits"]]
        assert len(first["hits"]) == 10 and scores == sorted(scores, reverse=True)
        assert all({"dim", "keep", "ms"} <= set(stage) for stage in first["stages"])
        assert first["hits"][0]["id"].startswith("Super_Bowl_50")
    assert first["schedule"].startswith("12:120") and len(first["stages"]) == 6


def _start_index(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "index", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


@pytest.mark.parametrize("kind", ["local", pytest.param("lite", marks=pytest.mark.slow)])
def test_kill_mid_ingest_leaves_previous_index_answering(kind, tmp_path, squad_sample):
    rng = np.random.default_rng(0)
    small = rng.normal(size=(300, 64)).astype(np.float32)
    big = rng.normal(size=(150_000, 64)).astype(np.float32)
    np.save(tmp_path / "small.npy", small)
    np.save(tmp_path / "big.npy", big)
    (tmp_path / "small.txt").write_text("".join(f"document {i}\n" for i in range(300)))
    (tmp_path / "big.txt").write_text("".join(f"document {i}\n" for i in range(150_000)))
    db = str(tmp_path / ("index" if kind == "local" else "index.db"))
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {**os.environ, "TMPDIR": str(staging)}
    result = run_cli(
        "index", "--corpus", str(tmp_path / "small.txt"), "--vectors", str(tmp_path / "small.npy"), "--db", db
    )
    assert result.returncode == 0, result.stderr
    with Index(db) as index:
        expected = index.search_vectors(small[:5], 5, exact=True).rows

    process = _start_index(
        ["--corpus", str(tmp_path / "big.txt"), "--vectors", str(tmp_path / "big.npy"), "--db", db], env
    )
    partial = (
        (lambda: list((Path(db) / "segments").glob("*.partial/full.npy")))
        if kind == "local"
        else (lambda: list(staging.glob("matryoshka-milvus-*/full.npy")))
    )
    deadline = time.time() + 120
    while not partial():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the build never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    with Index(db) as index:
        assert len(index.store) == 300  # the half-written build is not visible
        np.testing.assert_array_equal(index.search_vectors(small[:5], 5, exact=True).rows, expected)
        np.testing.assert_array_equal(index.search_vectors(small[:5], 5).rows, expected)
    if kind == "local":
        # a later build cleans up what the killed one left behind
        result = run_cli(
            "index", "--corpus", str(tmp_path / "small.txt"), "--vectors", str(tmp_path / "small.npy"), "--db", db
        )
        assert result.returncode == 0, result.stderr
        assert not list((Path(db) / "segments").glob("*.partial")) and len(list((Path(db) / "segments").iterdir())) == 1


def test_bad_inputs_get_clear_errors_and_leave_nothing(tmp_path, milvus_server):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    noid = write_jsonl(tmp_path / "noid.jsonl", [{"id": "a", "text": "x"}, {"id": "", "text": "y"}])
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.array([[1.0, 0.0, 0.0, 0.0], [np.nan, 1.0, 0.0, 0.0]], dtype=np.float32))
    zeros = tmp_path / "z.npy"
    np.save(zeros, np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    good = tmp_path / "g.npy"
    np.save(good, np.eye(2, 4, dtype=np.float32))
    not_lite = tmp_path / "notes.db"
    not_lite.write_text("this is not a database\n")
    db = str(tmp_path / "idx")
    cases = [
        (["index", "--corpus", str(empty), "--vectors", str(good), "--db", db], f"{empty}: contains no records"),
        (["index", "--corpus", str(dup), "--vectors", str(good), "--db", db], "duplicate id 'a'"),
        (["index", "--corpus", str(noid), "--vectors", str(good), "--db", db], f"{noid}:2: empty id"),
        (["index", "--corpus", str(corpus), "--vectors", str(vectors), "--db", db], "row 1 contains NaN"),
        (["index", "--corpus", str(corpus), "--vectors", str(zeros), "--db", db], "row 1 is all zeros"),
        (
            ["index", "--corpus", str(corpus), "--vectors", str(good), "--db", str(not_lite)],
            "is not a Milvus Lite file",
        ),
        (
            ["index", "--corpus", str(corpus), "--vectors", str(good), "--db", "http://127.0.0.1:9"],
            "could not reach the Milvus server",
        ),
        (
            ["index", "--corpus", str(corpus), "--vectors", str(good), "--db", db, "--head-index", "ivf"],
            "unknown head index 'ivf'; choose one of auto, flat, hnsw, binary",
        ),
        (
            ["index", "--corpus", str(corpus), "--vectors", str(good), "--db", db, "--head-index", "binary"],
            "4 bits is not a multiple of 8",
        ),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (message, result.stderr)
    assert not (Path(db) / "manifest.json").exists()
    assert not_lite.read_text() == "this is not a database\n"

    assert run_cli("index", "--corpus", str(corpus), "--vectors", str(good), "--db", db).returncode == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "fine"}\n{"text": broken\n')
    np.save(tmp_path / "q.npy", np.eye(1, 4, dtype=np.float32))
    search_cases = [
        (["--queries", str(queries)], f"{queries}:2: invalid JSON"),
        (
            ["--query-vectors", str(tmp_path / "q.npy"), "--schedule", "1:2,2:1", "--k", "1"],
            "must end at the full dimension 4",
        ),
        (
            ["--query-vectors", str(tmp_path / "q.npy"), "--schedule", "8b:2,4:1", "--k", "1"],
            "head uses 8 dims but the vectors have 4",
        ),
        (
            ["--query-vectors", str(tmp_path / "q.npy"), "--schedule", "3b:2,4:1", "--k", "1"],
            "3 bits is not a multiple of 8",
        ),
        (["--query-vectors", str(vectors)], "row 1 contains NaN"),
        (["--query-vectors", str(tmp_path / "missing.npy")], "no such file"),
    ]
    for args, message in search_cases:
        result = run_cli("search", "--db", db, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (message, result.stderr)
    result = run_cli("search", "--db", str(tmp_path / "nowhere"), "--query", "x")
    assert result.returncode == 2 and "is not a matryoshka index folder" in result.stderr
    result = run_cli("search", "--db", milvus_server, "--collection", "never_built", "--query", "x")
    assert result.returncode == 2 and "no matryoshka index 'never_built'" in result.stderr
