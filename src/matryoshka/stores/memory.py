"""Vectors in process: a contiguous head in RAM searched by FAISS, full vectors in an array
(or a memory map, which is what the local store hands in). The head is float prefixes (``flat``
or ``hnsw``) or their sign bits (``binary``, searched by Hamming distance)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import StoreError
from ..rescore import as_float32, fusable, prefix_cosines, rerank
from ..selection import HammingShortlist, scan_shortlist
from ..vectors import binary_codes, hamming_similarity, normalize, prefix_norms
from .base import HEAD_INDEXES, IndexMeta

EXACT_BLOCK = 65_536
TILED_BATCH = 16  # queries from which exact search scans in tiles rather than one product per block
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_MIN_EF_SEARCH = 64


def make_head_index(head: np.ndarray, kind: str = "flat"):
    """FAISS inner-product index over the head: exact (``flat``) or graph (``hnsw``)."""
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(head.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(head.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise StoreError(f"unknown head index {kind!r}; choose one of {', '.join(HEAD_INDEXES)}")
    index.add(np.ascontiguousarray(head, dtype=np.float32))
    return index


def gather(full: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
    """(..., dim) copies of the ``dim``-prefixes of ``rows`` (any shape) of ``full``."""
    # column-slice first: numpy's mixed fancy+slice indexing is several times slower
    return as_float32(full[:, :dim][rows.ravel()]).reshape(*rows.shape, dim)


def rescore_rows(full: np.ndarray, rows: np.ndarray, queries: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
    """Prefix cosines of each query (nq, dim) with its candidate ``rows`` (nq, m) of ``full``, read
    in place by FAISS where the prefix allows it (see :mod:`matryoshka.rescore`), else gathered and
    multiplied; -inf where a row is -1."""
    scores = prefix_cosines(full, rows, queries, norms=norms)
    if scores is not None:
        return scores
    rows = np.asarray(rows, np.int64)
    present = np.maximum(rows, 0)
    candidates = gather(full, present, queries.shape[1])
    if full.dtype != np.float32:  # float16 or int8 rows, gathered as float32: scored by the same kernel
        flat = np.ascontiguousarray(candidates.reshape(-1, queries.shape[1]))
        scores = prefix_cosines(
            flat,
            np.arange(rows.size, dtype=np.int64).reshape(rows.shape),
            queries,
            unit_rows=False,
            norms=None if norms is None else np.ascontiguousarray(norms[present].ravel()),
        )
    if scores is None:
        scores = rerank(candidates, queries)
    scores[rows < 0] = -np.inf  # "no candidate", as a graph head may answer
    return scores


def exact_top_k(
    queries: np.ndarray,
    k: int,
    parts: Sequence[tuple[np.ndarray, np.ndarray | None] | tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blocked exact search: (scores, rows) of the top ``k`` over ``parts``, each (vectors,
    rows[, norms]): ``vectors`` (n, d) unit rows (or rows in float16 or int8, scored as the unit
    vectors they stand for, divided by ``norms``, their full-dim norms, when given) and ``rows``
    (n,) the row number each answers as, -1 for a row to skip (``None``: numbered on from the
    previous part). With ``dim``, over the re-normalised ``dim``-prefixes."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.zeros((len(queries), 0), np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    offset = 0
    for full, numbers, *rest in parts:
        norms = rest[0] if rest else None
        prefix = dim is not None and dim != full.shape[1]
        stored = full.dtype != np.float32
        skips = numbers is not None and bool((np.asarray(numbers) < 0).any())
        whole = not (prefix or stored or skips) and _faiss_batch(queries)
        step = max(1, len(full)) if whole else EXACT_BLOCK  # read in place: FAISS tiles it itself
        for start in range(0, len(full), step):
            rows = np.asarray(full[start : start + step, :dim] if prefix else full[start : start + step])
            if prefix or (stored and norms is None):
                rows = normalize(as_float32(rows))
            elif stored:  # the unit vectors the rows stand for (a zero row stays zero)
                part_norms = norms[start : start + len(rows)]
                rows = as_float32(rows) / np.where(part_norms > 0, part_norms, 1)[:, None].astype(np.float32)
            answers = np.arange(offset + start, offset + start + len(rows))
            if numbers is not None:
                answers = np.asarray(numbers[start : start + len(rows)], dtype=np.int64)
                if (answers < 0).any():
                    rows, answers = rows[answers >= 0], answers[answers >= 0]
            if not len(rows):
                continue
            scores, part = _block_top_k(queries, rows, min(k, len(rows)))
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_rows = np.concatenate([best_rows, answers[part]], axis=1)
            keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
        offset += len(full)
    return best_scores, best_rows


def _faiss_batch(queries: np.ndarray) -> bool:
    """Whether FAISS's exact k-NN takes its BLAS path for this batch (its own threshold, counted in
    query floats); below it FAISS scores one row at a time."""
    import faiss

    return len(queries) * queries.shape[1] >= faiss.cvar.distance_compute_blas_threshold


def _block_top_k(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, columns) of each query's ``k`` best ``rows`` by inner product, unordered. Writing
    out a batch's whole score block and partitioning it costs several times the product, so a
    batch is scanned in tiles (:func:`scan_shortlist`), or, once FAISS takes its BLAS path for
    the batch (its ``distance_compute_blas_threshold``, counted in query floats), by FAISS's exact
    k-NN, which keeps a heap per query; a few queries take one product."""
    if _faiss_batch(queries):
        import faiss

        return faiss.knn(queries, np.ascontiguousarray(rows, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    if len(queries) >= TILED_BATCH:
        return scan_shortlist(queries, np.ascontiguousarray(rows, dtype=np.float32), k)
    block = queries @ rows.T
    part = np.argpartition(-block, k - 1, axis=1)[:, :k]
    return np.take_along_axis(block, part, axis=1), part


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
        head_codes: np.ndarray | None = None,
    ) -> None:
        """``prefix_norms``: each row's norm at some stage dims, stored with an index so that
        re-ranking reads every candidate once; arrays in RAM get theirs computed on first use.
        ``head_index="binary"`` keeps only sign bits (``head_codes`` if given, else from ``head``
        or ``full``); ``head_dim`` is then the number of bits."""
        self.full = full
        self._prefix_norms = dict(prefix_norms or {})
        self.full_dim = int(full.shape[1])
        if not 1 <= head_dim <= self.full_dim:
            raise StoreError(f"head dim {head_dim} is outside 1..{self.full_dim}")
        self.head_dim = int(head_dim)
        self.head_index_kind = head_index if isinstance(head_index, str) else "hnsw"
        if self.head_index_kind not in HEAD_INDEXES:
            raise StoreError(f"unknown head index {head_index!r}; choose one of {', '.join(HEAD_INDEXES)}")
        if self.head_index_kind == "binary-ivf":
            raise StoreError(
                "binary-ivf is a Milvus server's index (BIN_IVF_FLAT); this store's binary head is an "
                "exact scan: use --head-index binary"
            )
        self.binary_head = self.head_index_kind == "binary"
        # the FAISS index keeps its own copy of the head; ours is not kept
        if self.binary_head:
            if head_codes is None:
                head_codes = binary_codes(full if head is None else head, head_dim)
            self._head_index = HammingShortlist(head_codes)
        elif isinstance(head_index, str):
            head = normalize(np.asarray(full[:, :head_dim])) if head is None else head
            self._head_index = make_head_index(head, head_index)
        else:
            self._head_index = head_index
        self._ids = None if ids is None else np.asarray(list(ids), dtype=object)
        self._texts = None if texts is None else list(texts)
        self.meta = meta or IndexMeta(
            model=None, full_dim=self.full_dim, head_dim=self.head_dim, count=len(full), head_index=self.head_index_kind
        )

    def __len__(self) -> int:
        return int(self.full.shape[0])

    def head_search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` rows by the head; a first stage of another dim falls back to an exact scan.

        A flat head is scanned by :func:`scan_shortlist` (BLAS products over cache-sized tiles, a
        sampled threshold per query). FAISS's flat search keeps a heap of ``n`` per query, which
        costs more in batches once shortlists reach thousands.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.binary_head:
            if queries.shape[1] != self.head_dim:
                raise StoreError(
                    f"this index's binary head holds {self.head_dim} bits; got {queries.shape[1]}-dim head queries"
                )
            distances, rows = self._head_index.search(binary_codes(queries, self.head_dim), n)
            return hamming_similarity(distances, self.head_dim), rows.astype(np.int64)
        if queries.shape[1] != self.head_dim:
            return self.exact_search(queries, n, dim=queries.shape[1])
        if self.head_index_kind == "hnsw":
            import faiss

            params = faiss.SearchParametersHNSW(efSearch=max(n, HNSW_MIN_EF_SEARCH))  # per call, not shared state
            scores, rows = self._head_index.search(queries, n, params=params)
            return scores, rows.astype(np.int64)
        return scan_shortlist(queries, self._head_matrix(), n)

    def _head_matrix(self) -> np.ndarray:
        """The flat index's own contiguous copy of the head, viewed as a numpy array (no copy)."""
        import faiss

        return faiss.rev_swig_ptr(self._head_index.get_xb(), len(self) * self.head_dim).reshape(
            len(self), self.head_dim
        )

    def gather(self, rows: np.ndarray, dim: int) -> np.ndarray:
        return gather(self.full, rows, dim)

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Prefix cosines of each query with its candidate rows, read in place by FAISS where the
        prefix allows it (see :mod:`matryoshka.rescore`), else gathered and multiplied."""
        return rescore_rows(self.full, rows, queries, self._norms_at(queries.shape[1]))

    def scores_in_place(self, dim: int) -> bool:
        return fusable(self.full, dim)

    def _norms_at(self, dim: int) -> np.ndarray | None:
        """Every row's ``dim``-prefix norm if known; computed here only when the vectors are in RAM
        (a memory-mapped index reads only the rows a query touches)."""
        if dim not in self._prefix_norms and dim < self.full_dim and not isinstance(self.full, np.memmap):
            self._prefix_norms[dim] = prefix_norms(self.full, [dim])[:, 0]
        return self._prefix_norms.get(dim)

    def exact_search(self, queries: np.ndarray, k: int, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Blocked exact search over the full vectors (the ground truth the funnel is judged by),
        or over their re-normalised ``dim`` prefix."""
        return exact_top_k(queries, k, [(self.full, None)], dim)

    def sample_rows(self, count: int, seed: int = 0) -> np.ndarray:
        drawn = np.random.default_rng(seed).choice(len(self), size=min(count, len(self)), replace=False)
        return np.sort(drawn).astype(np.int64)

    def document_vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.full[np.asarray(rows, np.int64)], dtype=np.float32)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        if self._ids is None:
            return np.asarray(rows).astype(str).astype(object)
        return self._ids[rows]

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        rows = np.atleast_2d(rows)
        if self._texts is None:
            return [["" for _ in row] for row in rows]
        return [[self._texts[r] for r in row] for row in rows]

    def fields_of(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[list[dict]]:
        """Arrays hold no metadata."""
        return [[{} for _ in row] for row in np.atleast_2d(rows)]

    def is_current(self) -> bool:
        """Arrays in memory change only through this object."""
        return True

    def close(self) -> None:
        """Nothing to release: memory maps close with the object."""

    def memory_bytes(self) -> int:
        """RAM the search needs beyond the memory-mapped full vectors: the head and its index."""
        graph = len(self) * HNSW_M * 2 * 4 if self.head_index_kind == "hnsw" else 0
        norms = sum(a.nbytes for a in self._prefix_norms.values())
        head = len(self) * self.head_dim // 8 if self.binary_head else len(self) * self.head_dim * 4
        return int(head + graph + norms)
