"""Indexes held in this process only, named ``memory://<name>``: the segmented store with no
files, for tests, notebooks and short-lived services. Writes follow the same rules as on disk
(new segments, tombstones, compaction); a write makes a new store object and registers it under
the name, so a search that started on the old one finishes on it, and the next search (which
sees :meth:`InMemoryStore.is_current` turn false) reopens the new one."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import BusyError, StoreError
from ..vectors import prefix_norm_dims
from .base import IndexMeta, check_head_kind
from .segments import Segment, SegmentedStore, SegmentWriter, make_segment

SCHEME = "memory://"
_INDEXES: dict[str, InMemoryStore] = {}
_WRITERS: dict[str, threading.Lock] = {}
_REGISTRY = threading.Lock()


def is_memory_uri(db: object) -> bool:
    return str(db).startswith(SCHEME)


def _name(uri: str) -> str:
    name = str(uri)[len(SCHEME) :]
    if not name:
        raise StoreError(f"{uri!r} names no index: write memory://<name>")
    return name


class InMemoryStore(SegmentedStore):
    kind = "memory"

    def __init__(self, name: str, segments: Sequence[Segment], meta: IndexMeta) -> None:
        self.name = name
        super().__init__(segments, meta)

    def is_current(self) -> bool:
        return _INDEXES.get(self.name) is self


def open_in_memory(uri: str, head_index: str | None = None) -> InMemoryStore:
    name = _name(uri)
    store = _INDEXES.get(name)
    if store is None:
        raise StoreError(f"no index {uri!r} in this process; build it first (index --db {uri})")
    check_head_kind(store.meta.head_index, head_index, uri)
    return store


def drop_in_memory(uri: str) -> None:
    """Forget an in-memory index (its memory is freed once no reader holds it)."""
    _INDEXES.pop(_name(uri), None)


def _writer_lock(name: str) -> threading.Lock:
    with _REGISTRY:
        lock = _WRITERS.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=False):
        raise BusyError(f"{SCHEME}{name} is being written by another writer; wait for it to finish, then try again")
    return lock


class InMemoryBuilder:
    """Builds an index in RAM and registers it under its name when complete."""

    def __init__(self, uri: str) -> None:
        self.name = _name(uri)
        self._lock = _writer_lock(self.name)

    def full_array(self, count: int, dim: int) -> np.ndarray:
        return np.zeros((count, dim), np.float32)

    def commit(self, full, ids, texts, meta: IndexMeta, progress=None, head_source=None) -> IndexMeta:
        meta = replace(
            meta, prefix_norm_dims=tuple(prefix_norm_dims(full.shape[1])), created=time.strftime("%Y-%m-%dT%H:%M:%S")
        )
        segment = make_segment("s0", full, ids, texts, meta, head_source)
        _INDEXES[self.name] = InMemoryStore(self.name, [segment], meta)
        return meta

    def abort(self) -> None:
        """Nothing was registered."""

    def close(self) -> None:
        self._lock.release()


class InMemoryWriter(SegmentWriter):
    """The one writer of an in-memory index; each write registers a new store object."""

    def __init__(self, uri: str) -> None:
        self.name = _name(uri)
        store = open_in_memory(uri)
        self._lock = _writer_lock(self.name)
        store = _INDEXES[self.name]
        self._serial = len(store.segments)
        super().__init__(store.segments, store.meta)

    def _new_segment(self, full, ids, texts, head_source) -> Segment:
        self._serial += 1
        return make_segment(f"s{self._serial}-{time.monotonic_ns()}", full, ids, texts, self.meta, head_source)

    def _commit(self, segments: list[Segment], new: list[Segment]) -> None:
        self.meta = replace(self.meta, count=self.live_count(segments))
        self.segments = segments
        _INDEXES[self.name] = InMemoryStore(self.name, segments, self.meta)

    def save_meta(self, meta: IndexMeta) -> None:
        self.meta = replace(meta, count=self.live_count())
        _INDEXES[self.name] = InMemoryStore(self.name, self.segments, self.meta)

    def compact(self, progress=None) -> Segment:
        """Merge every segment's live rows into one."""
        parts = [(s, np.arange(len(s)) if s.live is None else s.live) for s in self.segments]
        full = np.concatenate(
            [np.zeros((0, self.meta.full_dim), np.float32)] + [np.asarray(s.full)[r] for s, r in parts]
        )
        ids = [i for s, r in parts for i in s.ids[r].tolist()]
        texts = [t for s, r in parts for t in (s.text_list()[i] for i in r.tolist())]
        heads = [self._empty_head()] + [np.asarray(s.codes if self.meta.binary_head else s.head)[r] for s, r in parts]
        head = np.concatenate(heads)  # as stored (an adapter's), not cut again from the full vectors
        merged = make_segment(f"s{self._serial + 1}-{time.monotonic_ns()}", full, ids, texts, self.meta, head=head)
        self._serial += 1
        if progress:
            progress(len(ids))
        self._commit([merged], new=[merged])
        return merged

    def close(self) -> None:
        self._lock.release()

    def _empty_head(self) -> np.ndarray:
        if self.meta.binary_head:
            return np.zeros((0, self.meta.head_dim // 8), np.uint8)
        return np.zeros((0, self.meta.head_dim), np.float32)
