"""Ids and texts kept as Arrow string columns: a large segment's columns are memory-mapped (the
heap holds no Python string per row), any valid Unicode round-trips, a lone surrogate is refused
before anything is written, and segments written by earlier versions (ids.json, texts.jsonl)
still open, answer the same and are rewritten in the new form by compaction."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_live import run_random_operations

from matryoshka.errors import MatryoshkaError, StoreError
from matryoshka.index import Index, build_index
from matryoshka.stores import string_columns
from matryoshka.stores.local import IDS, TEXTS
from matryoshka.stores.string_columns import IdLookup, read_strings, string_column

HOSTILE = ["", " ", "日本語", "e\u0301", "🦀" * 40, "a\x00b", "line\nbreak", '"quoted"', "\\", "\u202eRTL"]


def unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def corpus(count: int) -> tuple[list[str], list[str]]:
    ids = [f"{HOSTILE[i % len(HOSTILE)]}#{i}" for i in range(count)]
    texts = [f"text {HOSTILE[(i * 7) % len(HOSTILE)]} {i}" for i in range(count)]
    return ids, texts


def mapped_range(path: str) -> tuple[int, int]:
    """Where this process has ``path`` memory-mapped (the first mapping of it)."""
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(path):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    raise AssertionError(f"{path} is not memory-mapped")


def answers(db, queries: np.ndarray) -> list[tuple[list[str], list[str]]]:
    with Index(db) as index:
        hits = index.hits(index.search_vectors(queries, 5, exact=True))
    return [(h.ids, h.texts) for h in hits]


def test_a_large_segment_maps_its_ids_and_texts_and_answers_with_them(tmp_path):
    rng = np.random.default_rng(0)
    ids, texts = corpus(4200)
    vectors = unit(rng, 4200, 256)  # 4.3 MB of vectors: a memory-mapped segment
    db = tmp_path / "index"
    build_index(db, ids, texts, vectors=vectors, k=5, head_index="binary", recall_levels=())
    allocated = pa.total_allocated_bytes()
    with Index(db) as index:
        assert pa.total_allocated_bytes() - allocated < 64 * 1024  # nothing was read into Arrow's heap
        (segment,) = index.store.segments
        for name, column in ((IDS, segment.ids), (TEXTS, segment.texts)):
            start, end = mapped_range(str(db / "segments" / segment.name / name))
            assert start <= column.buffers()[2].address < end  # the UTF-8 bytes are the file's pages
        queries = vectors[[3, 2999, 4198]]
        found = index.hits(index.search_vectors(queries, 5, exact=True))
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert [h.ids for h in found] == [[ids[r] for r in row] for row in truth]
    assert [h.texts for h in found] == [[texts[r] for r in row] for row in truth]


def test_a_lone_surrogate_is_refused_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(1)
    db = tmp_path / "index"
    with pytest.raises(StoreError, match=r"item 2\) is not valid Unicode"):
        build_index(db, ["a", "b\ud800"], ["x", "y"], vectors=unit(rng, 2, 32), k=1)
    assert not (db / "manifest.json").exists()
    build_index(db, ["a", "b"], ["x", "y"], vectors=unit(rng, 2, 32), k=1)
    with Index(db) as index, pytest.raises(MatryoshkaError, match="not valid Unicode"):
        index.add(["c"], texts=["z\udfff"], vectors=unit(rng, 1, 32))
    assert answers(db, unit(rng, 1, 32))[0][0] in (["a", "b"], ["b", "a"])


def test_segments_written_by_earlier_versions_open_answer_the_same_and_compact_into_columns(tmp_path):
    rng = np.random.default_rng(2)
    ids, texts = corpus(4500)
    db = tmp_path / "index"
    build_index(db, ids[:4200], texts[:4200], vectors=unit(rng, 4200, 256), k=5, head_index="binary", recall_levels=())
    with Index(db) as index:
        index.add(ids[4200:], texts=texts[4200:], vectors=unit(rng, 300, 256))  # a small, in-RAM segment
        index.delete([ids[7], ids[4203]])
    queries = unit(rng, 8, 256)
    before = answers(db, queries)
    for segment in (db / "segments").iterdir():  # as an earlier version wrote them
        column = {name: read_strings(segment / name, mapped=False).to_pylist() for name in (IDS, TEXTS)}
        (segment / "ids.json").write_text(json.dumps(column[IDS]), encoding="utf-8")
        (segment / "texts.jsonl").write_text(
            "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in column[TEXTS]), encoding="utf-8"
        )
        (segment / IDS).unlink()
        (segment / TEXTS).unlink()
    assert answers(db, queries) == before
    with Index(db) as index:
        index.compact()
    (segment,) = (db / "segments").iterdir()
    assert (segment / IDS).is_file() and not (segment / "ids.json").exists()
    assert answers(db, queries) == before


any_id = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # any valid Unicode, "" included


@settings(max_examples=150, deadline=None)
@given(st.lists(any_id, unique=True, max_size=40), st.lists(any_id, max_size=12), st.booleans())
def test_an_id_lookup_finds_each_id_by_dict_or_by_bisection(stored, asked, bisect):
    asked = asked + stored[::3]
    limit = -1 if bisect else string_columns.DICT_LOOKUP_ROWS
    previous, string_columns.DICT_LOOKUP_ROWS = string_columns.DICT_LOOKUP_ROWS, limit
    try:
        found = IdLookup().rows_of(string_column(stored), asked)
    finally:
        string_columns.DICT_LOOKUP_ROWS = previous
    assert found.tolist() == [stored.index(doc_id) if doc_id in stored else -1 for doc_id in asked]


def test_random_operations_with_every_segment_searched_by_bisection(tmp_path, monkeypatch):
    """The live-index oracle run (hostile Unicode ids, a trickle of single adds, upserts, deletes,
    compactions) with the lookup a segment of millions of rows uses forced on every segment."""
    monkeypatch.setattr(string_columns, "DICT_LOOKUP_ROWS", -1)
    counts = run_random_operations(str(tmp_path / "index"), 300, seed=5, head_index="binary")
    assert min(counts.values()) > 0, counts
