"""The funnel inside Milvus against Milvus's own search, on a Milvus Lite file and on the Milvus
2.3 standalone server: recall@10 against exact search, one query at a time and a batch of 100,
and where a funnel query spends its time, stage by stage.

Corpus: the 117,659 WordNet 3.0 glosses bundled with the package, embedded with WordLlama (256
dims), and a 1,000,000-vector set made around them (each vector plus 8 jittered copies, as in
benchmarks/funnel.py). Queries: lemmas (single words people look up): 500 to tune on, 200 others
to measure. Indexes: a binary head of all 256 sign bits (BIN_FLAT), tuned in memory, then every
stage searched in Milvus. Baselines on the same engine: exact FLAT search of the full vectors, and
on the server HNSW over the full vectors (M 32, efConstruction 100) at several ef.

Run:  python benchmarks/milvus.py                        (both sizes, both engines)
      python benchmarks/milvus.py --sizes 117659 --engines lite
The server comes from the environment `make test` builds (.venv-milvus-server); it listens on
loopback only. Writes benchmarks/results/milvus.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import expand, machine

from matryoshka.demo import best_seconds, lemma_queries, read_glosses
from matryoshka.funnel import Schedule, recall_at_k
from matryoshka.index import Index, build_index
from matryoshka.models import load_model
from matryoshka.stores.memory import MemoryStore
from matryoshka.stores.milvus_client import connect, disconnect, search
from matryoshka.vectors import normalize

K = 10
SINGLE = 40  # queries timed one at a time (median)
BATCH = 100
HNSW_EFS = (64, 128, 256, 512)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    python = os.environ.get("MATRYOSHKA_MILVUS_SERVER_PYTHON", str(ROOT / ".venv-milvus-server" / "bin" / "python"))
    port = free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [python, str(ROOT / "tests" / "milvus_server.py"), str(folder / "data"), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while "READY" not in (folder / "server.log").read_text():
        if process.poll() is not None or time.time() > deadline:
            raise SystemExit("the Milvus server did not start: " + (folder / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    return process, f"http://127.0.0.1:{port}"


def median_ms(run, queries: np.ndarray, count: int = SINGLE) -> float:
    run(queries[:1])
    times = []
    for i in range(min(count, len(queries))):
        started = time.perf_counter()
        run(queries[i : i + 1])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def measure(
    uri: str,
    engine: str,
    vectors: np.ndarray,
    ids: list[str],
    texts: list[str],
    tune: np.ndarray,
    test: np.ndarray,
    truth: np.ndarray,
) -> list[dict]:
    rows = []
    n = len(vectors)
    collection = f"b{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    meta = build_index(uri, ids, texts, vectors=vectors, head_index="binary", tune_queries=tune, collection=collection)
    build_s = time.perf_counter() - started
    with Index(uri, collection=collection) as index:
        store = index.store
        tuned = Schedule.parse(meta.schedule)
        schedules = {"tuned": tuned, "narrow": tuned.scaled(0.5, K, n), "wide": tuned.scaled(2.0, K, min(n, 16_384))}
        exact_single = median_ms(lambda q: index.search_vectors(q, K, exact=True), test)
        exact_batch = best_seconds(lambda: index.search_vectors(test[:BATCH], K, exact=True))
        exact = index.search_vectors(test, K, exact=True)
        rows.append(
            {
                "engine": engine,
                "n": n,
                "method": "exact FLAT (Milvus)",
                "schedule": "",
                "recall": recall_at_k(exact.rows, truth),
                "single_ms": exact_single,
                "batch_qps": BATCH / exact_batch,
                "build_s": 0.0,
                "layout": store.layout.kind,
            }
        )
        for label, schedule in schedules.items():
            found = index.search_vectors(test, K, schedule=schedule)
            stage_ms = []
            for i in range(min(SINGLE, len(test))):
                stage_ms.append(index.search_vectors(test[i : i + 1], K, schedule=schedule).stage_seconds)
            single = median_ms(lambda q, s=schedule: index.search_vectors(q, K, schedule=s), test)
            batch = best_seconds(lambda s=schedule: index.search_vectors(test[:BATCH], K, schedule=s))
            rows.append(
                {
                    "engine": engine,
                    "n": n,
                    "method": f"funnel in Milvus ({label})",
                    "schedule": str(schedule),
                    "recall": recall_at_k(found.rows, truth),
                    "single_ms": single,
                    "batch_qps": BATCH / batch,
                    "stage_ms": [round(1000 * float(np.median(s)), 2) for s in zip(*stage_ms)],
                    "build_s": build_s,
                    "layout": store.layout.kind,
                }
            )
        rows.append(batch_strategies(store, index, tuned, test[:BATCH], engine, n))
    if engine == "server":
        rows += hnsw_baseline(uri, vectors, test, truth, engine)
    return rows


def batch_strategies(store, index, schedule: Schedule, queries: np.ndarray, engine: str, n: int) -> dict:
    """A batch's later stages: per-query requests one at a time, or sent in parallel (what the
    store does). One request per stage for the whole batch would need one filter for all queries
    (the union of their shortlists), which ranks each query over the others' candidates too."""
    import matryoshka.stores.milvus as milvus

    timings = {}
    for label, workers in (("sequential", 1), ("parallel", milvus.QUERY_WORKERS)):
        store._pool.shutdown()
        store._pool = ThreadPoolExecutor(max_workers=workers)
        timings[label] = BATCH / best_seconds(lambda: index.search_vectors(queries, K, schedule=schedule))
    head = queries[:, : store.head_dim]
    _, rows = store.head_search(head if store.binary_head else normalize(head), schedule.shortlist)
    union = np.unique(rows[rows >= 0])
    started = time.perf_counter()
    search(
        store.client,
        store.layout.collection(store.collection, store.generation, "full"),
        queries.tolist(),
        store.layout.vector_field("full"),
        {"metric_type": "IP", "params": {}},
        K,
        expr=f"row in {union.tolist()}",
    )
    timings["one_request_union"] = BATCH / (time.perf_counter() - started)
    return {"engine": engine, "n": n, "method": "batch strategies (queries/s)", "schedule": str(schedule), **timings}


def hnsw_baseline(uri: str, vectors: np.ndarray, test: np.ndarray, truth: np.ndarray, engine: str) -> list[dict]:
    from pymilvus import DataType, MilvusClient

    client = connect(uri)
    name = f"h{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 100})
    started = time.perf_counter()
    client.create_collection(name, schema=schema, index_params=params)
    for start in range(0, len(vectors), 5000):
        client.insert(
            name, [{"row": i, "vector": vectors[i].tolist()} for i in range(start, min(start + 5000, len(vectors)))]
        )
    client.flush(name)
    while True:
        described = client.describe_index(name, "vector")
        if int(described.get("pending_index_rows", 0)) == 0 and int(described.get("indexed_rows", 0)) >= len(vectors):
            break
        time.sleep(1)
    client.release_collection(name)
    client.load_collection(name)
    build_s = time.perf_counter() - started
    rows = []
    for ef in HNSW_EFS:

        def run(q, ef=ef):
            return search(client, name, q.tolist(), "vector", {"metric_type": "IP", "params": {"ef": ef}}, K)

        found = run(test)
        got = np.array([np.pad(r, (0, K - len(r)), constant_values=-1) for r in found.rows])
        rows.append(
            {
                "engine": engine,
                "n": len(vectors),
                "method": "HNSW full-dim (Milvus)",
                "schedule": f"ef={ef}",
                "recall": recall_at_k(got, truth),
                "single_ms": median_ms(run, test),
                "batch_qps": BATCH / best_seconds(lambda: run(test[:BATCH])),
                "build_s": build_s,
            }
        )
    client.drop_collection(name)
    disconnect(client, uri)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="117659,1000000")
    parser.add_argument("--engines", default="lite,server")
    parser.add_argument("--jitter", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "milvus.json")
    args = parser.parse_args()
    model = load_model("wordllama")
    glosses = read_glosses()
    base = model.encode(glosses.texts, kind="document")
    words = lemma_queries(glosses, 700)
    tune, test = model.encode(words[:500], kind="query"), model.encode(words[500:], kind="query")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        server = uri_server = None
        if "server" in args.engines:
            server, uri_server = start_server(Path(tmp))
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                vectors = base if size <= len(base) else expand(base, 8, args.jitter)[:size]
                vectors = vectors[:size]
                ids = [f"{glosses.ids[i % len(glosses.ids)]}#{i // len(glosses.ids)}" for i in range(size)]
                texts = [glosses.texts[i % len(glosses.texts)] for i in range(size)]
                truth = MemoryStore(vectors, 8).exact_search(test, K)[1]
                for engine in args.engines.split(","):
                    uri = str(Path(tmp) / f"bench{size}.db") if engine == "lite" else uri_server
                    print(f"{engine}, {size:,} vectors …", flush=True)
                    results += measure(uri, engine, vectors, ids, texts, tune, test, truth)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"machine": machine(), "k": K, "results": results}, indent=2) + "\n")
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    print(f"\n{machine()}\n")
    print(f"{'engine':7} {'n':>9} {'method':32} {'schedule':26} {'recall':>7} {'1 query ms':>10} {'batch QPS':>10}")
    for row in results:
        if "recall" in row:
            print(
                f"{row['engine']:7} {row['n']:>9,} {row['method']:32} {row['schedule']:26} {row['recall']:7.4f} "
                f"{row['single_ms']:10.2f} {row['batch_qps']:10.1f}  {row.get('stage_ms', '')}"
            )
        else:
            print(
                f"{row['engine']:7} {row['n']:>9,} {row['method']:32} {row['schedule']:26} sequential "
                f"{row['sequential']:.1f}, parallel {row['parallel']:.1f}, one request (union) {row['one_request_union']:.1f}"
            )


if __name__ == "__main__":
    main()
