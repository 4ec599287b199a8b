"""``matryoshka serve`` as an OpenAI-compatible embeddings endpoint, and ``index`` through one.

1. ``POST /v1/embeddings`` under load: ``matryoshka serve --model M`` in its own process, then
   ``--clients`` concurrent clients (aiohttp, one asyncio loop in a fresh process, keep-alive)
   for ``--duration`` seconds, sending 1 text per request and then 64, the texts drawn from the
   bundled WordNet glosses. Reported: requests/s, texts/s, p50/p99 latency, errors; against the
   same model encoding the same texts in this process (texts/s, batches of 1 and of 64).
2. ``index`` through the endpoint: ``build_index`` of ``--index-docs`` glosses with
   ``openai:M`` at that server against the same build with M loaded locally, and whether both
   indexes return the same top 10 for 100 lemma queries.

The clients and the server share the machine's cores, as in benchmarks/load.py.

Run:  python benchmarks/openai_api.py                       (wordllama, 2 x 30 s, about 3 minutes)
      python benchmarks/openai_api.py --model minilm --duration 20 --index-docs 5000
Writes benchmarks/results/openai_api.json (or --output) and prints a table.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from matryoshka.demo import lemma_queries, read_glosses
from matryoshka.index import Index, build_index
from matryoshka.models import load_model

K = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve", "--model", model, "--port", str(port), "--max-texts", "2048"],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    deadline = time.time() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return process
        except OSError:
            if time.time() > deadline:
                raise SystemExit("server did not answer in 300 s") from None
            time.sleep(0.5)


async def run_load(url: str, model: str, texts: list[str], per_request: int, clients: int, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + duration
    rng = random.Random(per_request)

    async def client(http) -> None:
        while time.perf_counter() < stop_at:
            body = {"model": model, "input": rng.sample(texts, per_request), "encoding_format": "base64"}
            started = time.perf_counter()
            try:
                async with http.post(f"{url}/v1/embeddings", json=body) as response:
                    payload = await response.read()
                    if response.status != 200:
                        errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "texts_per_request": per_request,
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "texts_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


def _load_sync(*args) -> dict:
    return asyncio.run(run_load(*args))


def load_in_child(*args) -> dict:
    """Clients in a fresh process that never loaded the model."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_load_sync, args)


def local_speed(encoder, texts: list[str], per_call: int, seconds: float) -> dict:
    """Texts/s of the model in this process, ``per_call`` texts per encode call."""
    done, started = 0, time.perf_counter()
    rng = random.Random(per_call)
    latencies = []
    while time.perf_counter() - started < seconds:
        batch = rng.sample(texts, per_call)
        began = time.perf_counter()
        encoder.encode(batch)
        latencies.append(time.perf_counter() - began)
        done += per_call
    elapsed = time.perf_counter() - started
    return {
        "texts_per_call": per_call,
        "texts_per_s": done / elapsed,
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(np.asarray(latencies) * 1000, 50)),
    }


def index_through_endpoint(model: str, url: str, glosses, count: int, work: Path) -> dict:
    ids, texts = glosses.ids[:count], glosses.texts[:count]
    queries = lemma_queries(glosses, 100, seed=5)
    timings, found = {}, {}
    for label, name, options in (
        ("local", model, {}),
        ("endpoint", f"openai:{model}", {"api_base": url + "/v1", "embedding_cache": work / "cache.sqlite"}),
    ):
        encoder = load_model(name, **options)
        db = work / f"index-{label}"
        started = time.perf_counter()
        build_index(db, ids, texts, encoder=encoder, head_index="binary")
        timings[label] = time.perf_counter() - started
        with Index(db) as opened:
            found[label] = [result.ids for result in opened.search(queries, k=K, exact=True)]
    same = np.mean([a == b for a, b in zip(found["local"], found["endpoint"])])
    return {
        "documents": count,
        "local_seconds": timings["local"],
        "endpoint_seconds": timings["endpoint"],
        "endpoint_docs_per_s": count / timings["endpoint"],
        "same_top10_share": float(same),
    }


def print_tables(result: dict) -> None:
    print(f"\n{result['model']} via POST /v1/embeddings, {result['clients']} concurrent clients  ({result['machine']})")
    header = f"{'texts/request':>14}{'requests/s':>12}{'texts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'local texts/s':>15}"
    print(header)
    print("-" * len(header))
    for served, local in zip(result["served"], result["local"]):
        print(
            f"{served['texts_per_request']:>14}{served['requests_per_s']:>12.1f}{served['texts_per_s']:>10.0f}"
            f"{served['p50_ms']:>9.1f}{served['p99_ms']:>9.1f}{served['errors']:>8}{local['texts_per_s']:>15.0f}"
        )
    built = result["index"]
    print(
        f"\nindex of {built['documents']:,} glosses: local {built['local_seconds']:.1f} s, through the endpoint "
        f"{built['endpoint_seconds']:.1f} s ({built['endpoint_docs_per_s']:.0f} docs/s); same exact top-10 for "
        f"{100 * built['same_top10_share']:.0f}% of 100 queries"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wordllama", help="served and compared model (default wordllama)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per request size")
    parser.add_argument("--index-docs", type=int, default=20_000, help="glosses indexed through the endpoint")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "openai_api.json")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0 or args.index_docs < 100:
        parser.error("--clients >= 1, --duration > 0 and --index-docs >= 100")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.output.parent, os.W_OK):
        parser.error(f"cannot write {args.output}")

    glosses = read_glosses()
    texts = glosses.texts[:20_000]
    encoder = load_model(args.model)
    result = {"machine": machine(), "model": args.model, "clients": args.clients, "served": [], "local": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        port = free_port()
        server = start_server(args.model, port, work / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            load_in_child(url, args.model, texts, 8, min(4, args.clients), 3.0)  # warm-up, not counted
            for per_request in (1, 64):
                result["served"].append(load_in_child(url, args.model, texts, per_request, args.clients, args.duration))
                result["local"].append(local_speed(encoder, texts, per_request, min(args.duration, 10.0)))
            result["index"] = index_through_endpoint(args.model, url, glosses, args.index_docs, work)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print_tables(result)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
