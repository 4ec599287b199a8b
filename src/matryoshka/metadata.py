"""Metadata stored with every document: typed fields, one Arrow column each.

Every field a document carries beside its id and text becomes metadata. Each field has one type
for the whole index, inferred from the values and checked on every later write:

=============  ===========================  ======================
type           JSON values                  CSV/TSV cells
=============  ===========================  ======================
string         ``"en"``                     anything else
integer        ``2020``                     ``2020``
float          ``0.5`` (integers widen)     ``0.5``
boolean        ``true``                     ``true`` / ``false``
list           ``["a", "b"]`` (strings)     (not inferred)
=============  ===========================  ======================

A CSV/TSV column takes a type only when every non-empty cell reads as it; a number with a
leading zero (``007``, a zip code such as ``02134``) or an integer past 64 bits makes the whole
column strings, so that no digit is lost. A float field holds doubles: an integer past 2^53
written to one is the nearest double. A missing field or ``null`` (an empty CSV cell) is no
value. Values live in a ``pyarrow.Table`` per segment (an Arrow file on disk), so filters run as
vectorised column operations.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import MatryoshkaError

STRING, INTEGER, FLOAT, BOOLEAN, LIST = "string", "integer", "float", "boolean", "list"
FIELD_TYPES = (STRING, INTEGER, FLOAT, BOOLEAN, LIST)
TYPE_NAMES = {
    STRING: "a string",
    INTEGER: "an integer",
    FLOAT: "a number",
    BOOLEAN: "a boolean",
    LIST: "a list of strings",
}
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
RESERVED_FIELDS = ("id", "_id", "text")
MAX_STRING_BYTES = 4096  # one metadata string value
MAX_DOCUMENT_BYTES = 16_384  # all of one document's metadata, as JSON
INT64 = (-(2**63), 2**63 - 1)
FORBIDDEN_CHARACTERS = re.compile(r"[\n\r\x00]")  # Milvus cannot match a string holding these

Schema = dict[str, str]  # field name -> one of FIELD_TYPES, in first-seen order


class MetadataError(MatryoshkaError):
    """A metadata value that cannot be stored; the caller adds where it was (file and line, or
    document), from ``record`` where the raiser knows it."""

    def __init__(self, message: str, record: int | None = None) -> None:
        super().__init__(message)
        self.record = record


def check_field_name(name: str) -> str:
    if not isinstance(name, str) or not FIELD_NAME.match(name):
        raise MetadataError(
            f"metadata field name {name!r} is not allowed: use letters, digits, '_', '.' and '-', starting with "
            "a letter or '_', at most 64 characters"
        )
    return name


def check_string(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    if FORBIDDEN_CHARACTERS.search(value):
        raise MetadataError(f"{what} holds a line break or a NUL character; metadata strings are single lines")
    if len(value.encode("utf-8")) > MAX_STRING_BYTES:
        raise MetadataError(f"{what} is longer than {MAX_STRING_BYTES:,} bytes")
    return value


def type_of(value: object, field: str) -> str | None:
    """The metadata type of one JSON value (``None`` for null), or a MetadataError saying why it has none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise MetadataError(f"field {field!r}: {value} does not fit in 64 bits")
        return INTEGER
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(f"field {field!r} is not a finite number")
        return FLOAT
    if isinstance(value, str):
        check_string(value, f"field {field!r}")
        return STRING
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise MetadataError(
                    f"field {field!r} is a list holding {type(item).__name__}; a list field holds strings only"
                )
            check_string(item, f"field {field!r}")
        return LIST
    raise MetadataError(
        f"field {field!r} is {type(value).__name__}; metadata values are strings, numbers, booleans or lists of strings"
    )


def merged_type(known: str | None, found: str, field: str) -> str:
    """The type a field has once ``found`` joins the values of type ``known`` (integers widen to float)."""
    if known is None or known == found:
        return found
    if {known, found} == {INTEGER, FLOAT}:
        return FLOAT
    raise MetadataError(f"field {field!r} is {TYPE_NAMES[found]} here, but {TYPE_NAMES[known]} before")


def merge_schemas(base: Mapping[str, str], new: Mapping[str, str]) -> Schema:
    """``base`` with the fields of ``new`` (a field keeps one type; integers widen to float)."""
    merged = dict(base)
    for name, kind in new.items():
        merged[name] = merged_type(merged.get(name), kind, name)
    return merged


def check_schema(schema: object, where: str) -> Schema:
    """A stored schema, checked."""
    if not isinstance(schema, dict) or not all(isinstance(k, str) and v in FIELD_TYPES for k, v in schema.items()):
        raise MatryoshkaError(f"{where}: the metadata schema is not a map of field names to {', '.join(FIELD_TYPES)}")
    return dict(schema)


def check_size(record: Mapping[str, object]) -> None:
    """One document's metadata is at most MAX_DOCUMENT_BYTES as JSON (what a Milvus row holds easily)."""
    size = len(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise MetadataError(
            f"its metadata is {size:,} bytes as JSON; at most {MAX_DOCUMENT_BYTES:,} are stored per document"
        )


def infer_schema(
    records: Sequence[Mapping[str, object]], numbers: Sequence[int] | None = None, unit: str = "record"
) -> Schema:
    """Each field's type over ``records`` (JSON values), every value checked; a field with no
    value yet has no type. ``numbers`` name the records (their lines in a file; default 1, 2, …):
    a MetadataError carries the offending one as ``record``, and a type clash names the
    ``unit`` (``record``, ``line``) that set the field's type."""
    schema: Schema = {}
    first: dict[str, int] = {}
    for record, number in zip(records, numbers or range(1, len(records) + 1)):
        try:
            check_size(record)
            for name, value in record.items():
                check_field_name(name)
                found = type_of(value, name)
                if found is None:
                    continue
                try:
                    schema[name] = merged_type(schema.get(name), found, name)
                except MetadataError as exc:
                    raise MetadataError(f"{exc} ({unit} {first[name]})") from None
                first.setdefault(name, number)
        except MetadataError as exc:
            raise MetadataError(str(exc), record=number) from None
    return schema


INTEGER_CELL = re.compile(r"[+-]?[0-9]+")
NUMBER_CELL = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")
PADDED_CELL = re.compile(r"[+-]?0[0-9]")  # 007, 02134: a code whose zeros matter, not a number


def cell_value(cell: str) -> object:
    """A CSV/TSV cell as the JSON value it reads as: empty -> None, integers within int64, finite
    floats, true/false; anything else stays a string, as do numbers with leading zeros (``007``,
    a zip code such as ``02134``) and integers past int64 (an identifier, not a quantity: as a
    float it would lose digits). Only ASCII digits are numbers."""
    text = cell.strip()
    if not text:
        return None
    if PADDED_CELL.match(text):
        return cell
    if INTEGER_CELL.fullmatch(text):
        number = int(text)
        return number if INT64[0] <= number <= INT64[1] else cell
    if NUMBER_CELL.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return cell


def typed_cells(columns: Mapping[str, Sequence[str]]) -> dict[str, list[object]]:
    """CSV/TSV columns as typed values: a column is integer, float or boolean when every non-empty
    cell reads as one (integers and floats together are a float column), else every cell stays a
    string. So one cell such as ``02134`` or ``12345678901234567890`` (see :func:`cell_value`)
    makes its whole column strings, and ``2134`` in it stays the string ``"2134"``."""
    typed = {}
    for name, cells in columns.items():
        values = [cell_value(c) for c in cells]
        kinds = {type_of(v, name) for v in values} - {None}
        if len(kinds) > 1 and kinds != {INTEGER, FLOAT}:
            values = [c if c.strip() else None for c in cells]
        typed[name] = values
    return typed


def arrow_type(kind: str):
    import pyarrow as pa

    return {
        STRING: pa.string(),
        INTEGER: pa.int64(),
        FLOAT: pa.float64(),
        BOOLEAN: pa.bool_(),
        LIST: pa.list_(pa.string()),
    }[kind]


def to_table(records: Sequence[Mapping[str, object]], schema: Mapping[str, str]):
    """A ``pyarrow.Table`` of ``records`` with a column per field of ``schema`` (nulls where absent)."""
    import pyarrow as pa

    columns = {
        name: pa.array([_stored(record.get(name), kind) for record in records], type=arrow_type(kind))
        for name, kind in schema.items()
    }
    return pa.table(columns) if columns else empty_table(len(records))


def _stored(value: object, kind: str) -> object:
    if value is not None and kind == FLOAT:
        return float(value)
    return value


def empty_table(rows: int):
    """A table of ``rows`` rows and no columns."""
    import pyarrow as pa

    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def column(table, name: str, kind: str):
    """Column ``name`` of ``table`` as ``kind`` (all nulls if the table predates the field). A
    number column stays float where it holds floats, whatever ``kind`` says: a filter parsed
    before the field widened to float still reads it. An integer column read as a float field
    becomes float64 as it is: an integer past 2^53 is the nearest double, as a float field holds
    it (Arrow's safe cast would refuse it)."""
    import pyarrow as pa

    wanted = arrow_type(kind)
    if table is None or name not in table.column_names:
        return pa.nulls(0 if table is None else table.num_rows, type=wanted)
    values = table.column(name)
    if kind in (INTEGER, FLOAT) and pa.types.is_floating(values.type):
        wanted = pa.float64()
    if values.type == wanted:
        return values
    return values.cast(wanted, safe=not (pa.types.is_integer(values.type) and pa.types.is_floating(wanted)))


def concat_tables(tables: Iterable, schema: Mapping[str, str]):
    """Tables of some segments, one after the other, with every field of ``schema``: a table
    without a field gets nulls, an integer column of a field since widened becomes float. The
    columns' chunks are joined as they are (never through Python values, where a null list
    has no length)."""
    import pyarrow as pa

    tables = list(tables)
    columns = {
        name: pa.chunked_array(
            [chunk for t in tables for chunk in _chunks(column(t, name, kind))], type=arrow_type(kind)
        )
        for name, kind in schema.items()
    }
    rows = sum(t.num_rows for t in tables)
    return pa.table(columns) if columns else empty_table(rows)


def _chunks(values) -> list:
    import pyarrow as pa

    return values.chunks if isinstance(values, pa.ChunkedArray) else [values]


def rows_as_dicts(table, rows: np.ndarray, fields: Sequence[str] | None = None) -> list[dict]:
    """Metadata of ``rows`` of ``table`` as dicts, nulls left out; ``fields`` picks which."""
    if table is None or not len(rows):
        return [{} for _ in range(len(rows))]
    names = [n for n in (table.column_names if fields is None else fields) if n in table.column_names]
    picked = table.select(names).take(np.asarray(rows, np.int64)).to_pylist()
    return [{k: v for k, v in row.items() if v is not None} for row in picked]
