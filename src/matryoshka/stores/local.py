"""The embedded default store: a folder, memory-mapped, no server.

Layout (index format 2)::

    DB/manifest.json   {"format_version", "generation", "meta": IndexMeta,
                        "segments": [{"name", "rows", "deleted", "tombstones"}]}
    DB/segments/<name>/full.npy      n x d unit vectors (float32, or float16 or int8 rows as meta.storage
                                     says), memory-mapped; stages read only the rows they touch
                       head.npy      n x head_dim, re-normalised (gathered into RAM for search)
                       head_codes.npy   instead of head.npy for a binary head: n x head_dim/8 bytes of sign bits
                       head.hnsw     a FAISS HNSW graph over the head, for an hnsw head
                       prefix_norms.npy n x len(meta.prefix_norm_dims): each row's norm at those stage dims
                       ids.arrow, texts.arrow   the rows' ids and texts, an Arrow string column each
                                        (IPC file, memory-mapped; earlier versions wrote
                                        ids.json and texts.jsonl, which are still read)
                       metadata.arrow   the rows' metadata, a column per field (Arrow IPC file,
                                        memory-mapped; absent when the index has no metadata)
    DB/tombstones/<segment>.<generation>.npy   sorted rows of that segment that are deleted

The manifest is the one source of truth: a reader sees the index it names, and a writer makes a
change visible by replacing it (write aside, fsync, rename, fsync the folder). A segment is never
changed once the manifest names it; deleting rows writes a new tombstone file, named by the
manifest generation that introduces it. Everything a write adds is written and fsynced under a
``.partial`` name first, so a write that fails or is killed leaves the previous state searchable
and unchanged; files no manifest names are removed by the next writer. Space for a memory-mapped
write is reserved before it starts, so a full disk is an error (``DiskFullError``), never a
SIGBUS in the middle of a copy.

Open files stay bounded whatever the traffic: a segment of under :data:`IN_RAM_BYTES` of vectors
(what a trickle of small writes makes, until merged) is read whole into RAM and holds no file
open; only the few large ones are memory-mapped.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..embedding_cache import CACHE_FILES
from ..errors import BusyError, StoreError, storage_error
from ..vectors import STORAGES, prefix_norm_dims, to_storage
from .arrow_files import read_table, write_table
from .base import FORMAT_VERSION, IndexMeta, check_format_version, check_head_kind
from .segments import NO_ROWS, Segment, SegmentedStore, SegmentWriter, live_rows, make_segment, merged_segment
from .string_columns import read_legacy_ids, read_legacy_texts, read_strings, write_strings

LOG = logging.getLogger("matryoshka")
MANIFEST = "manifest.json"
METADATA = "metadata.arrow"
IDS, TEXTS = "ids.arrow", "texts.arrow"
SEGMENTS = "segments"
TOMBSTONES = "tombstones"
LOCK = ".lock"
OPEN_ATTEMPTS = 5
COPY_BLOCK = 65_536  # rows copied at once by compaction, or into a storage
STORED = "full.stored.npy"  # a build's rows in the index's storage, written beside its float32 ones
IN_RAM_BYTES = 4 * 2**20  # a segment with fewer bytes of full vectors is read into RAM, not mapped
WRITER_WAIT_S = 2.0  # a writer waits this long for another to finish before it gives up
SEGMENT_KEYS = {"name": str, "rows": int, "deleted": int, "tombstones": (str, type(None))}


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
    except OSError as exc:
        raise _unreadable(root, exc) from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: not a valid manifest (not a JSON object)")
    check_format_version(manifest.get("format_version", 1), str(root))
    manifest["meta"] = IndexMeta.from_dict(manifest.get("meta"), str(path))
    manifest.setdefault("generation", 0)
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not segments:
        raise StoreError(f"{path}: not a valid manifest (no list of segments)")
    for entry in segments:
        if not isinstance(entry, dict):
            raise StoreError(f"{path}: not a valid manifest (a segment is not a JSON object)")
        entry.setdefault("deleted", 0)
        entry.setdefault("tombstones", None)
        for key, kind in SEGMENT_KEYS.items():
            if not isinstance(entry.get(key), kind):
                raise StoreError(f"{path}: not a valid manifest (segment field {key!r} is {entry.get(key)!r})")
    return manifest


def load_segment(root: Path, entry: dict, meta: IndexMeta, previous: Segment | None = None) -> Segment:
    """A listed segment, its large arrays memory-mapped (a writer removing the segment later does
    not pull a mapped file from a reader). ``previous``: the same segment as an earlier store
    loaded it; segments never change, so its arrays are taken as they are and only its
    tombstones are read again."""
    path = root / SEGMENTS / entry["name"]
    if previous is not None:
        try:
            deleted = previous.deleted if previous.tombstones == entry["tombstones"] else NO_ROWS
            if entry["tombstones"] and previous.tombstones != entry["tombstones"]:
                deleted = np.load(root / TOMBSTONES / entry["tombstones"]).astype(np.int64)
        except (OSError, ValueError) as exc:
            raise _unreadable(root, exc) from None
        if len(deleted) != entry["deleted"]:
            raise StoreError(f"{root}: segment {entry['name']} has {len(deleted)} deletions, not {entry['deleted']}")
        return replace(previous, deleted=deleted, tombstones=entry["tombstones"])
    mapped = "r" if entry["rows"] * _row_bytes(meta) >= IN_RAM_BYTES else None
    try:
        codes = np.load(path / "head_codes.npy", mmap_mode=mapped) if meta.binary_head else None
        head = None if meta.binary_head else np.load(path / "head.npy", mmap_mode=mapped)
        graph = None
        if meta.head_index == "hnsw" and entry["rows"]:
            import faiss

            graph = faiss.read_index(str(path / "head.hnsw"))
        table = np.load(path / "prefix_norms.npy")
        full = np.load(path / "full.npy", mmap_mode=mapped)
        ids, texts = _read_ids_and_texts(path, bool(mapped))
        metadata = read_table(path / METADATA, bool(mapped), "metadata file") if (path / METADATA).is_file() else None
        deleted = NO_ROWS
        if entry["tombstones"]:
            deleted = np.load(root / TOMBSTONES / entry["tombstones"]).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise _unreadable(root, exc) from None
    if metadata is not None and metadata.num_rows != entry["rows"]:
        raise StoreError(
            f"{root}: segment {entry['name']} has metadata for {metadata.num_rows} rows, not {entry['rows']}"
        )
    if (
        len(full) != entry["rows"]
        or len(ids) != entry["rows"]
        or len(texts) != entry["rows"]
        or len(deleted) != entry["deleted"]
    ):
        raise StoreError(
            f"{root}: segment {entry['name']} holds {len(full)} vectors, {len(ids)} ids, {len(texts)} texts and {len(deleted)} "
            f"deletions, but the manifest says {entry['rows']} and {entry['deleted']}; re-index it"
        )

    return Segment(
        name=entry["name"],
        full=full,
        ids=ids,
        head=head,
        codes=codes,
        norms={dim: np.ascontiguousarray(table[:, i]) for i, dim in enumerate(meta.prefix_norm_dims)},
        texts=texts,
        graph=graph,
        deleted=deleted,
        tombstones=entry["tombstones"],
        metadata=metadata,
    )


def _read_ids_and_texts(path: Path, mapped: bool):
    """A segment's ids and texts (Arrow string columns), from the files this version writes or,
    for a segment an earlier version wrote, from its ``ids.json`` and ``texts.jsonl``."""
    if (path / IDS).is_file():
        return read_strings(path / IDS, mapped), read_strings(path / TEXTS, mapped)
    return read_legacy_ids(path / "ids.json"), read_legacy_texts(path / "texts.jsonl")


def _unreadable(root: Path, exc: Exception) -> StoreError:
    """Why an index's files could not be read: out of file handles (not the index's fault), or a
    damaged index."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return storage_error(exc, root, "read")
    return StoreError(f"{root}: the index's files cannot be read ({exc}); re-index it")


def _storage_errors(method):
    """A writer's method whose ``OSError`` (a full disk, a read-only place, no file handles) is
    told as a :class:`~matryoshka.errors.StorageError`; the method leaves the index as it was."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise storage_error(exc, self.root) from None

    return wrapped


def _row_bytes(meta: IndexMeta) -> int:
    return meta.full_dim * np.dtype(STORAGES[meta.storage]).itemsize


def reserved_array(path: Path, count: int, dim: int, dtype: type = np.float32) -> np.memmap:
    """A new ``.npy`` file of (count, dim) ``dtype``, memory-mapped for writing, its space reserved
    on disk first: a file system that runs out of space then fails here, with an ``OSError``,
    instead of killing the process with SIGBUS when a page is first written."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
            del array
            raise
    return array


def load_segments(root: Path, manifest: dict, previous: Sequence[Segment] = ()) -> list[Segment]:
    known = {segment.name: segment for segment in previous}
    return [load_segment(root, entry, manifest["meta"], known.get(entry["name"])) for entry in manifest["segments"]]


class LocalStore(SegmentedStore):
    """An index folder opened for search: the live rows' head in RAM, full vectors memory-mapped.

    Everything a search needs is opened here, so a write that replaces the folder's segments
    while this store is open does not pull files from under it; :meth:`is_current` says when a
    write has made it stale."""

    kind = "local"

    def __init__(
        self, root: Path | str, *, head_index: str | None = None, previous: SegmentedStore | None = None
    ) -> None:
        """``previous``: a store of the same folder opened earlier, whose segments are reused."""
        self.root = Path(root)
        reusable = previous.segments if isinstance(previous, LocalStore) and previous.root == self.root else ()
        for attempt in range(OPEN_ATTEMPTS):
            stamp = _stamp(self.root / MANIFEST)
            try:
                manifest = read_manifest(self.root)
                check_head_kind(manifest["meta"].head_index, head_index, str(self.root))
                segments = load_segments(self.root, manifest, reusable)
                break
            except StoreError:
                # a writer replaced the index (and removed its files) while this opened it: open the new one
                if attempt == OPEN_ATTEMPTS - 1 or _stamp(self.root / MANIFEST) == stamp:
                    raise
        self._stamp = stamp
        self.generation = manifest["generation"]
        super().__init__(segments, manifest["meta"])
        if previous is None:
            clean_leftovers(self.root)

    def is_current(self) -> bool:
        return _stamp(self.root / MANIFEST) == self._stamp

    def close(self) -> None:
        """Nothing to release: mapped files are unmapped when the last array over them goes."""


def _stamp(path: Path) -> tuple | None:
    """What changes when a file is replaced: its inode, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def clean_leftovers(root: Path) -> None:
    """Remove what a killed writer left (files no manifest names), if no writer is at work now:
    the first open of an index cleans up, the writers' lock says when it is safe."""
    try:
        handle = open(root / LOCK, "a+", encoding="utf-8")
    except OSError:
        return  # a read-only place: nothing can have been left by a write here since
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return
    try:
        manifest = read_manifest(root)
        remove_unlisted(
            root,
            keep_segments={entry["name"] for entry in manifest["segments"]},
            keep_tombstones={entry["tombstones"] for entry in manifest["segments"] if entry["tombstones"]},
        )
    except (StoreError, OSError):
        pass  # the next writer cleans up instead
    finally:
        handle.close()


def _segment_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**9:09d}"


def save_segment(path: Path, segment: Segment, meta: IndexMeta, *, with_full: bool = True) -> None:
    """Write a segment's files into ``path`` and fsync them (``with_full=False``: ``full.npy`` is there already)."""
    path.mkdir(parents=True, exist_ok=True)
    if with_full:
        np.save(path / "full.npy", np.asarray(segment.full))
    elif isinstance(segment.full, np.memmap):
        segment.full.flush()
    if meta.binary_head:
        np.save(path / "head_codes.npy", np.asarray(segment.codes))
    else:
        np.save(path / "head.npy", np.asarray(segment.head))
        if segment.graph is not None:
            import faiss

            faiss.write_index(segment.graph, str(path / "head.hnsw"))
    table = [segment.norms[dim] for dim in meta.prefix_norm_dims]
    np.save(path / "prefix_norms.npy", np.stack(table, axis=1) if table else np.zeros((len(segment), 0), np.float32))
    write_strings(path / IDS, segment.ids)
    write_strings(path / TEXTS, segment.texts)
    if segment.metadata is not None:
        write_table(path / METADATA, segment.metadata)
    for item in path.iterdir():
        _fsync(item)


def publish_segment(partial: Path, segment: Segment, meta: IndexMeta, *, with_full: bool = True) -> None:
    """Write a segment under its ``.partial`` folder, then give it its name: complete and durable
    on disk, though no reader sees it until a manifest names it. A write that fails removes what
    it wrote (the space a full disk needs back)."""
    try:
        save_segment(partial, segment, meta, with_full=with_full)
        partial.rename(partial.with_name(segment.name))
        _fsync(partial.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


class LocalBuilder:
    """Stages a build in ``segments/<name>.partial``; :meth:`commit` makes it the index."""

    @_storage_errors
    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder")
        if root.is_dir() and _holds_other_files(root) and not _is_index_folder(root):
            raise StoreError(f"{root} is not empty and is not a matryoshka index folder; refusing to write into it")
        self.root = root
        self._lock = acquire_writer_lock(root)
        try:
            self._stage()
        except BaseException:
            self._lock.close()
            raise

    def _stage(self) -> None:
        root = self.root
        for stale in (root / SEGMENTS).glob("*.partial"):  # left by a writer that was killed
            shutil.rmtree(stale, ignore_errors=True)
        self.name = _segment_name()
        self.partial = root / SEGMENTS / f"{self.name}.partial"
        self.partial.mkdir(parents=True)

    @_storage_errors
    def full_array(self, count: int, dim: int) -> np.ndarray:
        return reserved_array(self.partial / "full.npy", count, dim)

    @_storage_errors
    def commit(
        self,
        full: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str],
        meta: IndexMeta,
        progress=None,
        head_source: np.ndarray | None = None,
        metadata: Sequence[dict] | None = None,
    ) -> IndexMeta:
        """Write the segment and switch the manifest to it; returns the metadata as stored.
        ``head_source``: where the head prefix comes from when it is not ``full`` (an adapter's ``f(x)``);
        ``metadata``: a dict per document, typed by ``meta.fields``."""
        meta = _stamped(meta, prefix_norm_dims=tuple(prefix_norm_dims(full.shape[1], meta.trained_dims, meta.storage)))
        stored = self._stored(full, meta.storage)
        segment = make_segment(
            self.name, stored, ids, texts, meta, full if head_source is None else head_source, metadata=metadata
        )
        if stored is not full:  # the stored rows take the name of the float32 ones they were made from
            os.replace(self.partial / STORED, self.partial / "full.npy")
        publish_segment(self.partial, segment, meta, with_full=False)
        previous = _generation(self.root)
        write_manifest(self.root, meta, [_entry(segment, None)], previous + 1)
        remove_unlisted(self.root, keep_segments={self.name}, keep_tombstones=set())
        return meta

    def _stored(self, full: np.ndarray, storage: str) -> np.ndarray:
        """``full`` as ``storage`` keeps it: itself for float32, else a new memory-mapped file
        beside it, written a block at a time."""
        if STORAGES[storage] is np.float32:
            return full
        stored = reserved_array(self.partial / STORED, len(full), full.shape[1], STORAGES[storage])
        for start in range(0, len(full), COPY_BLOCK):
            stored[start : start + COPY_BLOCK] = to_storage(full[start : start + COPY_BLOCK], storage)
        return stored

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> None:
        """Let the next writer in."""
        self._lock.close()


class LocalWriter(SegmentWriter):
    """The one writer of an index folder (it holds the folder's lock until closed): new documents
    go to a new segment, deletions to tombstone files, and each write ends by replacing the
    manifest, the moment it becomes visible and durable."""

    def __init__(self, root: Path | str, previous: SegmentedStore | None = None) -> None:
        """``previous``: a store of this folder, whose segments are reused rather than read again."""
        self.root = Path(root)
        read_manifest(self.root)  # a clear error before the lock is taken for nothing
        self._lock = acquire_writer_lock(self.root)
        try:
            self._open(previous)
        except BaseException:
            self.close()
            raise

    @_storage_errors
    def _open(self, previous: SegmentedStore | None) -> None:
        manifest = read_manifest(self.root)
        self.generation = manifest["generation"]
        reusable = previous.segments if isinstance(previous, LocalStore) and previous.root == self.root else ()
        super().__init__(load_segments(self.root, manifest, reusable), manifest["meta"])
        self._tombstone_files = {e["name"]: e["tombstones"] for e in manifest["segments"]}
        remove_unlisted(
            self.root,
            keep_segments={s.name for s in self.segments},
            keep_tombstones={f for f in self._tombstone_files.values() if f},
        )

    @_storage_errors
    def _new_segment(self, full, ids, texts, head_source, metadata=None) -> Segment:
        name = _segment_name()
        partial = self.root / SEGMENTS / f"{name}.partial"
        segment = make_segment(name, full, ids, texts, self.meta, head_source, metadata=metadata)
        publish_segment(partial, segment, self.meta)
        return segment

    @_storage_errors
    def _commit(self, segments: list[Segment]) -> None:
        generation = self.generation + 1
        (self.root / TOMBSTONES).mkdir(exist_ok=True)
        files = {}
        for segment in segments:
            before = next((s for s in self.segments if s.name == segment.name), None)
            if before is not None and before.deleted is segment.deleted:
                files[segment.name] = self._tombstone_files.get(segment.name)
                continue
            if not len(segment.deleted):
                files[segment.name] = None
                continue
            name = f"{segment.name}.{generation}.npy"
            partial = self.root / TOMBSTONES / f".{name}.partial"
            try:
                with open(partial, "wb") as handle:
                    np.save(handle, np.asarray(segment.deleted, np.int64))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(partial, self.root / TOMBSTONES / name)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            files[segment.name] = name
        _fsync(self.root / TOMBSTONES)
        meta = replace(self.meta, count=self.live_count(segments))
        write_manifest(self.root, meta, [_entry(s, files[s.name]) for s in segments], generation)
        segments = [replace(s, tombstones=files[s.name]) if s.tombstones != files[s.name] else s for s in segments]
        self.segments, self.meta, self.generation, self._tombstone_files = segments, meta, generation, files
        remove_unlisted(
            self.root, keep_segments={s.name for s in segments}, keep_tombstones={f for f in files.values() if f}
        )

    @_storage_errors
    def save_meta(self, meta: IndexMeta) -> None:
        """Store new metadata (a re-tuned schedule) with the same segments."""
        meta = replace(meta, count=self.live_count())
        entries = [_entry(s, self._tombstone_files.get(s.name)) for s in self.segments]
        write_manifest(self.root, meta, entries, self.generation + 1)
        self.meta, self.generation = meta, self.generation + 1

    @_storage_errors
    def _merged(self, segments: Sequence[Segment], progress=None) -> Segment:
        """The live rows of ``segments`` copied into a new segment, published (not yet committed):
        the full vectors stream through a memory map whose space is reserved first."""
        name = _segment_name()
        partial = self.root / SEGMENTS / f"{name}.partial"
        partial.mkdir(parents=True)
        try:
            full = reserved_array(
                partial / "full.npy", self.live_count(segments), self.meta.full_dim, STORAGES[self.meta.storage]
            )
            written = 0
            for segment in segments:
                rows = live_rows(segment)
                for start in range(0, len(rows), COPY_BLOCK):
                    block = rows[start : start + COPY_BLOCK]
                    full[written : written + len(block)] = segment.full[block]
                    written += len(block)
                    if progress:
                        progress(len(block))
            merged = merged_segment(name, segments, self.meta, full)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        publish_segment(partial, merged, self.meta, with_full=False)
        if len(merged) * _row_bytes(self.meta) < IN_RAM_BYTES:  # as a reader loads it: no file held open
            merged = replace(merged, full=np.array(merged.full))
        return merged

    def close(self) -> None:
        """Let the next writer in."""
        self._lock.close()


def _entry(segment: Segment, tombstones: str | None) -> dict:
    return {"name": segment.name, "rows": len(segment), "deleted": len(segment.deleted), "tombstones": tombstones}


def _generation(root: Path) -> int:
    try:
        return int(read_manifest(root)["generation"])
    except StoreError:
        return 0


def acquire_writer_lock(root: Path, wait_s: float = WRITER_WAIT_S):
    """One writer per index folder: an exclusive lock on ``root/.lock``, held until the returned
    file is closed (the system drops it if the process dies). A writer waits up to ``wait_s``
    for the holder to finish (writes are short, and a reader cleaning up holds it a moment),
    then gives up with a BusyError naming the holder."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK, "a+", encoding="utf-8")
    except OSError as exc:
        raise storage_error(exc, root) from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise BusyError(f"{root} is being written by {holder}; wait for it to finish, then try again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def write_manifest(root: Path, meta: IndexMeta, segments: list[dict], generation: int) -> None:
    """Replace ``root/manifest.json`` atomically and durably: a reader sees the old or the new one."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": generation,
        "meta": meta.to_dict(),
        "segments": segments,
    }
    partial = root / f".{MANIFEST}.{os.getpid()}.partial"
    folder = os.open(root, os.O_RDONLY)  # opened before the switch: nothing after it needs a new file handle
    try:
        try:
            with open(partial, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(manifest, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, root / MANIFEST)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        try:  # the switch is made: a failure from here on must not report the write as failed
            os.fsync(folder)
        except OSError as exc:
            LOG.warning("%s: the new manifest is in place, but its folder could not be flushed: %s", root, exc)
    finally:
        os.close(folder)


def remove_unlisted(root: Path, keep_segments: set[str], keep_tombstones: set[str]) -> None:
    """Remove segments and tombstone files the manifest no longer names (a reader that opened
    them keeps its memory maps and file handles), leftovers of killed writes, and what an index
    of format 1 left behind. Never raises: what it cannot remove now, the next writer removes."""
    try:
        _remove_unlisted(root, keep_segments, keep_tombstones)
    except OSError as exc:
        LOG.warning("%s: files of earlier states could not be removed yet: %s", root, exc)


def _remove_unlisted(root: Path, keep_segments: set[str], keep_tombstones: set[str]) -> None:
    for path in (root / SEGMENTS).iterdir() if (root / SEGMENTS).is_dir() else ():
        if path.name not in keep_segments:
            shutil.rmtree(path, ignore_errors=True)
    for path in (root / TOMBSTONES).iterdir() if (root / TOMBSTONES).is_dir() else ():
        if path.name not in keep_tombstones:
            path.unlink(missing_ok=True)
    for path in root.glob(f".{MANIFEST}.*.partial"):
        path.unlink(missing_ok=True)
    if (root / "current").is_symlink():
        (root / "current").unlink()
    shutil.rmtree(root / "builds", ignore_errors=True)


def _holds_other_files(root: Path) -> bool:
    """Whether a folder holds anything besides an embedding cache (which a killed first build
    through a paid endpoint leaves, for its rerun to resume from)."""
    return any(path.name not in CACHE_FILES for path in root.iterdir())


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
