"""Where vectors live. ``--db`` picks the store: a folder (local, the default), a Milvus URI, or
``memory://<name>`` (this process only)."""

from __future__ import annotations

from pathlib import Path

from .base import FORMAT_VERSION, HEAD_INDEXES, Autotune, IndexMeta, Store, check_ids

__all__ = [
    "FORMAT_VERSION",
    "HEAD_INDEXES",
    "Autotune",
    "IndexMeta",
    "Store",
    "check_ids",
    "is_memory_uri",
    "is_milvus_uri",
    "open_store",
    "open_builder",
    "open_writer",
]


def is_milvus_uri(db: str | Path) -> bool:
    """A Milvus Lite file (``*.db``) or a server (``http://host:port``, ``https://…``, ``tcp://…``)."""
    return str(db).endswith(".db") or str(db).split("://")[0] in ("http", "https", "tcp", "grpc")


def is_memory_uri(db: str | Path) -> bool:
    """An index held in this process only: ``memory://<name>``."""
    return str(db).startswith("memory://")


def open_store(
    db: str | Path, *, head_index: str | None = None, collection: str | None = None, previous: Store | None = None
) -> Store:
    """Open an existing index for search. ``previous``: this index as opened before, whose
    unchanged parts (the local store's segments) are reused."""
    if is_memory_uri(db):
        from .in_memory import open_in_memory

        return open_in_memory(str(db), head_index)
    if is_milvus_uri(db):
        from .milvus import DEFAULT_COLLECTION, MilvusStore

        return MilvusStore(str(db), collection=collection or DEFAULT_COLLECTION, head_index=head_index)
    from .local import LocalStore

    return LocalStore(db, head_index=head_index, previous=previous)


def open_builder(db: str | Path, collection: str | None = None, head_index: str = "flat"):
    """A builder that stages a new index at ``db`` and makes it current only when complete."""
    if is_memory_uri(db):
        from .in_memory import InMemoryBuilder

        return InMemoryBuilder(str(db))
    if is_milvus_uri(db):
        from .milvus import DEFAULT_COLLECTION, MilvusBuilder

        return MilvusBuilder(str(db), collection or DEFAULT_COLLECTION, head_index=head_index)
    from .local import LocalBuilder

    return LocalBuilder(db)


def open_writer(db: str | Path, collection: str | None = None, previous: Store | None = None):
    """The one writer of an existing index (add, delete, compact); a second gets a StoreError
    naming the first. Close it (or use it in ``with``) to let the next writer in."""
    if is_memory_uri(db):
        from .in_memory import InMemoryWriter

        return InMemoryWriter(str(db))
    if is_milvus_uri(db):
        from .milvus import DEFAULT_COLLECTION, MilvusWriter

        return MilvusWriter(str(db), collection or DEFAULT_COLLECTION)
    from .local import LocalWriter

    return LocalWriter(db, previous=previous)
