"""Arrow IPC files a segment keeps (its metadata, ids and texts): written once, then read either
memory-mapped, so that the page cache holds them, or whole into RAM, so that a small segment
holds no file open."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..errors import StoreError


def write_table(path: Path, table: pa.Table) -> None:
    """``table`` as an Arrow IPC file (flushed; the caller fsyncs)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_table(path: Path, mapped: bool, what: str) -> pa.Table:
    """A table written by :func:`write_table`, memory-mapped or read into RAM; ``what`` names the
    file in the error a damaged one gets."""
    try:
        if not mapped:
            return pa.ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid as exc:
        raise StoreError(f"{path}: not a readable {what} ({exc}); re-index it") from None
