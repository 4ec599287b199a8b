"""Shared fixtures: the real bundled model (loaded once) and the real datasets beside the repo."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the real datasets are expected in {SHARED_DATA} (../shared/data beside the repo)"
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm():
    from matryoshka.models import load_model

    return load_model("default")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="session")
def scifact_slice(shared_data: Path, tmp_path_factory) -> Path:
    """A small real BEIR folder: 40 SciFact test queries, their relevant abstracts, and 300 others."""
    source = shared_data / "scifact"
    target = tmp_path_factory.mktemp("scifact_slice")
    rows = (source / "qrels" / "test.tsv").read_text().splitlines()[1:]
    query_ids: list[str] = []
    pairs = []
    for row in rows:
        q, d, s = row.split("\t")
        if q not in query_ids:
            if len(query_ids) == 40:
                continue
            query_ids.append(q)
        pairs.append((q, d, s))
    relevant = {d for _, d, _ in pairs}
    with gzip.open(source / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle]
    kept = [d for d in docs if d["_id"] in relevant] + [d for d in docs if d["_id"] not in relevant][:300]
    with gzip.open(source / "queries.jsonl.gz", "rt", encoding="utf-8") as handle:
        queries = [q for q in map(json.loads, handle) if q["_id"] in set(query_ids)]
    write_jsonl(target / "corpus.jsonl", kept)
    write_jsonl(target / "queries.jsonl", queries)
    (target / "qrels").mkdir()
    (target / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in pairs)
    )
    return target


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed console command for real, in a child process."""
    command = [sys.executable, "-m", "matryoshka", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "160"})


@pytest.fixture(scope="session")
def squad_sample():
    from matryoshka.data import read_beir
    from matryoshka.demo import SAMPLE_DIR, SAMPLE_SPLIT

    return read_beir(SAMPLE_DIR, SAMPLE_SPLIT)


@pytest.fixture(scope="session")
def wordllama():
    from matryoshka.models import load_model

    return load_model("wordllama")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus 2.3.5 standalone server on loopback, started from its own environment."""
    import signal
    import socket
    import time

    python = os.environ.get("MATRYOSHKA_MILVUS_SERVER_PYTHON", str(REPO / ".venv-milvus-server" / "bin" / "python"))
    assert Path(python).exists(), f"{python} not found: 'make test' creates it (target .venv-milvus-server/.installed)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus-server")
    log = open(data / "server.log", "w")
    process = subprocess.Popen([python, str(REPO / "tests" / "milvus_server.py"), str(data), str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while "READY" not in (data / "server.log").read_text():
        assert process.poll() is None, f"Milvus server exited: {(data / 'server.log').read_text()[-2000:]}"
        assert time.time() < deadline, "Milvus server did not start in 180 s"
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGKILL)  # SIGTERM can hang in embedded Milvus
    process.wait(timeout=30)
    log.close()
