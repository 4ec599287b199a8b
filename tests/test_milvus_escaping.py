"""Milvus expressions hold for any string and any int64 (issue 21): ids and metadata strings from
a hostile alphabet round-trip through a Milvus Lite index (added, replaced in place, matched by
filters exactly as the oracle says, deleted by id); integers are compared exactly over int64 and
past 2^53; a float field's -0.0 equals 0.0; a writer lease left by a dead process of this host is
taken over at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_filters import SCHEMA, matches, unit

from matryoshka.errors import BusyError, StoreError
from matryoshka.index import Index, build_index
from matryoshka.metadata import FORBIDDEN_CHARACTERS
from matryoshka.stores.milvus import process_space

# ids may hold anything; metadata strings anything a metadata string may hold (no line break or
# NUL as long as metadata.FORBIDDEN_CHARACTERS refuses them)
ALPHABET = ["ü", "é", "中", "😀", "'", '"', "\\", "/", "\t", "\x01", "\x1b", "\n", "\r", " ", "=", "~", "%", "a", "b"]
TEXT_ALPHABET = [c for c in ALPHABET if not FORBIDDEN_CHARACTERS.search(c)]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# the index's documents before each example; their ids start with '#', which no drawn id holds
BASE = {
    "#n-min": {"year": INT64_MIN},
    "#n-min+1": {"year": INT64_MIN + 1},
    "#n-2^53-1": {"year": 2**53 - 1},
    "#n-2^53": {"year": 2**53},
    "#n-2^53+1": {"year": 2**53 + 1},
    "#n-max-1": {"year": INT64_MAX - 1},
    "#n-max": {"year": INT64_MAX},
    "#n-2000": {"year": 2000},
    "#n-2001": {"year": 2001},
    "#n-0": {"year": 0, "ok": True},
    "#s-neg0": {"score": -0.0},
    "#s-0": {"score": 0.0},
    "#s-2.5": {"score": 2.5},
    "#s-2^53": {"score": 9007199254740992.0},
    "#l-slash": {"lang": "ocean/sea", "tags": ["ocean/sea", "a"]},
    "#l-tab": {"lang": "t\tab", "tags": ["t\tab", "\x01", "\x1b[0m"]},
    "#l-u": {"lang": "ü", "tags": ["ü", "😀", "="]},
    "#empty": {},
}


class LiteIndex:
    """One Milvus index of the BASE documents for the module (building one is slow)."""

    def __init__(self, db: str, collection: str | None = None) -> None:
        self.db = db
        self.rng = np.random.default_rng(21)
        ids = list(BASE)
        vectors = unit(self.rng, len(ids))
        build_index(
            db,
            ids,
            [""] * len(ids),
            vectors=vectors,
            metadata=list(BASE.values()),
            schema=SCHEMA,
            collection=collection,
        )
        self.index = Index(db, collection=collection)
        self.query = unit(self.rng, 1)

    def found(self, spec: dict | None, size: int) -> list[str]:
        """The ids an exact search returns, filtered by ``spec``, over an index of ``size`` documents."""
        return self.index.hits(self.index.search_vectors(self.query, size, exact=True, filter=spec))[0].ids


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    index = LiteIndex(str(tmp_path_factory.mktemp("escaping") / "hostile.db"))
    yield index
    index.index.close()


def hostile(alphabet: list[str], blank: bool = True):
    """Strings of ``alphabet``, sometimes with spaces at both ends; not only white space unless
    ``blank`` (an index refuses a blank id)."""
    text = st.text(st.sampled_from(alphabet), max_size=5)
    if not blank:
        inner = st.sampled_from([c for c in alphabet if c.strip()])
        text = st.tuples(text, inner, text).map("".join)
    return st.one_of(text, text.map(lambda s: f"  {s} "))


ids = hostile(ALPHABET, blank=False)
words = hostile(TEXT_ALPHABET)
documents = st.fixed_dictionaries({}, optional={"lang": words, "tags": st.lists(words, max_size=3, unique=True)})


def string_filters(word: str, other: str) -> list[dict]:
    """Every string operator on the string field and the list field, with ``word`` as operand."""
    return [
        {"lang": word},
        {"lang": {"$ne": word}},
        {"lang": {"$in": [word, other]}},
        {"lang": {"$nin": [other, word]}},
        {"$not": {"lang": word}},
        {"lang": {"$gt": word}},
        {"lang": {"$lte": word}},
        {"tags": word},
        {"tags": {"$ne": word}},
        {"tags": {"$in": [other, word]}},
        {"tags": {"$nin": [word]}},
        {"$not": {"tags": {"$in": [word]}}},
    ]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(st.tuples(ids, documents), min_size=1, max_size=4, unique_by=lambda pair: pair[0]),
    probe=words,
)
def test_hostile_ids_and_strings_round_trip_through_milvus_lite(lite, batch, probe):
    index = lite.index
    new_ids = [doc_id for doc_id, _ in batch]
    docs = [doc for _, doc in batch]
    try:
        report = index.add(new_ids, None, unit(lite.rng, len(new_ids)), metadata=docs)
        assert (report.added, report.replaced) == (len(new_ids), 0)
        replaced = docs[1:] + docs[:1]  # the same ids again, with one another's metadata
        report = index.add(new_ids, None, unit(lite.rng, len(new_ids)), metadata=replaced)
        assert (report.added, report.replaced) == (0, len(new_ids))
        live = {**BASE, **dict(zip(new_ids, replaced))}
        assert len(index) == len(live)
        everything = index.hits(index.search_vectors(lite.query, len(live), exact=True))[0]
        assert sorted(everything.ids) == sorted(live)  # each id once, as it was given
        for doc_id, fields in zip(everything.ids, everything.fields):
            assert fields == {k: v for k, v in live[doc_id].items() if v is not None}, doc_id
        strings = [probe, *(d["lang"] for d in replaced if d.get("lang") is not None)]
        strings += [t for d in replaced for t in d.get("tags") or []]
        for word in list(dict.fromkeys(strings))[:4]:
            for spec in string_filters(word, probe):
                expected = sorted(i for i, doc in live.items() if matches(spec, doc))
                assert sorted(lite.found(spec, len(live))) == expected, spec
        report = index.delete([*new_ids, "#missing"])
        assert report.deleted == new_ids and report.not_found == ["#missing"]
        assert len(index) == len(BASE)
        assert index.delete(new_ids).not_found == new_ids
    finally:
        if len(index) != len(BASE):
            index.delete(new_ids)


STRING_FILTERS = [
    spec for word in ("ocean/sea", "t\tab", "\x01", "\x1b[0m", "ü", "😀", "=") for spec in string_filters(word, "a")
]


@pytest.mark.parametrize("spec", STRING_FILTERS, ids=lambda spec: json.dumps(spec, ensure_ascii=True))
def test_strings_with_slashes_and_control_characters_match_exactly(lite, spec):
    expected = sorted(i for i, doc in BASE.items() if matches(spec, doc))
    assert sorted(lite.found(spec, len(BASE))) == expected


INTEGER_FILTERS = [
    {"year": INT64_MIN},
    {"year": INT64_MAX},
    {"year": {"$in": [INT64_MIN, 2**53 + 1]}},
    {"year": {"$nin": [INT64_MIN]}},
    {"year": {"$ne": INT64_MIN}},
    {"$not": {"year": {"$in": [INT64_MIN, INT64_MAX]}}},
    {"year": {"$lte": INT64_MIN}},
    {"year": {"$lt": INT64_MIN + 1}},
    {"year": {"$gte": INT64_MIN}},
    {"year": {"$gt": INT64_MIN}},
    {"year": {"$gte": INT64_MAX}},
    {"year": 2**53 + 1},
    {"year": {"$gt": 2**53}},
    {"year": 9007199254740992.0},  # 2^53 exactly, not 2^53 + 1
    {"year": {"$gt": 9007199254740992.0}},
    {"year": {"$gte": 9007199254740992.0}},
    {"$not": {"year": {"$gt": 9007199254740992.0}}},
    {"year": {"$lt": 9007199254740992.0}},
    {"year": {"$gt": 2000.5}},
    {"year": {"$lte": 2000.5}},
    {"year": {"$lt": -0.5}},
    {"year": 2001.0},
    {"year": 1e19},
    {"year": -1e19},
    {"year": {"$ne": 1e19}},
    {"year": {"$in": [1e19, 2000.5, 2001.0]}},
    {"year": {"$gt": 1e19}},
    {"year": {"$lt": 1e19}},
    {"year": {"$gt": -1e19}},
    {"year": {"$lte": -1e19}},
    {"year": {"$gte": 2.0**63}},
    {"year": {"$lt": 2.0**63}},
    {"year": {"$lte": -(2.0**63)}},
    {"$not": {"year": {"$lt": 1e19}}},
    {"score": 0.0},
    {"score": -0.0},
    {"score": 0},
    {"score": {"$in": [-0.0]}},
    {"score": {"$nin": [0.0]}},
    {"score": {"$ne": -0.0}},
    {"score": {"$gt": -0.0}},
    {"score": {"$gte": 0.0}},
    {"score": {"$lt": 0.0}},
    {"score": {"$gt": 9007199254740991}},
    {"$or": [{"score": {"$lte": -0.0}}, {"year": {"$gt": 9007199254740992.0}}]},
]


@pytest.mark.parametrize("spec", INTEGER_FILTERS, ids=json.dumps)
def test_numbers_are_compared_exactly_over_int64_and_past_2_53(lite, spec):
    expected = sorted(i for i, doc in BASE.items() if matches(spec, doc))
    assert sorted(lite.found(spec, len(BASE))) == expected


def _write_lease(db: str, value: dict) -> None:
    from matryoshka.stores.milvus import _ensure_meta_collection
    from matryoshka.stores.milvus_client import connect, disconnect

    client = connect(db, create=False)
    try:
        name = _ensure_meta_collection(client, "matryoshka")
        client.upsert(name, [{"key": "writer", "value": json.dumps(value), "vector": [0.0, 0.0]}])
    finally:
        disconnect(client, db)


def _clear_lease(db: str) -> None:
    from matryoshka.stores.milvus_client import connect, disconnect

    client = connect(db, create=False)
    try:
        client.delete("matryoshka_meta", ids=["writer"])
    finally:
        disconnect(client, db)


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(lite):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, host, until = child.pid, socket.gethostname(), time.time() + 300
    index = lite.index
    vector = unit(lite.rng, 1)
    leases = {
        "dead here": {"token": f"{host}:{dead}:1", "host": host, "pid": dead, "space": process_space(), "until": until},
        "dead here, written before leases named host and pid": {"token": f"{host}:{dead}:1", "until": until},
    }
    for label, lease in leases.items():
        _write_lease(lite.db, {**lease, "holder": f"process {dead} on {host}"})
        started = time.monotonic()
        assert index.add(["#leased"], None, vector).added == 1, label
        assert time.monotonic() - started < 60, label  # not after the lease lapsed
        assert index.delete(["#leased"]).deleted == ["#leased"]
    refused = {
        "alive here": {"token": f"{host}:{os.getpid()}:1", "host": host, "pid": os.getpid(), "until": until},
        "dead elsewhere": {"token": f"{host}x:{dead}:1", "host": host + "x", "pid": dead, "until": until},
        "dead in another container of this host name": {
            "token": f"{host}:{dead}:1",
            "host": host,
            "pid": dead,
            "space": "another-boot:4026531836",
            "until": until,
        },
    }
    try:
        for lease in refused.values():
            _write_lease(lite.db, {**lease, "holder": "the holder"})
            with pytest.raises(BusyError, match="being written by the holder"):
                index.add(["#leased"], None, vector)
    finally:
        _clear_lease(lite.db)
    assert len(index) == len(BASE)


def test_an_index_keeping_plain_strings_filters_what_milvus_can_match_and_asks_for_the_rest(tmp_path, monkeypatch):
    """An index built before strings were stored as hex keeps answering the filters Milvus can
    match as written, and says to re-index for the others."""
    import matryoshka.stores.milvus as milvus

    choose = milvus.choose_layout
    monkeypatch.setattr(milvus, "choose_layout", lambda *a, **k: milvus.replace(choose(*a, **k), match_strings="plain"))
    db = str(tmp_path / "plain.db")
    rng = np.random.default_rng(5)
    docs = [{"lang": "ü'\"\\", "tags": ["a", "ocean/sea"]}, {"lang": "en", "tags": ["b"]}, {}]
    build_index(db, ["x", "y", "z"], [""] * 3, vectors=unit(rng, 3), metadata=docs, schema=SCHEMA)
    monkeypatch.undo()
    with Index(db) as index:
        assert index.store.layout.match_strings == "plain"
        query = unit(rng, 1)
        for spec, expected in (({"lang": "ü'\"\\"}, ["x"]), ({"tags": {"$ne": "a"}}, ["y", "z"])):
            assert sorted(index.hits(index.search_vectors(query, 3, exact=True, filter=spec))[0].ids) == expected
        with pytest.raises(StoreError, match="re-index it"):
            index.search_vectors(query, 3, exact=True, filter={"tags": "ocean/sea"})


def test_the_milvus_server_reads_the_same_literals(milvus_server):
    """The same ids, strings and numbers on the real Milvus 2.3 server, whose expression parser
    is Milvus's own (Go), not Milvus Lite's."""
    import uuid

    server = LiteIndex(milvus_server, collection=f"e{uuid.uuid4().hex[:10]}")
    index = server.index
    try:
        new_ids = ["ü", "😀", "x\ny", "x\r\ny", "\t'\"\\/=~ ", "  a\x01\x1b "]
        docs = [{"lang": "ocean/sea", "tags": ["ocean/sea", "\x01"]}, {"lang": "t\tab"}, {}, {"tags": ["ü"]}, {}, {}]
        assert index.add(new_ids, None, unit(server.rng, 6), metadata=docs).added == 6
        assert index.add(new_ids, None, unit(server.rng, 6), metadata=docs).replaced == 6
        live = {**BASE, **dict(zip(new_ids, docs))}
        assert sorted(server.found(None, len(live))) == sorted(live)
        for spec in STRING_FILTERS + INTEGER_FILTERS:
            assert sorted(server.found(spec, len(live))) == sorted(i for i, d in live.items() if matches(spec, d)), spec
        assert index.delete(new_ids).deleted == new_ids and len(index) == len(BASE)
    finally:
        index.close()
