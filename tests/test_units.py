"""Unit tests on small synthetic vectors, beside the real-data ones: the funnel, shortlist selection
and in-place re-scoring against brute-force oracles, with random shapes, ties and edge cases; the
index's metadata and manifest; the command line's error contract. Fast: this is the quick tier."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matryoshka.errors import DataError, MatryoshkaError, ScheduleError, StoreError
from matryoshka.funnel import Schedule, Stage, funnel_search, recall_at_k
from matryoshka.rescore import prefix_cosines, rerank
from matryoshka.selection import HammingShortlist, _smallest_by_count, scan_shortlist, select_shortlist
from matryoshka.stores.base import FORMAT_VERSION, Autotune, IndexMeta, Store
from matryoshka.stores.memory import MemoryStore
from matryoshka.vectors import (
    binary_codes,
    halving_dims,
    head_candidates,
    normalize,
    prefix_norm_dims,
    prefix_norms,
    stage_dims,
    validate_vectors,
)


def _matryoshka_like(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit rows whose variance decays along the coordinates, as a Matryoshka model's do."""
    scale = 1.0 / np.sqrt(1.0 + np.arange(dim))
    return normalize(rng.normal(size=(n, dim)) * scale)


def _exact(documents: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ documents.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.mark.parametrize("seed", range(6))
def test_funnel_against_brute_force_on_random_vectors(seed):
    """A funnel whose every stage keeps the whole corpus is exact search; any funnel returns true
    cosines, best first; a wider funnel never finds less."""
    rng = np.random.default_rng(seed)
    n, dim, k = int(rng.integers(40, 400)), int(rng.choice([16, 32, 48, 64])), int(rng.integers(1, 8))
    documents, queries = _matryoshka_like(rng, n, dim), _matryoshka_like(rng, 17, dim)
    head = int(rng.choice(head_candidates(dim)))
    store = MemoryStore(documents, head)
    scores, truth = _exact(documents, queries, k)
    wide = funnel_search(
        store, queries, Schedule(tuple(Stage(d, n) for d in stage_dims(dim, head)[:-1]) + (Stage(dim, k),)), k
    )
    np.testing.assert_allclose(wide.scores, scores, atol=1e-5)
    assert recall_at_k(wide.rows, truth) == 1.0
    narrow = Schedule.halving(dim, k, max(k, n // 8), head)
    found = funnel_search(store, queries, narrow, k)
    true_cosines = np.take_along_axis(queries @ documents.T, found.rows, axis=1)
    np.testing.assert_allclose(found.scores, true_cosines, atol=1e-5)
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()
    assert all(len(set(row)) == k for row in found.rows)
    assert recall_at_k(wide.rows, truth) >= recall_at_k(found.rows, truth)
    assert found.stage_dims == stage_dims(dim, head) and found.stage_keeps[-1] == k


@pytest.mark.parametrize("seed", range(4))
def test_binary_funnel_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, dim, k = int(rng.integers(50, 300)), 64, 5
    documents, queries = _matryoshka_like(rng, n, dim), _matryoshka_like(rng, 9, dim)
    store = MemoryStore(documents, dim, head_index="binary")
    scores, truth = _exact(documents, queries, k)
    wide = funnel_search(store, queries, Schedule.parse(f"{dim}b:{n},{dim // 2}:{n},{dim}:{k}"), k)
    np.testing.assert_allclose(wide.scores, scores, atol=1e-5)
    codes, query_codes = binary_codes(documents, dim), binary_codes(queries, dim)
    hamming = np.unpackbits(query_codes[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    head_scores, head_rows = store.head_search(queries, 20)
    expected = np.sort(hamming, axis=1)[:, :20]
    got = np.sort(np.take_along_axis(hamming, head_rows, axis=1), axis=1)
    np.testing.assert_array_equal(got, expected)  # the head's shortlist is an exact Hamming top-20
    np.testing.assert_allclose(np.sort(head_scores, axis=1)[:, ::-1], 1 - 2 * expected / dim, atol=1e-6)


@given(
    rows=st.integers(1, 6),
    columns=st.integers(1, 300),
    n=st.integers(1, 320),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_select_shortlist_is_exact_with_heavy_ties(rows, columns, n, levels, seed):
    scores = np.random.default_rng(seed).integers(0, levels, size=(rows, columns)).astype(np.float32)
    n = min(n, columns)
    picked = select_shortlist(scores, n)
    assert picked.shape == (rows, n)
    np.testing.assert_array_equal(
        np.sort(np.take_along_axis(scores, picked, axis=1), axis=1), np.sort(scores, axis=1)[:, columns - n :]
    )
    assert all(len(set(row)) == n for row in picked)


def test_scan_shortlist_matches_a_full_product_at_sizes_around_the_sample():
    rng = np.random.default_rng(3)
    for count in (50, 9_000, 20_000):
        head, queries = normalize(rng.normal(size=(count, 8))), normalize(rng.normal(size=(5, 8)))
        for n in (1, 10, 300):
            scores, rows = scan_shortlist(queries, head, n)
            full = queries @ head.T
            np.testing.assert_allclose(np.sort(scores, axis=1), np.sort(full, axis=1)[:, count - n :], atol=1e-6)
            np.testing.assert_allclose(np.take_along_axis(full, rows, axis=1), scores, atol=1e-6)


@given(
    counts=st.lists(st.integers(3, 40), min_size=1, max_size=6),
    n=st.integers(1, 3),
    bits=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=80, deadline=None)
def test_smallest_by_count_keeps_exactly_n_smallest_in_row_order_on_ties(counts, n, bits, seed):
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    owner = np.repeat(np.arange(len(counts)), counts)
    distances = rng.integers(0, 4, size=len(owner)).astype(np.int32)  # few values: many ties
    rows = np.arange(len(owner)) * 3
    picked, picked_distances = _smallest_by_count(owner, distances, rows, counts, n, bits)
    starts = np.cumsum(counts) - counts
    for query, (start, count) in enumerate(zip(starts, counts)):
        order = np.argsort(distances[start : start + count], kind="stable")[:n]  # ties: first kept first
        np.testing.assert_array_equal(np.sort(picked[query]), np.sort(rows[start + order]))
        np.testing.assert_array_equal(np.sort(picked_distances[query]), np.sort(distances[start + order]))


def test_hamming_shortlist_against_numpy_popcount():
    rng = np.random.default_rng(5)
    for count, n in ((30, 7), (12_000, 40), (12_000, 900)):
        codes = rng.integers(0, 256, size=(count, 4), dtype=np.uint8)
        queries = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
        distances, rows = HammingShortlist(codes).search(queries, n)
        hamming = np.unpackbits(queries[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
        np.testing.assert_array_equal(np.sort(distances, axis=1), np.sort(hamming, axis=1)[:, :n])
        np.testing.assert_array_equal(np.take_along_axis(hamming, rows, axis=1), distances)


@pytest.mark.parametrize("dim", [4, 8, 16, 32])
def test_in_place_prefix_cosines_equal_gathered_ones(dim):
    rng = np.random.default_rng(dim)
    vectors = normalize(rng.normal(size=(500, 32)))
    queries = rng.normal(size=(7, dim)).astype(np.float32)
    rows = rng.integers(0, 500, size=(7, 60))
    rows[0, :5] = -1  # "no candidate" stays last
    gathered = rerank(vectors[:, :dim][np.maximum(rows, 0)], queries)
    gathered[rows < 0] = -np.inf
    for norms in (None, prefix_norms(vectors, [dim])[:, 0]):
        in_place = prefix_cosines(vectors, rows, queries, norms=norms)
        np.testing.assert_allclose(in_place, gathered, atol=1e-5)
    assert prefix_cosines(vectors, rows, rng.normal(size=(7, 5)).astype(np.float32)) is None  # 5 does not divide 32


def test_dimension_lists():
    assert halving_dims(384) == [384, 192, 96, 48, 24, 12] and halving_dims(100) == [100, 50, 25]
    assert stage_dims(256) == [8, 16, 32, 64, 128, 256] and stage_dims(100) == [8, 16, 32, 64, 100]
    assert head_candidates(256) == [8, 16, 32, 64] and head_candidates(16) == [8]
    assert prefix_norm_dims(256) == [8, 16, 32, 64, 128] and prefix_norm_dims(100) == [25, 50]
    vectors = normalize(np.random.default_rng(0).normal(size=(10, 8)))
    np.testing.assert_allclose(prefix_norms(vectors, [2, 8])[:, 1], 1.0, atol=1e-6)


def _unit_oracle(row: list[float]) -> list[float]:
    """A row over its length in Python floats: divided by its largest magnitude first (a length
    past the largest double is inf), then by math.hypot, which neither overflows nor underflows."""
    largest = max(abs(x) for x in row)
    scaled = [x / largest for x in row]
    length = math.hypot(*scaled)
    return [x / length for x in scaled]


@pytest.mark.parametrize(
    ("row", "dtype"),
    [
        ([1e300, 1e300, -1e300, 1e300], np.float64),  # squares overflow float64
        ([3e38, 3e38, 3e38, -3e38], np.float32),  # squares overflow float32
        ([1e-30, -1e-30, 1e-30, 1e-30], np.float32),  # squares underflow float32
        ([5e-324, 0.0, 0.0, 0.0], np.float64),  # the smallest subnormal
        ([1e200, 1e-200, 0.0, 3.0], np.float64),  # a float64 row past float32's range
        ([60000.0, 60000.0, 1.0, 0.0], np.float16),
    ],
)
def test_every_finite_non_zero_row_normalises_to_its_direction(row, dtype):
    """Issue 21 row 11: such rows were stored as zeros or refused as "all zeros"."""
    vectors = np.array([row, [3.0, 4.0, 0.0, 0.0]], dtype=dtype)
    expected = [_unit_oracle([float(x) for x in r]) for r in vectors]
    np.testing.assert_allclose(validate_vectors(vectors), expected, atol=1e-6)
    np.testing.assert_allclose(normalize(vectors), expected, atol=1e-6)
    assert validate_vectors(vectors).dtype == normalize(vectors).dtype == np.float32


def _float_rows(width: int):
    values = st.floats(allow_nan=False, allow_infinity=False, width=width)
    return st.integers(1, 6).flatmap(
        lambda dim: st.lists(st.lists(values, min_size=dim, max_size=dim).filter(any), min_size=1, max_size=4)
    )


@given(
    case=st.sampled_from([(np.float32, 32), (np.float64, 64)]).flatmap(
        lambda t: st.tuples(st.just(t[0]), _float_rows(t[1]))
    )
)
@settings(max_examples=150, deadline=None)
def test_validate_vectors_gives_any_finite_non_zero_row_unit_length(case):
    dtype, rows = case
    unit_rows = validate_vectors(np.array(rows, dtype=dtype))
    np.testing.assert_allclose(unit_rows, [_unit_oracle(row) for row in rows], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(unit_rows.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_validate_vectors_still_refuses_zero_and_non_finite_rows():
    with pytest.raises(StoreError, match="row 1 is all zeros"):
        validate_vectors(np.array([[1.0, 0.0], [0.0, -0.0]]))
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(StoreError, match="row 0 contains NaN or infinite"):
            validate_vectors(np.array([[bad, 1.0]], dtype=np.float32))
    assert normalize(np.array([[0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0]])).tolist() == [[0, 0]] * 3


def test_vectors_from_a_file_are_checked_block_by_block_and_indexed_whole(tmp_path):
    """A memory-mapped --vectors file is checked a block at a time: a bad row far past the first
    block is named by its own number, with the count of bad rows in the whole file, before anything
    is written; a good one is indexed, normalised, in the same order."""
    from matryoshka.index import Index, build_index
    from matryoshka.vectors import check_vector_rows

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 8)).astype(np.float32) * 5
    bad = rows.copy()
    bad[[170, 250], 3] = [np.nan, np.inf]
    path = tmp_path / "bad.npy"
    np.save(path, bad)
    mapped = np.load(path, mmap_mode="r")
    with pytest.raises(StoreError, match=r"--vectors row 170 contains NaN or infinite values \(2 rows in all\)"):
        check_vector_rows(mapped, what="--vectors", block=64)
    zero = rows.copy()
    zero[299] = 0
    with pytest.raises(StoreError, match="row 299 is all zeros"):
        check_vector_rows(zero, block=64)
    ids, texts = [f"d{i}" for i in range(300)], ["t"] * 300
    with pytest.raises(StoreError, match="--vectors row 170 contains NaN"):
        build_index(str(tmp_path / "never"), ids, texts, vectors=mapped)
    assert not (tmp_path / "never").exists()
    np.save(tmp_path / "good.npy", rows)
    build_index(str(tmp_path / "index"), ids, texts, vectors=np.load(tmp_path / "good.npy", mmap_mode="r"))
    with Index(str(tmp_path / "index")) as index:
        np.testing.assert_allclose(
            index.store.document_vectors(np.arange(300)), rows / np.linalg.norm(rows, axis=1, keepdims=True), atol=1e-6
        )


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_schedule_parse_refuses_garbage_with_a_schedule_error(text):
    try:
        schedule = Schedule.parse(text)
    except ScheduleError:
        return
    assert Schedule.parse(str(schedule)) == schedule  # what parses, prints back to itself


def test_index_meta_round_trips_and_refuses_other_formats():
    meta = IndexMeta(
        model="wordllama",
        full_dim=256,
        head_dim=256,
        count=3,
        head_index="binary",
        schedule="256b:3,128:3,256:1",
        prefix_norm_dims=(8, 16),
        autotune=Autotune(k=1, target_recall=0.99, recall=1.0, queries="given queries", passed=True, corpus_size=3),
    )
    assert IndexMeta.from_dict(json.loads(meta.to_json()), "x") == meta
    for change, message in (
        ({"format_version": 1}, "index format 1"),
        ({"format_version": FORMAT_VERSION + 1}, f"index format {FORMAT_VERSION + 1}"),
        ({"full_dim": "256"}, "'full_dim' should be int"),
        ({"extra": {}}, "unknown metadata field(s) extra"),
        ({"head_index": "ivf"}, "unknown head index 'ivf'"),
    ):
        with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
            IndexMeta.from_dict({**meta.to_dict(), **change}, "x")
    broken = meta.to_dict()
    del broken["count"]
    with pytest.raises(StoreError, match="'count' is missing"):
        IndexMeta.from_dict(broken, "x")


def test_every_store_has_the_whole_protocol():
    from matryoshka.stores.in_memory import InMemoryStore
    from matryoshka.stores.local import LocalStore
    from matryoshka.stores.milvus import MilvusStore

    members = [name for name in Store.__dict__ if not name.startswith("_")] + ["__len__"]
    members += list(Store.__annotations__)
    store = MemoryStore(normalize(np.eye(4, 16) + 0.1), 8)
    for cls in (MemoryStore, LocalStore, InMemoryStore, MilvusStore):
        missing = [m for m in members if not hasattr(cls, m) and m not in Store.__annotations__]
        assert not missing, (cls.__name__, missing)
    assert all(hasattr(store, m) for m in members)


def test_local_index_manifest_lock_and_old_format(tmp_path):
    from matryoshka.index import Index, build_index
    from matryoshka.stores.local import LocalBuilder

    vectors = normalize(np.random.default_rng(1).normal(size=(30, 16)))
    build_index(tmp_path / "idx", [f"d{i}" for i in range(30)], [f"text {i}" for i in range(30)], vectors=vectors)
    with Index(tmp_path / "idx") as index:
        assert len(index.store) == 30 and index.search_vectors(vectors[:2], 3, exact=True).rows[:, 0].tolist() == [0, 1]
    holder = LocalBuilder(tmp_path / "idx")  # one writer holds the lock: a second is refused, nothing changes
    with pytest.raises(StoreError, match="is being written by process"):
        build_index(tmp_path / "idx", ["a"], ["a"], vectors=vectors[:1])
    holder.abort()
    holder.close()
    with Index(tmp_path / "idx") as index:
        assert len(index.store) == 30
    manifest = tmp_path / "idx" / "manifest.json"
    manifest.write_text("{ not json")
    with pytest.raises(StoreError, match="not a valid manifest"):
        Index(tmp_path / "idx")
    old = tmp_path / "old"
    (old / "builds" / "b1").mkdir(parents=True)
    (old / "current").symlink_to("builds/b1")
    with pytest.raises(StoreError, match="index format 1.*re-index it"):
        Index(old)


def test_cli_prints_user_errors_as_one_line_and_lets_bugs_show_their_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import matryoshka.cli as cli

    runner = CliRunner()
    source = tmp_path / "docs.txt"
    source.write_text("one\n")

    def fails_with(error: BaseException):
        def read(path):
            raise error

        return read

    monkeypatch.setattr(cli, "read_texts", fails_with(DataError(source, "bad thing :100: here", 3)))
    result = runner.invoke(cli.app, ["encode", "--input", str(source), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and f"error: {source}:3: bad thing :100: here" in result.output  # no emoji codes
    assert "Traceback" not in result.output
    monkeypatch.setattr(cli, "read_texts", fails_with(KeyError("a bug")))
    result = runner.invoke(cli.app, ["encode", "--input", str(source), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # a bug is not a user error
    assert issubclass(DataError, MatryoshkaError) and not issubclass(MatryoshkaError, ValueError)


def test_progress_in_a_log_is_plain_lines():
    import io

    from rich.console import Console

    from matryoshka.display import LineProgress, progress_display

    stream = io.StringIO()
    console = Console(file=stream, width=100)
    display = progress_display(console)
    assert isinstance(display, LineProgress)
    with display:
        task = display.add_task("Encoding", total=1000)
        for _ in range(100):
            display.advance(task, 10)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 11  # 0%, 10%, … 100%
    assert lines[-1].startswith("Encoding: 100% (1,000 of 1,000)")


def test_autotune_groups_make_every_kind_of_query_reach_the_target():
    """Mean recall over all queries can hide one kind that misses; with groups the worst kind's
    lower bound decides."""
    from matryoshka.funnel import worst_bound

    easy, hard = np.ones(200), np.r_[np.ones(90), np.zeros(10)]
    recalls = np.r_[easy, hard]
    groups = np.array(["long"] * 200 + ["word"] * 100)
    assert worst_bound(recalls, None) > 0.9 > worst_bound(recalls, groups)
    assert worst_bound(recalls, groups) == worst_bound(hard, None)


def test_tuning_texts_have_three_kinds_in_equal_shares():
    from matryoshka.samples import tuning_texts

    texts = [f"the river number {i} runs through a quiet green valley towards the sea" for i in range(50)]
    samples, kinds = tuning_texts(texts, 30)
    assert len(samples) == len(kinds) == 30 and {kinds.count(k) for k in ("word", "short", "long")} == {10}
    for sample, kind in zip(samples, kinds):
        words = len(sample.split())
        assert (
            (kind == "word" and words == 1) or (kind == "short" and 2 <= words <= 3) or (kind == "long" and words >= 4)
        )
