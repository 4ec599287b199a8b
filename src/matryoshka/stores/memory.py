"""Vectors in process: a contiguous head in RAM searched by FAISS, full vectors in an array
(or a memory map, which is what the local store hands in)."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..funnel import rerank
from ..models import normalize
from ..rescore import fusable, prefix_cosines
from .base import IndexMeta, StoreError

EXACT_BLOCK = 65_536
SCORE_BLOCK_ELEMENTS = 32 * 2**20  # query-block x corpus scores held at once (128 MiB of float32)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def make_head_index(head: np.ndarray, kind: str = "flat"):
    """FAISS inner-product index over the head: exact (``flat``) or graph (``hnsw``)."""
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(head.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(head.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise StoreError(f"unknown head index {kind!r}; choose flat or hnsw")
    index.add(np.ascontiguousarray(head, dtype=np.float32))
    return index


SAMPLE_COLUMNS = 8192
_SAMPLE_SEED = 1234
TILE_QUERIES = 128  # a head scan scores tiles of queries x rows small enough to stay in cache
TILE_ELEMENTS = 2 * 2**20


@lru_cache(maxsize=8)
def _sample_columns(columns: int) -> np.ndarray:
    """A fixed random sample of column indices (drawing it costs a permutation of all columns)."""
    return np.sort(np.random.default_rng(_SAMPLE_SEED).choice(columns, size=min(columns, SAMPLE_COLUMNS), replace=False))


def _sample_rank(n: int, columns: int) -> int | None:
    """Rank from the top, within the sample, of a threshold a little below each row's n-th score;
    ``None`` when the sample is too small to say (then select exactly from all scores)."""
    sample_size = min(columns, SAMPLE_COLUMNS)
    rank = int(np.ceil(1.25 * n * sample_size / columns)) + 8
    return None if rank >= sample_size // 2 else rank


def _thresholds(sample: np.ndarray, rank: int) -> np.ndarray:
    return np.partition(sample, sample.shape[1] - rank, axis=1)[:, sample.shape[1] - rank]


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask, row-major; through ``flatnonzero``, which is ~7x faster."""
    flat = np.flatnonzero(mask)
    return flat // mask.shape[1], flat % mask.shape[1]


def _top_of_kept(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, counts: np.ndarray,
                 n: int) -> tuple[np.ndarray, np.ndarray]:
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

    ``argpartition`` over a million scores per query dominates a batched head stage (introselect
    on real score distributions ran at ~35 ns per element here). Instead: estimate each row's
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
    through memory cost more than the product itself (measured at 1M x 64: 3.5 s for 1,000
    queries with whole score rows, about half of that in tiles). Queries whose threshold kept
    fewer than ``n`` rows are answered by a full scan and ``argpartition``.
    """
    count = len(head)
    n = min(n, count)
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


def prefix_norms(vectors: np.ndarray, dim: int, block: int = EXACT_BLOCK) -> np.ndarray:
    """Norm of every row's first ``dim`` coordinates (float32), a block of rows at a time."""
    return np.concatenate([np.linalg.norm(np.asarray(vectors[s : s + block, :dim]), axis=1)
                           for s in range(0, len(vectors), block)]).astype(np.float32)


class MemoryStore:
    """The funnel protocol over arrays. ``full`` holds unit rows; the head is its re-normalised prefix."""

    kind = "memory"

    def __init__(
        self,
        full: np.ndarray,
        head_dim: int,
        *,
        head: np.ndarray | None = None,
        head_index: str | object = "flat",
        ids: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
        meta: IndexMeta | None = None,
        prefix_norms: dict[int, np.ndarray] | None = None,
    ) -> None:
        """``prefix_norms``: each row's norm at some stage dims, stored with an index so that
        re-ranking reads every candidate once; arrays in RAM get theirs computed on first use."""
        self.full = full
        self._prefix_norms = dict(prefix_norms or {})
        self.full_dim = int(full.shape[1])
        if not 1 <= head_dim <= self.full_dim:
            raise StoreError(f"head dim {head_dim} is outside 1..{self.full_dim}")
        self.head_dim = int(head_dim)
        if head is None:
            head = normalize(np.asarray(full[:, :head_dim]))
        self.head_index_kind = head_index if isinstance(head_index, str) else "hnsw"
        # the FAISS index keeps its own copy of the head; ours is not kept
        self._head_index = make_head_index(head, head_index) if isinstance(head_index, str) else head_index
        self._ids = None if ids is None else np.asarray(list(ids), dtype=object)
        self._texts = None if texts is None else list(texts)
        self.meta = meta or IndexMeta(model=None, full_dim=self.full_dim, head_dim=self.head_dim, count=len(full))

    def __len__(self) -> int:
        return int(self.full.shape[0])

    def head_search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` rows by the head; a first stage of another dim falls back to an exact scan.

        A flat head is scanned by :func:`scan_shortlist` (BLAS products over cache-sized tiles, a
        sampled threshold per query). FAISS's flat search keeps a heap of ``n`` per query, which
        costs 5-10x more once shortlists reach thousands.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[1] != self.head_dim:
            return self.exact_search(queries, n, dim=queries.shape[1])
        if self.head_index_kind == "hnsw":
            self._head_index.hnsw.efSearch = max(n, 64)
            scores, rows = self._head_index.search(queries, n)
            return scores, rows.astype(np.int64)
        return scan_shortlist(queries, self._head_matrix(), n)

    def _head_matrix(self) -> np.ndarray:
        """The flat index's own contiguous copy of the head, viewed as a numpy array (no copy)."""
        import faiss

        return faiss.rev_swig_ptr(self._head_index.get_xb(), len(self) * self.head_dim).reshape(len(self), self.head_dim)

    def gather(self, rows: np.ndarray, dim: int) -> np.ndarray:
        # column-slice first: numpy's mixed fancy+slice indexing is several times slower
        return np.asarray(self.full[:, :dim][rows.ravel()], dtype=np.float32).reshape(*rows.shape, dim)

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Prefix cosines of each query with its candidate rows, read in place by FAISS where the
        prefix allows it (see :mod:`matryoshka.rescore`), else gathered and multiplied."""
        scores = prefix_cosines(self.full, rows, queries, norms=self._norms_at(queries.shape[1]))
        return rerank(self.gather(rows, queries.shape[1]), queries) if scores is None else scores

    def scores_in_place(self, dim: int) -> bool:
        return fusable(self.full, dim)

    def _norms_at(self, dim: int) -> np.ndarray | None:
        """Every row's ``dim``-prefix norm if known; computed here only when the vectors are in RAM
        (a memory-mapped index reads only the rows a query touches)."""
        if dim not in self._prefix_norms and dim < self.full_dim and not isinstance(self.full, np.memmap):
            self._prefix_norms[dim] = prefix_norms(self.full, dim)
        return self._prefix_norms.get(dim)

    def exact_search(self, queries: np.ndarray, k: int, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Blocked exact search over the full vectors (the ground truth the funnel is judged by),
        or over their re-normalised ``dim`` prefix."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        prefix = dim is not None and dim != self.full_dim
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_rows = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(self), EXACT_BLOCK):
            rows = np.asarray(self.full[start : start + EXACT_BLOCK, :dim] if prefix else self.full[start : start + EXACT_BLOCK])
            block = queries @ (normalize(rows) if prefix else rows).T
            take = min(k, block.shape[1])
            part = np.argpartition(-block, take - 1, axis=1)[:, :take]
            best_scores = np.concatenate([best_scores, np.take_along_axis(block, part, axis=1)], axis=1)
            best_rows = np.concatenate([best_rows, part + start], axis=1)
            keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
        return best_scores, best_rows

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        if self._ids is None:
            return np.asarray(rows).astype(str).astype(object)
        return self._ids[rows]

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        rows = np.atleast_2d(rows)
        if self._texts is None:
            return [["" for _ in row] for row in rows]
        return [[self._texts[r] for r in row] for row in rows]

    def close(self) -> None:
        """Nothing to release: memory maps close with the object."""

    def memory_bytes(self) -> int:
        """RAM the search needs beyond the memory-mapped full vectors: the head and its index."""
        graph = len(self) * HNSW_M * 2 * 4 if self.head_index_kind == "hnsw" else 0
        norms = sum(a.nbytes for a in self._prefix_norms.values())
        return int(len(self) * self.head_dim * 4 + graph + norms)
