"""The live index: add, upsert, delete and compact while searching, on every store.

The randomized tests run interleaved operations against a brute-force oracle (a dict of the live
documents) and check at every step that a funnel with a wide schedule returns exactly what an
exact search over the live documents returns, with their texts. Ids are drawn from what users
really send (non-ASCII letters, emoji, quotes, backslashes, slashes, control characters, line
breaks, spaces at the ends), and most writes are a trickle of single documents, which the
merge policy must keep to a logarithmic number of segments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle_steps, run_cli, write_jsonl
from matryoshka.errors import BusyError, MatryoshkaError
from matryoshka.funnel import Schedule
from matryoshka.index import Index, build_index
from matryoshka.stores.segments import merge_plan
from matryoshka.vectors import normalize

DIM = 32


HOSTILE_PARTS = [
    "ü",
    "😀",
    "x\ny",
    " padded ",
    "tab\t",
    "quote\"'",
    "back\\slash",
    "a/b",
    "\x01",
    "\x1b[0m",
    "=",
    "日本",
]


def hostile_id(rng: np.random.Generator, serial: int) -> str:
    """A unique id made of the characters users' ids hold and naive code mishandles."""
    parts = rng.choice(HOSTILE_PARTS, size=int(rng.integers(1, 3)))
    return "".join(parts) + str(serial)


def unit(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def as_stored(vectors: np.ndarray, storage: str) -> np.ndarray:
    """The unit vectors an index of ``storage`` holds for ``vectors``, worked out here by the
    formula the documentation states (float16 rounding; int8 codes of ±127 at each row's largest
    coordinate), not by the code under test; from the rows as the index normalises what it is given."""
    vectors = normalize(vectors).astype(np.float64)
    if storage == "float16":
        vectors = vectors.astype(np.float16).astype(np.float64)
    elif storage == "int8":
        vectors = np.round(vectors * 127 / np.abs(vectors).max(axis=1, keepdims=True))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class Oracle:
    """The live documents, kept by hand: what every search must agree with."""

    def __init__(self, storage: str = "float32") -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.texts: dict[str, str] = {}
        self.storage = storage

    def upsert(self, ids, vectors, texts) -> None:
        vectors = as_stored(vectors, self.storage)
        for doc_id, vector, text in zip(ids, vectors, texts):
            self.vectors[doc_id], self.texts[doc_id] = vector, text

    def delete(self, ids) -> None:
        for doc_id in ids:
            self.vectors.pop(doc_id, None)
            self.texts.pop(doc_id, None)

    def top(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        ids = list(self.vectors)
        matrix = np.stack([self.vectors[i] for i in ids])
        scores = queries @ matrix.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[ids[j] for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def wide_schedule(index: Index, k: int) -> Schedule:
    """Every live row through the head, then the full vectors: must equal exact search."""
    meta, n = index.meta, max(k, len(index))
    head = f"{meta.head_dim}b" if meta.binary_head else str(meta.head_dim)
    return Schedule.parse(f"{head}:{n},{meta.full_dim}:{k}")


def check_against_oracle(index: Index, oracle: Oracle, rng: np.random.Generator, step: str) -> None:
    """The index holds the oracle's documents, and a search returns the oracle's top k: live,
    distinct ids whose true cosines are the true top-k cosines (ids may differ only where two
    documents tie), with their own texts."""
    assert len(index) == len(oracle.vectors), step
    if not oracle.vectors:
        return
    k = min(5, len(oracle.vectors))
    queries = unit(rng, 3)
    _, truth_scores = oracle.top(queries, k)
    for exact in (False, True):
        result = index.search_vectors(queries, k, schedule=None if exact else wide_schedule(index, k), exact=exact)
        where = f"{step} ({'exact' if exact else 'funnel'})"
        for query, found, scores in zip(queries, index.hits(result), result.scores):
            assert len(set(found.ids)) == k and set(found.ids) <= oracle.vectors.keys(), where
            true = np.array([query @ oracle.vectors[i] for i in found.ids])
            np.testing.assert_allclose(scores, true, atol=1e-5, err_msg=where)
            assert found.texts == [oracle.texts[i] for i in found.ids], where
        np.testing.assert_allclose(result.scores, truth_scores, atol=1e-5, err_msg=where)
        alone = index.search_vectors(queries[:1], k, schedule=None if exact else wide_schedule(index, k), exact=exact)
        np.testing.assert_allclose(alone.scores[0], truth_scores[0], atol=1e-5, err_msg=f"{where}, one query")


def run_random_operations(
    db: str, operations: int, seed: int, head_index: str = "flat", compact_every: int = 60, storage: str = "float32"
):
    """``operations`` random adds, upserts, deletes, compactions and searches on a fresh index at
    ``db`` (times ``MATRYOSHKA_ORACLE_SCALE``); the oracle holds each vector as ``storage`` keeps it."""
    rng = np.random.default_rng(seed)
    oracle = Oracle(storage)
    ids = [hostile_id(rng, i) for i in range(30)]
    vectors = unit(rng, len(ids))
    texts = [f"text of {i} v0" for i in ids]
    build_index(db, ids, texts, vectors=vectors, head_index=head_index, k=5, storage=storage)
    oracle.upsert(ids, vectors, texts)
    serial = len(ids)
    counts = {"add": 0, "upsert": 0, "delete": 0, "compact": 0, "search": 0}
    with Index(db) as index:
        check_against_oracle(index, oracle, rng, "after the build")
        for step in range(oracle_steps(operations)):
            roll = rng.random()
            live = list(oracle.vectors)
            if step % compact_every == compact_every - 1:
                index.compact()
                counts["compact"] += 1
            elif roll < 0.3 or len(live) < 5:
                count = 1 if rng.random() < 0.7 else int(rng.integers(2, 6))  # mostly a trickle of one
                new = [hostile_id(rng, serial + i) for i in range(count)]
                serial += count
                batch, words = unit(rng, count), [f"text of {i} v{step}" for i in new]
                report = index.add(new, words, batch)
                assert report[:3] == (count, 0, len(oracle.vectors) + count)
                oracle.upsert(new, batch, words)
                counts["add"] += 1
            elif roll < 0.5:
                chosen = list(rng.choice(live, size=min(len(live), int(rng.integers(1, 4))), replace=False))
                fresh = [hostile_id(rng, serial)]  # an upsert may mix new and existing ids
                serial += 1
                batch_ids = chosen + fresh
                batch, words = unit(rng, len(batch_ids)), [f"text of {i} v{step}" for i in batch_ids]
                report = index.add(batch_ids, words, batch)
                assert report[:2] == (1, len(chosen))
                if report.replaced_ids is not None:
                    assert sorted(report.replaced_ids) == sorted(chosen)
                oracle.upsert(batch_ids, batch, words)
                counts["upsert"] += 1
            elif roll < 0.7:
                chosen = list(rng.choice(live, size=min(len(live) - 2, int(rng.integers(1, 4))), replace=False))
                unknown = [hostile_id(rng, -step - 1)]
                report = index.delete(chosen + unknown)
                assert sorted(report.deleted) == sorted(chosen) and report.not_found == unknown
                oracle.delete(chosen)
                counts["delete"] += 1
            else:
                counts["search"] += 1
            check_against_oracle(index, oracle, rng, f"step {step}")
            segments = getattr(index.store, "segments", None)
            if segments is not None:  # the merge policy: no size tier holds MERGE_FACTOR segments
                assert merge_plan(segments) is None, f"step {step}: {[s.live_count for s in segments]}"
    return counts


@pytest.mark.parametrize(
    "store, head_index", [("local", "flat"), ("local", "binary"), ("memory", "binary"), ("memory", "flat")]
)
def test_a_thousand_random_operations_match_the_oracle(tmp_path, store, head_index):
    db = str(tmp_path / "index") if store == "local" else f"memory://oracle-{head_index}"
    counts = run_random_operations(db, 1000, seed=len(store) * 10 + len(head_index), head_index=head_index)
    assert min(counts.values()) > 0, counts  # every kind of operation ran
    if store == "local":  # compaction left one segment and removed what it replaced
        index_files = os.listdir(tmp_path / "index" / "segments")
        manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
        assert sorted(index_files) == sorted(s["name"] for s in manifest["segments"])


@pytest.mark.slow
def test_random_operations_on_a_milvus_lite_file_match_the_oracle(tmp_path):
    counts = run_random_operations(str(tmp_path / "live.db"), 400, seed=7, compact_every=200)
    assert min(counts.values()) > 0, counts


def test_random_operations_on_the_milvus_server_match_the_oracle(milvus_server):
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server)
    for name in client.list_collections():
        if name.startswith("matryoshka"):
            client.drop_collection(name)
    client.close()
    counts = run_random_operations(milvus_server, 20, seed=11, compact_every=12)
    assert counts["add"] and counts["upsert"] and counts["delete"], counts


def test_an_hnsw_head_keeps_recall_across_segments_and_deletes(tmp_path):
    rng = np.random.default_rng(3)
    db = str(tmp_path / "index")
    vectors = unit(rng, 2000, 64)
    build_index(db, [str(i) for i in range(2000)], [""] * 2000, vectors=vectors, head_index="hnsw", head_dim=64, k=10)
    with Index(db) as index:
        for start in range(2000, 2600, 100):
            index.add([str(i) for i in range(start, start + 100)], vectors=unit(rng, 100, 64))
        index.delete([str(i) for i in range(0, 2600, 3)])
        queries = unit(rng, 50, 64)
        exact = index.search_vectors(queries, 10, exact=True).rows
        found = index.search_vectors(queries, 10, schedule=Schedule.parse("64:200")).rows  # the graph alone
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
        assert recall >= 0.98
        deleted = {str(i) for i in range(0, 2600, 3)}
        assert not deleted & {i for hit in index.hits(index.search_vectors(queries, 10)) for i in hit.ids}


# ---------------------------------------------------------------------------------------- bad input


def manifest_bytes(db: Path) -> bytes:
    return (db / "manifest.json").read_bytes()


@pytest.fixture
def small_index(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    db = tmp_path / "index"
    build_index(db, [f"d{i}" for i in range(20)], [f"t{i}" for i in range(20)], vectors=unit(rng, 20), k=5)
    return db


@pytest.mark.parametrize(
    "ids, texts, vectors, message",
    [
        (["a"], ["x"], np.ones((1, DIM + 1), np.float32), "has 33 dims but the index has 32"),
        (["a"], ["x"], np.full((1, DIM), np.nan, np.float32), "row 0 contains NaN"),
        (["a", "a"], ["x", "y"], np.ones((2, DIM), np.float32), "id 'a' appears more than once"),
        (["a", "b"], ["x"], np.ones((2, DIM), np.float32), "1 texts for 2 ids"),
        (["a", "b"], ["x", "y"], np.ones((3, DIM), np.float32), "has 3 rows"),
        (["a"], [None], np.ones((1, DIM), np.float32), "not a string"),
        (["a"], ["\ud800"], np.ones((1, DIM), np.float32), "not valid Unicode"),
        (["\udc80"], ["x"], np.ones((1, DIM), np.float32), "not valid Unicode"),
        ([""], ["x"], np.ones((1, DIM), np.float32), "empty id"),
        ([], None, None, "nothing to add"),
        (["a"], None, None, "give the documents' texts, their vectors, or both"),
    ],
)
def test_a_bad_add_is_refused_and_changes_nothing(small_index, ids, texts, vectors, message):
    before = manifest_bytes(small_index)
    with Index(small_index) as index, pytest.raises(MatryoshkaError, match=message):
        index.add(ids, texts, vectors)
    assert manifest_bytes(small_index) == before
    assert os.listdir(small_index / "segments") == [json.loads(before)["segments"][0]["name"]]


def test_a_second_writer_is_refused_while_the_first_writes(small_index):
    from matryoshka.stores import open_writer

    before = manifest_bytes(small_index)
    with open_writer(small_index):
        with Index(small_index) as index, pytest.raises(BusyError, match="is being written by process"):
            index.add(["new"], ["text"], np.ones((1, DIM), np.float32))
        with pytest.raises(BusyError):
            Index(small_index).delete(["d1"])
    assert manifest_bytes(small_index) == before
    with Index(small_index) as index:  # the lock went with the first writer
        assert index.delete(["d1", "nope"])[:2] == (["d1"], ["nope"])


def test_memory_and_milvus_lite_writers_are_one_at_a_time(tmp_path):
    from matryoshka.stores import open_writer

    rng = np.random.default_rng(1)
    for db in ("memory://one-writer", str(tmp_path / "w.db")):
        build_index(db, ["a", "b", "c"], ["x", "y", "z"], vectors=unit(rng, 3), k=2)
        with open_writer(db), pytest.raises(BusyError, match="is being written by"):
            open_writer(db)
        with open_writer(db) as writer:  # free again once closed
            assert writer.delete(["a"]).deleted == ["a"]


# ---------------------------------------------------------------------------------------- readers


READER = """
import sys, numpy as np
from matryoshka.index import Index
index = Index(sys.argv[1])
query = np.load(sys.argv[2])
for line in sys.stdin:
    hits = index.hits(index.search_vectors(query, 1))[0]
    print(len(index), hits.ids[0], flush=True)
"""


def test_a_reader_in_another_process_sees_writes_on_its_next_search(small_index, tmp_path):
    """Readers need not reopen: each search first checks the manifest, and opens the new state when
    a write has replaced it."""
    rng = np.random.default_rng(5)
    vector = unit(rng, 1)
    np.save(tmp_path / "q.npy", vector)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(small_index), str(tmp_path / "q.npy")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:

        def ask() -> list[str]:
            reader.stdin.write("search\n")
            reader.stdin.flush()
            return reader.stdout.readline().split()

        count, first = ask()
        assert count == "20" and first != "target"
        with Index(small_index) as writer:
            writer.add(["target"], ["the answer"], vector)
        assert ask() == ["21", "target"]
        with Index(small_index) as writer:
            writer.delete(["target"])
        assert ask() == ["20", first]
    finally:
        reader.kill()
        reader.wait()


def test_searches_in_other_threads_never_fail_during_writes_and_compaction(small_index):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    queries = unit(rng, 4)
    stop = time.monotonic() + 6
    with Index(small_index) as reader:

        def search_until_stopped() -> int:
            done = 0
            while time.monotonic() < stop:
                hits = reader.hits(reader.search_vectors(queries, 5))
                assert all(len(h.ids) == 5 and all(h.ids) for h in hits)
                done += 1
            return done

        with ThreadPoolExecutor(3) as pool:
            searches = [pool.submit(search_until_stopped) for _ in range(2)]
            with Index(small_index) as writer:
                step = 0
                while time.monotonic() < stop - 0.5:
                    writer.add([f"n{step}"], [f"t{step}"], unit(rng, 1))
                    if step % 5 == 4:
                        writer.delete([f"n{step - 2}"])
                    if step % 10 == 9:
                        writer.compact()
                    step += 1
            assert all(s.result() > 0 for s in searches)


# ---------------------------------------------------------------------------------------- tuning


def test_the_schedule_is_retuned_when_the_corpus_doubles_and_on_compact(tmp_path):
    rng = np.random.default_rng(2)
    db = str(tmp_path / "index")
    build_index(db, [str(i) for i in range(300)], [""] * 300, vectors=unit(rng, 300, 64), k=10)
    with Index(db) as index:
        assert index.meta.autotune.corpus_size == 300
        index.add([f"a{i}" for i in range(200)], vectors=unit(rng, 200, 64))
        assert index.meta.autotune.corpus_size == 300  # not doubled yet: the schedule stays
        index.add([f"b{i}" for i in range(150)], vectors=unit(rng, 150, 64))
        assert index.meta.autotune.corpus_size == 650 and "re-tuned" in index.meta.autotune.queries
        index.delete([f"b{i}" for i in range(150)] + [f"a{i}" for i in range(200)] + [str(i) for i in range(200)])
        warning = index.schedule_warning()
        assert warning and "tuned on 650 documents" in warning and "now holds 100" in warning
        meta = index.compact()
        assert meta.count == 100 and meta.autotune.corpus_size == 100 and index.schedule_warning() is None
        assert len(os.listdir(Path(db) / "segments")) == 1 and not os.listdir(Path(db) / "tombstones")


# ---------------------------------------------------------------------------------------- kill -9


WRITER = """
import sys, numpy as np
from matryoshka.index import Index
db, what = sys.argv[1], sys.argv[2]
with Index(db) as index:
    if what == "add":
        vectors = np.load(sys.argv[3], mmap_mode="r")
        index.add([f"new{i}" for i in range(len(vectors))], vectors=vectors)
        print("ACKNOWLEDGED", flush=True)
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)  # right after the add returned
    else:
        print("STARTED", flush=True)
        index.compact()
        print("ACKNOWLEDGED", flush=True)
"""


def live_documents(db: Path) -> dict[str, np.ndarray]:
    with Index(db) as index:
        rows = np.arange(len(index))
        ids = index.store.ids_of(rows)
        return dict(zip(ids.tolist(), index.store.document_vectors(rows)))


@pytest.fixture
def big_index(tmp_path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(4)
    db = tmp_path / "index"
    build_index(db, [f"d{i}" for i in range(3000)], [""] * 3000, vectors=unit(rng, 3000, 64), k=10)
    np.save(tmp_path / "new.npy", unit(rng, 150_000, 64))
    with Index(db) as index:  # a second segment and some deletions, so that compaction has work
        index.add([f"e{i}" for i in range(500)], vectors=unit(rng, 500, 64))
        index.delete([f"d{i}" for i in range(0, 3000, 7)])
    return db, tmp_path / "new.npy", live_documents(db)


def run_writer(db: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_an_add_killed_midway_leaves_the_index_as_before_and_is_cleaned_up(big_index):
    """A kill while the add writes leaves exactly the previous documents (and leftovers that the
    next open removes); a kill after its manifest switched (while it re-tunes, before it
    returns) leaves all of the new documents. Never a part of them."""
    db, new, before = big_index
    vectors = np.load(new)
    midway = 0
    for delay in (0.0, 0.01, 0.03, 0.1, 0.3):
        writer = run_writer(db, "add", str(new))
        deadline = time.monotonic() + 120
        while not list((db / "segments").glob("*.partial")) and writer.poll() is None:  # the add is writing
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        leftovers = list((db / "segments").glob("*.partial"))
        after = live_documents(db)  # opening the index removes what the killed writer left
        assert not list((db / "segments").glob("*.partial"))
        if after.keys() == before.keys():
            assert all(np.array_equal(after[i], before[i]) for i in before)
            midway += bool(leftovers)
        else:  # the add had committed: all of it is there, and the index is as it was plus it
            assert len(after) == len(before) + len(vectors) and all(np.array_equal(after[i], before[i]) for i in before)
            assert np.allclose(after["new7"], vectors[7])
            with Index(db) as index:
                index.delete([f"new{i}" for i in range(len(vectors))])
    assert midway, "no kill landed while the add was writing"


def test_an_acknowledged_add_survives_a_kill_right_after(big_index):
    db, new, before = big_index
    writer = run_writer(db, "add", str(new))
    out, err = writer.communicate(timeout=600)
    assert "ACKNOWLEDGED" in out and writer.returncode == -signal.SIGKILL, err
    after = live_documents(db)
    vectors = np.load(new)
    assert len(after) == len(before) + len(vectors)
    assert np.allclose(after["new0"], vectors[0]) and np.allclose(after[f"new{len(vectors) - 1}"], vectors[-1])


def test_a_compaction_killed_at_any_moment_loses_nothing(big_index):
    db, _, before = big_index
    outcomes = set()
    for delay in (0.05, 0.3, 0.6, 1.2, 3.0):
        writer = run_writer(db, "compact")
        assert writer.stdout.readline().strip() == "STARTED"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        outcomes.add("ACKNOWLEDGED" in out)
        after = live_documents(db)
        assert after.keys() == before.keys()
        assert all(np.allclose(after[i], before[i]) for i in before)
    assert False in outcomes  # at least one kill landed during the compaction


# ---------------------------------------------------------------------------------------- CLI


def test_add_delete_and_compact_from_the_command_line_with_a_real_model(tmp_path):
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "moon", "text": "the moon pulls the sea into tides"},
            {"id": "bread", "text": "yeast makes bread rise"},
            {"id": "stars", "text": "stars burn hydrogen into helium"},
        ],
    )
    more = write_jsonl(
        tmp_path / "more.jsonl",
        [
            {"id": "ocean", "text": "ocean tides rise twice a day"},
            {"id": "bread", "text": "sourdough bread rises slowly with wild yeast"},
        ],
    )
    for db in (str(tmp_path / "index"), str(tmp_path / "cli.db")):
        assert run_cli("index", "--corpus", str(corpus), "--db", db, "--model", "wordllama").returncode == 0
        added = run_cli("add", "--db", db, "--corpus", str(more))
        assert added.returncode == 0 and "Added 1 and replaced 1" in added.stdout and "holds 4" in added.stdout
        found = run_cli("search", "--db", db, "--query", "when do ocean tides rise", "--k", "1")
        assert found.returncode == 0 and "ocean" in found.stdout
        (tmp_path / "ids.txt").write_text("moon\n\nnope\n")
        deleted = run_cli("delete", "--db", db, "--ids", str(tmp_path / "ids.txt"), "stars")
        assert deleted.returncode == 0 and "Deleted 2" in deleted.stdout and "not in the index: nope" in deleted.stdout
        compacted = run_cli("compact", "--db", db)
        assert compacted.returncode == 0 and "Compacted" in compacted.stdout and "2 documents" in compacted.stdout
        found = run_cli("search", "--db", db, "--query", "bread", "--k", "2", "--json", str(tmp_path / "r.json"))
        hits = json.loads((tmp_path / "r.json").read_text())["results"][0]["hits"]
        assert sorted(h["id"] for h in hits) == ["bread", "ocean"]
        assert "sourdough" in next(h["text"] for h in hits if h["id"] == "bread")


def test_command_line_writes_give_the_same_errors_as_index(tmp_path, small_index):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "a", "text": "again"}\n')
    before = manifest_bytes(small_index)
    result = run_cli("add", "--db", str(small_index), "--corpus", str(bad), "--vectors", str(tmp_path / "none.npy"))
    assert result.returncode == 2 and f"{bad}:2: duplicate id 'a'" in result.stderr + result.stdout
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"id": "a", "text": "fine"}])
    np.save(tmp_path / "wrong.npy", np.ones((2, DIM), np.float32))
    result = run_cli("add", "--db", str(small_index), "--corpus", str(ok), "--vectors", str(tmp_path / "wrong.npy"))
    assert result.returncode == 2 and "2 rows" in result.stderr + result.stdout
    result = run_cli("delete", "--db", str(small_index))
    assert result.returncode == 2 and "give the ids to delete" in result.stderr + result.stdout
    result = run_cli("add", "--db", str(tmp_path / "missing"), "--corpus", str(ok))
    assert result.returncode == 2 and "not a matryoshka index folder" in result.stderr + result.stdout
    assert manifest_bytes(small_index) == before


# ---------------------------------------------------------------------------------------- server


def start_server(db: Path, log: Path):
    """``matryoshka serve`` of ``db`` in its own process, healthy; the caller stops it."""
    from conftest import RunningServer, free_port

    port = free_port()
    server = RunningServer(["serve", "--db", str(db), "--port", str(port)], log, f"http://127.0.0.1:{port}/")
    server.wait_healthy()
    return server


def test_server_writes_need_the_key_and_concurrent_searches_never_fail(wordllama, squad_sample, tmp_path, monkeypatch):
    import threading

    import httpx

    texts, ids = squad_sample.corpus.texts[:150], squad_sample.corpus.ids[:150]
    build_index(tmp_path / "index", ids, texts, encoder=wordllama)
    monkeypatch.setenv("MATRYOSHKA_API_KEY", "right-key")  # the key from the environment, not the command line
    server = start_server(tmp_path / "index", tmp_path / "keyed.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/info").json()["read_only"] is False
            document = {"documents": [{"id": "tides-1", "text": "Spring tides come with the full and the new moon."}]}
            missing = client.post("/documents", json=document)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            wrong = client.post("/documents", json=document, headers={"authorization": "Bearer wrong-key"})
            assert wrong.status_code == 403 and "not this server's" in wrong.json()["error"]
            assert client.post("/documents/delete", json={"ids": ["x"]}).status_code == 401
            key = {"authorization": "Bearer right-key"}
            for body, status, message in [
                ({"documents": []}, 422, "documents: give at least one"),
                (
                    {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
                    422,
                    "the same id as documents[0]",
                ),
                ({"documents": [{"id": "a", "text": "  "}]}, 422, "documents[0].text: the text is empty"),
                ({"documents": [{"id": "a", "text": "\ud800"}]}, 422, "not valid Unicode"),
                ({"documents": [{"id": str(i), "text": "t"} for i in range(300)]}, 413, "limit of 256"),
                ({"ids": []}, 422, "documents: Field required"),
            ]:
                sent = json.dumps(body)  # ASCII JSON: a lone surrogate travels as the escape \ud800
                refused = client.post("/documents", content=sent, headers={**key, "content-type": "application/json"})
                assert refused.status_code == status and message in refused.json()["error"], refused.text
            assert client.get("/info").json()["corpus_size"] == 150  # nothing refused was written

            errors, searches, stop = [], [0], threading.Event()

            def search_while_writing() -> None:
                with httpx.Client(base_url=server.url, timeout=60) as reader:
                    while not stop.is_set():
                        answer = reader.post("/search", json={"query": "when are tides strongest?", "k": 3})
                        if answer.status_code != 200 or len(answer.json()["hits"]) != 3:
                            errors.append(answer.text)
                        searches[0] += 1

            readers = [threading.Thread(target=search_while_writing) for _ in range(4)]
            for reader in readers:
                reader.start()
            try:
                added = client.post("/documents", json=document, headers=key)
                assert added.status_code == 200 and added.json() == {"added": 1, "replaced": 0, "documents": 151}
                for batch in range(10):
                    filler = [{"id": f"f{batch}-{i}", "text": f"note {batch} {i} about bread"} for i in range(5)]
                    assert client.post("/documents", json={"documents": filler}, headers=key).status_code == 200
                    gone = client.post("/documents/delete", json={"ids": [f"f{batch}-0", "never"]}, headers=key)
                    assert gone.json()["deleted"] == 1 and gone.json()["not_found"] == ["never"]
            finally:
                stop.set()
                for reader in readers:
                    reader.join()
            assert not errors and searches[0] > 10
            found = client.post("/search", json={"query": "spring tides full moon new moon", "k": 1}).json()
            assert found["hits"][0]["id"] == "tides-1"
            replaced = {"documents": [{"id": "tides-1", "text": "Sourdough needs a starter of wild yeast."}]}
            assert client.post("/documents", json=replaced, headers=key).json()["replaced"] == 1
            found = client.post("/search", json={"query": "wild yeast starter for sourdough", "k": 1}).json()
            assert found["hits"][0]["id"] == "tides-1" and "Sourdough" in found["hits"][0]["text"]
            assert client.post("/documents/delete", json={"ids": ["tides-1"]}, headers=key).json()["deleted"] == 1
            assert client.get("/info").json()["corpus_size"] == 150 + 10 * 4
    finally:
        server.stop()
    with Index(tmp_path / "index") as index:  # every acknowledged write is on disk
        assert len(index) == 190 and "tides-1" not in set(index.store.ids_of(np.arange(len(index))).tolist())


def test_a_server_without_a_key_is_read_only(tmp_path, wordllama):
    import httpx

    build_index(tmp_path / "index", ["a", "b", "c"], ["tides", "bread", "stars"], encoder=wordllama, k=2)
    server = start_server(tmp_path / "index", tmp_path / "ro.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/info").json()["read_only"] is True
            write = {"documents": [{"id": "n", "text": "t"}]}
            assert client.post("/documents", json=write, headers={"authorization": "Bearer x"}).status_code in (
                404,
                405,
            )
            assert "/documents" not in client.get("/openapi.json").json()["paths"]
    finally:
        server.stop()
    assert "Read-only" in server.log
