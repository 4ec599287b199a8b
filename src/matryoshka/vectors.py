"""Vector math and dimension lists that every layer shares: numpy only.

A Matryoshka prefix is used by slicing the first ``dim`` coordinates and re-normalising them;
these helpers do that, check vectors coming in, pack sign bits for a binary head, and name the
prefix dims the rest of the project works with (evaluation's halvings, the funnel's stages).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ModelError, StoreError

MIN_HEAD_DIM = 8


# --------------------------------------------------------------------------- vectors


SAFE_NORMS = {  # norms whose squares neither overflowed nor lost precision to underflow
    np.dtype(np.float32): (1e-15, 1e15),
    np.dtype(np.float64): (1e-140, 1e140),
}


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length as float32; all-zero rows (and rows holding NaN or inf, which
    have no direction either) stay zero instead of becoming NaN.

    Any finite non-zero row gets its direction, however large or small its values: the norm is
    taken in the rows' own precision when its squares can neither overflow (``3e38`` in float32)
    nor underflow (``1e-30``), else after scaling the row by its largest magnitude in float64 (or
    wider), and no row is cast to float32 before it is unit length (``1e300`` is inf there)."""
    array = np.asarray(vectors)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    safe = SAFE_NORMS.get(array.dtype)
    if safe is not None and array.size:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            norms = np.linalg.norm(array, axis=-1, keepdims=True)
        good = (norms > safe[0]) & (norms < safe[1])
        if good.all():
            return (array / norms).astype(np.float32, copy=False)
        if array.ndim == 2:  # only the few rows that need it take the slow path
            unit = np.divide(array, norms, out=np.zeros_like(array), where=good).astype(np.float32, copy=False)
            redo = ~good[:, 0]
            unit[redo] = _scaled_unit(array[redo])
            return unit
    return _scaled_unit(array)


def _scaled_unit(array: np.ndarray) -> np.ndarray:
    """Rows of ``array`` divided by their largest magnitude (into [-1, 1]), then by their norm,
    in float64 or the input's wider float: nothing overflows or underflows that matters."""
    work = array.astype(np.promote_types(array.dtype, np.float64))
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        scale = np.max(np.abs(work), axis=-1, keepdims=True, initial=0.0)
        usable = np.isfinite(scale) & (scale > 0) & np.isfinite(work).all(axis=-1, keepdims=True)
        scaled = np.divide(work, scale, out=np.zeros_like(work), where=usable)
        norms = np.linalg.norm(scaled, axis=-1, keepdims=True)
        unit = np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0)
    return unit.astype(np.float32)


# Storage of the vectors the funnel re-ranks: float32 as given, or half the bytes (float16), or a
# quarter (int8 with one scale per row, its largest coordinate at +-127). Cosines of the stored
# rows are what every stage scores, the last one included, so an index's final scores are exact
# for the vectors it stores; the storage's rounding is their only difference from float32.
STORAGES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
INT8_LEVELS = 127


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise StoreError(f"unknown vector storage {storage!r}; choose one of {', '.join(STORAGES)}")
    return storage


def to_storage(unit: np.ndarray, storage: str) -> np.ndarray:
    """Rows as ``storage`` keeps them (float32 rows are returned as they are)."""
    dtype = STORAGES[check_storage(storage)]
    unit = np.asarray(unit, dtype=np.float32)
    if dtype is np.float32:
        return unit
    if dtype is np.float16:
        return unit.astype(np.float16)
    peak = np.abs(unit).max(axis=1, keepdims=True) if unit.size else np.ones((len(unit), 1), np.float32)
    return np.rint(unit * (INT8_LEVELS / np.where(peak > 0, peak, 1))).astype(np.int8)


def from_storage(stored: np.ndarray) -> np.ndarray:
    """Unit float32 rows of stored ones: the vectors whose cosines an index scores."""
    stored = np.asarray(stored)
    return stored if stored.dtype == np.float32 else normalize(stored.astype(np.float32))


def round_trip(unit: np.ndarray, storage: str, block: int = 65_536) -> None:
    """Replace float32 ``unit`` rows in place by what ``storage`` keeps of them, so that what is
    tuned or searched before the rows are stored behaves as the stored index will. Storing the
    result again changes nothing: float16 rows stay as rounded (their norms are within 1e-3 of
    1; re-normalising would round them again), int8 rows come back unit length."""
    if STORAGES[check_storage(storage)] is np.float32:
        return
    for start in range(0, len(unit), block):
        stored = to_storage(unit[start : start + block], storage)
        unit[start : start + block] = stored.astype(np.float32) if stored.dtype == np.float16 else from_storage(stored)


def check_dim(dim: int, full_dim: int) -> int:
    """Validate a prefix dimension: any integer in 1..full_dim."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise ModelError(f"dimension must be an integer, got {dim!r}")
    if not 1 <= int(dim) <= full_dim:
        raise ModelError(f"dimension {dim} is outside 1..{full_dim} (the model's full dimension)")
    return int(dim)


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """First ``dim`` coordinates of each row, re-normalised to unit length (the Matryoshka prefix)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ModelError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    full_dim = vectors.shape[1]
    dim = full_dim if dim is None else check_dim(dim, full_dim)
    return normalize(vectors[:, :dim])


def layer_norm(vectors: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Each row centred and scaled to unit variance, as ``torch.nn.functional.layer_norm`` over
    the whole row without weights does: a step some models (nomic-embed-text-v1.5) take on their
    full vectors before truncating. It does not change with the row's scale, up to ``eps``."""
    rows = np.asarray(vectors, dtype=np.float64)
    centred = rows - rows.mean(axis=-1, keepdims=True)
    return (centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)).astype(np.float32)


PRE_TRUNCATION = {"layer_norm": layer_norm}  # steps a model takes on its full vectors before truncation


def validate_vectors(
    vectors: np.ndarray, count: int | None = None, dim: int | None = None, what: str = "vectors"
) -> np.ndarray:
    """Float32 unit rows, or a StoreError saying exactly what is wrong (shape, dtype, count, NaN, zero)."""
    return normalize(check_vector_rows(vectors, count, dim, what))  # every finite non-zero row, however large or small


def check_vector_rows(
    vectors: np.ndarray, count: int | None = None, dim: int | None = None, what: str = "vectors", block: int = 65_536
) -> np.ndarray:
    """``vectors`` as they are, once checked as :func:`validate_vectors` checks them, a block of rows
    at a time: a memory-mapped file of any size is checked in bounded memory, and normalised later
    by whoever reads it block by block."""
    array = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    if array.ndim != 2:
        raise StoreError(f"{what} must be a 2-D array (rows x dims), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise StoreError(f"{what} must be floating point (float32/float64/float16), got dtype {array.dtype}")
    if count is not None and array.shape[0] != count:
        raise StoreError(f"{what} has {array.shape[0]} rows but there are {count} texts/ids")
    if dim is not None and array.shape[1] != dim:
        raise StoreError(f"{what} has {array.shape[1]} dims but the index has {dim}")
    if array.shape[0] == 0:
        raise StoreError(f"{what} is empty")
    for start in range(0, len(array), block):
        rows = array[start : start + block]
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            first = start + int(np.flatnonzero(bad)[0])
            total = int(bad.sum()) + sum(
                int((~np.isfinite(array[s : s + block]).all(axis=1)).sum())
                for s in range(start + block, len(array), block)
            )
            raise StoreError(f"{what} row {first} contains NaN or infinite values ({total} rows in all)")
    for start in range(0, len(array), block):
        zero = ~array[start : start + block].any(axis=1)
        if zero.any():
            raise StoreError(f"{what} row {start + int(np.flatnonzero(zero)[0])} is all zeros and has no direction")
    return array


def binary_codes(vectors: np.ndarray, bits: int) -> np.ndarray:
    """(n, bits/8) uint8: the sign bits of each row's first ``bits`` coordinates, packed."""
    if bits % 8:
        raise StoreError(f"a binary head takes whole bytes: {bits} bits is not a multiple of 8")
    return np.packbits(np.asarray(vectors[:, :bits]) > 0, axis=1)


def hamming_similarity(distances: np.ndarray, bits: int) -> np.ndarray:
    """Hamming distance h over b bits as a similarity in [-1, 1], like a cosine: 1 - 2h/b
    (a missing answer, an infinite distance, stays last at -inf)."""
    scores = (1.0 - 2.0 * np.asarray(distances, dtype=np.float64) / bits).astype(np.float32)
    scores[np.isinf(distances)] = -np.inf
    return scores


# --------------------------------------------------------------------------- dimension lists


def halving_dims(full_dim: int, smallest: int = MIN_HEAD_DIM) -> list[int]:
    """The dims a model is evaluated and trained at: d, d/2, … down to d/32 (but not below
    ``smallest``), stopping early at an odd dim. Largest first."""
    dims, dim = [], full_dim
    while dim >= max(smallest, full_dim // 32) and dim >= 1:
        dims.append(dim)
        if dim % 2:
            break
        dim //= 2
    return dims


# ``trained``: the prefix dims a model was trained at (its Matryoshka dims), when it declares them.
# A prefix it was not trained at may rank poorly, so the defaults below move each dim they would
# pick up to the nearest trained one; with none declared they are the halvings of d, as always.


def _trained_below(full_dim: int, trained: Sequence[int]) -> list[int]:
    return sorted({int(d) for d in trained if 1 <= int(d) < full_dim})


def _trained_at_least(dim: int, below: list[int]) -> int:
    """The smallest trained dim at or above ``dim`` (the largest one when none is)."""
    return next((d for d in below if d >= dim), below[-1])


def default_head_dim(full_dim: int, trained: Sequence[int] = ()) -> int:
    """d/32 from the Matryoshka literature, but at least 8 (and at most d); for a model with
    trained dims, the smallest trained dim at or above that."""
    dim = min(full_dim, max(MIN_HEAD_DIM, full_dim // 32))
    below = _trained_below(full_dim, trained)
    return _trained_at_least(dim, below) if below else dim


def stage_dims(full_dim: int, head_dim: int | None = None, trained: Sequence[int] = ()) -> list[int]:
    """A funnel's stage dims: the head dim, doubling, ending exactly at ``full_dim`` (any dims,
    not only powers of two); with trained dims, each doubling moves up to a trained dim.
    Smallest first."""
    below = _trained_below(full_dim, trained)
    dim = head_dim or default_head_dim(full_dim, trained)
    dims = []
    while dim < full_dim:
        dims.append(dim)
        dim *= 2
        if below:
            dim = next((d for d in below if d >= dim), full_dim)
    return dims + [full_dim]


def head_candidates(full_dim: int, trained: Sequence[int] = ()) -> list[int]:
    """Head dims autotune tries: d/32, d/16, d/8 and d/4 (each at least 8); for a model with
    trained dims, each moved up to the nearest trained one."""
    dims = {min(full_dim, max(MIN_HEAD_DIM, full_dim // f)) for f in (32, 16, 8, 4)}
    below = _trained_below(full_dim, trained)
    return sorted({_trained_at_least(d, below) for d in dims} if below else dims)


def middle_stage_dim(full_dim: int, trained: Sequence[int] = ()) -> int:
    """The stage between a binary head and the full vectors: d/2, or the trained dim at or above it."""
    below = _trained_below(full_dim, trained)
    return _trained_at_least(full_dim // 2, below) if below else full_dim // 2


def prefix_norm_dims(full_dim: int, trained: Sequence[int] = (), storage: str = "float32") -> list[int]:
    """Stage dims below full that the default and autotuned schedules can use and that re-ranking
    reads in place (those that divide the full dim): a store keeps each row's norm at these. Rows
    stored in less than float32 are not of unit length, so the full dim is among them."""
    heads = head_candidates(full_dim, trained)
    dims = {dim for head in heads for dim in stage_dims(full_dim, head, trained)} - {full_dim}
    if _trained_below(full_dim, trained):
        dims.add(middle_stage_dim(full_dim, trained))
    if STORAGES[check_storage(storage)] is not np.float32:
        dims.add(full_dim)
    return sorted(dim for dim in dims if full_dim % dim == 0)


def prefix_norms(vectors: np.ndarray, dims: Sequence[int], block: int = 65_536) -> np.ndarray:
    """(n, len(dims)) float32: the norm of every row's first ``dim`` coordinates for each of
    ``dims``, in one pass over the rows (running sums of squares), a block of rows at a time."""
    columns = np.asarray(dims, dtype=np.int64) - 1
    if not len(columns):
        return np.zeros((len(vectors), 0), np.float32)
    parts = []
    for start in range(0, len(vectors), block):
        rows = np.asarray(vectors[start : start + block, : int(columns.max()) + 1], dtype=np.float32)
        parts.append(np.sqrt(np.cumsum(rows * rows, axis=1, dtype=np.float64)[:, columns]))
    return np.concatenate(parts).astype(np.float32)
