"""Soak ``matryoshka serve`` with hostile traffic: many clients for a long time, half valid and
half invalid requests, plus slow clients and oversized chunked bodies, and measure what a server
owner cares about: server errors (must be 0), dropped connections, latency of the valid
requests, and the server's memory over time.

Run:  python benchmarks/soak.py                       (50 clients x 10 minutes)
      python benchmarks/soak.py --seconds 60          (a quick look; the test suite runs this size)
Writes benchmarks/results/soak.json and prints a table. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORDNET = ROOT / "src" / "matryoshka" / "sample" / "wordnet" / "glosses.jsonl.gz"

VALID = [
    ("/search", {"query": "a large body of water", "k": 10}),
    ("/search", {"query": "music", "k": 5, "dim": 32}),
    ("/search", {"query": "bread", "k": 3, "exact": True}),
    ("/embed", {"texts": ["stone", "silver"], "dim": 64}),
    ("/similarity", {"query": "garden", "texts": ["winter garden", "engine"]}),
]
INVALID = [
    b'{"query": "\\ud800 cat", "k": 3}',
    b'{"query": "x", "k": NaN}',
    b'{"query": "x", "dim": 1e400}',
    b'{"query": ',
    json.dumps({"query": "x", "k": 100_000}).encode(),
    json.dumps({"query": "x" * 5000}).encode(),
    json.dumps({"query": "x", "schedule": [[0, -1]]}).encode(),
    b"[1, 2, 3]",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(documents: int, folder: Path) -> tuple[subprocess.Popen, int]:
    with gzip.open(WORDNET, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(documents), handle)]
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    command = [sys.executable, "-m", "matryoshka"]
    subprocess.run(
        [*command, "index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(folder / "index")],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [*command, "serve", "--db", str(folder / "index"), "--port", str(port), "--read-timeout", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)


def client(port: int, seed: int, deadline: float, stats: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.time() < deadline:
        roll = rng.random()
        if roll < 0.5:
            path, body = rng.choice(VALID)
            body, valid = json.dumps(body).encode(), True
        else:
            path, body, valid = "/search", rng.choice(INVALID), False
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers={"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            with lock:
                stats["dropped"] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        with lock:
            stats["requests"] += 1
            stats["server_errors"] += response.status >= 500
            stats["refused"] += 400 <= response.status < 500
            if valid and response.status == 200:
                stats["latencies"].append(time.perf_counter() - started)
    connection.close()


def hostile(port: int, deadline: float, stats: dict, lock: threading.Lock) -> None:
    """Slow headers, slow bodies and 20 MB chunked bodies, over and over."""
    while time.time() < deadline:
        sockets = []
        for slow_body in (False, True):
            for _ in range(5):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.sendall(
                        b"POST /search HTTP/1.1\r\nHost: x\r\n"
                        + (b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{" if slow_body else b"")
                    )
                    sockets.append(sock)
                except OSError:
                    pass
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(
                "POST",
                "/search",
                body=(b"x" * 65536 for _ in range(320)),
                encode_chunked=True,
                headers={"content-type": "application/json", "Transfer-Encoding": "chunked"},
            )
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 413  # refused while still sending
        time.sleep(3)
        with lock:
            stats["hostile"] += len(sockets) + 1
            stats["big_bodies_refused"] += status == 413
        for sock in sockets:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(args.documents, Path(tmp))
        server = psutil.Process(process.pid)
        stats = {
            "requests": 0,
            "server_errors": 0,
            "refused": 0,
            "dropped": 0,
            "hostile": 0,
            "big_bodies_refused": 0,
            "latencies": [],
        }
        lock = threading.Lock()
        deadline = time.time() + args.seconds
        threads = [
            threading.Thread(target=client, args=(port, seed, deadline, stats, lock)) for seed in range(args.clients)
        ]
        threads.append(threading.Thread(target=hostile, args=(port, deadline, stats, lock)))
        for thread in threads:
            thread.start()
        rss = []
        while any(thread.is_alive() for thread in threads):
            rss.append(server.memory_info().rss)
            time.sleep(1)
        process.terminate()
        process.wait(timeout=30)
    latencies = sorted(stats.pop("latencies"))
    result = {
        **stats,
        "seconds": args.seconds,
        "clients": args.clients,
        "documents": args.documents,
        "requests_per_second": round(stats["requests"] / args.seconds, 1),
        "valid_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "valid_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "rss_start_mb": round(rss[0] / 2**20),
        "rss_peak_mb": round(max(rss) / 2**20),
        "rss_end_mb": round(rss[-1] / 2**20),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
