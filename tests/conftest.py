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
# the randomized oracle runs are short in the suite; MATRYOSHKA_ORACLE_SCALE=10 runs them ten times as long
ORACLE_SCALE = float(os.environ.get("MATRYOSHKA_ORACLE_SCALE", "1"))


def oracle_steps(steps: int) -> int:
    """How many random operations an oracle run makes: ``steps`` in the suite, scaled on request."""
    return max(1, round(steps * ORACLE_SCALE))


# fixtures that make a test slow (a real server, the whole demo); tests using them are marked so
SLOW_FIXTURES = {
    "demo_server",
    "lite_server",
    "milvus_server",
    "tiny_model",
    "scifact_slice",
    "scifact_vectors",
    "sample_vectors",
}


def pytest_collection_modifyitems(config, items):
    """Mark tests by what they use, so the quick tier (``make test-quick``) can leave them out."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "milvus_server" in used:
            item.add_marker(pytest.mark.milvus_server)
        if "browser" in used:
            item.add_marker(pytest.mark.browser)
        if used & SLOW_FIXTURES or item.get_closest_marker("milvus_server"):
            item.add_marker(pytest.mark.slow)


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
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env={**os.environ, "COLUMNS": "160"}
    )


@pytest.fixture(scope="session")
def squad_sample():
    from matryoshka.data import read_beir
    from matryoshka.demo import SQUAD_DIR, SQUAD_SPLIT

    return read_beir(SQUAD_DIR, SQUAD_SPLIT)


@pytest.fixture(scope="session")
def wordllama():
    from matryoshka.models import load_model

    return load_model("wordllama")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus 2.3.5 standalone server on loopback, started from its own environment."""
    import signal
    import time

    python = os.environ.get("MATRYOSHKA_MILVUS_SERVER_PYTHON", str(REPO / ".venv-milvus-server" / "bin" / "python"))
    assert Path(python).exists(), f"{python} not found: 'make test' creates it (target .venv-milvus-server/.installed)"
    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server")
    log = open(data / "server.log", "w")
    process = subprocess.Popen(
        [python, str(REPO / "tests" / "milvus_server.py"), str(data), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while "READY" not in (data / "server.log").read_text():
        assert process.poll() is None, f"Milvus server exited: {(data / 'server.log').read_text()[-2000:]}"
        assert time.time() < deadline, "Milvus server did not start in 180 s"
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGKILL)  # SIGTERM can hang in embedded Milvus
    process.wait(timeout=30)
    log.close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """A ``matryoshka`` command running in its own process group until the fixture ends."""

    def __init__(self, args: list[str], log_path: Path, url: str, cwd: Path | None = None) -> None:
        self.url, self.log_path = url, log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "matryoshka", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "160"},
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_healthy(self, timeout: float = 300) -> None:
        import time
        import urllib.request

        deadline = time.time() + timeout
        while True:
            assert self.process.poll() is None, f"server exited early:\n{self.log[-3000:]}"
            assert time.time() < deadline, f"server not healthy in {timeout} s:\n{self.log[-3000:]}"
            try:
                with urllib.request.urlopen(self.url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self._log.close()


@pytest.fixture(scope="session")
def lite_server(minilm, squad_sample, tmp_path_factory):
    """``matryoshka serve`` on loopback over a Milvus Lite index of 150 real SQuAD paragraphs,
    with small limits so that each limit can be tested cheaply."""
    from matryoshka.index import build_index

    folder = tmp_path_factory.mktemp("lite-server")
    db = folder / "squad.db"
    build_index(db, squad_sample.corpus.ids[:150], squad_sample.corpus.texts[:150], encoder=minilm)
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(db), "--port", str(port), "--max-k", "20", "--max-texts", "8", "--max-text-chars", "500"],
        folder / "server.log",
        f"http://127.0.0.1:{port}/",
    )
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """``matryoshka demo --serve``: the whole demo, then its local index served on loopback."""
    folder = tmp_path_factory.mktemp("demo")
    port = free_port()
    server = RunningServer(
        ["demo", "--output-dir", str(folder / "demo"), "--serve", "--port", str(port)],
        folder / "demo.log",
        f"http://127.0.0.1:{port}/",
        cwd=folder,
    )
    server.output_dir = folder / "demo"
    try:
        server.wait_healthy(timeout=600)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A sentence-transformers folder around a random 2-layer, 32-dim BERT with MiniLM's
    tokenizer: trains in seconds, so the training paths can be tested end to end."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from matryoshka.models import bundled_minilm_path

    folder = tmp_path_factory.mktemp("tiny")
    backbone = folder / "backbone"
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(backbone))
    tokenizer.save_pretrained(str(backbone))
    word = Transformer(str(backbone), max_seq_length=64)
    model = SentenceTransformer(modules=[word, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"
