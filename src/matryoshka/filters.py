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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FilterError
from .metadata import BOOLEAN, FLOAT, INTEGER, LIST, STRING, TYPE_NAMES, MetadataError, check_string, column

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
    """A checked filter. ``key`` is its canonical JSON: equal filters have equal keys (what the
    server's micro-batcher and the masks' cache group by)."""

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
        raise FilterError(f'a filter is a JSON object like {{"lang": "en"}}, not {_kind(spec)}')
    if not spec:
        return None
    parser = _Parser(schema)
    root = parser.node(spec, "filter", 1)
    return Filter(root, json.dumps(_canonical(root), sort_keys=True, ensure_ascii=False))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _Parser:
    def __init__(self, schema: Mapping[str, str]) -> None:
        self.schema = schema
        self.conditions = 0

    def node(self, spec: object, where: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FilterError(f"{where}: the filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(spec, dict):
            raise FilterError(f"{where} must be a filter object, not {_kind(spec)}")
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
                    raise FilterError(f"{place} takes a non-empty list of filters, not {_kind(value)}")
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
                raise FilterError(f"{place} takes a list of values, not {_kind(value)}")
            if len(value) > MAX_VALUES:
                raise FilterError(f"{place} lists more than {MAX_VALUES:,} values")
            items = [self.scalar(field, kind, item, f"{place}[{i}]") for i, item in enumerate(value)]
            if kind == INTEGER:  # an integer field holds no 2.5: such values can match nothing
                items = [int(v) for v in items if float(v).is_integer()]
            return Condition(field, kind, op, tuple(sorted(set(items), key=_sort_key)))
        if isinstance(value, list):
            hint = "$in" if op == "$eq" else "$nin" if op == "$ne" else op
            raise FilterError(f"{place}: a list is not {TYPE_NAMES[kind]}; to match any of several values use {hint}")
        value = self.scalar(field, kind, value, place)
        if kind == INTEGER and op in ("$eq", "$ne"):
            if not float(value).is_integer():  # equal to no integer: $eq matches nothing, $ne everything
                return Condition(field, kind, "$in" if op == "$eq" else "$nin", ())
            value = int(value)
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
                f"{place}: field {field!r} is {TYPE_NAMES[kind]}; {_kind(value)} cannot be compared with it"
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
    else:
        if op == "$in":
            items = [float(v) for v in node.value] if floating else list(node.value)
            result = pc.is_in(values, value_set=pa.array(items, type=values.type))
        else:
            scalar = pa.scalar(float(node.value) if floating else node.value)
            if node.kind == INTEGER and isinstance(node.value, float):  # a range bound between integers
                values = values.cast(pa.float64())
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


def match_document(metadata: Mapping[str, object], schema: Mapping[str, str]) -> dict:
    """What Milvus filters on for one document (a JSON field): scalars as they are, a list as an
    object whose keys are its strings (each after ``=``), and which fields are present (Milvus
    Lite has no NOT, so a negated condition is rewritten with these; see :func:`milvus_expression`)."""
    document: dict = {PRESENT: {}}
    for name, value in metadata.items():
        if value is None:
            continue
        kind = schema.get(name)
        if kind == LIST:
            document[name] = {LIST_KEY + item: True for item in value}
        else:
            document[name] = float(value) if kind == FLOAT else value
        document[PRESENT][name] = True
    return document


ALWAYS, NEVER = "row >= 0", "row < 0"


def milvus_expression(flt: Filter, path: str = "match") -> str:
    """The filter as a Milvus boolean expression over the JSON field ``path`` holding
    :func:`match_document`; ``not`` is pushed down to the conditions (De Morgan), since Milvus
    Lite evaluates no ``not``. Milvus's ``!=`` and ``not in`` on JSON match a document without
    the key, which is exactly the $ne / $nin meaning above."""
    return _expression(flt.root, path, negated=False)


def _literal(value: object) -> str:
    """A Milvus literal; numbers keep the type the parser gave them (a float field's are all
    floats: Milvus refuses a list of ints and floats mixed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expression(node: Node, path: str, negated: bool) -> str:
    if isinstance(node, Not):
        return _expression(node.part, path, not negated)
    if isinstance(node, (AllOf, AnyOf)):
        conjunction = isinstance(node, AllOf) != negated
        return _joined([_expression(part, path, negated) for part in node.parts], "and" if conjunction else "or")
    return _condition_expression(node, path, negated)


def _joined(parts: list[str], conjunction: str) -> str:
    """``parts`` joined by ``and`` / ``or`` as a balanced tree: Milvus refuses a chain of a few
    dozen (it nests each step one level deeper)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f"({parts[0]} {conjunction} {parts[1]})"
    middle = len(parts) // 2
    return f"({_joined(parts[:middle], conjunction)} {conjunction} {_joined(parts[middle:], conjunction)})"


def _condition_expression(node: Condition, path: str, negated: bool) -> str:
    field = f"{path}[{_literal(node.field)}]"
    op = node.op
    if negated and op in OPPOSITE:
        op, negated = OPPOSITE[op], False
    if node.kind == LIST:
        holds = op in ("$eq", "$in")
        values = node.value if op in ("$in", "$nin") else (node.value,)
        tests = [f"{field}[{_literal(LIST_KEY + v)}] {'==' if holds else '!='} true" for v in values]
        if not tests:
            return NEVER if holds else ALWAYS
        return _joined(tests, "or" if holds else "and")
    if op in ("$in", "$nin"):
        if not node.value:
            return NEVER if op == "$in" else ALWAYS
        return f"{field} {'in' if op == '$in' else 'not in'} [{', '.join(_literal(v) for v in node.value)}]"
    symbol = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    if not negated:
        return f"{field} {symbol} {_literal(node.value)}"
    flipped = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}[symbol]
    return f"({field} {flipped} {_literal(node.value)} or {path}[{_literal(PRESENT)}][{_literal(node.field)}] != true)"
