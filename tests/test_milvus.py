"""The funnel inside Milvus: every stage a search in Milvus, no vector fetched, in both layouts
(one collection with a vector field per stage on Milvus 2.4+ and Lite; one collection per field on
Milvus 2.3), with Milvus's own head index types, on a Lite file and on the real 2.3 server."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from matryoshka.errors import StoreError
from matryoshka.funnel import Schedule, recall_at_k
from matryoshka.index import Index, build_index
from matryoshka.vectors import normalize

pytestmark = pytest.mark.slow


def _vectors(n: int = 4000, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(1 + np.arange(dim))
    return normalize(rng.normal(size=(n, dim)) * scale), normalize(rng.normal(size=(30, dim)) * scale)


def _truth(documents: np.ndarray, queries: np.ndarray, k: int, dim: int | None = None) -> np.ndarray:
    dim = dim or documents.shape[1]
    return np.argsort(-(normalize(queries[:, :dim]) @ normalize(documents[:, :dim]).T), axis=1, kind="stable")[:, :k]


@pytest.fixture(params=["lite-fields", "lite-collections", pytest.param("server", marks=pytest.mark.milvus_server)])
def where(request, tmp_path, monkeypatch):
    """A Lite file in each layout (the 2.3 layout chosen by having Lite report version 2.3), and
    the real Milvus 2.3 server, which gets the per-field collections by its own version."""
    if request.param == "server":
        return request.getfixturevalue("milvus_server"), f"m{uuid.uuid4().hex[:10]}", "collections"
    if request.param == "lite-collections":
        import matryoshka.stores.milvus as milvus

        monkeypatch.setattr(milvus, "server_version", lambda client, uri: (2, 3))
    return str(tmp_path / "index.db"), None, request.param.split("-")[1]


def _no_vectors_fetched(store, monkeypatch) -> None:
    """Make any read of rows by id fail: a funnel or a stored prefix must search in Milvus."""

    from matryoshka.stores.milvus import _meta_name

    get, query = store.client.get, store.client.query

    def refusing(read):
        def refuse(collection, *args, **kwargs):
            if collection == _meta_name(store.collection):  # the pointer row: what the index is now
                return read(collection, *args, **kwargs)
            raise AssertionError("rows were fetched by id")

        return refuse

    monkeypatch.setattr(store.client, "get", refusing(get))
    monkeypatch.setattr(store.client, "query", refusing(query))


@pytest.mark.parametrize("head_index", ["flat", "binary"])
def test_every_stage_runs_in_milvus_and_a_wide_funnel_is_exact(where, head_index, monkeypatch):
    db, collection, layout = where
    documents, queries = _vectors()
    ids, texts = [f"d{i}" for i in range(len(documents))], [f"text {i}" for i in range(len(documents))]
    meta = build_index(db, ids, texts, vectors=documents, head_index=head_index, collection=collection)
    with Index(db, collection=collection) as index:
        store = index.store
        assert store.layout.kind == layout and len(Schedule.parse(meta.schedule).stages) == 2  # one cut, then d
        assert set(store.layout.prefix_dims) == ({16, 32} if head_index == "binary" else {16, 32} - {meta.head_dim})
        exact = index.search_vectors(queries, 10, exact=True)
        np.testing.assert_array_equal(exact.rows, _truth(documents, queries, 10))
        head = f"{meta.head_dim}{'b' if head_index == 'binary' else ''}"
        wide = Schedule.parse(f"{head}:{len(documents)},32:{len(documents)},64:10")
        _no_vectors_fetched(store, monkeypatch)
        found = index.search_vectors(queries, 10, schedule=wide)  # head, the 32-dim field, the full field
        np.testing.assert_array_equal(found.rows, exact.rows)
        np.testing.assert_allclose(found.scores, exact.scores, atol=1e-5)
        assert found.stage_dims == [meta.head_dim, 32, 64] and len(found.stage_seconds) == 3
        tuned = index.search_vectors(queries, 10)
        assert recall_at_k(tuned.rows, exact.rows) >= 0.95
        hits = index.hits(found)  # the last stage brought the ids and texts back with it
        assert hits[0].ids == [ids[r] for r in exact.rows[0]] and hits[0].texts[0] == texts[exact.rows[0][0]]
        prefix = index.search_vectors(queries, 10, dim=32)  # a stored prefix: searched in Milvus
        np.testing.assert_array_equal(prefix.rows, _truth(documents, queries, 10, 32))
        with pytest.raises(StoreError, match="keeps prefixes of .* dims; a stage at 24 dims cannot run in Milvus"):
            index.search_vectors(queries, 10, schedule=Schedule.parse(f"{head}:500,24:100,64:10"))
    monkeypatch.undo()
    with Index(db, collection=collection) as index:  # a prefix that is not stored is scanned client-side
        np.testing.assert_array_equal(index.search_vectors(queries, 5, dim=20).rows, _truth(documents, queries, 5, 20))


def test_an_index_in_the_earlier_layout_is_refused_with_what_to_do(tmp_path):
    from matryoshka.stores.milvus import _meta_name
    from matryoshka.stores.milvus_client import connect, disconnect

    db = str(tmp_path / "old.db")
    documents, _ = _vectors(200, 16)
    build_index(db, [str(i) for i in range(200)], ["t"] * 200, vectors=documents)
    client = connect(db)
    name = _meta_name("matryoshka")
    value = json.loads(client.get(name, ids=["current"], output_fields=["value"])[0]["value"])
    del value["layout"]  # what the two-collection layout's pointer held
    client.upsert(name, [{"key": "current", "value": json.dumps(value), "vector": [0.0, 0.0]}])
    client.flush(name)
    disconnect(client, db)
    with pytest.raises(StoreError, match="earlier Milvus layout .* re-index it with 'matryoshka index'"):
        Index(db)


def test_milvus_lite_refuses_heads_it_cannot_build_before_any_work(tmp_path):
    documents, _ = _vectors(50, 16)
    for head_index, index_type in (("hnsw", "HNSW"), ("binary-ivf", "BIN_IVF_FLAT")):
        with pytest.raises(
            StoreError, match=f"Milvus Lite searches only exact heads .*{index_type}.* needs a Milvus server"
        ):
            build_index(
                str(tmp_path / "x.db"),
                [str(i) for i in range(50)],
                ["t"] * 50,
                vectors=documents,
                head_index=head_index,
            )
    with pytest.raises(StoreError, match="binary-ivf is a Milvus server's index"):
        build_index(
            tmp_path / "local", [str(i) for i in range(50)], ["t"] * 50, vectors=documents, head_index="binary-ivf"
        )


@pytest.mark.milvus_server
@pytest.mark.parametrize("head_index", ["hnsw", "binary-ivf"])
def test_approximate_heads_are_tuned_on_the_real_milvus_index(milvus_server, head_index):
    """HNSW and BIN_IVF_FLAT heads on the server: autotune runs the schedule in Milvus and searches
    the head more thoroughly, or widens the shortlist, until the target holds; queries it never saw
    reach it too."""
    collection = f"a{uuid.uuid4().hex[:10]}"
    documents, _ = _vectors(4000, 64, seed=1)
    rng = np.random.default_rng(2)
    tune, unseen = (normalize(rng.normal(size=(n, 64)) / np.sqrt(1 + np.arange(64))) for n in (150, 100))
    meta = build_index(
        milvus_server,
        [str(i) for i in range(len(documents))],
        ["t"] * len(documents),
        vectors=documents,
        head_index=head_index,
        collection=collection,
        tune_queries=tune,
        target_recall=0.95,
    )
    assert meta.autotune.queries.endswith("verified on the Milvus index") and meta.autotune.passed
    with Index(milvus_server, collection=collection) as index:
        layout = index.store.layout
        assert layout.head_index_type == {"hnsw": "HNSW", "binary-ivf": "BIN_IVF_FLAT"}[head_index]
        assert layout.head_params  # the setting that passed is kept with the index
        found = index.search_vectors(unseen, 10)
    assert recall_at_k(found.rows, _truth(documents, unseen, 10)) >= 0.93
