"""Load on ``matryoshka serve``: many concurrent clients sending /search for a fixed time.

The index is the bundled SQuAD sample (414 paragraphs, all-MiniLM-L6-v2), built once per store;
the queries are its 827 real questions, sent in random order. Each store gets a fresh server
process (``python -m matryoshka serve``), a warm-up, then ``--clients`` concurrent HTTP clients
(aiohttp, one asyncio loop, keep-alive connections) for ``--duration`` seconds. Reported: requests per
second, p50/p90/p99 latency, errors (any non-200 or transport failure), and the server's peak
resident memory (VmHWM from /proc). The clients run on the same machine and take CPU from it.

Run:  python benchmarks/load.py                                   (two stores x 60 s, ~3 minutes)
      python benchmarks/load.py --stores local --duration 10     (a quick look)
Writes benchmarks/results/load.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import machine  # noqa: E402

STORES = {"local": "local", "lite": "squad.db"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve", "--db", str(db), "--port", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process
        except OSError:
            if time.time() > deadline:
                raise SystemExit("server did not become healthy in 180 s") from None
            time.sleep(0.5)


async def run_load(url: str, questions: list[str], clients: int, duration: float, k: int) -> dict:
    """``clients`` coroutines, each sending its next request as soon as the last is answered."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + duration
    rng = random.Random(0)

    async def client(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            body = {"query": rng.choice(questions), "k": k}
            started = time.perf_counter()
            try:
                async with http.post(f"{url}/search", json=body) as response:
                    payload = await response.read()
                    if response.status != 200:
                        errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p90_ms": float(np.percentile(ms, 90)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


def load_in_child(url: str, questions: list[str], clients: int, duration: float, k: int) -> dict:
    """The clients run in a fresh process that never imported torch or the model, so that
    nothing of the index build competes with them for the CPU."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_load_sync, (url, questions, clients, duration, k))


def _run_load_sync(*args) -> dict:
    return asyncio.run(run_load(*args))


def bench_store(name: str, db: Path, questions: list[str], args, work: Path) -> dict:
    port = free_port()
    server = start_server(db, port, work / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        load_in_child(url, questions, min(args.clients, 8), args.warmup, args.k)  # warm-up, not counted
        idle_mb = proc_memory_mb(server.pid, "VmRSS")
        result = load_in_child(url, questions, args.clients, args.duration, args.k)
        result.update(
            store=name,
            clients=args.clients,
            k=args.k,
            idle_rss_mb=idle_mb,
            peak_rss_mb=proc_memory_mb(server.pid, "VmHWM"),
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


def print_table(results: list[dict]) -> None:
    header = f"{'store':<7}{'clients':>8}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}{'peak RSS MB':>13}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['store']:<7}{r['clients']:>8}{r['requests']:>10}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}"
            f"{r['p99_ms']:>9.1f}{r['errors']:>8}{r['peak_rss_mb']:>13.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stores", default="local,lite", help="Comma-separated: local (folder) and/or lite (Milvus Lite file)."
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load per store.")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(stores) - set(STORES)
    if unknown:
        parser.error(f"unknown store(s) {sorted(unknown)}; choose from {sorted(STORES)}")

    from matryoshka.data import read_beir
    from matryoshka.demo import SQUAD_DIR, SQUAD_SPLIT
    from matryoshka.index import build_index
    from matryoshka.models import load_model

    data = read_beir(SQUAD_DIR, SQUAD_SPLIT)
    encoder = load_model("default")
    vectors = encoder.encode(data.corpus.texts, kind="document")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in stores:
            db = work / STORES[name]
            build_index(db, data.corpus.ids, data.corpus.texts, encoder=encoder, vectors=vectors)
            print(f"{name}: {args.clients} clients for {args.duration:.0f} s …", flush=True)
            results.append(bench_store(name, db, data.query_texts, args, work))
    print_table(results)
    payload = {
        "machine": machine(),
        "model": encoder.name,
        "documents": len(data.corpus),
        "questions": len(data.query_texts),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"machine: {payload['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
