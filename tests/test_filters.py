"""Metadata filters: the syntax and its errors, the row masks and Milvus expressions against a
Python oracle (Hypothesis), and filtered search on every store against brute force at every
selectivity, with live writes, adapters, the command line and a real model."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from matryoshka.errors import DataError, FilterError, StoreError
from matryoshka.filters import milvus_expression, parse_filter, row_mask
from matryoshka.funnel import Schedule, funnel_search
from matryoshka.index import Index, build_index
from matryoshka.metadata import infer_schema, to_table
from matryoshka.stores import open_store
from matryoshka.vectors import normalize

SCHEMA = {"lang": "string", "year": "integer", "score": "float", "ok": "boolean", "tags": "list"}
WORDS = ["en", "fr", "é", 'q"x', "a\\b", "it's", "中文", "$x", "t\tab", ""]
TAGS = ["a", "b", "c", 'd"q', "ü"]


# --------------------------------------------------------------------------- the oracle


def matches(spec: dict, doc: dict, schema: dict | None = None) -> bool:
    """What the filter means, written plainly (MongoDB's semantics). Python compares an int with
    a float exactly, so an integer field's answers are exact; a float field (``schema``, default
    SCHEMA) holds doubles, so its values and operands are taken as Python floats first."""
    schema = SCHEMA if schema is None else schema
    for key, value in spec.items():
        if key == "$and":
            ok = all(matches(part, doc, schema) for part in value)
        elif key == "$or":
            ok = any(matches(part, doc, schema) for part in value)
        elif key == "$not":
            ok = not matches(value, doc, schema)
        else:
            conditions = value if isinstance(value, dict) else {"$eq": value}
            actual = doc.get(key)
            if schema.get(key) == "float":
                actual = None if actual is None else float(actual)
                conditions = {
                    op: [float(v) for v in x] if isinstance(x, list) else float(x) for op, x in conditions.items()
                }
            ok = all(holds(actual, op, operand) for op, operand in conditions.items())
        if not ok:
            return False
    return True


def holds(actual, op: str, operand) -> bool:
    if isinstance(actual, list):  # a list field: $eq / $in mean "holds"
        if op in ("$eq", "$ne"):
            return (operand in actual) == (op == "$eq")
        return any(x in actual for x in operand) == (op == "$in")
    if actual is None:
        return op in ("$ne", "$nin")
    return {
        "$eq": lambda: actual == operand,
        "$ne": lambda: actual != operand,
        "$gt": lambda: actual > operand,
        "$gte": lambda: actual >= operand,
        "$lt": lambda: actual < operand,
        "$lte": lambda: actual <= operand,
        "$in": lambda: actual in operand,
        "$nin": lambda: actual not in operand,
    }[op]()


# --------------------------------------------------------------------------- strategies

VALUES = {
    "lang": st.sampled_from(WORDS),
    "year": st.integers(-3, 3),
    "score": st.sampled_from([-1.5, 0.0, 0.25, 1.0, 2.0]),
    "ok": st.booleans(),
    "tags": st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
}
documents = st.fixed_dictionaries({}, optional={name: st.one_of(st.none(), values) for name, values in VALUES.items()})


def conditions(field: str):
    value = VALUES[field] if field != "tags" else st.sampled_from(TAGS)
    ops = ["$eq", "$ne", "$in", "$nin"] + ([] if field in ("ok", "tags") else ["$gt", "$gte", "$lt", "$lte"])
    return st.sampled_from(ops).flatmap(
        lambda op: (st.lists(value, max_size=3) if op in ("$in", "$nin") else value).map(lambda v: {op: v})
    )


leaves = st.sampled_from(list(SCHEMA)).flatmap(
    lambda field: st.one_of(
        conditions(field).map(lambda c: {field: c}),
        (VALUES[field] if field != "tags" else st.sampled_from(TAGS)).map(lambda v: {field: v}),
    )
)


def combined(leaf_strategy):
    """Filters built from ``leaf_strategy``'s conditions with $and, $or and $not, a few levels deep."""
    return st.recursive(
        leaf_strategy,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"$and": parts}),
            st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"$or": parts}),
            inner.map(lambda part: {"$not": part}),
        ),
        max_leaves=6,
    )


filters = combined(leaves)


# Hostile values: strings and list items with non-ASCII and control characters (all a metadata
# string may hold: no line break, NUL or lone surrogate), int64's ends and 2^53's neighbours,
# -0.0, doubles far outside int64, float bounds on the integer field, and documents lacking fields.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BIG_INTEGERS = [INT64_MIN, INT64_MIN + 1, -(2**53) - 1, 2**53, 2**53 + 1, 12345678901234567, INT64_MAX - 1, INT64_MAX]
FLOAT_BOUNDS = [2000.5, -0.5, 0.5, -0.0, 1e19, -1e19, 9007199254740992.0, 2.0**63, -(2.0**63), 1e300, -1e300, 5e-324]
HOSTILE_WORDS = WORDS + ["\x01", "\x7f", "\x1b[0m", "\u2028", "\x85", "e\u0301", "\u200b", "🙂", " ", "=", "ﬀ"]
hostile_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=4)
hostile_words = st.one_of(st.sampled_from(HOSTILE_WORDS), hostile_text)
hostile_tags = st.one_of(st.sampled_from(TAGS + ["", "=", "\x01", "🙂", "\u2028", "é", "e\u0301"]), hostile_text)
hostile_integers = st.one_of(
    st.integers(-3, 3), st.sampled_from(BIG_INTEGERS + [2000, 2001]), st.integers(INT64_MIN, INT64_MAX)
)
hostile_floats = st.one_of(  # what a float field holds (JSON integers widen)
    st.sampled_from([-0.0, 0.0, 0]),
    st.sampled_from([-1.5, 0.25, 2.0, 2000.5, 1e300, -1e-300, 5e-324, 9007199254740992.0]),
    st.sampled_from(BIG_INTEGERS + [0, 2]),
    st.floats(allow_nan=False, allow_infinity=False),
)
HOSTILE_VALUES = {
    "lang": hostile_words,
    "year": hostile_integers,
    "score": hostile_floats,
    "ok": st.booleans(),
    "tags": st.lists(hostile_tags, max_size=3, unique=True),
}
HOSTILE_OPERANDS = {  # what a filter compares each field with
    "lang": hostile_words,
    "year": st.one_of(hostile_integers, st.sampled_from(FLOAT_BOUNDS)),
    "score": st.one_of(st.sampled_from([0, -0.0]), hostile_floats, hostile_integers, st.sampled_from(FLOAT_BOUNDS)),
    "ok": st.booleans(),
    "tags": hostile_tags,
}
hostile_documents = st.fixed_dictionaries(
    {}, optional={name: st.one_of(st.none(), values) for name, values in HOSTILE_VALUES.items()}
)


HOSTILE_LEAVES = [  # (field, operator) pairs, drawn evenly; None: the field maps to a bare value
    (field, op)
    for field in SCHEMA
    for op in (None, "$eq", "$ne", "$in", "$nin") + (() if field in ("ok", "tags") else ("$gt", "$gte", "$lt", "$lte"))
]


def hostile_leaf(field: str, op: str | None):
    value = HOSTILE_OPERANDS[field]
    if op is None:
        return value.map(lambda v: {field: v})
    operand = st.lists(value, max_size=3) if op in ("$in", "$nin") else value
    return operand.map(lambda v: {field: {op: v}})


hostile_leaves = st.sampled_from(HOSTILE_LEAVES).flatmap(lambda pair: hostile_leaf(*pair))
hostile_filters = combined(hostile_leaves)
BIG_YEAR = [{"year": 12345678901234567}, {"year": 2001}, {"year": INT64_MIN}, {"year": 2**53 + 1}, {}]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(hostile_documents, min_size=1, max_size=30), spec=hostile_filters)
@example(docs=BIG_YEAR, spec={"year": {"$gt": 2000.5}})  # issue 21 row 3: no double can hold these
@example(docs=BIG_YEAR, spec={"year": 1e19})
@example(docs=BIG_YEAR, spec={"year": {"$in": [1e19, -(2.0**63)]}})
@example(docs=BIG_YEAR, spec={"$or": [{"year": {"$lte": 9007199254740992.0}}, {"year": {"$gte": -1e19}}]})
@example(docs=[{"score": -0.0}, {"score": 0.0}, {}], spec={"score": {"$in": [0]}})  # row 6: -0.0 == 0
@example(docs=[{"score": -0.0}, {"score": 0.0}, {}], spec={"score": {"$nin": [-0.0]}})
def test_row_masks_match_the_oracle(docs, spec):
    table = to_table(docs, SCHEMA)
    mask = row_mask(parse_filter(spec, SCHEMA), table, len(docs))
    assert mask.tolist() == [matches(spec, doc) for doc in docs]


number_documents = st.fixed_dictionaries(
    {}, optional={"year": st.one_of(st.none(), hostile_integers), "score": st.one_of(st.none(), hostile_floats)}
)
number_leaves = st.sampled_from([pair for pair in HOSTILE_LEAVES if pair[0] in ("year", "score")]).flatmap(
    lambda pair: hostile_leaf(*pair)
)


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(number_documents, min_size=1, max_size=12), spec=number_leaves)
@example(docs=BIG_YEAR, spec={"year": {"$lt": 1e19}})
@example(docs=[{"score": -0.0}, {"score": 0}], spec={"score": {"$in": [0.0]}})
def test_number_masks_match_the_oracle_exactly(docs, spec):
    """Every comparison of a number field, dense: int64's ends against float bounds, -0.0 in $in."""
    table = to_table(docs, SCHEMA)
    mask = row_mask(parse_filter(spec, SCHEMA), table, len(docs))
    assert mask.tolist() == [matches(spec, doc) for doc in docs]


@settings(max_examples=50, deadline=None)
@given(spec=hostile_filters)
def test_a_filter_and_its_json_text_parse_to_the_same_key(spec):
    assert parse_filter(spec, SCHEMA).key == parse_filter(json.dumps(spec), SCHEMA).key


def random_documents(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        doc = {}
        if rng.random() < 0.8:
            doc["lang"] = WORDS[rng.integers(len(WORDS))]
        if rng.random() < 0.8:
            doc["year"] = int(rng.integers(-3, 4))
        if rng.random() < 0.8:
            doc["score"] = [-1.5, 0.0, 0.25, 1.0, 2.0][rng.integers(5)]
        if rng.random() < 0.7:
            doc["ok"] = bool(rng.random() < 0.5)
        if rng.random() < 0.8:
            doc["tags"] = [str(t) for t in rng.choice(TAGS, size=rng.integers(0, 4), replace=False)]
        docs.append(doc)
    return docs


def unit(rng: np.random.Generator, count: int, dim: int = 16) -> np.ndarray:
    return normalize(rng.standard_normal((count, dim)).astype(np.float32))


class MilvusTranslation:
    """A small index in Milvus whose filtered exact search answers which documents match."""

    def __init__(self, db: str, docs: list[dict]) -> None:
        rng = np.random.default_rng(3)
        self.docs = docs
        ids = [f"d{i}" for i in range(len(docs))]
        build_index(db, ids, [""] * len(docs), vectors=unit(rng, len(docs)), metadata=docs, schema=SCHEMA, k=5)
        self.index = Index(db)
        self.query = unit(rng, 1)

    def matching(self, spec: dict) -> set[str]:
        result = self.index.search_vectors(self.query, len(self.docs), exact=True, filter=spec)
        return {i for i in self.index.hits(result)[0].ids}

    def expected(self, spec: dict) -> set[str]:
        return {f"d{i}" for i, doc in enumerate(self.docs) if matches(spec, doc)}


@pytest.fixture(scope="module")
def lite_translation(tmp_path_factory):
    translation = MilvusTranslation(str(tmp_path_factory.mktemp("lite") / "filters.db"), random_documents(300, 1))
    yield translation
    translation.index.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=filters)
def test_milvus_lite_expressions_match_the_oracle(lite_translation, spec):
    assert lite_translation.matching(spec) == lite_translation.expected(spec), milvus_expression(
        parse_filter(spec, SCHEMA)
    )


def test_milvus_server_expressions_match_the_oracle(milvus_server):
    translation = MilvusTranslation(milvus_server, random_documents(300, 2))
    try:
        for spec in filters_sample(80, seed=5):
            assert translation.matching(spec) == translation.expected(spec), spec
    finally:
        translation.index.close()


def filters_sample(count: int, seed: int) -> list[dict]:
    """Random filters drawn with a seed (a session-wide server is no place for Hypothesis's shrinking)."""
    rng = np.random.default_rng(seed)
    return [_random_filter(rng, 3) for _ in range(count)]


def _random_filter(rng: np.random.Generator, depth: int) -> dict:
    if depth and rng.random() < 0.4:
        kind = ["$and", "$or", "$not"][rng.integers(3)]
        if kind == "$not":
            return {"$not": _random_filter(rng, depth - 1)}
        return {kind: [_random_filter(rng, depth - 1) for _ in range(rng.integers(1, 4))]}
    field = list(SCHEMA)[rng.integers(len(SCHEMA))]
    pool = {
        "lang": WORDS,
        "year": [-3, -1, 0, 2, 3],
        "score": [-1.5, 0.0, 0.25, 2.0],
        "ok": [True, False],
        "tags": TAGS,
    }[field]
    ops = ["$eq", "$ne", "$in", "$nin"] + ([] if field in ("ok", "tags") else ["$gt", "$gte", "$lt", "$lte"])
    op = ops[rng.integers(len(ops))]
    if op in ("$in", "$nin"):
        value = [pool[i] for i in rng.choice(len(pool), size=rng.integers(0, 3), replace=False)]
    else:
        value = pool[rng.integers(len(pool))]
    return {field: {op: value}}


# --------------------------------------------------------------------------- errors


def nested_not(depth: int) -> dict:
    spec: dict = {"lang": "en"}
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "is a JSON object"),
        ({"$foo": 1}, "filter.$foo: unknown operator; use one of $eq"),
        ({"year": {"$foo": 1}}, "filter.year.$foo: unknown operator; use one of $eq"),
        ({"year": {"gte": 1}}, "filter.year.gte is not an operator"),
        ({"\ud800x" * 30: 1}, "filter.\\ud800x\\ud800x"),
        ({"lang": {"$\ud800": 1}}, "filter.lang.$\\ud800: unknown operator"),
        ({"$eq": 1}, "filter.$eq: $eq applies to a field"),
        ({"yeer": 1}, "filter.yeer: unknown field; this index's metadata fields: lang (string), year"),
        ({"year": "2020"}, "filter.year: field 'year' is an integer; a string cannot"),
        ({"year": True}, "filter.year: field 'year' is an integer; a boolean cannot"),
        ({"lang": 3}, "filter.lang: field 'lang' is a string; a number cannot"),
        ({"ok": 1}, "filter.ok: field 'ok' is a boolean; a number cannot"),
        ({"tags": 1}, "filter.tags: field 'tags' is a list of strings; a number cannot"),
        ({"lang": ["en", "fr"]}, "to match any of several values use $in"),
        ({"lang": {"$in": "en"}}, "filter.lang.$in takes a list of values, not a string"),
        ({"lang": {"$in": ["en", 3]}}, "filter.lang.$in[1]: field 'lang' is a string"),
        ({"tags": {"$gt": "a"}}, "filter.tags.$gt: field 'tags' is a list of strings, which has no order"),
        ({"ok": {"$lt": True}}, "filter.ok.$lt: field 'ok' is a boolean, which has no order"),
        ({"$and": {"lang": "en"}}, "filter.$and takes a non-empty list of filters, not an object"),
        ({"$or": []}, "filter.$or takes a non-empty list"),
        ({"$not": ["x"]}, "filter.$not must be a filter object, not a list"),
        ({"$and": [{}]}, "filter.$and[0] is an empty object"),
        ({"year": {}}, "filter.year is an empty object"),
        ({"lang": {"$eq": None}}, "filter.lang.$eq: field 'lang' is a string; null cannot be compared"),
        ({"score": {"$gt": float("nan")}}, "filter.score.$gt: not a finite number"),
        ({"year": {"$gt": 2**70}}, "does not fit in 64 bits"),
        ({"lang": "two\nlines"}, "line break"),
        ({"lang": "\ud800"}, "lone surrogate"),
        ({"lang": {"$in": ["x"] * 10_001}}, "more than 10,000 values"),
        (nested_not(33), "deeper than 32 levels"),
        (
            {"$or": [{"year": {"$in": list(range(1000))}}] + [{"year": i} for i in range(1001)]},
            "more than 1000 conditions",
        ),
    ],
)
def test_every_invalid_filter_gets_an_error_naming_it(spec, message):
    with pytest.raises(FilterError, match=None) as caught:
        parse_filter(spec, SCHEMA)
    assert message in str(caught.value)


def test_an_empty_filter_is_no_filter():
    assert parse_filter({}, SCHEMA) is None and parse_filter(None, SCHEMA) is None


# --------------------------------------------------------------------------- metadata types


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"text": "a", "year": 2020}', '{"text": "b", "year": "2021"}'],
            ":2: field 'year' is a string here, but an integer before (line 1)",
        ),
        (['{"text": "a", "tags": ["x", 1]}'], ":1: field 'tags' is a list holding int"),
        (['{"text": "a", "where": {"city": "x"}}'], ":1: field 'where' is dict"),
        (['{"text": "a", "bad name": 1}'], ":1: metadata field name 'bad name' is not allowed"),
        (['{"text": "a", "x": NaN}'], ":1: field 'x' is not a finite number"),
        (['{"text": "a", "x": "two\\nlines"}'], ":1: field 'x' holds a line break"),
        (['{"text": "a", "x": 99999999999999999999}'], ":1: field 'x': 99999999999999999999 does not fit in 64 bits"),
    ],
)
def test_metadata_that_cannot_be_stored_names_its_file_and_line(tmp_path, lines, message):
    from matryoshka.data import read_texts

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        read_texts(path)
    assert str(caught.value) == f"{path}{message}" or message in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_csv_columns_are_typed_and_json_fields_keep_their_types(tmp_path):
    from matryoshka.data import read_texts

    csv = tmp_path / "docs.csv"
    csv.write_text("id,text,lang,year,score,ok,note\n1,a,en,2020,0.5,true,x\n2,b,,2019,1,false,12\n3,c,fr,,,,\n")
    corpus = read_texts(csv)
    assert corpus.schema == {"lang": "string", "year": "integer", "score": "float", "ok": "boolean", "note": "string"}
    assert corpus.metadata[1] == {"lang": None, "year": 2019, "score": 1, "ok": False, "note": "12"}
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "a", "n": 1, "tags": []}\n{"text": "b", "n": 2.5, "title": "T"}\n')
    corpus = read_texts(jsonl)
    assert corpus.schema == {"n": "float", "tags": "list", "title": "string"}
    assert infer_schema([{"a": None}, {"a": None}]) == {}  # no value yet: no type


# --------------------------------------------------------------------------- filtered search on every store

COUNT, DIM, HEAD = 10_000, 32, 8
SELECTIVITIES = {  # share of the corpus passing -> filter
    "100%": {"bucket": {"$gte": 0}},
    "50%": {"bucket": {"$lt": 5000}},
    "5%": {"$and": [{"bucket": {"$lt": 1000}}, {"parity": "even"}]},
    "0.5%": {"$or": [{"bucket": {"$lt": 25}}, {"tags": {"$in": ["rare"]}}]},
    "0.01%": {"bucket": 7},
}


def head_exact_corpus(seed: int, count: int = COUNT) -> tuple[np.ndarray, list[dict]]:
    """Vectors whose every coordinate past the head is zero, so that any funnel whose head
    selection is exact returns exactly the brute-force answer: the oracle is then exact too.
    Metadata: a bucket 0..9999 (a permutation), a parity string and a tag list."""
    rng = np.random.default_rng(seed)
    vectors = np.zeros((count, DIM), np.float32)
    vectors[:, :HEAD] = rng.standard_normal((count, HEAD))
    buckets = rng.permutation(count) % 10_000
    docs = [
        {"bucket": int(b), "parity": "even" if b % 2 == 0 else "odd", "tags": ["rare"] if 25 <= b < 50 else ["common"]}
        for b in buckets
    ]
    return normalize(vectors), docs


def exact_filtered(vectors: np.ndarray, docs: list[dict], ids: list[str], queries: np.ndarray, spec: dict, k: int):
    passing = np.flatnonzero([matches(spec, doc) for doc in docs])
    scores = queries @ vectors[passing].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[passing[j]] for j in row] for row in order], passing


def head_queries(seed: int, count: int = 6) -> np.ndarray:
    queries = np.zeros((count, DIM), np.float32)
    queries[:, :HEAD] = np.random.default_rng(seed).standard_normal((count, HEAD))
    return normalize(queries)


@pytest.fixture(scope="module")
def corpus():
    vectors, docs = head_exact_corpus(seed=11)
    return vectors, docs, [f"doc-{i}" for i in range(COUNT)]


def build_for(db: str, corpus, head_index: str) -> Index:
    vectors, docs, ids = corpus
    build_index(
        db,
        ids,
        [""] * COUNT,
        vectors=vectors,
        metadata=docs,
        head_index=head_index,
        head_dim=None if head_index.startswith("binary") else HEAD,
        k=10,
    )
    return Index(db)


@pytest.mark.parametrize("head_index", ["flat", "binary"])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_filtered_search_equals_exact_filtered_search_at_every_selectivity(tmp_path, corpus, head_index, where):
    db = str(tmp_path / "index") if where == "local" else f"memory://filters-{head_index}"
    index = build_for(db, corpus, head_index)
    vectors, docs, ids = corpus
    queries = head_queries(1)
    schedule = Schedule.parse(f"{HEAD}:60,16:30,{DIM}:10")
    wide = Schedule.parse(f"{DIM}b:{COUNT},{DIM}:10") if head_index == "binary" else schedule
    plans_seen = set()
    for label, spec in SELECTIVITIES.items():
        truth, passing = exact_filtered(vectors, docs, ids, queries, spec, 10)
        share = 100 * len(passing) / COUNT
        assert f"{share:g}%" == label
        for plan in (None, "funnel", "exact"):
            result = funnel_search(index.store, queries, wide, 10, where=index.parse_filter(spec), plan=plan)
            plans_seen.add(result.plan)
            assert [h.ids for h in index.hits(result)] == truth, (label, plan)
            assert result.passing == len(passing)
        # the stored-index path: Index.search_vectors with the tuned or given schedule
        result = index.search_vectors(queries, 10, schedule=schedule if head_index == "flat" else None, filter=spec)
        found = index.hits(result)
        for hits in found:
            assert all(matches(spec, docs[int(i.split("-")[1])]) for i in hits.ids)
        if head_index == "flat":
            assert [h.ids for h in found] == truth, label
        else:  # the tuned schedule over sign bits: recall as tuned, not exactness
            recall = np.mean([len(set(h.ids) & set(t)) / len(t) for h, t in zip(found, truth)])
            assert recall >= 0.9, (label, recall)
        exact = index.hits(index.search_vectors(queries, 10, exact=True, filter=spec))
        assert [h.ids for h in exact] == truth
    assert plans_seen == {"filtered funnel", "exact over the filtered rows"}
    index.close()


@pytest.mark.parametrize("head_index", ["flat", "binary", "hnsw"])
def test_the_masked_head_search_is_exact_for_dense_and_sparse_masks(tmp_path, head_index):
    rng = np.random.default_rng(4)
    vectors = unit(rng, 3000, 32)
    docs = [{"n": i} for i in range(3000)]
    build_index(
        str(tmp_path / "i"),
        [str(i) for i in range(3000)],
        [""] * 3000,
        vectors=vectors,
        metadata=docs,
        head_index=head_index,
        head_dim=32 if head_index == "binary" else 8,
    )
    store = open_store(str(tmp_path / "i"))
    queries = unit(rng, 5, 32)
    head = queries[:, :8] if head_index != "binary" else queries
    for share in (0.9, 0.5, 0.2, 0.01):
        allowed = rng.random(3000) < share
        scores, rows = store.head_search(normalize(head), 50, allowed=allowed)
        assert allowed[rows[rows >= 0]].all()
        if head_index == "binary":
            from matryoshka.vectors import binary_codes

            codes = np.unpackbits(binary_codes(vectors, 32), axis=1)
            query_codes = np.unpackbits(binary_codes(queries, 32), axis=1)
            distances = (codes[None, :, :] != query_codes[:, None, :]).sum(axis=2)
            distances[:, ~allowed] = 10**6
            for q in range(len(queries)):
                best = np.sort(distances[q])[: min(50, allowed.sum())]
                assert np.sort(distances[q, rows[q]]).tolist() == best.tolist()
        else:
            truth = normalize(head) @ normalize(vectors[:, :8]).T
            truth[:, ~allowed] = -np.inf
            wanted = min(50, int(allowed.sum()))
            expected = np.argsort(-truth, axis=1)[:, :wanted]
            overlap = np.mean([len(set(a[a >= 0]) & set(b)) / wanted for a, b in zip(rows, expected)])
            assert overlap == 1.0 if head_index == "flat" else overlap >= 0.9, (share, overlap)
    store.close()


@pytest.mark.parametrize(
    "server", ["lite", pytest.param("server", marks=[pytest.mark.milvus_server, pytest.mark.slow])]
)
def test_milvus_filters_in_the_head_search_equal_exact_filtered_search(tmp_path, corpus, server, request):
    db = str(tmp_path / "f.db") if server == "lite" else request.getfixturevalue("milvus_server")
    vectors, docs, ids = corpus
    build_index(db, ids, [""] * COUNT, vectors=vectors, metadata=docs, head_dim=HEAD, k=10, collection="filters")
    with Index(db, collection="filters") as index:
        queries = head_queries(2, 4)
        schedule = Schedule.parse(f"{HEAD}:60,{DIM // 2}:30,{DIM}:10")
        for label, spec in SELECTIVITIES.items():
            truth, _ = exact_filtered(vectors, docs, ids, queries, spec, 10)
            result = index.search_vectors(queries, 10, schedule=schedule, filter=spec)
            assert result.plan == "funnel in Milvus, filtered in the head search"
            assert [h.ids for h in index.hits(result)] == truth, label
            exact = index.hits(index.search_vectors(queries, 10, exact=True, filter=spec))
            assert [h.ids for h in exact] == truth, label
            hits = index.hits(result, ["bucket"])[0]
            assert all(set(f) == {"bucket"} for f in hits.fields)


# --------------------------------------------------------------------------- live writes, adapters


@pytest.mark.parametrize("where", ["local", "memory", "lite"])
def test_filters_follow_adds_replacements_deletes_and_compaction(tmp_path, where):
    db = {"local": str(tmp_path / "live"), "memory": "memory://filters-live", "lite": str(tmp_path / "live.db")}[where]
    vectors, docs = head_exact_corpus(seed=21, count=2000)
    ids = [f"doc-{i}" for i in range(2000)]
    build_index(db, ids, [""] * 2000, vectors=vectors, metadata=docs, head_dim=HEAD, k=10)
    current = dict(zip(ids, zip(vectors, docs)))
    rng = np.random.default_rng(5)
    new_vectors, new_docs = head_exact_corpus(seed=22, count=300)
    for doc in new_docs:
        doc["color"] = ["red", "blue"][rng.integers(2)]  # a field the index has not seen
    new_ids = [f"doc-{i}" for i in range(1900, 2200)]  # 100 replace, 200 are new
    queries = head_queries(3, 4)
    schedule = Schedule.parse(f"{HEAD}:60,{DIM // 2}:30,{DIM}:10")
    checks = [
        {"color": "red"},
        {"$not": {"color": "red"}},
        {"bucket": {"$lt": 500}},
        {"$and": [{"parity": "odd"}, {"color": {"$ne": "blue"}}]},
    ]

    def verify(index: Index, step: str) -> None:
        live_ids = list(current)
        live_vectors = np.stack([current[i][0] for i in live_ids])
        live_docs = [current[i][1] for i in live_ids]
        for spec in checks:
            truth, _ = exact_filtered(live_vectors, live_docs, live_ids, queries, spec, 10)
            result = index.search_vectors(queries, 10, schedule=schedule, filter=spec)
            assert [h.ids for h in index.hits(result)] == truth, (step, spec)

    with Index(db) as index:
        index.add(new_ids, None, new_vectors, metadata=new_docs)
        current.update(zip(new_ids, zip(new_vectors, new_docs)))
        assert index.meta.fields["color"] == "string"
        verify(index, "after add")
        gone = [f"doc-{i}" for i in rng.choice(2200, 150, replace=False)]
        index.delete(gone)
        for doc_id in gone:
            current.pop(doc_id, None)
        verify(index, "after delete")
        with pytest.raises(StoreError, match="field 'color' is an integer here, but a string before"):
            index.add(["x"], None, new_vectors[:1], metadata=[{"color": 3}])
        if where != "lite":
            index.compact()
            verify(index, "after compaction")


STORE_NAMES = itertools.count()


def store_uri(where: str, folder: Path) -> str:
    return (
        str(folder / f"i{next(STORE_NAMES)}") if where == "local" else f"memory://filters-hostile-{next(STORE_NAMES)}"
    )


def check_against_the_oracle(index: Index, current: dict[str, dict], specs: list[dict], step: str) -> None:
    """Filtered exact search over every live document equals the oracle, under the index's
    schema as it is now (a field widened to float compares as doubles)."""
    schema = dict(index.meta.fields)
    query = unit(np.random.default_rng(0), 1)
    for spec in specs:
        try:
            parsed = index.parse_filter(spec)
        except FilterError as exc:  # a field no document has given a value yet
            assert "unknown field" in str(exc), (step, spec)
            continue
        found = index.hits(index.search_vectors(query, max(1, len(current)), exact=True, filter=parsed))[0].ids
        expected = sorted(i for i, doc in current.items() if matches(spec, doc, schema))
        assert sorted(found) == expected, (step, spec, schema)


@pytest.mark.parametrize("where", ["local", "memory"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(
    first=st.lists(hostile_documents, min_size=1, max_size=8),
    second=st.lists(hostile_documents, min_size=1, max_size=6),
    names=st.lists(hostile_words, min_size=15, max_size=15),
    replaced=st.sets(st.integers(0, 7), max_size=3),
    deleted=st.sets(st.integers(0, 13), max_size=4),
    widen=st.booleans(),
    specs=st.lists(hostile_filters, min_size=4, max_size=8),
)
@example(  # issue 21 row 2: a list field some documents lack, then compaction
    first=[{"tags": ["x"]}, {}, {"tags": ["z"]}],
    second=[{"year": 12345678901234567}],
    names=["a", "b", "c"] + ["d"] * 12,
    replaced=set(),
    deleted=set(),
    widen=True,  # row 3: a later add widens year to float, then every filter on it and compaction
    specs=[{"tags": "x"}, {"tags": {"$nin": ["x"]}}, {"year": {"$gt": 2000.5}}, {"year": 1e19}],
)
def test_hostile_documents_on_the_folder_and_memory_stores_match_the_oracle_through_writes_and_compaction(
    tmp_path, where, first, second, names, replaced, deleted, widen, specs
):
    """Ids, strings and list items from hostile alphabets, int64's ends, -0.0, fields that some
    documents (or whole segments) lack, a field widened from integer to float by a later add,
    replacements and deletions: filtered search agrees with the oracle after every write and
    after compaction."""
    ids = [f"{name}#{i}" for i, name in enumerate(names)]
    db = store_uri(where, tmp_path)
    rng = np.random.default_rng(len(first))
    current = dict(zip(ids[: len(first)], first))
    build_index(db, list(current), [""] * len(first), vectors=unit(rng, len(first)), metadata=first)
    replacing = [ids[i] for i in sorted(replaced) if i < len(first)][: len(second)]
    added = replacing + ids[len(first) : len(first) + len(second) - len(replacing)]
    if widen:
        second = second + [{"year": 2.5}]
        added.append(ids[-1])
    with Index(db) as index:
        check_against_the_oracle(index, current, specs, "built")
        index.add(added, None, unit(rng, len(added)), metadata=second)
        current.update(zip(added, second))
        check_against_the_oracle(index, current, specs, "added")
        gone = [ids[i] for i in deleted if ids[i] in current and len(current) > 1]
        if gone and len(gone) < len(current):
            index.delete(gone)
            for doc_id in gone:
                current.pop(doc_id)
        check_against_the_oracle(index, current, specs, "deleted")
        index.compact()
        check_against_the_oracle(index, current, specs, "compacted")
    with Index(db) as reopened:
        check_against_the_oracle(reopened, current, specs, "reopened")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_compaction_joins_segments_whose_fields_differ(tmp_path, where):
    """Issue 21 row 2: a list field some documents lack, a field only a later segment has, a
    segment with no metadata, and an integer field widened to float past 2^53, all compacted."""
    db = store_uri(where, tmp_path)
    rng = np.random.default_rng(12)
    first = {"a": {"tags": ["x"], "n": 2**53 + 1}, "b": {"n": 3}, "c": {"tags": ["z"]}}
    build_index(db, list(first), ["moon", "dogs", "paris"], vectors=unit(rng, 3), metadata=list(first.values()))
    current = dict(first)
    with Index(db) as index:
        index.add(["d"], None, unit(rng, 1))  # no metadata at all
        index.add(["e", "f"], None, unit(rng, 2), metadata=[{"colour": "red"}, {"tags": [], "colour": "blue"}])
        index.add(["g"], None, unit(rng, 1), metadata=[{"n": 0.5}])
        current.update({"d": {}, "e": {"colour": "red"}, "f": {"tags": [], "colour": "blue"}, "g": {"n": 0.5}})
        assert index.meta.fields == {"tags": "list", "n": "float", "colour": "string"}
        specs = [
            {"tags": "x"},
            {"tags": {"$nin": ["x"]}},
            {"colour": {"$ne": "red"}},
            {"n": {"$gte": 2**53}},
            {"n": {"$lt": 3}},
            {"n": 3},
        ]
        check_against_the_oracle(index, current, specs, "before")
        index.compact()
        check_against_the_oracle(index, current, specs, "compacted")
        fields = index.hits(index.search_vectors(unit(rng, 1), 7, exact=True))[0]
        stored = dict(zip(fields.ids, fields.fields))
        assert stored["a"] == {"tags": ["x"], "n": float(2**53)}  # the nearest double to 2^53 + 1
        assert stored["b"] == {"n": 3.0} and stored["d"] == {} and stored["f"] == {"tags": [], "colour": "blue"}


@pytest.mark.parametrize("where", ["local", "memory"])
def test_integer_fields_compare_exactly_over_the_whole_int64_range(tmp_path, where):
    """Issue 21 rows 3 and 6: float bounds on an integer field give the exact answer (no double
    holds these integers), and -0.0 equals 0 in $in as in $eq."""
    db = store_uri(where, tmp_path)
    docs = {
        "big": {"year": 12345678901234567, "w": -0.0},
        "above": {"year": 2**53 + 1, "w": 0.0},
        "at": {"year": 2**53, "w": 1.5},
        "low": {"year": INT64_MIN},
        "high": {"year": INT64_MAX},
        "y2001": {"year": 2001},
        "none": {},
    }
    build_index(
        db,
        list(docs),
        [""] * len(docs),
        vectors=unit(np.random.default_rng(13), len(docs)),
        metadata=list(docs.values()),
    )
    expected = {
        '{"year": {"$gt": 2000.5}}': ["above", "at", "big", "high", "y2001"],
        '{"year": 1e19}': [],
        '{"year": {"$ne": 1e19}}': sorted(docs),
        '{"year": {"$lt": 1e19}}': sorted(set(docs) - {"none"}),
        '{"year": {"$gt": 9007199254740992.0}}': ["above", "big", "high"],
        '{"year": 9007199254740992.0}': ["at"],
        '{"year": {"$in": [9223372036854775807, -9.223372036854776e18, 9.223372036854776e18]}}': ["high", "low"],
        '{"year": {"$lte": -1e19}}': [],
        '{"year": {"$gte": -9.223372036854776e18}}': sorted(set(docs) - {"none"}),
        '{"w": {"$in": [0]}}': ["above", "big"],
        '{"w": {"$in": [-0.0]}}': ["above", "big"],
        '{"w": {"$nin": [0.0]}}': ["at", "high", "low", "none", "y2001"],
        '{"w": 0}': ["above", "big"],
    }
    with Index(db) as index:
        query = unit(np.random.default_rng(14), 1)

        def found(spec: str) -> list[str]:
            return sorted(index.hits(index.search_vectors(query, len(docs), exact=True, filter=spec))[0].ids)

        for spec, ids in expected.items():
            assert found(spec) == ids, spec
            assert ids == sorted(i for i, doc in docs.items() if matches(json.loads(spec), doc, index.meta.fields))
        index.add(["half"], None, unit(np.random.default_rng(15), 1), metadata=[{"year": 2000.75}])
        assert index.meta.fields["year"] == "float"  # now every year is a double, as float64 holds it
        assert found('{"year": {"$gt": 2000.5}}') == ["above", "at", "big", "half", "high", "y2001"]
        assert found('{"year": {"$gt": 9007199254740992.0}}') == ["big", "high"]
        index.compact()
        assert found('{"year": {"$gt": 9007199254740992.0}}') == ["big", "high"]
        assert found('{"year": {"$lt": 2001}}') == ["half", "low"]


def test_a_filters_key_names_its_fields_types():
    """An integer field's bounds are exact and a float field's are doubles, so the same filter
    parsed before and after a widening must not share a cached mask."""
    spec = {"n": {"$gt": 9007199254740992.0}}
    assert parse_filter(spec, {"n": "integer"}).key != parse_filter(spec, {"n": "float"}).key
    assert parse_filter(spec, {"n": "integer", "m": "string"}).key == parse_filter(spec, {"n": "integer"}).key


def test_concat_tables_joins_null_lists_missing_fields_and_widened_integers():
    from matryoshka.metadata import concat_tables

    schema = {"tags": "list", "n": "float", "s": "string"}
    tables = [
        to_table([{"tags": ["x"], "n": 2**53 + 1}, {}], {"tags": "list", "n": "integer"}),
        to_table([{"s": "é"}], {"s": "string"}),
        to_table([{"tags": None, "n": 0.5}], {"tags": "list", "n": "float"}),
    ]
    joined = concat_tables(tables, schema)
    assert joined.to_pylist() == [
        {"tags": ["x"], "n": float(2**53), "s": None},
        {"tags": None, "n": None, "s": None},
        {"tags": None, "n": None, "s": "é"},
        {"tags": None, "n": 0.5, "s": None},
    ]


def test_an_adapted_index_filters_its_head(tmp_path, wordllama, squad_sample):
    from matryoshka.adapt import make_adapter, with_adapter

    texts = squad_sample.corpus.texts[:400]
    ids = squad_sample.corpus.ids[:400]
    vectors = wordllama.encode(texts, kind="document")
    path = make_adapter("pca").fit(vectors).save(tmp_path / "pca")
    docs = [{"half": i % 2 == 0, "n": i} for i in range(400)]
    build_index(str(tmp_path / "a"), ids, texts, encoder=with_adapter(wordllama, path), metadata=docs)
    queries = wordllama.encode(["who built the tower?", "a famous battle", "rivers of europe"], kind="query")
    with Index(str(tmp_path / "a"), encoder=with_adapter(wordllama, path)) as index:
        for spec in ({"half": True}, {"n": {"$lt": 40}}):
            truth, _ = exact_filtered(vectors, docs, ids, queries, spec, 5)
            found = index.hits(index.search_vectors(queries, 5, filter=spec))
            for hits, expected in zip(found, truth):
                assert all(matches(spec, docs[ids.index(i)]) for i in hits.ids)
                assert len(set(hits.ids) & set(expected)) >= 4


# --------------------------------------------------------------------------- the command line, a real model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matryoshka", *args], capture_output=True, text=True, timeout=600)


def test_the_command_line_indexes_metadata_and_searches_with_where_and_fields(tmp_path, squad_sample):
    corpus = tmp_path / "docs.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for i, (doc_id, text) in enumerate(zip(squad_sample.corpus.ids[:200], squad_sample.corpus.texts[:200])):
            record = {
                "id": doc_id,
                "text": text,
                "year": 2000 + i % 20,
                "lang": ["en", "fr"][i % 2],
                "tags": [f"t{i % 3}"],
            }
            handle.write(json.dumps(record) + "\n")
    db = str(tmp_path / "index")
    built = run_cli("index", "--model", "wordllama", "--corpus", str(corpus), "--db", db)
    assert built.returncode == 0, built.stderr
    assert "Metadata fields: year (integer), lang (string), tags (list)" in built.stdout
    out = tmp_path / "hits.json"
    where = '{"year": {"$gte": 2015}, "lang": "fr", "tags": {"$in": ["t1", "t2"]}}'
    found = run_cli(
        "search",
        "--db",
        db,
        "-q",
        "the history of a university",
        "--where",
        where,
        "--fields",
        "year,tags",
        "--json",
        str(out),
    )
    assert found.returncode == 0, found.stderr
    answer = json.loads(out.read_text())["results"][0]
    assert answer["hits"] and answer["filter_passed"] > 0
    for hit in answer["hits"]:
        assert set(hit["fields"]) == {"year", "tags"} and hit["fields"]["year"] >= 2015
    assert answer["stages"][0]["stage"] == "filter"
    bad = run_cli("search", "--db", db, "-q", "x", "--where", '{"year": {"$gte": "2015"}}')
    assert bad.returncode == 2 and "filter.year.$gte: field 'year' is an integer; a string cannot" in bad.stderr
    bad = run_cli("search", "--db", db, "-q", "x", "--fields", "colour")
    assert bad.returncode == 2 and "unknown field 'colour'" in bad.stderr
    extra = tmp_path / "more.jsonl"
    extra.write_text('{"id": "new-1", "text": "A new paragraph.", "year": "recent"}\n')
    bad = run_cli("add", "--db", db, "--corpus", str(extra))
    assert bad.returncode == 2 and "field 'year' is a string here, but an integer before" in bad.stderr


# --------------------------------------------------------------------------- the server


def test_the_server_filters_each_request_by_its_own_filter_and_takes_metadata_with_writes(
    wordllama, squad_sample, tmp_path, monkeypatch
):
    """Concurrent requests with different filters are micro-batched together; each answer must
    keep to its own filter. Bad filters are 422s naming the place; documents written with
    metadata are found by filters at once."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from conftest import RunningServer, free_port

    texts, ids = squad_sample.corpus.texts[:300], squad_sample.corpus.ids[:300]
    docs = [{"group": i % 5, "lang": ["en", "fr", "de"][i % 3], "tags": [f"t{i % 4}"]} for i in range(300)]
    build_index(tmp_path / "index", ids, texts, encoder=wordllama, metadata=docs)
    monkeypatch.setenv("MATRYOSHKA_API_KEY", "key")
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(tmp_path / "index"), "--port", str(port)], tmp_path / "s.log", f"http://127.0.0.1:{port}/"
    )
    server.wait_healthy()
    by_id = dict(zip(ids, docs))
    specs = [{"group": g} for g in range(5)] + [{"lang": "fr", "tags": {"$in": ["t1", "t3"]}}, None]
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/info").json()["fields"] == {"group": "integer", "lang": "string", "tags": "list"}

            def ask(position: int) -> tuple[dict | None, dict]:
                spec = specs[position % len(specs)]
                body = {"query": f"history of question {position}", "k": 5, **({"filter": spec} if spec else {})}
                answer = client.post("/search", json=body)
                assert answer.status_code == 200, answer.text
                return spec, answer.json()

            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(ask, range(140)))
            assert max(answer["batch_size"] for _, answer in answers) > 1  # requests were batched together
            for spec, answer in answers:
                assert len(answer["hits"]) == 5
                for hit in answer["hits"]:
                    assert spec is None or matches(spec, by_id[hit["id"]]), (spec, hit)
                    assert hit["fields"] == by_id[hit["id"]]
            picked = client.post("/search", json={"query": "x", "filter": {"group": 1}, "fields": ["lang"]}).json()
            assert all(set(hit["fields"]) == {"lang"} for hit in picked["hits"])
            assert picked["stages"][0] == {**picked["stages"][0], "stage": "filter", "keep": 60}
            for body, message in [
                ({"query": "x", "filter": {"group": {"$gte": "1"}}}, "filter.group.$gte: field 'group' is an integer"),
                ({"query": "x", "filter": {"colour": "red"}}, "filter.colour: unknown field"),
                ({"query": "x", "filter": {"$nor": []}}, "filter.$nor: unknown operator"),
                ({"query": "x", "filter": {"\ud800": 1}}, "filter.\\ud800: unknown field"),
                ({"query": "x", "filter": {"lang": {"$\ud800": 1}}}, "filter.lang.$\\ud800: unknown operator"),
                ({"query": "x", "filter": {"lang": "\ud800"}}, "lone surrogate"),
                ({"query": "x", "filter": "lang"}, "filter"),
                ({"query": "x", "fields": ["colour"]}, "fields: unknown field 'colour'"),
            ]:
                sent = json.dumps(body)  # ASCII JSON: a lone surrogate travels as the escape \ud800
                refused = client.post("/search", content=sent, headers={"content-type": "application/json"})
                assert refused.status_code == 422 and message in refused.json()["error"], refused.text
            key = {"authorization": "Bearer key"}
            new = {
                "id": "new-1",
                "text": "A lighthouse guides ships at night.",
                "metadata": {"group": 9, "colour": "red"},
            }
            added = client.post("/documents", json={"documents": [new]}, headers=key)
            assert added.status_code == 200, added.text
            found = client.post("/search", json={"query": "lighthouse", "filter": {"colour": "red"}}).json()
            assert [hit["id"] for hit in found["hits"]] == ["new-1"]
            assert found["hits"][0]["fields"] == {"group": 9, "colour": "red"}
            clash = {"id": "new-2", "text": "x", "metadata": {"group": "nine"}}
            refused = client.post("/documents", json={"documents": [clash]}, headers=key)
            assert refused.status_code == 422 and "field 'group' is a string here" in refused.json()["error"]
            nested = {"id": "new-3", "text": "x", "metadata": {"where": {"city": "Paris"}}}
            refused = client.post("/documents", json={"documents": [nested]}, headers=key)
            assert refused.status_code == 422 and "field 'where' is dict" in refused.json()["error"]
    finally:
        server.stop()


# --------------------------------------------------------------------------- edges found in review


def test_compaction_keeps_metadata_when_some_segments_have_none(tmp_path):
    rng = np.random.default_rng(8)
    for db in (str(tmp_path / "mixed"), "memory://filters-mixed"):
        build_index(db, [f"a{i}" for i in range(50)], [""] * 50, vectors=unit(rng, 50))  # no metadata at all
        with Index(db) as index:
            index.add([f"b{i}" for i in range(10)], None, unit(rng, 10), metadata=[{"lang": "en"}] * 10)
            index.add([f"c{i}" for i in range(5)], None, unit(rng, 5))  # a later write without metadata
            query = unit(rng, 1)
            before = index.hits(index.search_vectors(query, 20, exact=True, filter={"lang": "en"}))[0].ids
            index.compact()
            after = index.hits(index.search_vectors(query, 20, exact=True, filter={"lang": "en"}))[0]
            assert sorted(before) == sorted(after.ids) == [f"b{i}" for i in range(10)]
            assert after.fields == [{"lang": "en"}] * 10
            everything = index.hits(index.search_vectors(query, 65, exact=True))[0]
            assert len(everything) == 65 and sum(f == {} for f in everything.fields) == 55
        with Index(db) as reopened:
            assert len(reopened) == 65


def test_numbers_are_compared_by_the_fields_type(tmp_path):
    rng = np.random.default_rng(9)
    docs = [{"n": i % 5, "x": [0.5, 2.0, 3.0][i % 3], "tags": ["", "a"] if i % 2 else ["b"]} for i in range(30)]
    for db in (str(tmp_path / "numbers"), str(tmp_path / "numbers.db")):
        ids = [f"d{i}" for i in range(30)]
        build_index(db, ids, [""] * 30, vectors=unit(rng, 30), metadata=docs, k=5)
        with Index(db) as index:
            query = unit(rng, 1)
            for spec in (
                {"n": {"$in": [1.5]}},
                {"n": {"$nin": [1.5, 2]}},
                {"n": 2.0},
                {"n": {"$ne": 2.5}},
                {"n": {"$gt": 2.5}},
                {"x": {"$in": [2.0, 3]}},
                {"x": 3},
                {"x": {"$in": [2**60 + 1]}},
                {"tags": ""},
                {"tags": {"$nin": [""]}},
                {"n": {"$gte": -(2**63)}},
            ):
                found = index.hits(index.search_vectors(query, 30, exact=True, filter=spec))[0].ids
                assert sorted(found) == sorted(i for i, doc in zip(ids, docs) if matches(spec, doc)), (db, spec)


def test_long_filters_run_in_milvus(lite_translation):
    many_tags = {"tags": {"$in": [f"t{i}" for i in range(300)] + ["a"]}}
    many_ors = {"$or": [{"year": {"$gt": i}} for i in range(-200, 3)]}
    many_nes = {"$and": [{"lang": {"$ne": f"w{i}"}} for i in range(200)] + [{"lang": {"$ne": "en"}}]}
    for spec in (many_tags, many_ors, many_nes, {"$not": many_tags}):
        assert lite_translation.matching(spec) == lite_translation.expected(spec)


def test_null_only_fields_take_no_type_and_a_filter_survives_a_widening(tmp_path):
    assert infer_schema([{"a": None, "b": 1}, {"a": None}]) == {"b": "integer"}
    rng = np.random.default_rng(10)
    db = str(tmp_path / "widen")
    build_index(db, ["a", "b"], ["", ""], vectors=unit(rng, 2), metadata=[{"n": 1, "empty": None}, {"n": 5}])
    with Index(db) as index:
        assert index.meta.fields == {"n": "integer"}
        index.add(["c"], None, unit(rng, 1), metadata=[{"n": None}])  # a null fits any type
        parsed = index.parse_filter({"n": {"$gte": 3}})  # parsed while n is an integer field
        index.add(["d"], None, unit(rng, 1), metadata=[{"n": 2.5}])
        assert index.meta.fields["n"] == "float"
        query = unit(rng, 1)
        assert sorted(index.hits(index.search_vectors(query, 4, exact=True, filter=parsed))[0].ids) == ["b"]
        assert sorted(index.hits(index.search_vectors(query, 4, filter={"n": {"$lt": 3}}))[0].ids) == ["a", "d"]
