"""A file of vectors already received from a paid endpoint, so that no text is paid for twice.

Keyed by (endpoint, model, dimensions, text): a rerun of an interrupted build sends only the
texts it has not seen, and ``add`` of a known text sends nothing. SQLite in WAL mode: each
batch is committed as it arrives, so a killed run keeps every batch it was answered.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DiskFullError, ReadOnlyError, StoreError

CACHE_FILE = "embedding-cache.sqlite"  # inside an index folder; beside a Milvus Lite file
CACHE_FILES = (CACHE_FILE, CACHE_FILE + "-wal", CACHE_FILE + "-shm")  # what SQLite keeps beside it
LOOKUP_CHUNK = 500  # keys per SELECT, under SQLite's limit on bound parameters


def cache_path_for_index(db: str | Path) -> Path | None:
    """Where an index keeps its endpoint's vectors: in its folder, or beside a Milvus Lite
    file; None for a Milvus server, which has no place of ours on this machine."""
    text = str(db)
    if "://" in text:
        return None
    path = Path(text).expanduser()
    if path.suffix == ".db":
        return path.with_name(f"{path.name}.{CACHE_FILE}")
    return path / CACHE_FILE


def user_cache_path() -> Path:
    """The cache of commands that write no index (encode, evaluate, adapt)."""
    root = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(root).expanduser() / "matryoshka" / CACHE_FILE


class EmbeddingCache:
    """Vectors by the hash of what produced them; safe to share between threads and processes.
    The file is opened at first use and created at the first vector stored, so a command that
    only reads (a search, a refused build) neither needs nor leaves one."""

    def __init__(self, path: str | Path, scope: str) -> None:
        """``scope``: what besides the text decides a vector (endpoint, model, dimensions)."""
        self.path = Path(path).expanduser()
        self._scope = scope.encode("utf-8") + b"\0"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        """The open database (None when it does not exist and ``create`` is false)."""
        if self._db is None and (create or self.path.exists()):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a killed process keeps its commits; a cache needs no more
                db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
            except (sqlite3.Error, OSError) as exc:
                raise self._failure("cannot be opened", exc) from None
            self._db = db
        return self._db

    def _failure(self, doing: str, exc: Exception) -> StoreError:
        """One line for what went wrong, typed as the server and the CLI need it."""
        text = str(exc)
        if "full" in text or getattr(exc, "errno", None) == errno.ENOSPC:
            return DiskFullError(f"embedding cache {self.path}: {doing}: no space left on its disk ({text})")
        if "readonly" in text or "read-only" in text or getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES):
            return ReadOnlyError(f"embedding cache {self.path}: {doing}: its place cannot be written ({text})")
        hint = (
            "; it is only a cache: delete it and run again" if "malformed" in text or "not a database" in text else ""
        )
        return StoreError(f"embedding cache {self.path}: {doing} ({text}){hint}")

    def key(self, text: str) -> bytes:
        return hashlib.sha256(self._scope + text.encode("utf-8")).digest()

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The stored vector of each text, or None where there is none."""
        keys = [self.key(text) for text in texts]
        found: dict[bytes, bytes] = {}
        with self._lock:
            db = self._connection(create=False)
            try:
                for start in range(0, len(keys) if db is not None else 0, LOOKUP_CHUNK):
                    chunk = keys[start : start + LOOKUP_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    found.update(db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk))
            except sqlite3.Error as exc:
                raise self._failure("cannot be read", exc) from None
        return [np.frombuffer(found[key], np.float32) if key in found else None for key in keys]

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one batch in one transaction; a failure to store is an error (a full disk), not
        a silent loss of what was paid for."""
        rows = [(self.key(text), np.asarray(vector, np.float32).tobytes()) for text, vector in zip(texts, vectors)]
        with self._lock:
            db = self._connection(create=True)
            try:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise self._failure("cannot store vectors", exc) from None

    def __len__(self) -> int:
        with self._lock:
            db = self._connection(create=False)
            return 0 if db is None else int(db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
