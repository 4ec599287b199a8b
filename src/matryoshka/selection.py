"""Exact top-n selection over very long score rows, the work of a funnel's head stage.

``argpartition`` over a million scores per query costs more than computing them. Both functions below estimate each
query's n-th best score from a fixed sample of columns, keep what scores above a slightly lower
threshold with one vectorised comparison, and select exactly among those few; a query whose
threshold kept too few is answered by ``argpartition``. The result is exact either way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SCORE_BLOCK_ELEMENTS = 32 * 2**20  # query-block x corpus scores held at once (128 MiB of float32)

SAMPLE_COLUMNS = 8192
_SAMPLE_SEED = 1234
TILE_QUERIES = 128  # a head scan scores tiles of queries x rows small enough to stay in cache
TILE_ELEMENTS = 2 * 2**20


@lru_cache(maxsize=8)
def _sample_columns(columns: int) -> np.ndarray:
    """A fixed random sample of column indices (drawing it costs a permutation of all columns)."""
    return np.sort(
        np.random.default_rng(_SAMPLE_SEED).choice(columns, size=min(columns, SAMPLE_COLUMNS), replace=False)
    )


def _sample_rank(n: int, columns: int) -> int | None:
    """Rank from the top, within the sample, of a threshold a little below each row's n-th score;
    ``None`` when the sample is too small to say (then select exactly from all scores)."""
    sample_size = min(columns, SAMPLE_COLUMNS)
    rank = int(np.ceil(1.25 * n * sample_size / columns)) + 8
    return None if rank >= sample_size // 2 else rank


def _thresholds(sample: np.ndarray, rank: int) -> np.ndarray:
    return np.partition(sample, sample.shape[1] - rank, axis=1)[:, sample.shape[1] - rank]


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask, row-major, through the faster ``flatnonzero``."""
    flat = np.flatnonzero(mask)
    return flat // mask.shape[1], flat % mask.shape[1]


def _top_of_kept(
    rows: np.ndarray, columns: np.ndarray, values: np.ndarray, counts: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``n`` (columns, values) per row among kept (row, column, value) triples grouped by row."""
    width = int(counts.max())
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    candidates = np.zeros((len(counts), width), dtype=np.int64)
    cand_scores = np.full((len(counts), width), -np.inf, dtype=values.dtype)
    candidates[rows, slot] = columns
    cand_scores[rows, slot] = values
    if width > n:
        best = np.argpartition(cand_scores, width - n, axis=1)[:, width - n :]
        candidates = np.take_along_axis(candidates, best, axis=1)
        cand_scores = np.take_along_axis(cand_scores, best, axis=1)
    return candidates, cand_scores


def select_shortlist(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` largest scores per row, in no particular order.

    ``argpartition`` over a million scores per query dominates a batched head stage. Instead: estimate each row's
    n-th score from a fixed sample of columns, keep the columns above a slightly lower threshold
    with one vectorised comparison, and select exactly ``n`` among those few. Rows whose
    threshold kept fewer than ``n`` fall back to ``argpartition``. The result is exact either way.
    """
    rows, columns = scores.shape
    if n >= columns:
        return np.broadcast_to(np.arange(columns), scores.shape).copy()
    rank = _sample_rank(n, columns)
    if rank is None:
        return np.argpartition(scores, columns - n, axis=1)[:, columns - n :]
    threshold = _thresholds(scores[:, _sample_columns(columns)], rank)
    keep = scores >= threshold[:, None]
    counts = np.count_nonzero(keep, axis=1)
    out = np.empty((rows, n), dtype=np.int64)
    short = counts < n
    if short.any():
        out[short] = np.argpartition(scores[short], columns - n, axis=1)[:, columns - n :]
    ok = np.flatnonzero(~short)
    if len(ok):
        kept = keep if len(ok) == rows else keep[ok]  # the usual case copies nothing
        source = scores if len(ok) == rows else scores[ok]
        row_ids, column_ids = _nonzero(kept)  # row-major, so grouped by row
        out[ok] = _top_of_kept(row_ids, column_ids, source[row_ids, column_ids], counts[ok], n)[0]
    return out


def scan_shortlist(queries: np.ndarray, head: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``n`` rows of ``head`` by inner product for each query: (scores, rows).

    The same sampled threshold as :func:`select_shortlist`, taken before the scan, so the scan
    never holds a (queries x corpus) score matrix: it scores cache-sized tiles and keeps only
    what passes each query's threshold. Writing and re-reading a million scores per query
    through memory cost more than the product itself. Queries whose threshold kept
    fewer than ``n`` rows are answered by a full scan and ``argpartition``.
    """
    count = len(head)
    n = min(n, count)
    if not len(queries):
        return np.zeros((0, n), np.float32), np.zeros((0, n), np.int64)
    rank = _sample_rank(n, count)
    if rank is None:  # a shortlist near the corpus' size: whole score rows, a block of queries at a time
        block = max(1, SCORE_BLOCK_ELEMENTS // count)
        parts = []
        for q0 in range(0, len(queries), block):
            scores = queries[q0 : q0 + block] @ head.T
            rows = select_shortlist(scores, n)
            parts.append((np.take_along_axis(scores, rows, axis=1), rows))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    threshold = _thresholds(queries @ head[_sample_columns(count)].T, rank)
    out_rows = np.empty((len(queries), n), dtype=np.int64)
    out_scores = np.empty((len(queries), n), dtype=np.float32)
    for q0 in range(0, len(queries), TILE_QUERIES):
        block, limit = queries[q0 : q0 + TILE_QUERIES], threshold[q0 : q0 + TILE_QUERIES, None]
        kept_rows, kept_columns, kept_values = [], [], []
        tile_rows = TILE_ELEMENTS // len(block)  # few queries: long tiles, so BLAS works on big products
        for c0 in range(0, count, tile_rows):
            tile = block @ head[c0 : c0 + tile_rows].T
            r, c = _nonzero(tile >= limit)
            kept_rows.append(r)
            kept_columns.append(c + c0)
            kept_values.append(tile[r, c])
        r = np.concatenate(kept_rows)
        order = np.argsort(r, kind="stable")  # group by query, each query's rows in corpus order
        r, c, v = r[order], np.concatenate(kept_columns)[order], np.concatenate(kept_values)[order]
        counts = np.bincount(r, minlength=len(block))
        short = counts < n
        if short.any():  # undo the short queries' triples and scan them whole
            keep = ~short[r]
            r, c, v, counts = np.cumsum(~short)[r[keep]] - 1, c[keep], v[keep], counts[~short]
            full = block[short] @ head.T
            picked = np.argpartition(full, count - n, axis=1)[:, count - n :]
            out_rows[q0 + np.flatnonzero(short)] = picked
            out_scores[q0 + np.flatnonzero(short)] = np.take_along_axis(full, picked, axis=1)
        if len(counts):
            where = q0 + np.flatnonzero(~short)
            out_rows[where], out_scores[where] = _top_of_kept(r, c, v, counts, n)
    return out_scores, out_rows


def _smallest_by_count(
    owner: np.ndarray, distances: np.ndarray, rows: np.ndarray, counts: np.ndarray, n: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``n`` (rows, distances) per query with the smallest integer distances, from kept
    triples grouped by query (``owner`` non-decreasing, ``counts[q] >= n``).

    Distances are small integers (0..bits), so each query's n-th distance comes from a histogram
    and a cumulative sum instead of a partial sort; ties at that distance are taken in the order
    they were kept (row order), so the result is deterministic."""
    queries = len(counts)
    distances = distances.astype(np.int64)
    histogram = np.bincount(owner * (bits + 1) + distances, minlength=queries * (bits + 1)).reshape(queries, bits + 1)
    cumulative = np.cumsum(histogram, axis=1)
    threshold = np.argmax(cumulative >= n, axis=1)
    below = np.where(threshold > 0, cumulative[np.arange(queries), threshold - 1], 0)
    limit = threshold[owner]
    tied = distances == limit
    tied_so_far = np.cumsum(tied)
    starts = np.cumsum(counts) - counts
    tie_rank = tied_so_far - 1 - (tied_so_far[starts] - tied[starts])[owner]
    keep = (distances < limit) | (tied & (tie_rank < (n - below)[owner]))
    return rows[keep].reshape(queries, n), distances[keep].reshape(queries, n)


_FAISS_WARM = False


class HammingShortlist:
    """Exact top ``n`` rows by Hamming distance, for a binary head.

    FAISS's k-NN over binary codes keeps, per query, a heap of ``n`` or per-distance buckets of
    ``n`` ids; at shortlists of thousands either costs as much as the scan itself. As for the
    float head: each query's n-th distance is estimated from the same fixed sample of rows, one
    FAISS range search per distinct threshold keeps the few rows within it, and ``n`` are chosen
    exactly among those, by a histogram of the integer distances. Queries whose threshold kept too
    few rows get FAISS's k-NN.
    """

    def __init__(self, codes: np.ndarray) -> None:
        import faiss

        self.count, self.bits = len(codes), codes.shape[1] * 8
        self.index = faiss.IndexBinaryFlat(self.bits)
        self.index.use_heap = False  # the k-NN fallback counts distances: small integers
        self.index.add(np.ascontiguousarray(codes, dtype=np.uint8))
        self.sample = faiss.IndexBinaryFlat(self.bits)
        self.sample.use_heap = False
        self.sample.add(np.ascontiguousarray(codes[_sample_columns(self.count)], dtype=np.uint8))
        # FAISS's first search starts its thread pool: do it here rather than in the first query
        # (once per process: a live index opens a new shortlist at every write)
        global _FAISS_WARM
        if not _FAISS_WARM:
            self.search(np.zeros((1, self.bits // 8), dtype=np.uint8), min(self.count, 100))
            _FAISS_WARM = True

    @property
    def codes(self) -> np.ndarray:
        """The stored codes, (count, bits / 8) uint8: a view of FAISS's own copy."""
        import faiss

        return faiss.rev_swig_ptr(self.index.xb.data(), self.count * self.bits // 8).reshape(self.count, self.bits // 8)

    def search(self, codes: np.ndarray, n: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows), each (queries, n), rows in no particular order. ``allowed``: a
        boolean mask over the rows; only those are answered (the threshold is estimated from the
        allowed rows of the sample, and the range search's answers are kept to them), with ``n``
        at most their number."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        passing = self.count if allowed is None else int(allowed.sum())
        n = min(n, passing)
        rank = _sample_rank(n, passing)
        if allowed is not None:
            in_sample = int(allowed[_sample_columns(self.count)].sum())
            rank = None if rank is None or rank >= in_sample // 2 else rank
        if rank is None:
            return self.search_subset(codes, n, allowed)
        if allowed is None:
            sample_distances, _ = self.sample.search(codes, rank)
            radius = sample_distances[:, -1].astype(np.int64) + 1  # a range search keeps distances below it
        else:  # the rank-th smallest distance among the sample's allowed rows
            sample_distances, sample_rows = self.sample.search(codes, len(_sample_columns(self.count)))
            usable = allowed[_sample_columns(self.count)][sample_rows]
            position = np.argmax(np.cumsum(usable, axis=1) >= rank, axis=1)
            radius = sample_distances[np.arange(len(codes)), position].astype(np.int64) + 1
        out_distances = np.empty((len(codes), n), dtype=np.int32)
        out_rows = np.empty((len(codes), n), dtype=np.int64)
        short = []
        for value in np.unique(radius):
            members = np.flatnonzero(radius == value)
            limits, distances, rows = self.index.range_search(codes[members], int(value))
            if allowed is not None:
                kept = allowed[rows]
                owner = np.repeat(np.arange(len(members)), np.diff(limits).astype(np.int64))
                distances, rows = distances[kept], rows[kept]
                limits = np.concatenate([[0], np.cumsum(np.bincount(owner[kept], minlength=len(members)))])
            counts = np.diff(limits).astype(np.int64)
            ok = counts >= n
            short.append(members[~ok])
            if len(members) == 1 and ok[0]:  # one query (the usual case alone): no grouping needed
                best = np.argpartition(distances, n - 1)[:n]
                out_rows[members[0]], out_distances[members[0]] = rows[best], distances[best]
            elif ok.any():
                keep = np.repeat(ok, counts)
                owner = np.repeat(np.cumsum(ok) - 1, counts)[keep]
                picked, picked_distances = _smallest_by_count(
                    owner, distances[keep], rows[keep], counts[ok], n, self.bits
                )
                out_rows[members[ok]], out_distances[members[ok]] = picked, picked_distances
        short = np.concatenate(short)
        if len(short):
            out_distances[short], out_rows[short] = self.search_subset(codes[short], n, allowed)
        return out_distances, out_rows

    def search_subset(self, codes: np.ndarray, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's k-NN over every row, or over the allowed rows' codes gathered (cheaper than a
        scan of every row when few are allowed)."""
        import faiss

        if allowed is None:
            return self.index.search(codes, n)
        passing = np.flatnonzero(allowed)
        subset = faiss.IndexBinaryFlat(self.bits)
        subset.use_heap = False
        subset.add(np.ascontiguousarray(self.codes[passing]))
        distances, local = subset.search(codes, n)
        return distances, np.where(local >= 0, passing[np.maximum(local, 0)], -1)
