"""The funnel: schedules, exactness when wide enough, batching, autotune on held-out queries."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka.errors import ScheduleError, StoreError
from matryoshka.funnel import (
    TUNE_MARGIN,
    Schedule,
    Stage,
    autotune,
    funnel_search,
    recall_at_k,
    shortlist_candidates,
)
from matryoshka.stores.memory import MemoryStore
from matryoshka.vectors import stage_dims


def test_schedule_validation():
    assert (
        str(Schedule.parse("12:2000,24:1000,48:500,96:250,192:100,384:10"))
        == "12:2000,24:1000,48:500,96:250,192:100,384:10"
    )
    with pytest.raises(ScheduleError, match="strictly increasing"):
        Schedule.parse("24:100,24:50")
    with pytest.raises(ScheduleError, match="must not increase"):
        Schedule.parse("12:100,24:200")
    with pytest.raises(ScheduleError, match="DIM:KEEP"):
        Schedule.parse("12-100")
    with pytest.raises(ScheduleError, match="positive"):
        Schedule((Stage(0, 10),))
    with pytest.raises(ScheduleError, match="at least one stage"):
        Schedule(())
    schedule = Schedule.parse("8:100,16:50,32:10")
    with pytest.raises(ScheduleError, match="must end at the full dimension 64"):
        schedule.check(64, 10, 1000)
    with pytest.raises(ScheduleError, match="larger than the corpus"):
        schedule.check(32, 2000, 1000)
    with pytest.raises(ScheduleError, match="last stage keeps 10 < k=20"):
        schedule.check(32, 20, 1000)


def test_default_dims_from_the_literature_and_any_dims():
    assert stage_dims(384) == [12, 24, 48, 96, 192, 384]
    assert stage_dims(256) == [8, 16, 32, 64, 128, 256]
    assert stage_dims(100) == [8, 16, 32, 64, 100]  # not a power of two: still ends at d
    halving = Schedule.halving(384, 10, 1000)
    assert [s.keep for s in halving.stages] == [1000, 500, 250, 125, 62, 10]
    sharp = Schedule.halving(384, 10, 1000, first_cut=4)  # cut harder after the head, then halve
    assert [s.keep for s in sharp.stages] == [1000, 250, 125, 62, 31, 10]


def _embedded(minilm, scifact_slice):
    from matryoshka.data import read_beir

    data = read_beir(scifact_slice, "test")
    documents = minilm.encode(data.corpus.texts, kind="document")
    queries = minilm.encode(data.query_texts, kind="query")
    return documents, queries


@pytest.fixture(scope="module")
def scifact_vectors(minilm, scifact_slice):
    return _embedded(minilm, scifact_slice)


def test_wide_funnel_equals_exact_on_real_embeddings(scifact_vectors):
    documents, queries = scifact_vectors
    store = MemoryStore(documents, 12)
    n = len(store)
    # the first stage keeps the whole corpus, so the last (full-dimension) stage sees every document
    schedule = Schedule.parse(f"12:{n},24:{n},48:{n},96:{n},192:{n},384:10")
    funnel = funnel_search(store, queries, schedule, 10)
    scores, rows = store.exact_search(queries, 10)
    np.testing.assert_array_equal(funnel.rows, rows)
    np.testing.assert_allclose(funnel.scores, scores, atol=1e-5)
    assert funnel.stage_dims == [12, 24, 48, 96, 192, 384] and funnel.stage_keeps == [n, n, n, n, n, 10]
    # a narrow funnel is not exact on MiniLM's 12-dim prefixes: the test above is not vacuous
    narrow = funnel_search(store, queries, Schedule.parse("12:10,384:10"), 10)
    assert recall_at_k(narrow.rows, rows) < 0.9


def test_first_stage_of_another_dim_than_the_head_is_still_exact(scifact_vectors):
    documents, queries = scifact_vectors
    store = MemoryStore(documents, 12)
    n = len(store)
    funnel = funnel_search(store, queries, Schedule.parse(f"48:{n},384:10"), 10)  # head stored at 12 dims
    np.testing.assert_array_equal(funnel.rows, store.exact_search(queries, 10)[1])


def test_batch_equals_one_query_at_a_time(scifact_vectors):
    documents, queries = scifact_vectors
    store = MemoryStore(documents, 24)
    schedule = Schedule.halving(384, 5, 80, 24)
    batch = funnel_search(store, queries, schedule, 5)
    for i in range(0, len(queries), 7):
        single = funnel_search(store, queries[i], schedule, 5)
        np.testing.assert_array_equal(single.rows[0], batch.rows[i])


def test_funnel_rejects_bad_queries(scifact_vectors):
    documents, _ = scifact_vectors
    store = MemoryStore(documents, 12)
    with pytest.raises(StoreError, match=r"shape \(n, 384\)"):
        funnel_search(store, np.ones((2, 100), np.float32), Schedule.halving(384, 10, 50), 10)
    bad = np.ones((1, 384), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        funnel_search(store, bad, Schedule.halving(384, 10, 50), 10)


def test_autotune_reaches_target_on_held_out_queries(wordllama, squad_sample):
    documents = wordllama.encode(squad_sample.corpus.texts, kind="document")
    queries = wordllama.encode(squad_sample.query_texts, kind="query")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(queries))
    tune_part, held_out = queries[order[:400]], queries[order[400:]]
    store = MemoryStore(documents, 32)
    tuned = autotune(store, tune_part, k=10, target_recall=0.95)
    assert tuned.recall >= 0.95
    assert tuned.schedule.shortlist < len(store)  # it found something cheaper than scanning everything
    _, truth = store.exact_search(held_out, 10)
    held_out_recall = recall_at_k(funnel_search(store, held_out, tuned.schedule, 10).rows, truth)
    assert held_out_recall >= 0.95, (str(tuned.schedule), held_out_recall)
    # it picked the cheapest schedule among those it tried whose 95% lower bound passed the target with
    # its margin: every cheaper one tried fell short of it
    required = 0.95 + TUNE_MARGIN * (1 - 0.95)
    assert tuned.passed
    passing = [cost for _, recall, bound, cost in tuned.tried if bound >= required]
    assert tuned.cost == min(passing)
    assert all(bound < required for _, _, bound, cost in tuned.tried if cost < tuned.cost)


def test_shortlists_tried_grow_with_the_corpus_up_to_one_percent_of_it():
    assert shortlist_candidates(10, 60_000)[-1] == 20_000
    assert shortlist_candidates(10, 40_000)[-1] == 40_000  # a small corpus: the whole of it, re-ranked
    assert max(shortlist_candidates(10, 1_000_000)) == 20_000
    assert shortlist_candidates(10, 10_000_000)[-4:] == [30_000, 50_000, 70_000, 100_000]
    assert max(shortlist_candidates(10, 5_000_000)) == 50_000


def test_autotune_says_when_no_schedule_reached_the_target(scifact_vectors):
    documents, queries = scifact_vectors
    store = MemoryStore(documents, 12)
    tuned = autotune(store, queries, k=10, target_recall=0.999, shortlists=[10, 20])  # far too short for 12 dims
    assert not tuned.passed
    assert tuned.recall == max(recall for _, recall, _, _ in tuned.tried) < 0.999


def test_large_batches_run_in_bounded_chunks(scifact_vectors, monkeypatch):
    import matryoshka.funnel as funnel

    documents, queries = scifact_vectors
    store = MemoryStore(documents, 12)
    schedule = Schedule.halving(384, 10, 200, 12)
    whole = funnel_search(store, queries, schedule, 10)
    monkeypatch.setattr(funnel, "GATHER_BUDGET", 200 * 24 * 3)  # three queries' candidates at a time
    chunked = funnel_search(store, queries, schedule, 10)
    np.testing.assert_array_equal(chunked.rows, whole.rows)
    np.testing.assert_allclose(chunked.scores, whole.scores, atol=1e-6)
    assert len(chunked.stage_seconds) == len(schedule.stages)


def test_shortlist_selection_is_exact_including_ties_and_fallback():
    from matryoshka.selection import select_shortlist

    rng = np.random.default_rng(5)
    scores = rng.normal(size=(40, 30_000)).astype(np.float32)
    scores[::3] = np.round(scores[::3], 1)  # heavy ties on some rows
    scores[1, :] = 0.5  # a constant row
    scores[2, :100] = 50.0  # a few outliers far above the rest
    # a row whose sampled columns are exactly its best ones: the estimated threshold keeps too few,
    # so that row takes the argpartition fallback
    from matryoshka.selection import _SAMPLE_SEED, SAMPLE_COLUMNS

    sampled = np.random.default_rng(_SAMPLE_SEED).choice(30_000, size=SAMPLE_COLUMNS, replace=False)
    scores[3, sampled] += 100.0
    for n in (1, 37, 500, 14_000, 30_000):
        picked = select_shortlist(scores, n)
        assert picked.shape == (40, n)
        for i in range(40):
            assert len(set(picked[i])) == n
            np.testing.assert_array_equal(np.sort(scores[i, picked[i]]), np.sort(scores[i])[-n:])


def test_in_place_rescoring_equals_gathered_prefix_cosines(scifact_vectors, tmp_path):
    from matryoshka.rescore import fusable, prefix_cosines, rerank

    documents, queries = scifact_vectors
    np.save(tmp_path / "full.npy", documents)
    mapped = np.load(tmp_path / "full.npy", mmap_mode="r")  # what the local store hands in
    store = MemoryStore(documents, 12)
    rows = np.random.default_rng(3).integers(0, len(documents), size=(len(queries), 300))
    rows[0, :5] = -1  # "no candidate", as a graph head may answer
    valid = rows >= 0
    for dim in (12, 24, 96, 384):
        want = rerank(store.gather(np.maximum(rows, 0), dim), queries[:, :dim])
        got = prefix_cosines(mapped, rows, queries[:, :dim])
        np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
        assert np.isneginf(got[~valid]).all()
        one = prefix_cosines(mapped, rows[1:2], queries[1:2, :dim])  # a lone query takes the one-thread path
        np.testing.assert_allclose(one, want[1:2], atol=1e-5)
        assert store.scores_in_place(dim)
        # the store's own path: in-RAM vectors keep each dim's prefix norms after first use
        np.testing.assert_allclose(store.rescore(np.maximum(rows, 0), queries[:, :dim]), want, atol=1e-5)
    # a dim that does not divide the row, or a copy that is not float32, is gathered instead
    assert prefix_cosines(documents, rows, queries[:, :100]) is None and not store.scores_in_place(100)
    assert not fusable(documents.astype(np.float64), 12)
    gathered = store.rescore(rows, queries[:, :100])
    np.testing.assert_allclose(
        gathered[valid], rerank(store.gather(np.maximum(rows, 0), 100), queries[:, :100])[valid], atol=1e-6
    )
    assert np.isneginf(gathered[~valid]).all()


def test_tiled_head_scan_is_exact_including_ties_and_fallback():
    from matryoshka.selection import _sample_columns, scan_shortlist

    rng = np.random.default_rng(11)
    head = rng.standard_normal((40_000, 16)).astype(np.float32)
    head[::7] = np.round(head[::7], 1)  # ties
    queries = rng.standard_normal((150, 16)).astype(np.float32)
    queries[5] = 0.0  # every score equal
    skewed = head.copy()
    skewed[_sample_columns(len(head))] *= 10  # the sampled rows dominate: thresholds overshoot, fallback runs
    for matrix in (head, skewed):
        full = queries @ matrix.T
        for n in (1, 10, 777, 9_000, 39_999, 40_000):
            scores, rows = scan_shortlist(queries, matrix, n)
            assert rows.shape == (150, n) and scores.shape == (150, n)
            for i in range(0, 150, 7):
                assert len(set(rows[i])) == n
                np.testing.assert_allclose(np.sort(full[i, rows[i]]), np.sort(full[i])[-n:], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(scores[i], full[i, rows[i]], rtol=1e-5, atol=1e-5)


def test_hamming_shortlist_is_exact_including_ties_and_fallback():
    from matryoshka.selection import HammingShortlist, _sample_columns

    rng = np.random.default_rng(13)
    codes = rng.integers(0, 256, size=(30_000, 8), dtype=np.uint8)  # 64 bits: few distinct distances, many ties
    codes[_sample_columns(len(codes))[:40]] = 0  # rows the sample sees next to an all-zero query
    queries = rng.integers(0, 256, size=(60, 8), dtype=np.uint8)
    queries[0] = 0  # its sampled threshold is far too low: it takes the k-NN fallback
    queries[1] = queries[2]  # equal queries, one range search between them
    distances = np.unpackbits(codes[None] ^ queries[:, None], axis=2).sum(axis=2)  # numpy, no FAISS
    selector = HammingShortlist(codes)
    for n in (1, 60, 700, 20_000, 30_000):
        for which in (np.arange(len(queries)), [0], [5]):  # a batch, and the one-query paths
            found, rows = selector.search(queries[which], n)
            assert found.shape == rows.shape == (len(which), n)
            for i, q in enumerate(which):
                assert len(set(rows[i])) == n
                np.testing.assert_array_equal(found[i], distances[q, rows[i]])
                np.testing.assert_array_equal(np.sort(found[i]), np.sort(distances[q])[:n])


def test_binary_head_schedules_parse_and_validate():
    schedule = Schedule.parse("256b:2000, 128:250,256:10")
    assert schedule.binary_head and schedule.head_dim == 256 and str(schedule) == "256b:2000,128:250,256:10"
    assert str(Schedule.binary(256, 10, 2000)) == "256b:2000,128:250,256:10"
    assert str(Schedule.binary(384, 10, 1000, bits=192, first_cut=4)) == "192b:1000,192:250,384:10"
    schedule.check(256, 10, 5000)
    # the stages after a binary head start again from any dim, and must increase among themselves
    Schedule.parse("256b:100,256:10").check(256, 10, 5000)
    for text, message in (
        ("256b:100,128:50,64:10", "strictly increasing"),
        ("64:100,128b:50,256:10", "only the first stage"),
        ("256b:10", "follow 256b:10 with a stage at the full dimension"),
        ("100b:50,256:10", "100 bits is not a multiple of 8"),
    ):
        with pytest.raises(ScheduleError, match=message):
            Schedule.parse(text)
    with pytest.raises(ScheduleError, match="head uses 512 dims but the vectors have 256"):
        Schedule.parse("512b:50,256:10").check(256, 10, 5000)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between every row of a and of b, by their sign bits (numpy, no FAISS)."""
    return ((a[:, None, :] > 0) != (b[None, :, :] > 0)).sum(axis=2)


def test_binary_head_is_an_exact_hamming_search_and_a_wide_funnel_equals_exact(scifact_vectors):
    documents, queries = scifact_vectors
    store = MemoryStore(documents, 384, head_index="binary")
    n = len(store)
    assert store.binary_head and store.memory_bytes() == n * 384 // 8  # 48 bytes a row: a 12-dim float head
    distances = _hamming(queries, documents)
    for shortlist in (1, 50, 333):
        scores, rows = store.head_search(queries, shortlist)
        assert rows.shape == (len(queries), shortlist)
        for i in range(len(queries)):
            assert len(set(rows[i])) == shortlist
            # the rows' distances are the shortlist smallest (ties may pick either row)
            np.testing.assert_array_equal(np.sort(distances[i, rows[i]]), np.sort(distances[i])[:shortlist])
            np.testing.assert_allclose(scores[i], 1 - 2 * distances[i, rows[i]] / 384, atol=1e-6)
    wide = funnel_search(store, queries, Schedule.parse(f"384b:{n},384:10"), 10)
    exact_scores, exact_rows = store.exact_search(queries, 10)
    np.testing.assert_array_equal(wide.rows, exact_rows)
    np.testing.assert_allclose(wide.scores, exact_scores, atol=1e-5)
    # sign bits of 384 dims keep MiniLM's ranking far better than its 12-dim prefix, in the same bytes
    binary = recall_at_k(funnel_search(store, queries, Schedule.parse("384b:30,384:10"), 10).rows, exact_rows)
    truncated = recall_at_k(
        funnel_search(MemoryStore(documents, 12), queries, Schedule.parse("12:30,384:10"), 10).rows, exact_rows
    )
    assert binary > truncated + 0.2, (binary, truncated)
    # a float schedule cannot run on a binary head, nor a binary one on a float head
    with pytest.raises(ScheduleError, match="head is binary \\(384 bits\\): start the schedule with 384b:N"):
        funnel_search(store, queries, Schedule.parse("12:100,384:10"), 10)
    with pytest.raises(ScheduleError, match="build it with --head-index binary"):
        funnel_search(MemoryStore(documents, 12), queries, Schedule.parse("384b:100,384:10"), 10)


def test_autotune_binary_head_on_held_out_queries(wordllama, squad_sample):
    documents = wordllama.encode(squad_sample.corpus.texts, kind="document")
    queries = wordllama.encode(squad_sample.query_texts, kind="query")
    order = np.random.default_rng(1).permutation(len(queries))
    tune_part, held_out = queries[order[:400]], queries[order[400:]]
    store = MemoryStore(documents, 256, head_index="binary")
    tuned = autotune(store, tune_part, k=10, target_recall=0.95)
    assert tuned.passed and tuned.schedule.binary_head and tuned.schedule.head_dim == 256
    assert all(Schedule.parse(s).binary_head for s, *_ in tuned.tried)
    assert tuned.schedule.shortlist < len(store)
    _, truth = store.exact_search(held_out, 10)
    assert recall_at_k(funnel_search(store, held_out, tuned.schedule, 10).rows, truth) >= 0.95


def test_auto_head_takes_the_cheapest_head_that_reaches_the_target(wordllama, squad_sample):
    from matryoshka.index import tune

    documents = wordllama.encode(squad_sample.corpus.texts, kind="document")
    queries = wordllama.encode(squad_sample.query_texts, kind="query")[:300]
    tuned = {
        kind: tune(documents, 10, 0.95, sample_queries=queries, head_index=kind, trained=(64, 128, 256))
        for kind in ("flat", "binary", "auto")
    }
    assert tuned["flat"].passed and tuned["binary"].passed
    cheapest = min((tuned["flat"], tuned["binary"]), key=lambda result: result.cost)
    assert tuned["auto"].passed and tuned["auto"].schedule == cheapest.schedule
    assert tuned["auto"].cost == cheapest.cost
