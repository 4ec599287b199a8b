"""A file of vectors already received from a paid endpoint, so that no text is paid for twice.

Keyed by (endpoint, model, dimensions, text): a rerun of an interrupted build sends only the
texts it has not seen, and ``add`` of a known text sends nothing. SQLite in WAL mode: each
batch is committed as it arrives, so a killed run keeps every batch it was answered.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import StoreError

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
    """Vectors by the hash of what produced them; safe to share between threads."""

    def __init__(self, path: str | Path, scope: str) -> None:
        """``scope``: what besides the text decides a vector (endpoint, model, dimensions)."""
        self.path = Path(path).expanduser()
        self._scope = scope.encode("utf-8") + b"\0"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a process killed keeps its commits; a cache needs no more
            self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"embedding cache {self.path}: cannot be opened ({exc})") from None

    def key(self, text: str) -> bytes:
        return hashlib.sha256(self._scope + text.encode("utf-8")).digest()

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The stored vector of each text, or None where there is none."""
        keys = [self.key(text) for text in texts]
        found: dict[bytes, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = keys[start : start + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk))
        return [np.frombuffer(found[key], np.float32) if key in found else None for key in keys]

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one batch in one transaction; a failure to store is an error (a full disk), not
        a silent loss of what was paid for."""
        rows = [(self.key(text), np.asarray(vector, np.float32).tobytes()) for text, vector in zip(texts, vectors)]
        try:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with self._lock:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise StoreError(f"embedding cache {self.path}: cannot store vectors ({exc})") from None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
