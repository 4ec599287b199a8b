"""Re-scoring a funnel stage's candidates in place, without gathering their vectors first.

A funnel stage scores each query against its own few thousand candidate rows. Gathering those
rows into a (queries x candidates x dim) array and multiplying costs a copy of every candidate
prefix, and numpy's fancy indexing copies slowly. FAISS's by-index kernels
(``fvec_inner_products_by_idx``, ``fvec_L2sqr_by_idx``) read each candidate row where it lies and
return only the scores, in C++ over all queries at once (docs/benchmarks.md compares the two).

The kernels take one row length; a prefix of ``dim`` coordinates of an ``(n, d)`` array is read
by viewing the array as ``(n * d / dim, dim)``, where row ``r``'s prefix is view row
``r * d / dim``. That works whenever ``dim`` divides ``d``, which holds for every default stage
(d/32, d/16, ... d). Other dims, or arrays that are not plain contiguous float32, return
``None`` so the caller gathers instead.
"""

from __future__ import annotations

import numpy as np

from .vectors import normalize


def rerank(candidates: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosines between each query's prefix and its gathered candidates' prefixes, both re-normalised.

    ``candidates``: (nq, m, dim) raw prefixes; ``queries``: (nq, dim). One batched product; the
    fallback of :func:`prefix_cosines` for prefixes that cannot be read in place.
    """
    queries = normalize(queries)
    dots = np.matmul(candidates, queries[:, :, None])[:, :, 0]
    norms = np.sqrt(np.einsum("qmd,qmd->qm", candidates, candidates))
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Stored rows (float32, float16 or int8) as float32, the same values: FAISS's SIMD decoder
    converts float16 about twice as fast as numpy does."""
    rows = np.asarray(rows)
    if rows.dtype != np.float16 or rows.ndim != 2 or not rows.size:
        return rows.astype(np.float32, copy=False)
    import faiss

    rows = np.ascontiguousarray(rows)
    out = np.empty(rows.shape, np.float32)
    decoder = faiss.ScalarQuantizer(rows.shape[1], faiss.ScalarQuantizer.QT_fp16)
    decoder.decode_c(faiss.swig_ptr(rows.view(np.uint8)), faiss.swig_ptr(out), len(rows))
    return out


def fusable(vectors: np.ndarray, dim: int) -> bool:
    """Whether :func:`prefix_cosines` can score ``dim``-prefixes of ``vectors`` in place."""
    return (
        isinstance(vectors, np.ndarray)
        and vectors.ndim == 2
        and vectors.dtype == np.float32
        and vectors.flags.c_contiguous
        and 0 < dim <= vectors.shape[1]
        and vectors.shape[1] % dim == 0
    )


def prefix_cosines(
    vectors: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    *,
    unit_rows: bool = True,
    norms: np.ndarray | None = None,
) -> np.ndarray | None:
    """Cosine of each query's ``dim``-prefix with its candidates' ``dim``-prefixes, both re-normalised.

    ``vectors``: (n, d) float32, C-contiguous (a memory map works: only the candidate rows are
    read). ``rows``: (nq, m) candidate rows per query. ``queries``: (nq, dim). ``unit_rows``:
    the full rows have norm 1, so the full-dimension stage needs no second pass for norms.
    ``norms``: every row's ``dim``-prefix norm, when the store keeps them; this halves the work,
    since otherwise a second pass reads the candidates again for their norms.
    Returns (nq, m) float32 (-inf for rows of -1), or ``None`` when the prefix cannot be read in place.
    """
    dim = queries.shape[1]
    if not fusable(vectors, dim):
        return None
    rows = np.asarray(rows, dtype=np.int64)
    query = np.asarray(queries, dtype=np.float32)
    norms_q = np.linalg.norm(query, axis=1, keepdims=True)
    query = query / np.where(norms_q > 0, norms_q, 1)
    import faiss

    threads = faiss.omp_get_max_threads()
    few = len(rows) < 2 * threads
    if few:  # one thread: a team woken for a query or two spins afterwards and slowed the next BLAS call 2x
        faiss.omp_set_num_threads(1)
    try:
        return _cosines(vectors, rows, query, unit_rows, norms)
    finally:
        if few:
            faiss.omp_set_num_threads(threads)


def _cosines(
    vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, unit_rows: bool, norms: np.ndarray | None
) -> np.ndarray:
    import faiss

    nq, m = rows.shape
    dim = query.shape[1]
    stride = vectors.shape[1] // dim
    ids = np.ascontiguousarray(np.where(rows >= 0, rows * stride, -1))
    query = np.ascontiguousarray(query)
    dots = np.empty((nq, m), dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(dots), faiss.swig_ptr(query), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), dim, nq, m
    )
    if stride == 1 and unit_rows:
        return dots
    if norms is not None:
        candidate_norms = norms[np.maximum(rows, 0)]
    else:  # the candidates' prefix norms: squared distances from the origin, read by the same kernel
        squares = np.empty((nq, m), dtype=np.float32)
        origin = np.zeros((nq, dim), dtype=np.float32)
        faiss.fvec_L2sqr_by_idx(
            faiss.swig_ptr(squares), faiss.swig_ptr(origin), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), dim, nq, m
        )
        candidate_norms = np.sqrt(squares)
    valid = (rows >= 0) & (candidate_norms > 0)
    return np.divide(dots, candidate_norms, out=np.where(rows >= 0, 0.0, -np.inf).astype(np.float32), where=valid)


def unit_cosines_one(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, norms: np.ndarray | None):
    """:func:`prefix_cosines` for one unit query (dim,) and valid candidate ``rows`` (m,), with the
    fewest calls: a funnel over many segments makes one of these per segment and stage, so the
    fixed cost of each call counts. ``None`` when the prefix cannot be read in place or its norms
    are not known (then use :func:`prefix_cosines`)."""
    dim = query.shape[0]
    if not fusable(vectors, dim) or (dim != vectors.shape[1] and norms is None):
        return None
    import faiss

    stride = vectors.shape[1] // dim
    ids = np.ascontiguousarray(rows * stride if stride > 1 else rows, dtype=np.int64)
    dots = np.empty(len(ids), dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(dots), faiss.swig_ptr(query), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), dim, 1, len(ids)
    )
    if stride == 1:
        return dots
    candidate_norms = norms[rows]
    return np.divide(dots, candidate_norms, out=np.zeros_like(dots), where=candidate_norms > 0)
