"""Where vectors live. ``--db`` picks the store: a folder (local, the default) or a Milvus URI."""

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
    "is_milvus_uri",
    "open_store",
    "open_builder",
]


def is_milvus_uri(db: str | Path) -> bool:
    """A Milvus Lite file (``*.db``) or a server (``http://host:port``, ``https://…``, ``tcp://…``)."""
    return str(db).endswith(".db") or str(db).split("://")[0] in ("http", "https", "tcp", "grpc")


def open_store(db: str | Path, *, head_index: str | None = None, collection: str | None = None) -> Store:
    """Open an existing index for search."""
    if is_milvus_uri(db):
        from .milvus import DEFAULT_COLLECTION, MilvusStore

        return MilvusStore(str(db), collection=collection or DEFAULT_COLLECTION, head_index=head_index)
    from .local import LocalStore

    return LocalStore(db, head_index=head_index)


def open_builder(db: str | Path, collection: str | None = None, head_index: str = "flat"):
    """A builder that stages a new index at ``db`` and makes it current only when complete."""
    if is_milvus_uri(db):
        from .milvus import DEFAULT_COLLECTION, MilvusBuilder

        return MilvusBuilder(str(db), collection or DEFAULT_COLLECTION, head_index=head_index)
    from .local import LocalBuilder

    return LocalBuilder(db)
