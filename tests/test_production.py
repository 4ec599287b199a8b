"""The live index under ordinary production use: a trickle of single-document writes (merged by
size tiers, committed in groups by the server), bounded open files, and the faults users meet (a
full disk, a read-only place, too few file handles), each a clear error with the index intact and
every answer true. The disk faults run on a small tmpfs, mounted here (CI runs as root)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, run_cli, write_jsonl
from matryoshka.errors import DiskFullError, ReadOnlyError
from matryoshka.index import Index, build_index
from matryoshka.server import DeleteRequest, DocumentIn, SearchService, UpsertRequest
from matryoshka.stores.segments import MERGE_FACTOR, merge_plan, size_tier

DIM = 32


def unit(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_files(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def segment_names(db: Path) -> list[str]:
    return [s["name"] for s in json.loads((db / "manifest.json").read_text())["segments"]]


# ------------------------------------------------------------------------------------ merge policy


def test_size_tiers_and_the_merge_plan():
    assert [size_tier(n) for n in (0, 1, 7, 8, 63, 64, 511, 512)] == [0, 0, 0, 1, 1, 2, 2, 3]

    class Sized:
        def __init__(self, live: int) -> None:
            self.live_count = live

    assert merge_plan([Sized(1)] * (MERGE_FACTOR - 1) + [Sized(100)]) is None
    assert merge_plan([Sized(1000)] + [Sized(1)] * MERGE_FACTOR) == list(range(1, MERGE_FACTOR + 1))
    small_first = [Sized(70)] * MERGE_FACTOR + [Sized(2)] * MERGE_FACTOR
    assert merge_plan(small_first) == list(range(MERGE_FACTOR, 2 * MERGE_FACTOR))  # the smallest tier first


@pytest.mark.parametrize("store", ["local", "memory"])
def test_a_trickle_of_single_writes_keeps_segments_and_open_files_bounded(tmp_path, store):
    rng = np.random.default_rng(5)
    db = tmp_path / "index" if store == "local" else f"memory://trickle-{tmp_path.name}"
    build_index(db, [f"b{i}" for i in range(300)], ["base"] * 300, vectors=unit(rng, 300), head_index="binary", k=5)
    vectors = {f"b{i}": None for i in range(300)}
    before = open_files()
    with Index(db) as index:
        for i in range(1500):
            index.add([f"n{i}"], [f"note {i}"], unit(rng, 1))
            vectors[f"n{i}"] = None
            if i % 10 == 3:  # deletes and replacements in the trickle
                index.delete([f"n{i - 3}"])
                vectors.pop(f"n{i - 3}")
                index.add([f"b{i % 300}"], ["replaced"], unit(rng, 1))
            segments = index.store.segments
            assert merge_plan(segments) is None
            assert len(segments) <= (MERGE_FACTOR - 1) * (size_tier(len(index)) + 1) + 1
        assert len(index) == len(vectors)
        every = set(index.store.ids_of(np.arange(len(index))).tolist())
        assert every == set(vectors)
        assert open_files() - before <= 12  # small segments are held in RAM: no file open per segment
    if store == "local":  # merged-away segments are gone from the disk
        assert sorted(os.listdir(db / "segments")) == sorted(segment_names(db))


def test_group_commit_makes_one_segment_and_answers_each_write_truly(tmp_path, wordllama):
    db = tmp_path / "index"
    build_index(db, ["a", "b", "c"], ["tides and the moon", "bread", "stars"], encoder=wordllama, k=2)
    with Index(db) as index:
        service = SearchService(index, writable=True)
        segments_before = len(segment_names(db))
        ops = [
            service.prepare_upsert(UpsertRequest(documents=[DocumentIn(id=f"g{i}", text=f"garden note {i}")]))
            for i in range(6)
        ]
        ops.append(service.prepare_upsert(UpsertRequest(documents=[DocumentIn(id="a", text="tides, replaced")])))
        # a known field given another type fails alone; the writes around it stand
        clash = UpsertRequest(documents=[DocumentIn(id="m1", text="typed", metadata={"year": 2020})])
        index.add(["m0"], ["typed first"], metadata=[{"year": "twenty"}])
        ops.append(service.prepare_upsert(clash))
        ops.append(service.prepare_delete(DeleteRequest(ids=["b", "nope"])))
        answers = service.write_many(ops)
        assert [a["added"] for a in answers[:6]] == [1] * 6
        assert answers[6]["replaced"] == 1 and answers[6]["added"] == 0
        assert isinstance(answers[7], Exception) and "year" in str(answers[7])
        assert answers[8]["deleted"] == 1 and answers[8]["not_found"] == ["nope"]
        assert answers[8]["documents"] == 3 + 1 + 6 - 1
        # the six upserts and the replacement: one new segment; the add of m0 another
        assert len(segment_names(db)) <= segments_before + 2
        ids = set(index.store.ids_of(np.arange(len(index))).tolist())
        assert ids == {"a", "c", "m0", *(f"g{i}" for i in range(6))}
        # two writes that each fit alone but clash together (a new field, two types): the run fails
        # as a whole, and each is then tried alone, so the first stands and only the second fails
        red = UpsertRequest(documents=[DocumentIn(id="n1", text="a red note", metadata={"color": "red"})])
        five = UpsertRequest(documents=[DocumentIn(id="n2", text="a numbered note", metadata={"color": 5})])
        answers = service.write_many([service.prepare_upsert(red), service.prepare_upsert(five)])
        assert answers[0]["added"] == 1 and isinstance(answers[1], Exception) and "color" in str(answers[1])
        assert index.meta.fields["color"] == "string" and len(index) == 10


# ------------------------------------------------------------------------------------ the server


def start_limited_server(db: Path, log: Path, key: str, max_files: int) -> tuple[subprocess.Popen, str]:
    """``matryoshka serve`` with a key, in a process that may hold only ``max_files`` open files."""
    port = free_port()

    def limit() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    handle = open(log, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve", "--db", str(db), "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
        env={**os.environ, "MATRYOSHKA_API_KEY": key},
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 300
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "server not healthy"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def test_a_trickle_of_writes_through_the_server_under_a_low_file_limit(tmp_path, wordllama, squad_sample):
    """One client, then ten at once, each writing one document per request, with searches
    throughout, in a server that may hold only 256 open files: no error, every acknowledged
    write found afterwards, the server's open files bounded."""
    import httpx

    texts, ids = squad_sample.corpus.texts[:150], squad_sample.corpus.ids[:150]
    build_index(tmp_path / "index", ids, texts, encoder=wordllama)
    process, url = start_limited_server(tmp_path / "index", tmp_path / "server.log", "trickle-key", 256)
    key = {"authorization": "Bearer trickle-key"}
    errors: list[str] = []
    acknowledged: list[str] = []
    peak = [0]
    stop_event = threading.Event()

    def search_and_watch() -> None:
        with httpx.Client(base_url=url, timeout=60) as reader:
            while not stop_event.is_set():
                answer = reader.post("/search", json={"query": "who won the game?", "k": 5})
                if answer.status_code != 200 or len(answer.json()["hits"]) != 5:
                    errors.append(f"search {answer.status_code}: {answer.text[:200]}")
                peak[0] = max(peak[0], open_files(process.pid))

    def write(client: httpx.Client, name: str) -> None:
        body = {"documents": [{"id": name, "text": f"a note named {name} about the weather"}]}
        answer = client.post("/documents", json=body, headers=key)
        if answer.status_code == 200 and answer.json()["added"] == 1:
            acknowledged.append(name)
        else:
            errors.append(f"write {answer.status_code}: {answer.text[:200]}")

    def writer(prefix: str, count: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(count):
                write(client, f"{prefix}-{i}")

    readers = [threading.Thread(target=search_and_watch) for _ in range(2)]
    try:
        for thread in readers:
            thread.start()
        writer("alone", 250)
        writers = [threading.Thread(target=writer, args=(f"c{c}", 40)) for c in range(10)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
    finally:
        stop_event.set()
        for thread in readers:
            thread.join()
        stop(process)
    assert not errors, errors[:5]
    assert len(acknowledged) == 650
    assert peak[0] <= 200, peak[0]
    with Index(tmp_path / "index") as index:
        assert len(index) == 150 + 650
        assert set(acknowledged) <= set(index.store.ids_of(np.arange(len(index))).tolist())
        assert merge_plan(index.store.segments) is None


def test_server_edges_of_keys_headers_k_and_metadata(tmp_path, wordllama):
    import socket

    import httpx

    build_index(tmp_path / "index", ["a", "b", "c"], ["tides", "bread", "stars"], encoder=wordllama, k=2)
    process, url = start_limited_server(tmp_path / "index", tmp_path / "edges.log", "  clé-ü  ", 1024)
    try:
        key = "clé-ü"
        body = {"documents": [{"id": "d", "text": "dogs"}]}
        for encoded in (key.encode("utf-8"), key.encode("latin-1")):  # clients differ; both are the key
            answer = httpx.post(url + "/documents", json=body, headers={"authorization": b"Bearer " + encoded})
            assert answer.status_code == 200, answer.text
        wrong = httpx.post(url + "/documents", json=body, headers={"authorization": b"Bearer cle-u"})
        assert wrong.status_code == 403
        # fewer documents than k: all of them, not an error
        found = httpx.post(url + "/search", json={"query": "moon", "k": 10}).json()
        assert len(found["hits"]) == 4
        # metadata may not name the document's own fields
        named = {"documents": [{"id": "e", "text": "eels", "metadata": {"text": "other"}}]}
        refused = httpx.post(url + "/documents", json=named, headers={"authorization": b"Bearer " + key.encode()})
        assert refused.status_code == 422 and "metadata.text" in refused.json()["error"]
        # an 8 MB header is refused without being read in full, and the server goes on
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as sock:
            sock.sendall(b"POST /documents HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ")
            try:
                for _ in range(128):
                    sock.sendall(b"k" * 65536)
            except OSError:
                pass  # the server closed the connection: it stopped reading
            reply = sock.recv(4096)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431")
        assert httpx.get(url + "/healthz").status_code == 200
        # an unexpected failure is still a JSON answer
        assert httpx.get(url + "/info").json()["read_only"] is False
    finally:
        stop(process)


# ------------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as handle:
        while free > 0:
            chunk = min(free, 1 << 20)
            try:
                handle.write(b"\0" * chunk)
                handle.flush()
            except OSError:
                break
            free -= chunk
    return filler


def corpus_file(path: Path, count: int, prefix: str = "d", size: int = 200) -> Path:
    return write_jsonl(
        path, [{"id": f"{prefix}{i}", "text": f"text {i} " + "word " * (size // 5)} for i in range(count)]
    )


def test_a_full_disk_is_a_clear_error_for_index_add_and_compact(tmp_path, small_disk):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "big.npy", unit(rng, 30_000, 256))  # 30 MB of vectors: more than the disk
    big = corpus_file(tmp_path / "big.jsonl", 30_000, size=10)
    failed = run_cli(
        "index", "--corpus", str(big), "--vectors", str(tmp_path / "big.npy"), "--db", str(small_disk / "ix")
    )
    assert failed.returncode == 2, failed.stderr
    assert "no space left" in failed.stderr and "Traceback" not in failed.stderr
    assert not (small_disk / "ix" / "manifest.json").exists()
    assert not list((small_disk / "ix" / "segments").glob("*"))  # nothing half-written is left to fill the disk

    db = small_disk / "ix"
    np.save(tmp_path / "small.npy", unit(rng, 2000, 256))
    built = run_cli(
        "index", "--corpus", str(corpus_file(tmp_path / "s.jsonl", 2000)), "--vectors", str(tmp_path / "small.npy"),
        "--db", str(db), "--head-index", "binary",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    for part in range(3):  # a few segments for compaction to merge
        np.save(tmp_path / f"p{part}.npy", unit(rng, 200, 256))
        added = run_cli(
            "add", "--db", str(db), "--corpus", str(corpus_file(tmp_path / f"p{part}.jsonl", 200, f"p{part}-")),
            "--vectors", str(tmp_path / f"p{part}.npy"),
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    manifest = (db / "manifest.json").read_bytes()
    filler = fill(small_disk, leave=200_000)

    np.save(tmp_path / "more.npy", unit(rng, 2000, 256))
    more = corpus_file(tmp_path / "more.jsonl", 2000, "m")
    for command in (
        ["add", "--db", str(db), "--corpus", str(more), "--vectors", str(tmp_path / "more.npy")],
        ["compact", "--db", str(db)],
    ):
        result = run_cli(*command)
        assert result.returncode == 2, (command, result.returncode, result.stderr)  # not SIGBUS (-7)
        assert "no space left" in result.stderr and "index is unchanged" in result.stderr, result.stderr
        assert (db / "manifest.json").read_bytes() == manifest
    with Index(db) as index:
        assert len(index) == 2600 and index.search_vectors(unit(rng, 1, 256), 5).rows.shape == (1, 5)
    filler.unlink()
    assert run_cli("compact", "--db", str(db)).returncode == 0  # with room again, it works


def test_a_full_disk_and_a_read_only_place_in_the_server_and_the_library(tmp_path, small_disk, wordllama):
    import httpx

    db = small_disk / "ix"
    build_index(db, ["a", "b", "c"], ["tides and the moon", "bread", "stars"], encoder=wordllama, k=2)
    manifest = (db / "manifest.json").read_bytes()
    filler = fill(small_disk, leave=0)
    with Index(db) as index:
        with pytest.raises(DiskFullError, match="no space left"):
            index.add(["d"], ["dogs"])
        assert (db / "manifest.json").read_bytes() == manifest and len(index) == 3
    process, url = start_limited_server(db, tmp_path / "full.log", "k", 1024)
    try:
        key = {"authorization": "Bearer k"}
        many = {"documents": [{"id": f"n{i}", "text": "a long note " * 100} for i in range(50)]}
        answer = httpx.post(url + "/documents", json=many, headers=key, timeout=60)
        assert answer.status_code == 507 and "no space left" in answer.json()["error"], answer.text
        gone = httpx.post(url + "/documents/delete", json={"ids": ["a"]}, headers=key, timeout=60)
        assert gone.status_code == 507 and "no space left" in gone.json()["error"], gone.text
        assert httpx.post(url + "/search", json={"query": "moon", "k": 2}).status_code == 200
        assert httpx.get(url + "/info").json()["corpus_size"] == 3
    finally:
        stop(process)
    assert (db / "manifest.json").read_bytes() == manifest

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with Index(db) as index:
        assert not index.writable()
        with pytest.raises(ReadOnlyError, match="read-only"):
            index.add(["d"], ["dogs"])
        assert len(index.search("moon", k=2)[0]) == 2
    result = run_cli("delete", "--db", str(db), "a")
    assert result.returncode == 2 and "read-only" in result.stderr, result.stderr
    process, url = start_limited_server(db, tmp_path / "ro.log", "k", 1024)
    try:
        assert httpx.get(url + "/info").json()["read_only"] is True
        refused = httpx.post(url + "/documents/delete", json={"ids": ["a"]}, headers={"authorization": "Bearer k"})
        assert refused.status_code == 503 and "read-only" in refused.json()["error"]
    finally:
        stop(process)


# ------------------------------------------------------------------------------------ the CLI


def test_add_from_a_file_without_ids_needs_a_prefix_and_delete_keeps_ids_whole(tmp_path):
    rng = np.random.default_rng(4)
    db = tmp_path / "index"
    (tmp_path / "a.txt").write_text("first\nsecond\n")
    np.save(tmp_path / "a.npy", unit(rng, 2))
    assert (
        run_cli(
            "index", "--corpus", str(tmp_path / "a.txt"), "--vectors", str(tmp_path / "a.npy"), "--db", str(db)
        ).returncode
        == 0
    )
    (tmp_path / "b.txt").write_text("third\n")
    np.save(tmp_path / "b.npy", unit(rng, 1))
    refused = run_cli("add", "--db", str(db), "--corpus", str(tmp_path / "b.txt"), "--vectors", str(tmp_path / "b.npy"))
    assert refused.returncode == 2 and "--id-prefix" in refused.stderr
    added = run_cli(
        "add", "--db", str(db), "--corpus", str(tmp_path / "b.txt"), "--vectors", str(tmp_path / "b.npy"), "--id-prefix", "new-"
    )  # fmt: skip
    assert added.returncode == 0 and "Added 1 and replaced 0" in added.stdout, added.stdout + added.stderr
    with Index(db) as index:
        assert sorted(index.store.ids_of(np.arange(len(index))).tolist()) == ["1", "2", "new-1"]
        index.add(["two words", " padded "], vectors=unit(rng, 2))
    (tmp_path / "ids.txt").write_text("two words\n padded \n")
    deleted = run_cli("delete", "--db", str(db), "--ids", str(tmp_path / "ids.txt"))
    assert deleted.returncode == 0 and "Deleted 2" in deleted.stdout, deleted.stdout + deleted.stderr
    many = run_cli("search", "--db", str(db), "--query-vectors", str(tmp_path / "b.npy"), "--k", "10")
    assert many.returncode == 0 and "new-1" in many.stdout, many.stderr  # fewer documents than k: all of them


def test_too_few_file_handles_is_a_clear_error_that_names_the_cure(tmp_path):
    """An index of a few large (memory-mapped) segments opened by a process allowed too few open
    files: one line saying so and what to do (not "re-index it"), exit 2 from the CLI."""
    rng = np.random.default_rng(6)
    db = tmp_path / "index"
    build_index(db, [f"a{i}" for i in range(5000)], [""] * 5000, vectors=unit(rng, 5000, 256), k=5)
    with Index(db) as index:
        for part in range(3):
            index.add([f"p{part}-{i}" for i in range(5000)], vectors=unit(rng, 5000, 256))
        assert len(index.store.segments) == 4
    np.save(tmp_path / "q.npy", unit(rng, 1, 256))
    script = (
        "import os, resource, sys\n"
        "from matryoshka.cli import app\n"
        "used = len(os.listdir('/proc/self/fd'))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (used + 6, used + 6))\n"
        f"sys.argv = ['matryoshka', 'search', '--db', {str(db)!r}, '--query-vectors', {str(tmp_path / 'q.npy')!r}]\n"
        "app()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "too many open files" in result.stderr and "ulimit -n" in result.stderr and "compact" in result.stderr
    assert "re-index" not in result.stderr and "Traceback" not in result.stderr


def test_an_unexpected_failure_is_answered_in_json(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from matryoshka.server import create_app

    build_index(tmp_path / "index", ["a", "b"], ["", ""], vectors=unit(np.random.default_rng(7), 2), k=1)
    with Index(tmp_path / "index") as index:
        app = create_app(index)
        monkeypatch.setattr(app.state.service, "info", lambda: {}["missing"])  # a bug: KeyError
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.get("/info")
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "internal error (KeyError); see the server's log"}
