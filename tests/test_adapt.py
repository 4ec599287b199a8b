"""Post-hoc adapters: their algebra, their files, and indexes built with them (real MiniLM vectors)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from matryoshka.adapt import (
    AdapterError,
    FitSettings,
    LearnedAdapter,
    OrthogonalAdapter,
    load_adapter,
    make_adapter,
    with_adapter,
)
from matryoshka.errors import ModelError
from matryoshka.index import Index
from matryoshka.metrics import top_k
from matryoshka.models import load_model
from matryoshka.vectors import normalize, truncate

QUICK = FitSettings(steps=25, batch_size=64, neighbours=16, sampled=16)


@pytest.fixture(scope="module")
def sample_vectors(minilm, squad_sample):
    documents = minilm.encode(squad_sample.corpus.texts, kind="document")
    queries = minilm.encode(squad_sample.query_texts[:200], kind="query")
    return documents, queries


def test_orthogonal_adapter_is_orthogonal_and_keeps_full_dim_cosines(sample_vectors):
    documents, queries = sample_vectors
    adapter = OrthogonalAdapter(QUICK).fit(documents, queries=queries)
    rotation = adapter.components_.astype(np.float64)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(rotation.shape[0]), atol=1e-5)
    before = queries @ documents.T
    after = adapter.transform(queries) @ adapter.transform(documents).T
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert adapter.loss_history_[-1] < adapter.loss_history_[0]  # it did learn something


def test_refined_adapters_start_from_pca_and_move(sample_vectors):
    documents, queries = sample_vectors
    pca = make_adapter("pca").fit(documents)
    untrained = LearnedAdapter(FitSettings(steps=0)).fit(documents, queries=queries)
    np.testing.assert_allclose(untrained.transform(queries), pca.transform(queries), atol=1e-5)
    trained = LearnedAdapter(QUICK).fit(documents, queries=queries)
    assert np.abs(trained.transform(queries) - pca.transform(queries)).max() > 1e-3


@pytest.mark.parametrize(
    "kind,options", [("pca", {}), ("orthogonal", {}), ("learned", {}), ("learned", {"hidden": 32})]
)
def test_each_adapter_kind_round_trips_through_its_file(tmp_path, sample_vectors, kind, options):
    documents, queries = sample_vectors
    rows = np.arange(20)
    adapter = make_adapter(kind, QUICK, **options).fit(documents, queries=queries, pairs=(queries[:20], rows))
    path = adapter.save(tmp_path / kind)
    assert path.suffix == ".npz" and path.stat().st_size < 2_000_000
    loaded = load_adapter(path)
    assert type(loaded) is type(adapter)
    np.testing.assert_allclose(loaded.transform(queries), adapter.transform(queries), atol=1e-6)


def test_bad_adapter_files_are_refused_clearly(tmp_path):
    with pytest.raises(AdapterError, match="no such adapter file"):
        load_adapter(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AdapterError, match="not an adapter file"):
        load_adapter(tmp_path / "junk.npz")
    np.savez(tmp_path / "odd.npz", kind=np.asarray("zca"), weight_=np.eye(3))
    with pytest.raises(AdapterError, match="unknown adapter kind 'zca'"):
        load_adapter(tmp_path / "odd.npz")
    with pytest.raises(AdapterError, match="unknown adapter kind"):
        make_adapter("zca")


def test_load_model_with_an_adapter_encodes_prefixes_of_f(tmp_path, minilm, sample_vectors):
    documents, _ = sample_vectors
    path = make_adapter("pca").fit(documents).save(tmp_path / "pca")
    adapted = with_adapter(load_model("default"), path)
    texts = ["the giant panda", "steam engines"]
    expected = truncate(load_adapter(path).transform(minilm.encode(texts, kind="query")), 24)
    np.testing.assert_allclose(adapted.encode(texts, 24, kind="query"), expected, atol=1e-5)
    wordllama_sized = make_adapter("pca").fit(np.random.default_rng(0).normal(size=(50, 256))).save(tmp_path / "w")
    with pytest.raises(ModelError, match="maps 256-dim vectors"):
        with_adapter(minilm, wordllama_sized)


@pytest.mark.parametrize("kind", ["pca", "orthogonal", "learned"])
@pytest.mark.parametrize("store", ["local", "lite"])
def test_an_index_with_any_adapter_returns_the_models_own_full_dim_top_k(
    tmp_path, squad_sample, sample_vectors, kind, store
):
    from matryoshka.funnel import two_stage_schedule
    from matryoshka.index import Index, build_index

    documents, queries = sample_vectors
    path = make_adapter(kind, QUICK).fit(documents, queries=queries).save(tmp_path / kind)
    encoder = with_adapter(load_model("default"), path)
    db = tmp_path / ("index" if store == "local" else "index.db")
    meta = build_index(db, squad_sample.corpus.ids, squad_sample.corpus.texts, encoder=encoder, vectors=documents)
    assert meta.adapter == str(path.resolve()) and meta.model == "all-MiniLM-L6-v2"
    truth = top_k(queries @ documents.T, 10)
    with Index(db) as index:
        assert index.adapter is not None
        exact = index.search_vectors(queries, 10, exact=True)
        np.testing.assert_array_equal(exact.rows, truth)
        whole = two_stage_schedule(384, 10, len(documents), meta.head_dim)  # shortlist = the whole corpus
        np.testing.assert_array_equal(index.search_vectors(queries, 10, schedule=whole).rows, truth)
        # the tuned funnel (on a corpus this small a search that names no schedule is exact, as timed)
        funnel = index.search_vectors(queries, 10, schedule=index.schedule_for(10))
        assert len(funnel.stage_dims) == 2 and funnel.stage_dims[-1] == 384
        # scores are the model's own full-dimension cosines, whatever f is
        expected = np.take_along_axis(queries @ documents.T, funnel.rows, axis=1)
        np.testing.assert_allclose(funnel.scores, expected, atol=1e-5)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(funnel.rows, truth)])
        assert overlap >= 0.97


def test_adapt_cli_on_real_scifact_then_evaluate_index_and_search(tmp_path, scifact_slice):
    adapter = tmp_path / "scifact.npz"
    result = run_cli(
        "adapt",
        "--corpus",
        str(scifact_slice),
        "--kind",
        "orthogonal",
        "--steps",
        "15",
        "--query-samples",
        "150",
        "--output",
        str(adapter),
    )
    assert result.returncode == 0, result.stderr
    assert "orthogonal adapter for all-MiniLM-L6-v2 fitted on" in result.stdout and adapter.exists()
    report_path = tmp_path / "eval.json"
    result = run_cli(
        "evaluate",
        "--task",
        "retrieval",
        "--data",
        str(scifact_slice),
        "--dims",
        "384,48,12",
        "--adapter",
        str(adapter),
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    by_method = {(r["method"], r["dim"]): r["ndcg@10"] for r in report["results"]}
    assert by_method[("adapter", 384)] == pytest.approx(by_method[("truncate", 384)], abs=1e-6)  # orthogonal
    assert by_method[("adapter", 12)] > by_method[("truncate", 12)]  # MiniLM's own 12-dim prefix is poor
    db = tmp_path / "index"
    result = run_cli("index", "--corpus", str(scifact_slice), "--adapter", str(adapter), "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "hits.json"
    result = run_cli("search", "--db", str(db), "--query", "vitamin D and bone density", "--k", "5", "--json", str(out))
    assert result.returncode == 0, result.stderr
    with Index(db) as index:  # the same index and query searched exactly, in this process
        exact = index.search("vitamin D and bone density", 5, exact=True)[0].ids
    assert [h["id"] for h in json.loads(out.read_text())["results"][0]["hits"]] == exact


def test_adapt_cli_with_pairs_and_queries_fits_and_reports_query_heads(tmp_path, scifact_slice):
    from matryoshka.data import read_beir

    data = read_beir(scifact_slice, "test")
    texts = dict(zip(data.corpus.ids, data.corpus.texts))
    pairs, questions = tmp_path / "pairs.jsonl", tmp_path / "questions.txt"
    with open(pairs, "w") as handle:
        for query_id, text in list(zip(data.query_ids, data.query_texts))[:20]:
            for doc_id in data.qrels[query_id]:
                handle.write(json.dumps({"query": text, "document": texts[doc_id]}) + "\n")
    questions.write_text("\n".join(data.query_texts[20:]) + "\n")  # real queries without relevant documents
    adapter = tmp_path / "sup.npz"
    result = run_cli(
        "adapt",
        "--corpus",
        str(scifact_slice),
        "--pairs",
        str(pairs),
        "--queries",
        str(questions),
        "--kind",
        "pca",
        "--query-samples",
        "150",
        "--output",
        str(adapter),
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("query head at")]
    assert [line.split()[3] for line in lines] == ["12", "24", "48", "96"]  # d/32 … d/4
    kept = sorted(int(line.split()[3]) for line in lines if line.endswith("kept"))
    assert sorted(getattr(load_adapter(adapter), "query_heads_", {})) == kept
    result = run_cli(
        "adapt",
        "--corpus",
        str(scifact_slice),
        "--queries",
        str(questions),
        "--no-query-heads",
        "--kind",
        "pca",
        "--output",
        str(tmp_path / "none.npz"),
    )
    assert result.returncode == 0 and "query head at" not in result.stdout
    assert not hasattr(load_adapter(tmp_path / "none.npz"), "query_heads_")


@pytest.mark.slow
def test_adapt_cli_refuses_bad_input(tmp_path, scifact_slice):
    result = run_cli("adapt", "--corpus", str(scifact_slice), "--kind", "zca", "--output", str(tmp_path / "a.npz"))
    assert result.returncode == 2 and "unknown adapter kind 'zca'" in result.stderr
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"query": "q", "document": "d"}\n{"query": "q2"}\n')
    result = run_cli("adapt", "--corpus", str(scifact_slice), "--pairs", str(bad), "--output", str(tmp_path / "a.npz"))
    assert result.returncode == 2 and "pairs.jsonl:2" in result.stderr
    result = run_cli(
        "evaluate", "--task", "retrieval", "--data", str(scifact_slice), "--adapter", str(tmp_path / "none.npz")
    )
    assert result.returncode == 2 and "no such adapter file" in result.stderr


def test_adapter_anchors_are_corpus_sentences_or_windows_when_there_are_none():
    from matryoshka.samples import query_like_texts

    corpus = [
        "Tides are caused by the moon. The sun matters less for them! Short one.",
        "Protein folding is hard to predict from sequence alone. It took decades of work to get there?",
    ]
    sentences = query_like_texts(corpus, count=10, unit="sentence")
    assert sorted(sentences) == sorted(
        [
            "Tides are caused by the moon.",
            "The sun matters less for them!",
            "Protein folding is hard to predict from sequence alone.",
            "It took decades of work to get there?",
        ]
    )
    assert len(query_like_texts(corpus * 20, count=5, unit="sentence")) == 5
    titles = ["tide tables", "protein folding", "moon phases and tides"] * 4
    windows = query_like_texts(titles, count=6, unit="sentence")  # no sentences of 5+ words: word windows
    assert len(windows) == 6 and all(w in titles or w in " ".join(titles) for w in windows)
    assert query_like_texts(corpus, count=2, seed=3) == query_like_texts(corpus, count=2, seed=3)


def _head_recall(adapter, documents, queries, truth, dim: int, shortlist: int, heads: bool) -> float:
    from matryoshka.adapt import adapted_queries
    from matryoshka.funnel import recall_at_k

    q = adapted_queries(adapter, queries, dim if heads else None)[:, :dim]
    d = normalize(adapter.transform(documents)[:, :dim])
    found = top_k(q @ d.T, shortlist)
    rescored = np.take_along_axis(queries @ documents.T, found, axis=1)
    return recall_at_k(np.take_along_axis(found, top_k(rescored, 10), axis=1), truth)


def test_query_heads_are_kept_only_where_held_out_queries_gain_and_travel_with_the_adapter(
    tmp_path, minilm, squad_sample, sample_vectors
):
    """Query heads on real SQuAD questions: each head dim is kept only if the held-out fifth of the
    fitting questions gained head recall, and questions never seen do not lose it. A kept head is
    saved and loaded with the adapter, and an index built with it searches its head with it and
    still returns the model's own full-dimension top-k."""
    from matryoshka.adapt import QueryHeadSettings, adapted_queries, fit_query_heads
    from matryoshka.funnel import recall_at_k, two_stage_schedule
    from matryoshka.index import Index, build_index
    from matryoshka.samples import pseudo_queries

    documents, _ = sample_vectors
    queries = minilm.encode(squad_sample.query_texts, kind="query")
    anchors = pseudo_queries(squad_sample.corpus.texts, minilm, count=2000, unit="sentence")
    train, unseen = queries[:500], queries[500:]
    truth = top_k(unseen @ documents.T, 10)
    settings = QueryHeadSettings(shortlist=30)
    adapter = make_adapter("pca").fit(documents)
    before = {dim: _head_recall(adapter, documents, unseen, truth, dim, 30, heads=False) for dim in (12, 24)}
    fit_query_heads(adapter, documents, train, [12, 24], settings, anchors=anchors)
    report = adapter.query_head_validation_
    assert sorted(report) == [12, 24]
    assert sorted(adapter.query_heads_) == [dim for dim, (old, new) in report.items() if new > old]
    for dim in (12, 24):
        after = _head_recall(adapter, documents, unseen, truth, dim, 30, heads=True)
        assert after >= before[dim] - 0.01, (dim, before[dim], after)
    # with fewer than 10 queries nothing can be held out: the head is kept as fitted
    adapter = make_adapter("pca").fit(documents)
    heads = fit_query_heads(adapter, documents, train[:8], [24], settings, anchors=anchors)
    assert sorted(heads) == [24] and heads[24].shape == (384, 24) and adapter.query_head_validation_ == {}
    plain = normalize(adapter.transform(unseen))
    moved = adapted_queries(adapter, unseen, 24)
    assert not np.allclose(moved[:, :24], plain[:, :24], atol=1e-3)  # the query's head coordinates moved
    np.testing.assert_allclose(adapted_queries(adapter, unseen, 48), plain, atol=1e-6)  # no head at 48: f(q)
    path = adapter.save(tmp_path / "with-heads")
    loaded = load_adapter(path)
    assert sorted(loaded.query_heads_) == [24]
    np.testing.assert_allclose(adapted_queries(loaded, unseen, 24), moved, atol=1e-6)
    encoder = with_adapter(load_model("default"), path)
    meta = build_index(
        tmp_path / "index",
        squad_sample.corpus.ids,
        squad_sample.corpus.texts,
        encoder=encoder,
        vectors=documents,
        head_dim=24,
    )
    with Index(tmp_path / "index") as index:
        whole = two_stage_schedule(384, 10, len(documents), meta.head_dim)
        np.testing.assert_array_equal(index.search_vectors(unseen, 10, schedule=whole).rows, truth)
        found = index.search_vectors(unseen, 10, schedule=two_stage_schedule(384, 10, 30, 24)).rows
        # the index's head searched with the query head, not with f(q)
        with_head = _head_recall(adapter, documents, unseen, truth, 24, 30, heads=True)
        without = _head_recall(adapter, documents, unseen, truth, 24, 30, heads=False)
        assert recall_at_k(found, truth) == pytest.approx(with_head) and with_head != pytest.approx(without)
