"""Smaller storage for the vectors the funnel re-ranks (``index --storage float16|int8``).

Every stage, exact search included, scores the vectors as stored, so an index must agree exactly
with a brute-force oracle over those vectors (worked out in the test by the documented formula)
through live writes, deletes, compaction, filters and reopening; and the stored vectors must stay
close enough to float32 that recall against float32's exact search barely moves."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from test_live import as_stored, run_random_operations
from test_recall_levels import matryoshka_like, oracle

from conftest import RunningServer, free_port, run_cli, write_jsonl
from matryoshka.errors import StoreError, UsageError
from matryoshka.funnel import per_query_recall
from matryoshka.index import Index, build_index
from matryoshka.stores.base import IndexMeta

K = 10
BYTES = {"float32": 4, "float16": 2, "int8": 1}


@pytest.mark.parametrize(
    "store, head_index, storage",
    [("local", "binary", "int8"), ("local", "flat", "float16"), ("memory", "flat", "int8"), ("local", "hnsw", "int8")],
)
def test_random_operations_match_an_oracle_of_the_stored_vectors(tmp_path, store, head_index, storage):
    """Adds (a trickle of one with hostile Unicode ids), upserts, deletes, compactions and
    searches: the exact search and a funnel wide enough to be exact return the oracle's top k and
    its scores to float32 precision, one query or several."""
    db = str(tmp_path / "index") if store == "local" else f"memory://storage-{head_index}-{storage}"
    counts = run_random_operations(db, 250, seed=len(storage) + len(head_index), head_index=head_index, storage=storage)
    assert min(counts.values()) > 0, counts


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_levels_filters_and_files_of_a_smaller_storage(tmp_path, storage):
    corpus, tuning, fresh = matryoshka_like(4_000, 64, 0), matryoshka_like(300, 64, 1), matryoshka_like(200, 64, 2)
    colours = np.random.default_rng(3).choice(["red", "green", "blue"], len(corpus))
    db = tmp_path / "index"
    meta = build_index(
        str(db),
        [f"döc-{i}" for i in range(len(corpus))],
        [f"text {i}" for i in range(len(corpus))],
        vectors=corpus,
        tune_queries=tuning,
        head_index="binary",
        recall_levels=(0.9,),
        metadata=[{"colour": c} for c in colours],
        storage=storage,
    )
    assert meta.storage == storage and meta.full_dim in meta.prefix_norm_dims  # stored rows are not unit
    (segment,) = (db / "segments").iterdir()
    stored = np.load(segment / "full.npy", mmap_mode="r")
    assert stored.dtype == np.dtype(storage) and stored.nbytes == len(corpus) * 64 * BYTES[storage]
    held = as_stored(corpus, storage)
    assert 0 < np.abs(held - corpus).max() < (2e-3 if storage == "float16" else 2e-2)
    with Index(str(db)) as index:
        assert index.meta.storage == storage
        # exact search is exact on the stored vectors: the oracle's rows and scores
        exact = index.search_vectors(fresh, K, exact=True)
        np.testing.assert_array_equal(exact.rows, oracle(held, fresh, K))
        np.testing.assert_allclose(exact.scores, np.sort(fresh @ held.T, axis=1)[:, ::-1][:, :K], atol=1e-5)
        # each tuned schedule keeps its recall, and its final scores are the stored vectors' cosines
        for level in index.meta.schedules_by_recall():
            result = index.search_vectors(fresh, K, schedule=index.schedule_for(K, recall=level))
            assert np.mean(per_query_recall(result.rows, oracle(held, fresh, K))) >= level - 0.03, level
            valid = result.rows >= 0
            true = np.einsum("qd,qkd->qk", fresh, held[np.maximum(result.rows, 0)])
            np.testing.assert_allclose(result.scores[valid], true[valid], atol=1e-5)
        # and against float32's exact search, what a user compares with, recall hardly moves
        funnel = index.search_vectors(fresh, K, schedule=index.schedule_for(K))
        assert np.mean(per_query_recall(funnel.rows, oracle(corpus, fresh, K))) >= 0.95
        # a filter inside the head: only passing rows, and exactly the filtered oracle above the levels
        allowed = colours == "blue"
        filtered = index.search_vectors(fresh[:40], K, recall=1.0, filter={"colour": "blue"})
        np.testing.assert_array_equal(filtered.rows, oracle(held, fresh[:40], K, allowed))
        cheap = index.search_vectors(fresh[:40], K, schedule=index.schedule_for(K), filter={"colour": "blue"})
        assert allowed[cheap.rows[cheap.rows >= 0]].all()
        # a single write is stored the same way and found at once; compaction keeps the storage
        new = matryoshka_like(1, 64, 9)
        index.add(["𝔫ew 日本\u0301"], ["new"], vectors=new)
        found = index.search_vectors(new, 1, exact=True)
        assert index.hits(found)[0].ids == ["𝔫ew 日本\u0301"]
        np.testing.assert_allclose(found.scores[0, 0], float(new[0] @ as_stored(new, storage)[0]), atol=1e-5)
        vectors = index.store.document_vectors(np.array([0, len(index) - 1]))
        np.testing.assert_allclose(vectors, np.concatenate([held[:1], as_stored(new, storage)]), atol=1e-6)
        index.compact()
    (segment,) = (db / "segments").iterdir()
    assert np.load(segment / "full.npy", mmap_mode="r").dtype == np.dtype(storage)
    with Index(str(db)) as index:
        assert len(index) == len(corpus) + 1
        everything = np.concatenate([held, as_stored(new, storage)])
        np.testing.assert_array_equal(index.search_vectors(fresh, K, exact=True).rows, oracle(everything, fresh, K))


def test_a_storage_is_checked_wherever_it_is_named(tmp_path):
    base = {"model": None, "full_dim": 8, "head_dim": 8, "count": 1, "format_version": 2}
    assert IndexMeta.from_dict({**base, "storage": "int8"}, "x").storage == "int8"
    assert IndexMeta.from_dict(base, "x").storage == "float32"  # indexes written before storage was a choice
    with pytest.raises(StoreError, match="unknown vector storage 'int4'; choose one of float32, float16, int8"):
        IndexMeta.from_dict({**base, "storage": "int4"}, "x")
    corpus = matryoshka_like(50, 16, 0)
    with pytest.raises(UsageError, match="--storage int8 is for the local store; Milvus keeps float32 vectors"):
        build_index(str(tmp_path / "x.db"), [str(i) for i in range(50)], ["t"] * 50, vectors=corpus, storage="int8")
    with pytest.raises(StoreError, match="unknown vector storage"):
        build_index(str(tmp_path / "y"), [str(i) for i in range(50)], ["t"] * 50, vectors=corpus, storage="bf16")
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "y").exists()


def test_cli_and_server_with_a_real_model(tmp_path, squad_sample):
    """wordllama on real SQuAD paragraphs stored as int8: the index is a quarter of float32's
    bytes, keeps float32's top 10 and reports its storage; a wrong --storage is one clear line."""
    texts, ids = squad_sample.corpus.texts[:600], squad_sample.corpus.ids[:600]
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in zip(ids, texts)])
    bad = run_cli(
        "index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(tmp_path / "bad"), "--storage", "int4"
    )
    assert bad.returncode != 0 and "unknown vector storage 'int4'" in bad.stderr + bad.stdout
    assert not (tmp_path / "bad").exists()
    for storage in ("float32", "int8"):
        made = run_cli(
            "index",
            "--model",
            "wordllama",
            "--corpus",
            str(corpus),
            "--db",
            str(tmp_path / storage),
            "--storage",
            storage,
        )
        assert made.returncode == 0, made.stderr
    assert "256 dims stored as int8" in made.stdout
    sizes = {
        s: sum(f.stat().st_size for f in (tmp_path / s / "segments").glob("*/full.npy"))
        for s in BYTES
        if (tmp_path / s).exists()
    }
    assert sizes["int8"] < sizes["float32"] / 3.9
    questions = squad_sample.query_texts[:20]
    answers = {}
    for storage in ("float32", "int8"):
        out = tmp_path / f"{storage}.json"
        searched = run_cli(
            "search",
            "--db",
            str(tmp_path / storage),
            "--queries",
            str(write_lines(tmp_path, questions)),
            "--exact",
            "--json",
            str(out),
        )
        assert searched.returncode == 0, searched.stderr
        answers[storage] = [[h["id"] for h in r["hits"]] for r in json.loads(out.read_text())["results"]]
    overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(answers["float32"], answers["int8"])])
    assert overlap >= 0.97, overlap
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(tmp_path / "int8"), "--port", str(port)],
        tmp_path / "serve.log",
        f"http://127.0.0.1:{port}/",
    )
    try:
        server.wait_healthy()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/info").json()["storage"] == "int8"
            hits = client.post("/search", json={"query": questions[0], "exact": True}).json()["hits"]
            assert [h["id"] for h in hits] == answers["int8"][0]
    finally:
        server.stop()


def write_lines(tmp_path, lines: list[str]):
    path = tmp_path / "questions.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
