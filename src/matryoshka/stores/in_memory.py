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
from .segments import Segment, SegmentedStore, SegmentWriter, gather_live, make_segment, merged_segment

SCHEME = "memory://"
_INDEXES: dict[str, InMemoryStore] = {}
_WRITERS: dict[str, threading.Lock] = {}
_REGISTRY = threading.Lock()


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

    def commit(self, full, ids, texts, meta: IndexMeta, progress=None, head_source=None, metadata=None) -> IndexMeta:
        meta = replace(
            meta,
            prefix_norm_dims=tuple(prefix_norm_dims(full.shape[1], meta.trained_dims, meta.storage)),
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        segment = make_segment("s0", full, ids, texts, meta, head_source, metadata=metadata)
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

    def _new_segment(self, full, ids, texts, head_source, metadata=None) -> Segment:
        self._serial += 1
        name = f"s{self._serial}-{time.monotonic_ns()}"
        return make_segment(name, full, ids, texts, self.meta, head_source, metadata=metadata)

    def _commit(self, segments: list[Segment]) -> None:
        self.meta = replace(self.meta, count=self.live_count(segments))
        self.segments = segments
        _INDEXES[self.name] = InMemoryStore(self.name, segments, self.meta)

    def save_meta(self, meta: IndexMeta) -> None:
        self.meta = replace(meta, count=self.live_count())
        _INDEXES[self.name] = InMemoryStore(self.name, self.segments, self.meta)

    def _merged(self, segments: Sequence[Segment], progress=None) -> Segment:
        self._serial += 1
        name = f"s{self._serial}-{time.monotonic_ns()}"
        merged = merged_segment(name, segments, self.meta, gather_live(segments, "full"))
        if progress:
            progress(len(merged))
        return merged

    def close(self) -> None:
        self._lock.release()
