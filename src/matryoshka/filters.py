"""Metadata filters: one JSON syntax, checked against the index's fields, run as a row mask
(``pyarrow.compute``) or as a Milvus boolean expression.

The syntax is MongoDB's, as Chroma and Pinecone use it::

    {"lang": "en", "year": {"$gte": 2020}, "tags": {"$in": ["a", "b"]}}
    {"$or": [{"lang": "en"}, {"$not": {"year": {"$lt": 2000}}}]}

A field maps to a value (``$eq``) or to an object of operators, all of which must hold:
``$eq $ne $gt $gte $lt $lte $in $nin``; ``$and`` and ``$or`` take lists of filters, ``$not`` one
filter; keys side by side must all hold. On a list field ``$eq`` means "holds this string",
``$in`` "holds one of these", ``$ne`` and ``$nin`` their opposites; a list has no order, so no
``$gt``. As in MongoDB, a document without the field matches ``$ne`` and ``$nin`` (and ``$not``
of anything it does not match), and no other operator.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FilterError
from .metadata import (
    BOOLEAN,
    FLOAT,
    INT64,
    INTEGER,
    LIST,
    STRING,
    TYPE_NAMES,
    MetadataError,
    check_string,
    column,
)

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
LOGICAL = ("$and", "$or", "$not")
ORDERED = ("$gt", "$gte", "$lt", "$lte")
MAX_DEPTH = 32
MAX_CONDITIONS = 1000
MAX_VALUES = 10_000  # in one $in / $nin list
MAX_FILTER_BYTES = 1_000_000
OPPOSITE = {"$eq": "$ne", "$ne": "$eq", "$in": "$nin", "$nin": "$in"}


@dataclass(frozen=True)
class Condition:
    field: str
    kind: str  # the field's metadata type
    op: str  # one of COMPARISONS
    value: object  # a scalar, or a tuple for $in / $nin


@dataclass(frozen=True)
class AllOf:
    parts: tuple


@dataclass(frozen=True)
class AnyOf:
    parts: tuple


@dataclass(frozen=True)
class Not:
    part: object


Node = Condition | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Filter:
    """A checked filter. ``key`` is its canonical JSON with the types its fields had when it was
    parsed: equal filters have equal keys (what the server's micro-batcher and the masks' cache
    group by), and a filter parsed before a field widened to float keeps a key of its own (an
    integer field's bounds are exact, a float field's are doubles)."""

    root: Node
    key: str

    @property
    def fields(self) -> set[str]:
        found: set[str] = set()
        _collect_fields(self.root, found)
        return found


def _collect_fields(node: Node, found: set[str]) -> None:
    if isinstance(node, Condition):
        found.add(node.field)
    elif isinstance(node, Not):
        _collect_fields(node.part, found)
    else:
        for part in node.parts:
            _collect_fields(part, found)


def parse_filter(spec: object, schema: Mapping[str, str]) -> Filter | None:
    """Check ``spec`` (a dict, or its JSON text) against the index's ``schema``; ``None`` (no
    filter) for ``None`` or ``{}``. A FilterError names the place: ``filter.year.$gte``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if len(spec.encode("utf-8", "surrogatepass")) > MAX_FILTER_BYTES:
            raise FilterError(f"the filter is longer than {MAX_FILTER_BYTES:,} bytes")
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise FilterError(f"the filter is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(spec, dict):
        raise FilterError(f'a filter is a JSON object like {{"lang": "en"}}, not {json_kind(spec)}')
    if not spec:
        return None
    parser = _Parser(schema)
    root = parser.node(spec, "filter", 1)
    found: set[str] = set()
    _collect_fields(root, found)
    key = {"filter": _canonical(root), "types": {name: schema[name] for name in found}}
    return Filter(root, json.dumps(key, sort_keys=True, ensure_ascii=False))


def json_kind(value: object, array: str = "a list") -> str:
    """What a decoded JSON value is, in words for an error message (``array``: what to call a list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return array
    return "an object"


class _Parser:
    def __init__(self, schema: Mapping[str, str]) -> None:
        self.schema = schema
        self.conditions = 0

    def node(self, spec: object, where: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FilterError(f"{where}: the filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(spec, dict):
            raise FilterError(f"{where} must be a filter object, not {json_kind(spec)}")
        if not spec:
            raise FilterError(f"{where} is an empty object; give at least one condition")
        parts = [self.entry(key, value, where, depth) for key, value in spec.items()]
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def entry(self, key: object, value: object, where: str, depth: int) -> Node:
        if not isinstance(key, str):
            raise FilterError(f"{where}: keys are field names or operators")
        place = f"{where}.{shown_key(key)}"
        if key.startswith("$"):
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{place} takes a non-empty list of filters, not {json_kind(value)}")
                parts = tuple(self.node(item, f"{place}[{i}]", depth + 1) for i, item in enumerate(value))
                return parts[0] if len(parts) == 1 else (AllOf(parts) if key == "$and" else AnyOf(parts))
            if key == "$not":
                return Not(self.node(value, place, depth + 1))
            if key in COMPARISONS:
                raise FilterError(f'{place}: {key} applies to a field, as in {{"year": {{"{key}": …}}}}')
            raise FilterError(f"{place}: unknown operator; use one of {', '.join(COMPARISONS + LOGICAL)}")
        if key not in self.schema:
            known = ", ".join(f"{n} ({t})" for n, t in self.schema.items()) or "none"
            raise FilterError(f"{place}: unknown field; this index's metadata fields: {known}")
        kind = self.schema[key]
        if isinstance(value, dict):
            if not value:
                raise FilterError(f"{place} is an empty object; give an operator such as $eq")
            conditions = []
            for op, operand in value.items():
                if not isinstance(op, str) or not op.startswith("$"):
                    raise FilterError(
                        f"{place}.{shown_key(op)} is not an operator; a field takes a value or operators such as $eq, $in"
                    )
                if op not in COMPARISONS:
                    raise FilterError(f"{place}.{shown_key(op)}: unknown operator; use one of {', '.join(COMPARISONS)}")
                conditions.append(self.condition(key, kind, op, operand, f"{place}.{op}"))
            return conditions[0] if len(conditions) == 1 else AllOf(tuple(conditions))
        return self.condition(key, kind, "$eq", value, place)

    def condition(self, field: str, kind: str, op: str, value: object, place: str) -> Condition:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"the filter has more than {MAX_CONDITIONS} conditions")
        if op in ORDERED and kind in (LIST, BOOLEAN):
            raise FilterError(
                f"{place}: field {field!r} is {TYPE_NAMES[kind]}, which has no order; use $eq, $ne, $in, $nin"
            )
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise FilterError(f"{place} takes a list of values, not {json_kind(value)}")
            if len(value) > MAX_VALUES:
                raise FilterError(f"{place} lists more than {MAX_VALUES:,} values")
            items = [self.scalar(field, kind, item, f"{place}[{i}]") for i, item in enumerate(value)]
            if kind == INTEGER:  # an integer field holds no 2.5 and no 1e19: such values match nothing
                items = [n for n in map(as_int64, items) if n is not None]
            return Condition(field, kind, op, tuple(sorted(set(items), key=_sort_key)))
        if isinstance(value, list):
            hint = "$in" if op == "$eq" else "$nin" if op == "$ne" else op
            raise FilterError(f"{place}: a list is not {TYPE_NAMES[kind]}; to match any of several values use {hint}")
        value = self.scalar(field, kind, value, place)
        if kind == INTEGER and op in ("$eq", "$ne"):
            value = as_int64(value)
            if value is None:  # equal to no int64: $eq matches nothing, $ne everything
                return Condition(field, kind, "$in" if op == "$eq" else "$nin", ())
        return Condition(field, kind, op, value)

    def scalar(self, field: str, kind: str, value: object, place: str) -> object:
        wanted = STRING if kind == LIST else kind
        ok = {
            STRING: isinstance(value, str),
            BOOLEAN: isinstance(value, bool),
            INTEGER: isinstance(value, (int, float)) and not isinstance(value, bool),
            FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
        }[wanted]
        if not ok:
            raise FilterError(
                f"{place}: field {field!r} is {TYPE_NAMES[kind]}; {json_kind(value)} cannot be compared with it"
            )
        if isinstance(value, float) and not np.isfinite(value):
            raise FilterError(f"{place}: not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise FilterError(f"{place}: {value} does not fit in 64 bits")
        if kind == FLOAT:
            return float(value)
        if isinstance(value, str):
            try:
                check_string(value, place)
            except MetadataError as exc:
                raise FilterError(f"{exc}, so it matches no metadata value") from None
        return value


def as_int64(value: int | float) -> int | None:
    """The int64 equal to ``value`` (an int, or a float such as ``2.0``), or ``None`` when none is
    (``2.5``, ``1e19``)."""
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return value if INT64[0] <= value <= INT64[1] else None


def integer_bound(op: str, value: int | float) -> tuple[str, int] | bool:
    """``x <op> value`` over every int64 ``x`` (``op`` one of ``$gt $gte $lt $lte``), computed
    exactly: ``("$gte", low)`` or ``("$lte", high)`` with a bound in int64's range, or ``True``
    (every integer holds) / ``False`` (none does). A float bound is an exact rational, so
    ``2000.5`` becomes ``>= 2001`` and ``1e19`` lies past every int64; comparing as doubles
    instead would round integers past 2^53 (and Arrow refuses to make them doubles)."""
    if op in ("$gt", "$gte"):
        low = math.floor(value) + 1 if op == "$gt" else math.ceil(value)
        if low > INT64[1]:
            return False
        return True if low <= INT64[0] else ("$gte", low)
    high = math.ceil(value) - 1 if op == "$lt" else math.floor(value)
    if high < INT64[0]:
        return False
    return True if high >= INT64[1] else ("$lte", high)


SHOWN_KEY = 40  # characters of an unknown key quoted back in an error


def shown_key(key: str) -> str:
    """A key as an error may show it: printable, never a lone surrogate, and short."""
    text = key.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= SHOWN_KEY else text[: SHOWN_KEY - 1] + "…"


def _sort_key(value: object) -> tuple:
    return (type(value).__name__, value)


def _canonical(node: Node) -> object:
    if isinstance(node, Condition):
        value = list(node.value) if isinstance(node.value, tuple) else node.value
        return {node.field: {node.op: value}}
    if isinstance(node, Not):
        return {"$not": _canonical(node.part)}
    return {"$and" if isinstance(node, AllOf) else "$or": [_canonical(p) for p in node.parts]}


# --------------------------------------------------------------------------- row masks


def row_mask(flt: Filter, table, rows: int) -> np.ndarray:
    """Which of ``rows`` rows of ``table`` (a pyarrow Table, or None: no metadata) match, as a
    boolean array: each condition is one vectorised column operation."""
    return _mask(flt.root, table, rows)


def _mask(node: Node, table, rows: int) -> np.ndarray:
    if isinstance(node, Condition):
        return _condition_mask(node, table, rows)
    if isinstance(node, Not):
        return ~_mask(node.part, table, rows)
    masks = [_mask(part, table, rows) for part in node.parts]
    return np.logical_and.reduce(masks) if isinstance(node, AllOf) else np.logical_or.reduce(masks)


def _condition_mask(node: Condition, table, rows: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column(table, node.field, node.kind)
    if table is None:  # a segment written before any metadata: every row lacks every field
        values = pa.nulls(rows, type=values.type)
    negated = node.op in ("$ne", "$nin")
    op = OPPOSITE[node.op] if negated else node.op
    floating = pa.types.is_floating(values.type)
    if node.kind == LIST:
        wanted = node.value if op == "$in" else (node.value,)
        matched = _lists_holding(values, wanted, rows)
    elif pa.types.is_integer(values.type) and op in ORDERED:  # an integer field: exact, whatever the bound
        bound = integer_bound(op, node.value)
        if bound is True:
            matched = _as_numpy(pc.is_valid(values))
        elif bound is False:
            matched = np.zeros(rows, bool)
        else:
            compare = pc.greater_equal if bound[0] == "$gte" else pc.less_equal
            matched = _as_numpy(pc.fill_null(compare(values, pa.scalar(bound[1], pa.int64())), False))
    else:  # a float field compares doubles: an integer past 2^53 in it is what float64 holds
        if op == "$in":
            items = [float(v) + 0.0 for v in node.value] if floating else list(node.value)
            if floating:  # -0.0 equals 0.0 (as in $eq), but is_in hashes the bits: make every zero +0.0
                values = pc.add(values, pa.scalar(0.0))
            result = pc.is_in(values, value_set=pa.array(items, type=values.type))
        else:
            scalar = pa.scalar(float(node.value) if floating else node.value, type=values.type)
            result = {
                "$eq": pc.equal,
                "$gt": pc.greater,
                "$gte": pc.greater_equal,
                "$lt": pc.less,
                "$lte": pc.less_equal,
            }[op](values, scalar)
        matched = _as_numpy(pc.fill_null(result, False))
    return ~matched if negated else matched


def _lists_holding(values, wanted: Sequence[str], rows: int) -> np.ndarray:
    """Which lists hold at least one of ``wanted``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], type=values.type)
    if not len(wanted) or not len(values):
        return np.zeros(rows, bool)
    hits = _as_numpy(pc.fill_null(pc.is_in(pc.list_flatten(values), value_set=pa.array(list(wanted))), False))
    parents = np.asarray(pc.list_parent_indices(values))
    return np.bincount(parents[hits], minlength=rows).astype(bool)


def _as_numpy(result) -> np.ndarray:
    import pyarrow as pa

    if isinstance(result, pa.ChunkedArray):
        return (
            np.concatenate([c.to_numpy(zero_copy_only=False) for c in result.chunks])
            if result.num_chunks
            else np.zeros(0, bool)
        )
    return result.to_numpy(zero_copy_only=False)


# --------------------------------------------------------------------------- Milvus expressions

PRESENT = "$has"  # in the match document: {field: true} for every field a document holds


LIST_KEY = "="  # prefixed to a list's strings as keys of its object in Milvus (a key may not be empty)
HEX, PLAIN = "hex", "plain"  # how a match document holds strings (see match_document)
LINE_BREAK = re.compile(r"[\r\n]")
UNFOUND_KEY = re.compile(r"[/\x00-\x1f]")  # a JSON key Milvus Lite never finds (a JSON pointer underneath)
INT64_MIN = f"({INT64[0] + 1} - 1)"  # Milvus reads -9223372036854775808 as -(2^63 - 1): 2^63 saturates first


def match_document(metadata: Mapping[str, object], schema: Mapping[str, str], strings: str = HEX) -> dict:
    """What Milvus filters on for one document (a JSON field): numbers and booleans as they are,
    strings as :func:`stored_string` writes them, a list as an object whose keys are its strings
    (each after ``=``), and which fields are present (Milvus Lite has no NOT, so a negated
    condition is rewritten with these; see :func:`milvus_expression`)."""
    document: dict = {PRESENT: {}}
    for name, value in metadata.items():
        if value is None:
            continue
        kind = schema.get(name)
        if kind == LIST:
            document[name] = {LIST_KEY + stored_string(item, strings): True for item in value}
        elif kind == STRING:
            document[name] = stored_string(value, strings)
        else:
            document[name] = float(value) if kind == FLOAT else value
        document[PRESENT][name] = True
    return document


def stored_string(text: str, strings: str = HEX) -> str:
    """A metadata string as a match document holds it: ``hex``, its UTF-8 bytes in hex, which
    Milvus matches whatever the string holds (no literal holds a line break, and no key holding
    ``/`` or a control character is ever found), and which keeps the strings' order (UTF-8 bytes
    sort as code points do), so ``$gt`` on strings still holds; ``plain``, as given (the layout
    of indexes built before)."""
    return text.encode("utf-8").hex() if strings == HEX else text


ALWAYS, NEVER = "row >= 0", "row < 0"


def milvus_expression(flt: Filter, path: str = "match", strings: str = HEX) -> str:
    """The filter as a Milvus boolean expression over the JSON field ``path`` holding
    :func:`match_document` (with ``strings`` as it was written); ``not`` is pushed down to the
    conditions (De Morgan), since Milvus Lite evaluates no ``not``. Milvus's ``!=`` and ``not
    in`` on JSON match a document without the key, which is exactly the $ne / $nin meaning
    above. A ValueError when ``plain`` strings hold what Milvus cannot match (the index must be
    built again)."""
    return _expression(flt.root, path, False, strings)


def milvus_string(text: str) -> str:
    """``text`` as a Milvus string literal: every string of an expression (ids, values, keys) is
    written by this. Measured on Milvus Lite: inside double quotes each character stands for
    itself (non-ASCII letters and emoji as UTF-8, ``'``, ``/``, tabs and other control
    characters) but ``\\`` and ``"``, written ``\\\\`` and ``\\"``; other escapes (``\\n``,
    ``\\t``, ``\\u00fc``) are not decoded in a compared value, and a line break ends the literal.
    So text holding CR or LF has no literal: a ValueError (callers encode such text, or look it
    up another way)."""
    if LINE_BREAK.search(text):
        raise ValueError(f"no Milvus string literal can hold a line break: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(name: str) -> str:
    """One step of a JSON path, ``["name"]``."""
    if UNFOUND_KEY.search(name):
        raise ValueError(f"Milvus finds no JSON key holding '/' or a control character: {name!r}")
    return f"[{milvus_string(name)}]"


def _literal(value: object) -> str:
    """A Milvus literal; numbers keep the type they are given (an integer literal is compared
    with JSON integers exactly, a float one as doubles; Milvus refuses a list of both)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return INT64_MIN if value == INT64[0] else str(value)
    return milvus_string(value)


def _expression(node: Node, path: str, negated: bool, strings: str) -> str:
    if isinstance(node, Not):
        return _expression(node.part, path, not negated, strings)
    if isinstance(node, (AllOf, AnyOf)):
        conjunction = isinstance(node, AllOf) != negated
        parts = [_expression(part, path, negated, strings) for part in node.parts]
        return joined(parts, "and" if conjunction else "or")
    return _condition_expression(node, path, negated, strings)


def joined(parts: list[str], conjunction: str) -> str:
    """``parts`` joined by ``and`` / ``or`` as a balanced tree: Milvus refuses a chain of a few
    dozen (it nests each step one level deeper)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f"({parts[0]} {conjunction} {parts[1]})"
    middle = len(parts) // 2
    return f"({joined(parts[:middle], conjunction)} {conjunction} {joined(parts[middle:], conjunction)})"


def _condition_expression(node: Condition, path: str, negated: bool, strings: str) -> str:
    field = path + _key(node.field)
    op = node.op
    if negated and op in OPPOSITE:
        op, negated = OPPOSITE[op], False
    if node.kind == LIST:
        holds = op in ("$eq", "$in")
        values = node.value if op in ("$in", "$nin") else (node.value,)
        tests = [f"{field}{_key(LIST_KEY + stored_string(v, strings))} {'==' if holds else '!='} true" for v in values]
        if not tests:
            return NEVER if holds else ALWAYS
        return joined(tests, "or" if holds else "and")
    if op in ("$eq", "$ne", "$in", "$nin"):
        listed = op in ("$in", "$nin")
        values = _values(node.kind, node.value if listed else (node.value,), strings)
        wanted = op in ("$eq", "$in")
        if not values:  # e.g. 2.5 or 1e19 for an integer field: equal to nothing
            return NEVER if wanted else ALWAYS
        if listed:
            return f"{field} {'in' if wanted else 'not in'} [{', '.join(values)}]"
        return f"{field} {'==' if wanted else '!='} {values[0]}"
    bound = _bound(node.kind, op, node.value, strings)
    if bound is None:  # no value of the field lies there
        return ALWAYS if negated else NEVER
    symbol, literal = bound
    if not negated:
        return f"{field} {symbol} {literal}"
    flipped = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}[symbol]
    return f"({field} {flipped} {literal} or {path}{_key(PRESENT)}{_key(node.field)} != true)"


def _values(kind: str, values: Sequence[object], strings: str) -> list[str]:
    """The literals of values compared for equality, of the field's type: an integer field's are
    the int64s among them (``2.0`` is 2; ``2.5`` and ``1e19`` equal no int64 and are left out),
    a float field's all floats, a string field's as stored."""
    if kind == INTEGER:
        return [_literal(n) for n in map(as_int64, values) if n is not None]
    if kind == FLOAT:
        return [_literal(float(v)) for v in values]
    if kind == STRING:
        return [_literal(stored_string(v, strings)) for v in values]
    return [_literal(v) for v in values]


def _bound(kind: str, op: str, value: object, strings: str) -> tuple[str, str] | None:
    """(symbol, literal) of an order comparison, exact for the field's type, or ``None`` when no
    value holds. On an integer field an integral bound is written as an integer (Milvus compares
    a float literal as a double, which rounds integers past 2^53: ``> 9007199254740992.0``
    would miss 2^53 + 1); a bound past int64 holds for every integer or none. A fractional
    bound stays a float: it lies within 2^53, where doubles order integers exactly."""
    symbol = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    if kind == STRING:
        return symbol, _literal(stored_string(value, strings))
    if kind == INTEGER:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            if (value > 0) == (op in ("$gt", "$gte")):
                return None
            return ("<=", _literal(INT64[1])) if value > 0 else (">=", _literal(INT64[0]))
        return symbol, _literal(value)
    return symbol, _literal(float(value))
