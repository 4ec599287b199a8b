"""A segment's document ids and texts as Arrow string columns.

Ten million ids held as Python strings take most of a gigabyte of the heap, and their texts far
more. An Arrow column holds only the UTF-8 bytes and their offsets, and a large segment's column is
memory-mapped from its file, so the page cache holds it, not the heap. A search turns only the
rows it answers with into Python strings."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StoreError
from .arrow_files import read_table, write_table

STRING_TYPE = pa.large_string()  # 64-bit offsets: no 2 GiB ceiling on a segment's texts
DICT_LOOKUP_ROWS = 65_536  # a column of at most this many ids is looked up through a dict; a longer one by bisection


def string_column(values: Sequence[str]) -> pa.Array:
    """``values`` as one Arrow string column."""
    values = values if isinstance(values, list) else list(values)
    try:
        return pa.array(values, type=STRING_TYPE)
    except UnicodeEncodeError:
        bad = next(i for i, value in enumerate(values) if not _is_unicode(value))
        raise StoreError(f"{values[bad]!r} (item {bad + 1}) is not valid Unicode: it holds a lone surrogate") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"ids and texts must be strings ({exc})") from None


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def take_strings(column: pa.Array, rows: np.ndarray) -> list[str]:
    """The strings at ``rows`` of ``column``, as Python strings, in the order of ``rows``."""
    if not len(rows):
        return []
    return column.take(pa.array(np.asarray(rows, np.int64))).to_pylist()


def concat_columns(columns: Sequence[pa.Array]) -> pa.Array:
    """One column of ``columns`` in order (a copy, as compaction writes it)."""
    return pa.concat_arrays(list(columns))


def write_strings(path: Path, column: pa.Array) -> None:
    """``column`` as an Arrow IPC file of one column (flushed; the caller fsyncs)."""
    write_table(path, pa.table({"value": column}))


def read_strings(path: Path, mapped: bool) -> pa.Array:
    """A column written by :func:`write_strings`: memory-mapped (``mapped``), or read into RAM so
    that a small segment holds no file open."""
    table = read_table(path, mapped, "string column")
    if table.num_columns != 1 or table.schema.field(0).type != STRING_TYPE:
        raise StoreError(f"{path}: not a string column (schema {table.schema}); re-index it")
    column = table.column(0)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def read_legacy_ids(path: Path) -> pa.Array:
    """Ids from an ``ids.json`` (a JSON list), as segments written by earlier versions keep them."""
    return string_column(json.loads(path.read_text(encoding="utf-8")))


def read_legacy_texts(path: Path) -> pa.Array:
    """Texts from a ``texts.jsonl`` (one JSON string a line), as earlier versions kept them."""
    with open(path, encoding="utf-8") as handle:
        return string_column([json.loads(line) for line in handle])


class IdLookup:
    """Finds ids in one segment's id column, built on first use. A short column gets a dict; a
    long one (where a dict of Python strings would cost more than the rest of the index) gets only
    its sort order, searched by bisection for every asked id at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, int] | None = None
        self._order: np.ndarray | None = None  # rows in id order (UTF-8 byte order, which is code point order)

    def rows_of(self, column: pa.Array, doc_ids: Sequence[str]) -> np.ndarray:
        """The row of each of ``doc_ids`` in ``column`` (-1 where absent)."""
        with self._lock:
            if self._by_id is None and self._order is None:
                if len(column) <= DICT_LOOKUP_ROWS:
                    self._by_id = {doc_id: row for row, doc_id in enumerate(column.to_pylist())}
                else:
                    self._order = np.asarray(pc.sort_indices(column), dtype=np.int64)
        if self._by_id is not None:
            return np.fromiter((self._by_id.get(doc_id, -1) for doc_id in doc_ids), np.int64, len(doc_ids))
        return _bisect(column, self._order, list(doc_ids))


def _bisect(column: pa.Array, order: np.ndarray, doc_ids: list[str]) -> np.ndarray:
    """Bisection of every id at once: each step reads one probe per id still searching."""
    low = np.zeros(len(doc_ids), np.int64)
    high = np.full(len(doc_ids), len(order), np.int64)
    while (searching := np.flatnonzero(low < high)).size:
        middle = (low[searching] + high[searching]) // 2
        probes = take_strings(column, order[middle])
        below = np.fromiter((p < doc_ids[i] for p, i in zip(probes, searching.tolist())), bool, len(probes))
        low[searching[below]] = middle[below] + 1
        high[searching[~below]] = middle[~below]
    rows = np.full(len(doc_ids), -1, np.int64)
    inside = np.flatnonzero(low < len(order))
    candidates = order[low[inside]]
    same = np.fromiter(
        (found == doc_ids[i] for found, i in zip(take_strings(column, candidates), inside.tolist())), bool, len(inside)
    )
    rows[inside[same]] = candidates[same]
    return rows
