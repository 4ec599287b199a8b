"""What every store shares: the index's metadata and the checks on vectors coming in."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

FORMAT_VERSION = 1


class StoreError(ValueError):
    """An index that cannot be opened, built or searched as asked."""


@dataclass
class IndexMeta:
    """Stored with the index so that search encodes queries the way indexing encoded documents."""

    model: str | None
    full_dim: int
    head_dim: int
    count: int
    schedule: str | None = None
    autotune_recall: float | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    adapter: str | None = None
    created: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "IndexMeta":
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def validate_vectors(vectors: np.ndarray, count: int | None = None, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Float32 unit rows, or a StoreError saying exactly what is wrong (shape, dtype, count, NaN, zero)."""
    array = np.asarray(vectors)
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
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise StoreError(f"{what} row {int(np.flatnonzero(bad)[0])} contains NaN or infinite values ({int(bad.sum())} rows in all)")
    norms = np.linalg.norm(array.astype(np.float32), axis=1)
    if (norms == 0).any():
        raise StoreError(f"{what} row {int(np.flatnonzero(norms == 0)[0])} is all zeros and has no direction")
    return (array / norms[:, None]).astype(np.float32)


def binary_codes(vectors: np.ndarray, bits: int) -> np.ndarray:
    """(n, bits/8) uint8: the sign bits of each row's first ``bits`` coordinates, packed."""
    if bits % 8:
        raise StoreError(f"a binary head takes whole bytes: {bits} bits is not a multiple of 8")
    return np.packbits(np.asarray(vectors[:, :bits]) > 0, axis=1)


def check_head_kind(built: str, asked: str | None, where: str) -> None:
    """A binary head holds only sign bits and a float head holds no bits: neither can be opened as the other."""
    if asked and (asked == "binary") != (built == "binary"):
        raise StoreError(f"{where} was built with a {built} head; it cannot be searched with a {asked} head "
                         f"(rebuild it with --head-index {asked})")


def hamming_similarity(distances: np.ndarray, bits: int) -> np.ndarray:
    """Hamming distance h over b bits as a similarity in [-1, 1], like a cosine: 1 - 2h/b
    (a missing answer, an infinite distance, stays last at -inf)."""
    scores = (1.0 - 2.0 * np.asarray(distances, dtype=np.float64) / bits).astype(np.float32)
    scores[np.isinf(distances)] = -np.inf
    return scores


def check_ids(ids: Sequence[str]) -> list[str]:
    ids = [str(i) for i in ids]
    if not ids:
        raise StoreError("the corpus is empty")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise StoreError(f"duplicate id {duplicate!r} in the corpus")
    return ids
