"""The funnel: schedules, exactness when wide enough, batching, autotune on held-out queries."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka.funnel import Schedule, ScheduleError, Stage, autotune, funnel_search, recall_at_k, stage_dims
from matryoshka.stores.memory import MemoryStore


def test_schedule_validation():
    assert str(Schedule.parse("12:2000,24:1000,48:500,96:250,192:100,384:10")) == "12:2000,24:1000,48:500,96:250,192:100,384:10"
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
    with pytest.raises(ValueError, match=r"shape \(n, 384\)"):
        funnel_search(store, np.ones((2, 100), np.float32), Schedule.halving(384, 10, 50), 10)
    bad = np.ones((1, 384), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
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
    # and it picked the cheapest passing schedule among those it tried at this head
    passing = [cost for _, recall, cost in tuned.tried if recall >= 0.95]
    assert tuned.cost == min(passing)


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
    from matryoshka.stores.memory import select_shortlist

    rng = np.random.default_rng(5)
    scores = rng.normal(size=(40, 30_000)).astype(np.float32)
    scores[::3] = np.round(scores[::3], 1)  # heavy ties on some rows
    scores[1, :] = 0.5  # a constant row
    scores[2, :100] = 50.0  # a few outliers far above the rest
    # a row whose sampled columns are exactly its best ones: the estimated threshold keeps too few,
    # so that row takes the argpartition fallback
    from matryoshka.stores.memory import _SAMPLE_SEED, SAMPLE_COLUMNS

    sampled = np.random.default_rng(_SAMPLE_SEED).choice(30_000, size=SAMPLE_COLUMNS, replace=False)
    scores[3, sampled] += 100.0
    for n in (1, 37, 500, 14_000, 30_000):
        picked = select_shortlist(scores, n)
        assert picked.shape == (40, n)
        for i in range(40):
            assert len(set(picked[i])) == n
            np.testing.assert_array_equal(np.sort(scores[i, picked[i]]), np.sort(scores[i])[-n:])
