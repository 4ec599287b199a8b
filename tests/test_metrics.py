"""Our metrics agree with trec_eval (pytrec_eval) and scipy on random data."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
from scipy import stats

from matryoshka import metrics


def _random_run(rng, n_queries=60, n_docs=300, depth=100):
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    qrels = {}
    for q in query_ids:
        relevant = rng.choice(n_docs, size=rng.integers(1, 6), replace=False)
        qrels[q] = {doc_ids[j]: int(rng.integers(1, 4)) for j in relevant}
        qrels[q][doc_ids[(relevant[0] + 1) % n_docs]] = 0  # judged non-relevant must not count
    scores = rng.normal(size=(n_queries, n_docs))
    # make relevant documents likelier near the top so metrics are not all ~0
    for i, q in enumerate(query_ids):
        for d, g in qrels[q].items():
            scores[i, int(d[1:])] += 1.5 * g
    ranked = metrics.top_k(scores, depth)
    return doc_ids, query_ids, qrels, scores, ranked


def _trec(run_depth, measures, doc_ids, query_ids, qrels, scores, ranked):
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in ranked[i, :run_depth]} for i, q in enumerate(query_ids)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures)
    return evaluator.evaluate(run)


def test_ndcg_recall_mrr_match_trec_eval():
    rng = np.random.default_rng(7)
    doc_ids, query_ids, qrels, scores, ranked = _random_run(rng)
    gains, ideal, n_relevant = metrics.gain_matrix(ranked, doc_ids, query_ids, qrels)
    full = _trec(100, {"ndcg_cut.10", "recall.10", "recall.100"}, doc_ids, query_ids, qrels, scores, ranked)
    top10 = _trec(10, {"recip_rank"}, doc_ids, query_ids, qrels, scores, ranked)
    ours = {
        "ndcg_cut_10": metrics.ndcg_at_k(gains, ideal, 10),
        "recall_10": metrics.recall_at_k(gains, n_relevant, 10),
        "recall_100": metrics.recall_at_k(gains, n_relevant, 100),
    }
    for name, values in ours.items():
        expected = np.array([full[q][name] for q in query_ids])
        np.testing.assert_allclose(values, expected, atol=1e-6, err_msg=name)
    mrr = np.array([top10[q]["recip_rank"] for q in query_ids])
    np.testing.assert_allclose(metrics.mrr_at_k(gains, 10), mrr, atol=1e-6)
    assert 0.05 < mrr.mean() < 0.95  # the check is not vacuous


def test_ndcg_edge_cases():
    gains = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    ideal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(metrics.ndcg_at_k(gains, ideal, 10), [0.5, 0.0])
    np.testing.assert_allclose(metrics.mrr_at_k(gains, 2), [0.0, 0.0])
    np.testing.assert_allclose(metrics.mrr_at_k(gains, 3), [1 / 3, 0.0])


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.integers(0, 6, size=200).astype(float)  # many ties, like STS gold scores
        b = a + rng.normal(scale=2.0, size=200)
        b[::7] = b[0]
        assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    with pytest.raises(ValueError):
        metrics.spearman(np.ones(3), np.ones(4))


def test_top_k_is_sorted_and_exact():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 1000))
    ranked = metrics.top_k(scores, 10)
    expected = np.argsort(-scores, axis=1)[:, :10]
    np.testing.assert_array_equal(ranked, expected)
    assert metrics.top_k(scores[:, :4], 10).shape == (5, 4)
