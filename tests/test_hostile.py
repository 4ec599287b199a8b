"""Hostile input and faults, each as a user or a client hit it: a bad request fails alone, memory
stays bounded, slow clients are cut off, a serving process follows its index through rebuilds,
files that are not ours are left alone, and one build at a time writes an index."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, RunningServer, free_port, run_cli, write_jsonl

WORDNET = REPO / "src" / "matryoshka" / "sample" / "wordnet" / "glosses.jsonl.gz"
pytestmark = pytest.mark.slow


def _glosses(count: int, start: int = 0) -> list[dict]:
    with gzip.open(WORDNET, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(start + count), handle)][start:]
    return [{"id": row["id"], "text": row["text"]} for row in rows]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "glosses.jsonl", _glosses(2000))


@pytest.fixture(scope="module")
def served(corpus, tmp_path_factory):
    """``matryoshka serve`` over a local wordllama index of 2,000 WordNet glosses, with a short read timeout."""
    folder = tmp_path_factory.mktemp("served")
    db = folder / "index"
    result = run_cli("index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(db))
    assert result.returncode == 0, result.stderr
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(db), "--port", str(port), "--read-timeout", "1"],
        folder / "server.log",
        f"http://127.0.0.1:{port}/",
    )
    try:
        server.wait_healthy()
        server.db, server.port = db, port
        yield server
    finally:
        server.stop()


def _post(port: int, path: str, body: bytes, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"content-type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_bad_request_fails_alone_among_many_good_ones(served):
    """A lone surrogate (invalid Unicode) is refused with 422; 40 valid concurrent searches all answer."""
    good = [json.dumps({"query": word, "k": 5}).encode() for word in ["cat", "river", "music", "stone"] * 10]
    bad = b'{"query": "\\ud800 cat", "k": 5}'
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(_post, served.port, "/search", body) for body in good[:20]]
        poisoned = [
            pool.submit(_post, served.port, path, body)
            for path, body in (
                ("/search", bad),
                ("/embed", b'{"texts": ["ok", "\\udfff"]}'),
                ("/similarity", b'{"query": "\\ud800", "texts": ["a"]}'),
            )
        ]
        futures += [pool.submit(_post, served.port, "/search", body) for body in good[20:]]
        statuses = [f.result()[0] for f in futures]
        refused = [f.result() for f in poisoned]
    assert statuses == [200] * 40
    for status, answer in refused:
        assert status == 422 and "not valid Unicode" in answer["error"]


def test_non_finite_numbers_get_a_4xx_with_json(served):
    for body in (
        b'{"query": "cat", "k": NaN}',
        b'{"query": "cat", "k": Infinity}',
        b'{"query": "cat", "dim": 1e400}',
        b'{"query": "cat", "texts": ["a"], "dims": [NaN]}',
    ):
        path = "/similarity" if b"texts" in body else "/search"
        status, answer = _post(served.port, path, body)
        assert 400 <= status < 500 and answer["error"], (body, status, answer)


def test_bodies_are_counted_as_they_arrive_and_never_echoed(served):
    """A chunked body of 20 MB is refused once it passes 1 MB, without the rest being read; an
    oversized field name is not echoed back whole."""
    import psutil

    process = psutil.Process(served.process.pid)
    before = process.memory_info().rss
    chunk = b"x" * 65536

    def body():
        yield b'{"query": "'
        for _ in range(320):
            yield chunk
        yield b'"}'

    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/search",
            body=body(),
            encode_chunked=True,
            headers={"content-type": "application/json", "Transfer-Encoding": "chunked"},
        )
        response = connection.getresponse()
        payload = response.read()
    except (BrokenPipeError, ConnectionResetError):  # the server may close while we are still sending
        payload, response = None, None
    finally:
        connection.close()
    if response is not None:
        assert response.status == 413 and len(payload) < 1000
    assert process.memory_info().rss - before < 100 * 2**20
    status, answer = _post(served.port, "/search", json.dumps({"query": "cat", "x" * 100_000: 1}).encode())
    assert status == 422 and len(json.dumps(answer)) < 1000


def test_slow_clients_are_cut_off_and_others_are_served(served):
    """20 clients trickling headers and 20 trickling a body are disconnected after the read
    timeout (1 s here); a normal search meanwhile answers."""
    sockets = []
    for slow_body in (False, True):
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            if slow_body:
                sock.sendall(
                    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
            else:
                sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\n")
            sockets.append((sock, slow_body))
    assert _post(served.port, "/search", b'{"query": "cat", "k": 3}')[0] == 200
    time.sleep(2.5)
    for sock, slow_body in sockets:
        try:
            sock.sendall(b"X")
            data = sock.recv(4096)
        except OSError:
            data = b""
        if slow_body:
            assert data == b"" or b"408" in data.split(b"\r\n")[0], data[:200]
        else:
            assert data == b"", data[:200]  # closed without an answer
        sock.close()


def test_docs_page_is_served_without_a_cdn(served):
    import urllib.request

    with urllib.request.urlopen(served.url + "docs", timeout=10) as response:
        page = response.read().decode()
    assert "cdn" not in page.lower() and "/static-offline-docs/swagger-ui-bundle.js" in page
    with urllib.request.urlopen(served.url + "static-offline-docs/swagger-ui-bundle.js", timeout=10) as response:
        assert response.status == 200 and len(response.read()) > 100_000


def test_a_server_follows_its_index_through_rebuilds_without_an_error(served, tmp_path):
    """While readers search without pause, the folder is rebuilt twice with other documents: every
    search answers 200, and within seconds the server answers from the new corpus."""
    errors: list[str] = []
    answered = [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            status, answer = _post(served.port, "/search", b'{"query": "a body of water", "k": 3}')
            if status != 200:
                errors.append(f"{status} {answer}")
            answered[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for count, start in ((300, 5000), (500, 9000)):
            other = write_jsonl(tmp_path / f"other{start}.jsonl", _glosses(count, start))
            result = run_cli("index", "--model", "wordllama", "--corpus", str(other), "--db", str(served.db))
            assert result.returncode == 0, result.stderr
            deadline = time.time() + 10
            while json.loads(_get(served.url + "info"))["corpus_size"] != count:
                assert time.time() < deadline, "the server did not switch to the rebuilt index"
                time.sleep(0.2)
            ids = {row["id"] for row in _glosses(count, start)}
            _, answer = _post(served.port, "/search", b'{"query": "a body of water", "k": 3}')
            assert {hit["id"] for hit in answer["hits"]} <= ids
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == [] and answered[0] > 20
    assert json.loads(_get(served.url + "healthz"))["status"] == "ok"


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_searches_while_a_rebuild_finishes_never_fail(corpus, tmp_path):
    from matryoshka.index import Index, build_index
    from matryoshka.vectors import normalize

    rng = np.random.default_rng(0)
    db = tmp_path / "index"
    vectors = normalize(rng.normal(size=(3000, 32)))
    build_index(db, [str(i) for i in range(3000)], ["t"] * 3000, vectors=vectors)
    script = (
        "import sys, numpy as np\nfrom matryoshka.index import build_index\nfrom matryoshka.vectors import normalize\n"
        "for seed in range(6):\n    v = normalize(np.random.default_rng(seed).normal(size=(3000, 32)))\n"
        "    build_index(sys.argv[1], [str(i) for i in range(3000)], ['t'] * 3000, vectors=v)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(db)])
    searches = 0
    while writer.poll() is None:
        with Index(db) as index:
            assert index.search_vectors(vectors[:3], 5).rows.shape == (3, 5)
            assert index.hits(index.search_vectors(vectors[:3], 5))[0].texts[0] == "t"
        searches += 1
    assert writer.returncode == 0 and searches > 5


def test_one_build_at_a_time_and_read_only_places_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    big = rng.normal(size=(150_000, 64)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    (tmp_path / "big.txt").write_text("".join(f"document {i}\n" for i in range(150_000)))
    db = tmp_path / "index"
    corpus = ["--corpus", str(tmp_path / "big.txt"), "--vectors", str(tmp_path / "big.npy")]
    first = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "index", *corpus, "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not list((db / "segments").glob("*.partial")) if (db / "segments").exists() else True:
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = run_cli("index", *corpus, "--db", str(db))
    assert second.returncode == 2 and "is being written by process" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    result = run_cli("search", "--db", str(db), "--query-vectors", str(_first_rows(tmp_path, big)), "--k", "3")
    assert result.returncode == 0, result.stderr
    # a place no index can be written: one line, exit 2, no traceback
    result = run_cli("index", *corpus, "--db", "/proc/matryoshka-index")
    assert result.returncode == 2 and "cannot write the index at /proc/matryoshka-index" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _first_rows(tmp_path: Path, vectors: np.ndarray) -> Path:
    np.save(tmp_path / "q.npy", vectors[:2])
    return tmp_path / "q.npy"


def test_a_foreign_sqlite_file_is_never_written_and_reads_create_nothing(tmp_path):
    import sqlite3

    theirs = tmp_path / "theirs.db"
    with sqlite3.connect(theirs) as database:
        database.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        database.execute("INSERT INTO orders (item) VALUES ('tea')")
    digest = hashlib.sha256(theirs.read_bytes()).hexdigest()
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}])
    np.save(tmp_path / "v.npy", np.eye(2, 4, dtype=np.float32))
    for args in (
        ["index", "--corpus", str(corpus), "--vectors", str(tmp_path / "v.npy"), "--db", str(theirs)],
        ["search", "--db", str(theirs), "--query", "alpha"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "not a Milvus Lite file" in result.stderr, result.stderr
    assert hashlib.sha256(theirs.read_bytes()).hexdigest() == digest
    missing = tmp_path / "missing.db"
    result = run_cli("search", "--db", str(missing), "--query", "alpha")
    assert result.returncode == 2 and "no such Milvus Lite file" in result.stderr
    port = free_port()
    result = run_cli("serve", "--db", str(missing), "--port", str(port))
    assert result.returncode == 2 and not missing.exists()


def test_command_line_edge_cases(tmp_path, served):
    tiny = write_jsonl(tmp_path / "tiny.jsonl", [{"id": "a", "text": "a small red apple"}])
    result = run_cli("index", "--model", "wordllama", "--corpus", str(tiny), "--db", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    result = run_cli("search", "--db", str(tmp_path / "tiny"), "--query", "fruit", "--k", "1")
    assert result.returncode == 0 and "a small red apple" in result.stdout
    cases = [
        (["search", "--db", str(served.db), "--query", ""], "the query is empty"),
        (["search", "--db", str(served.db), "--query", "cat", "--schedule", "-64:100,256:10"], "-64:100"),
        (["search", "--db", str(served.db), "--query", "cat", "--json", str(tmp_path)], "is a folder"),
        (["encode", "--model", "wordllama", "--input", str(tiny), "--output", str(tmp_path)], "is a folder"),
        (["serve", "--db", str(served.db), "--port", str(served.port)], "is in use; choose another --port"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "Serving" not in result.stdout
    assert not list(tmp_path.glob("*.partial"))
    narrow = subprocess.run(
        [
            sys.executable,
            "-m",
            "matryoshka",
            "search",
            "--db",
            str(served.db),
            "--query",
            "a large body of water",
            "--k",
            "3",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    rows = [line for line in narrow.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and all(len(line) <= 80 for line in narrow.stdout.splitlines())
    for rank, line in enumerate(rows, start=1):
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        assert cells[0] == str(rank) and float(cells[1]) > 0 and len(cells[2]) >= 6  # rank, score, id readable


def test_a_huge_text_is_cut_at_the_models_token_limit(tmp_path):
    documents = [{"id": str(i), "text": f"a short note number {i}"} for i in range(30)]
    documents[7]["text"] = "word " * 200_000  # 1 MB
    source = write_jsonl(tmp_path / "big.jsonl", documents)
    # the command in a fresh process that reports its own peak memory when it is done; VmHWM, not
    # ru_maxrss, which keeps the parent's peak across the spawn and so measures the test runner
    measured = (
        "import sys\nfrom matryoshka.cli import app\napp(sys.argv[1:], standalone_mode=False)\n"
        "print('PEAK_KB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            measured,
            "encode",
            "--model",
            "wordllama",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    peak_kb = int(result.stdout.split("PEAK_KB")[-1])
    assert peak_kb < 1_500_000  # under 1.5 GB, where padding a batch to 1 MB of tokens took 17 GB
    assert np.load(tmp_path / "o.npy").shape == (30, 256)


def test_the_recall_target_holds_on_one_word_queries_the_tuner_never_saw(tmp_path, wordllama):
    """A default index (tuned on windows of its own texts) of 20,000 WordNet glosses, searched with
    300 real lemma queries: recall@10 against exact search reaches the 0.99 it was tuned for."""
    from matryoshka.funnel import recall_at_k
    from matryoshka.index import Index, build_index

    rows = _glosses(20_000)
    build_index(tmp_path / "index", [r["id"] for r in rows], [r["text"] for r in rows], encoder=wordllama)
    with gzip.open(WORDNET, "rt", encoding="utf-8") as handle:
        lemmas = sorted({lemma for line in handle for lemma in json.loads(line)["lemmas"] if " " not in lemma})
    picked = [lemmas[i] for i in np.random.default_rng(7).choice(len(lemmas), size=300, replace=False)]
    with Index(tmp_path / "index", encoder=wordllama) as index:
        queries = index.encode_queries(picked)
        exact = index.search_vectors(queries, 10, exact=True)
        funnel = index.search_vectors(queries, 10)
    assert recall_at_k(funnel.rows, exact.rows) >= 0.99


@pytest.mark.parametrize("where", ["local", "server"])
def test_a_serving_service_follows_a_rebuilt_index(where, tmp_path, wordllama, request):
    """The service behind the server, on the local store and on the Milvus server (whose rebuild
    drops the generation the service had open): searches after a rebuild answer from the new
    corpus, never with an error, whether the follower got there first or the search did."""
    import uuid

    from matryoshka.index import Index, build_index
    from matryoshka.server import SearchRequest, SearchService

    db = str(tmp_path / "index") if where == "local" else request.getfixturevalue("milvus_server")
    collection = None if where == "local" else f"f{uuid.uuid4().hex[:10]}"
    first, second = _glosses(300), _glosses(200, 4000)
    build_index(db, [r["id"] for r in first], [r["text"] for r in first], encoder=wordllama, collection=collection)
    service = SearchService(Index(db, encoder=wordllama, collection=collection))
    before = service.search(SearchRequest(query="a body of water", k=3))
    assert {hit["id"] for hit in before["hits"]} <= {r["id"] for r in first}
    build_index(db, [r["id"] for r in second], [r["text"] for r in second], encoder=wordllama, collection=collection)
    after = service.search(SearchRequest(query="a body of water", k=3))  # no follow() call yet
    if where == "local":  # the index checks its manifest before each search: it answers from the new one at once
        assert {hit["id"] for hit in after["hits"]} <= {r["id"] for r in second}
        assert not service.follow()
        after = service.search(SearchRequest(query="a body of water", k=3))
    assert len(after["hits"]) == 3 and {hit["id"] for hit in after["hits"]} <= {r["id"] for r in second}
    assert service.health()["documents"] == 200
    service.index.close()
