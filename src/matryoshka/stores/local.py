"""The embedded default store: a folder, memory-mapped, no server.

Layout (index format 2)::

    DB/manifest.json                 {"format_version", "meta": IndexMeta, "segments": [{"name", "rows"}]}
    DB/segments/<name>/full.npy      n x d unit vectors, memory-mapped; stages read only the rows they touch
                       head.npy      n x head_dim, re-normalised, loaded into RAM (contiguous)
                       head_codes.npy   instead of head.npy for a binary head: n x head_dim/8 bytes of sign bits
                       head.hnsw     optional FAISS HNSW graph over the head
                       prefix_norms.npy n x len(meta.prefix_norm_dims): each row's norm at those stage dims
                       ids.json, texts.jsonl

The manifest is the one source of truth: a reader sees the index it names, and a writer makes a
change visible by replacing it (write aside, fsync, rename, fsync the folder). A segment is never
changed once the manifest names it. A build writes its segment under ``segments/<name>.partial``
and renames it only when complete, so a build that fails or is killed leaves the previous index
searchable and unchanged; segments no manifest names are removed by the next writer. The
manifest lists segments so that an index can later grow by new segments instead of rebuilds; this
version writes and reads indexes of one segment.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..vectors import binary_codes, normalize, prefix_norm_dims, prefix_norms
from .base import FORMAT_VERSION, IndexMeta, check_format_version, check_head_kind
from .memory import MemoryStore, make_head_index

MANIFEST = "manifest.json"
SEGMENTS = "segments"
LOCK = ".lock"
OPEN_ATTEMPTS = 3


def read_manifest(root: Path) -> dict:
    """The manifest of the index folder ``root``, checked: format version, metadata, segments."""
    path = root / MANIFEST
    if not path.is_file():
        if (root / "current").is_symlink() and (root / "builds").is_dir():
            check_format_version(1, str(root))
        raise StoreError(f"{root} is not a matryoshka index folder (no {MANIFEST}); run 'matryoshka index' first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: not a valid manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: not a valid manifest (not a JSON object)")
    check_format_version(manifest.get("format_version", 1), str(root))
    manifest["meta"] = IndexMeta.from_dict(manifest.get("meta"), str(path))
    segments = manifest.get("segments")
    if not isinstance(segments, list) or len(segments) != 1:
        raise StoreError(f"{path}: this version of matryoshka reads indexes of exactly one segment")
    return manifest


class LocalStore(MemoryStore):
    """A built index folder opened for search: head in RAM, full vectors memory-mapped.

    Everything a search needs is opened here, so a rebuild that replaces the folder's segment
    while this store is open does not pull files from under it."""

    kind = "local"

    def __init__(self, root: Path | str, *, head_index: str | None = None) -> None:
        self.root = Path(root)
        for attempt in range(OPEN_ATTEMPTS):
            stamp = _stamp(self.root / MANIFEST)
            try:
                self._open(head_index)
                break
            except StoreError:
                # a writer replaced the index (and removed its files) while this opened it: open the new one
                if attempt == OPEN_ATTEMPTS - 1 or _stamp(self.root / MANIFEST) == stamp:
                    raise
        self._stamp = stamp

    def _open(self, head_index: str | None) -> None:
        manifest = read_manifest(self.root)
        meta: IndexMeta = manifest["meta"]
        self.path = self.root / SEGMENTS / manifest["segments"][0]["name"]
        check_head_kind(meta.head_index, head_index, str(self.root))
        try:
            codes = np.load(self.path / "head_codes.npy") if meta.binary_head else None
            head = None if meta.binary_head else np.load(self.path / "head.npy")
            graph: str | object = meta.head_index
            if meta.head_index == "hnsw":
                import faiss

                graph = faiss.read_index(str(self.path / "head.hnsw"))
            table = np.load(self.path / "prefix_norms.npy")
            norms = {dim: np.ascontiguousarray(table[:, i]) for i, dim in enumerate(meta.prefix_norm_dims)}
            full = np.load(self.path / "full.npy", mmap_mode="r")
            ids = json.loads((self.path / "ids.json").read_text(encoding="utf-8"))
            self._text_file = open(self.path / "texts.jsonl", encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root}: the index's files cannot be read ({exc}); re-index it") from None
        if len(full) != meta.count or len(ids) != meta.count:
            raise StoreError(
                f"{self.root}: the index holds {len(full)} vectors and {len(ids)} ids, but its "
                f"manifest says {meta.count}; re-index it"
            )
        super().__init__(
            full, meta.head_dim, head=head, head_index=graph, meta=meta, prefix_norms=norms, head_codes=codes, ids=ids
        )

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        if self._texts is None:
            self._text_file.seek(0)
            self._texts = [json.loads(line) for line in self._text_file]
        return super().texts_of(rows)

    def is_current(self) -> bool:
        return _stamp(self.root / MANIFEST) == self._stamp

    def close(self) -> None:
        self._text_file.close()


def _stamp(path: Path) -> tuple | None:
    """What changes when a file is replaced: its inode, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class LocalBuilder:
    """Stages a build in ``segments/<name>.partial``; :meth:`commit` makes it the index."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()) and not _is_index_folder(root):
            raise StoreError(f"{root} is not empty and is not a matryoshka index folder; refusing to write into it")
        self.root = root
        self._lock = acquire_writer_lock(root)
        for stale in (root / SEGMENTS).glob("*.partial"):  # left by a writer that was killed
            shutil.rmtree(stale, ignore_errors=True)
        self.name = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.partial = root / SEGMENTS / f"{self.name}.partial"
        self.partial.mkdir(parents=True)

    def full_array(self, count: int, dim: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.partial / "full.npy", mode="w+", dtype=np.float32, shape=(count, dim))

    def commit(
        self,
        full: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str],
        meta: IndexMeta,
        progress=None,
        head_source: np.ndarray | None = None,
    ) -> IndexMeta:
        """Write the segment and switch the manifest to it; returns the metadata as stored.
        ``head_source``: where the head prefix comes from when it is not ``full`` (an adapter's ``f(x)``)."""
        source = full if head_source is None else head_source
        if isinstance(full, np.memmap):
            full.flush()
        dims = prefix_norm_dims(full.shape[1])
        meta = _stamped(meta, prefix_norm_dims=tuple(dims))
        if meta.binary_head:  # signs need no normalising
            np.save(self.partial / "head_codes.npy", binary_codes(source, meta.head_dim))
        else:
            head = normalize(np.asarray(source[:, : meta.head_dim]))
            np.save(self.partial / "head.npy", head)
            if meta.head_index == "hnsw":
                import faiss

                faiss.write_index(make_head_index(head, "hnsw"), str(self.partial / "head.hnsw"))
        np.save(self.partial / "prefix_norms.npy", prefix_norms(full, dims))
        (self.partial / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
        with open(self.partial / "texts.jsonl", "w", encoding="utf-8") as handle:
            for text in texts:
                handle.write(json.dumps(text, ensure_ascii=False) + "\n")
        for path in self.partial.iterdir():
            _fsync(path)
        final = self.partial.with_name(self.name)
        self.partial.rename(final)
        _fsync(final.parent)
        write_manifest(self.root, meta, [{"name": self.name, "rows": len(ids)}])
        remove_unlisted_segments(self.root, keep={self.name})
        return meta

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> None:
        """Let the next writer in."""
        self._lock.close()


def acquire_writer_lock(root: Path):
    """One writer per index folder: an exclusive lock on ``root/.lock``, held until the returned
    file is closed (the system drops it if the process dies), or a StoreError naming the holder."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK, "a+", encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot write the index at {root}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreError(f"{root} is being written by {holder}; wait for it to finish, then try again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def write_manifest(root: Path, meta: IndexMeta, segments: list[dict]) -> None:
    """Replace ``root/manifest.json`` atomically and durably: a reader sees the old or the new one."""
    manifest = {"format_version": FORMAT_VERSION, "meta": meta.to_dict(), "segments": segments}
    partial = root / f".{MANIFEST}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, root / MANIFEST)
    _fsync(root)


def remove_unlisted_segments(root: Path, keep: set[str]) -> None:
    """Remove segments the manifest no longer names, and what an index of format 1 left behind."""
    for path in (root / SEGMENTS).iterdir():
        if path.name not in keep and not path.name.endswith(".partial"):
            shutil.rmtree(path, ignore_errors=True)
    if (root / "current").is_symlink():
        (root / "current").unlink()
    shutil.rmtree(root / "builds", ignore_errors=True)


def _is_index_folder(root: Path) -> bool:
    return (root / MANIFEST).is_file() or (root / SEGMENTS).is_dir() or (root / "builds").is_dir()


def _stamped(meta: IndexMeta, **changes) -> IndexMeta:
    return replace(meta, created=time.strftime("%Y-%m-%dT%H:%M:%S"), **changes)


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
