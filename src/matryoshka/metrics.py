"""Ranking and correlation metrics as pure functions over arrays.

Retrieval metrics take a *gain matrix*: ``gains[i, r]`` is the graded relevance of the document
ranked ``r`` (0-based) for query ``i``. That keeps the metrics free of ids and dictionaries; see
:func:`gain_matrix` to build one. Conventions follow trec_eval / BEIR: nDCG uses linear gains and
``log2(rank + 2)`` discounts, recall divides by the number of relevant documents (grade > 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, best first (ties broken by lower index)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def gain_matrix(
    ranked: np.ndarray, doc_ids: Sequence[str], query_ids: Sequence[str], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn ranked document indices into (gains, ideal_gains, n_relevant) for the metrics below.

    ``ideal_gains[i]`` holds the query's relevance grades sorted descending, padded with zeros to
    the width of ``ranked``; ``n_relevant[i]`` counts its documents with grade > 0.
    """
    ranked = np.asarray(ranked)
    width = ranked.shape[1]
    gains = np.zeros(ranked.shape, dtype=np.float64)
    ideal = np.zeros(ranked.shape, dtype=np.float64)
    n_relevant = np.zeros(len(query_ids), dtype=np.int64)
    for i, query_id in enumerate(query_ids):
        judged = qrels.get(query_id, {})
        gains[i] = [max(judged.get(doc_ids[j], 0), 0) for j in ranked[i]]
        grades = sorted((g for g in judged.values() if g > 0), reverse=True)
        n_relevant[i] = len(grades)
        ideal[i, : min(width, len(grades))] = grades[:width]
    return gains, ideal, n_relevant


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(gains: np.ndarray, ideal_gains: np.ndarray, k: int) -> np.ndarray:
    """Per-query nDCG@k; a query with no relevant document scores 0."""
    discounts = _discounts(k)
    dcg = (np.asarray(gains)[:, :k] * discounts[: min(k, gains.shape[1])]).sum(axis=1)
    idcg = (np.asarray(ideal_gains)[:, :k] * discounts[: min(k, ideal_gains.shape[1])]).sum(axis=1)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def recall_at_k(gains: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query fraction of the relevant documents found in the top k."""
    found = (np.asarray(gains)[:, :k] > 0).sum(axis=1).astype(np.float64)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    return np.divide(found, n_relevant, out=np.zeros_like(found), where=n_relevant > 0)


def mrr_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    """Per-query reciprocal rank of the first relevant document within the top k (0 if none)."""
    hits = np.asarray(gains)[:, :k] > 0
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman requires)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first_index = np.flatnonzero(starts)
    counts = np.diff(np.r_[first_index, len(values)])
    average = first_index + (counts + 1) / 2.0
    ranks = np.empty_like(values)
    ranks[order] = average[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson correlation of average ranks."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"spearman needs two 1-D arrays of equal length >= 2, got {a.shape} and {b.shape}")
    ra, rb = rank_average(a), rank_average(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two equally shaped matrices of unit vectors."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)
