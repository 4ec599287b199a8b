"""Where vectors live. ``--db`` picks the store: a folder (local, the default) or a Milvus URI."""

from __future__ import annotations

from pathlib import Path

from .base import IndexMeta, StoreError, check_ids, validate_vectors

__all__ = ["IndexMeta", "StoreError", "check_ids", "validate_vectors", "is_milvus_uri", "open_store"]


def is_milvus_uri(db: str) -> bool:
    """A Milvus Lite file (``*.db``) or a server (``http://host:port``, ``https://…``, ``tcp://…``)."""
    return str(db).endswith(".db") or str(db).split("://")[0] in ("http", "https", "tcp", "grpc")


def open_store(db: str | Path, **options):
    """Open an existing index for search."""
    if is_milvus_uri(str(db)):
        from .milvus import MilvusStore

        return MilvusStore(str(db), **options)
    from .local import LocalStore

    return LocalStore(db, **options)
