"""What every store shares: the index's metadata, the protocol a store follows, and the checks
on what comes in.

:class:`IndexMeta` is written with every index (the local store's manifest, Milvus's pointer
row) and carries a format version that is checked on open, so that an index written by another
version of the format is a clear error rather than a crash somewhere in a search.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

import numpy as np

from ..errors import MatryoshkaError, StoreError
from ..metadata import check_schema
from ..vectors import check_storage

FORMAT_VERSION = 2
HEAD_INDEXES = ("flat", "hnsw", "binary", "binary-ivf")  # binary-ivf: Milvus's BIN_IVF_FLAT, on a Milvus server


@dataclass(frozen=True)
class Autotune:
    """How the stored default schedule was chosen."""

    k: int  # the k it was tuned for
    target_recall: float  # recall@k against exact search it had to reach
    recall: float  # mean recall@k of the chosen schedule on the tuning queries
    queries: str  # what it was tuned on ("given queries", "word windows of corpus texts", ...)
    passed: bool  # reached the target with 95% confidence (else: the most accurate schedule tried)
    corpus_size: int  # documents in the index when it was tuned


@dataclass(frozen=True)
class IndexMeta:
    """Stored with the index so that search encodes queries the way indexing encoded documents.

    ``head_dim`` is in dims for a float head and in bits for a binary one; ``prefix_norm_dims``
    are the stage dims at which the store keeps every row's prefix norm; ``fields`` the metadata
    schema (field name -> type, see :mod:`matryoshka.metadata`)."""

    model: str | None
    full_dim: int
    head_dim: int
    count: int
    head_index: str = "flat"
    schedule: str | None = None
    autotune: Autotune | None = None
    recall_schedules: dict[str, str] = field(default_factory=dict)  # recall level ("0.95") -> schedule tuned for it
    plan_seconds: dict[str, list[float]] = field(
        default_factory=dict
    )  # "exact" or a level -> [one query, batch(, large batch)] s/query
    query_prompt: str | None = None
    document_prompt: str | None = None
    adapter: str | None = None
    model_options: dict[str, object] = field(default_factory=dict)  # load_model's options: endpoint, remote code
    trained_dims: tuple[int, ...] = ()  # the model's trained prefix dims that default schedules keep to (empty: any)
    prefix_norm_dims: tuple[int, ...] = ()
    created: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    storage: str = "float32"  # how the re-ranked vectors are kept: float32, float16 or int8 (see vectors.STORAGES)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.head_index not in HEAD_INDEXES:
            raise StoreError(f"unknown head index {self.head_index!r}; choose one of {', '.join(HEAD_INDEXES)}")
        check_storage(self.storage)
        object.__setattr__(self, "prefix_norm_dims", tuple(int(d) for d in self.prefix_norm_dims))
        object.__setattr__(self, "trained_dims", tuple(int(d) for d in self.trained_dims))

    @property
    def binary_head(self) -> bool:
        return self.head_index.startswith("binary")

    def schedules_by_recall(self) -> dict[float, str]:
        """Each tuned recall level's schedule, lowest level first, the default target's included."""
        levels = {float(level): schedule for level, schedule in self.recall_schedules.items()}
        if self.autotune is not None and self.schedule:
            levels[self.autotune.target_recall] = self.schedule
        return dict(sorted(levels.items()))

    @property
    def autotune_recall(self) -> float | None:
        return self.autotune.recall if self.autotune else None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: object, where: str) -> IndexMeta:
        """Read what :meth:`to_dict` wrote, checking the format version and every field's type;
        ``where`` names the index in the error."""
        if not isinstance(data, dict):
            raise StoreError(f"{where}: the index metadata is not a JSON object")
        check_format_version(data.get("format_version", 1), where)
        values = _typed_fields(cls, data, where)
        if values.get("autotune") is not None:
            values["autotune"] = cls._autotune(values["autotune"], where)
        for level, schedule in values.get("recall_schedules", {}).items():
            try:
                good = 0 < float(level) <= 1 and isinstance(schedule, str)
            except ValueError:
                good = False
            if not good:
                raise StoreError(
                    f"{where}: recall_schedules maps a recall level in (0, 1] to a schedule, got {level!r}: {schedule!r}"
                )
        for plan, seconds in values.get("plan_seconds", {}).items():
            if not (
                isinstance(seconds, list) and len(seconds) in (2, 3) and all(_is_number(s) and s >= 0 for s in seconds)
            ):
                raise StoreError(
                    f"{where}: plan_seconds maps a plan to two or three times in seconds, got {plan!r}: {seconds!r}"
                )
        if "fields" in values:
            try:
                values["fields"] = check_schema(values["fields"], where)
            except MatryoshkaError as exc:
                raise StoreError(str(exc)) from None
        return cls(**values)

    @staticmethod
    def _autotune(data: object, where: str) -> Autotune:
        if not isinstance(data, dict):
            raise StoreError(f"{where}: metadata field 'autotune' is not a JSON object")
        return Autotune(**_typed_fields(Autotune, data, f"{where} (autotune)"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_format_version(version: object, where: str) -> None:
    """An index written in another format is refused with what to do about it."""
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{where} was written in index format {version}, and this version of matryoshka reads "
            f"format {FORMAT_VERSION}: re-index it with 'matryoshka index'"
        )


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _typed_fields(cls, data: dict, where: str) -> dict:
    """The fields of dataclass ``cls`` from ``data``, each checked against its annotation."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StoreError(f"{where}: unknown metadata field(s) {', '.join(unknown)}")
    values = {}
    for name, spec in known.items():
        if name not in data:
            if spec.default is spec.default_factory:  # both MISSING: a required field
                raise StoreError(f"{where}: metadata field {name!r} is missing")
            continue
        value, annotation = data[name], str(spec.type)
        optional = "None" in annotation
        base = annotation.split(" |")[0]
        if value is None and optional:
            values[name] = None
            continue
        if base.startswith("dict"):
            ok = isinstance(value, dict)
        elif base.startswith("tuple"):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        elif base in _JSON_TYPES:
            ok = isinstance(value, _JSON_TYPES[base]) and (base == "bool" or not isinstance(value, bool))
        else:
            ok = True  # nested dataclasses are checked by their own reader
        if not ok:
            raise StoreError(f"{where}: metadata field {name!r} should be {annotation}, got {value!r}")
        values[name] = value
    return values


class Store(Protocol):
    """Everything the funnel and the index ask of a store (local folder, memory, Milvus).

    Rows are numbered 0..len-1 within the opened index. Scores are cosines (or, for a binary
    head, Hamming similarities 1 - 2h/bits); a missing answer is row -1 with score -inf."""

    kind: str  # "memory", "local" or "milvus"
    meta: IndexMeta
    full_dim: int
    head_dim: int  # dims of the float head, or bits of the binary head
    binary_head: bool  # the head holds sign bits searched by Hamming distance, not float prefixes

    def __len__(self) -> int: ...

    def head_search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (nq, n): top ``n`` rows by the head for (nq, head_dim) unit
        queries (a first stage of another dim may fall back to an exact prefix scan)."""
        ...

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(nq, m) cosines of each query (nq, dim) with its ``rows``' re-normalised ``dim`` prefixes."""
        ...

    def scores_in_place(self, dim: int) -> bool:
        """Whether :meth:`rescore` at ``dim`` reads candidates where they lie (no gathered copy)."""
        ...

    def exact_search(self, queries: np.ndarray, k: int, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the exact top ``k`` by the full vectors, or by re-normalised ``dim`` prefixes."""
        ...

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Document ids (object array, the shape of ``rows``)."""
        ...

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        """Document texts, one list per row of ``rows``."""
        ...

    def fields_of(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[list[dict]]:
        """Document metadata (dicts without missing values), one list per row of ``rows``;
        ``names`` picks the fields (``None``: all)."""
        ...

    def memory_bytes(self) -> int:
        """RAM this process holds for search, beyond memory-mapped or server-side vectors."""
        ...

    def sample_rows(self, count: int, seed: int = 0) -> np.ndarray:
        """Up to ``count`` live rows drawn at random, sorted (what re-tuning samples)."""
        ...

    def document_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) full vectors of ``rows``."""
        ...

    # A store that runs every stage of a funnel itself (a database server) says so with
    # ``runs_stages = True`` and a method ``run_stages(stage_queries, stages, k, where=None) ->
    # (scores, rows, stage_seconds)``, where ``stages`` are (dim, keep), ``stage_queries`` each
    # stage's unit queries and ``where`` a metadata filter (a matryoshka.filters.Filter) for its
    # head search; the funnel then hands it the whole schedule instead of calling ``rescore`` per
    # stage, and its ``exact_search`` takes ``where=`` too.
    #
    # A store searched in this process filters by a row mask instead: ``filter_mask(where) ->
    # (len,) bool`` over its rows, which ``head_search(queries, n, allowed=mask)`` and
    # ``exact_search(queries, k, dim, allowed=mask)`` then keep to (the segment stores do).

    def is_current(self) -> bool:
        """Whether this is still the index's current state (no build or write has replaced it since
        it was opened): a long-running reader reopens when it is not."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...


def check_head_kind(built: str, asked: str | None, where: str) -> None:
    """A binary head holds only sign bits and a float head holds no bits: neither can be opened as the other."""
    if asked and asked.startswith("binary") != built.startswith("binary"):
        raise StoreError(
            f"{where} was built with a {built} head; it cannot be searched with a {asked} head "
            f"(rebuild it with --head-index {asked})"
        )


def check_ids(ids: Sequence[str]) -> list[str]:
    """Ids as strings, refusing an empty corpus and duplicates (naming the first)."""
    ids = [str(i) for i in ids]
    if not ids:
        raise StoreError("the corpus is empty")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise StoreError(f"duplicate id {duplicate!r} in the corpus")
    return ids
