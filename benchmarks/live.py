"""The live index at a million vectors: how fast documents go in, what searching many segments
costs against the compacted index, and how long compaction takes.

Corpus: the 117,659 WordNet 3.0 glosses bundled with the package, embedded with WordLlama (256
dims), each plus 8 jittered copies (as in benchmarks/funnel.py): 1,058,931 vectors. Queries: 200
lemmas; the schedule is tuned on 500 others. The index has a binary head of all 256 sign bits;
every layout is searched with the same schedule, the one autotune chose for the compacted index,
so the layouts are compared at the same work per query; recall@10 is against exact search over the same live documents.

Layouts, all on the local store with the same live documents:
- compacted: one segment (``index`` of the whole corpus);
- 10 and 50 segments: ``index`` of the first part, then ``add`` of equal parts;
- 10 segments with 10% of the documents deleted (re-added in an 11th), to show tombstones cost
  neither recall nor time.

Also: ``add`` throughput with precomputed vectors into the 1M index (batches of 1,000 and of
10,000), and the time to compact the 50-segment index (and to re-tune after it).

Run:  python benchmarks/live.py            (about 30 minutes on 2 cores; needs 6 GB of disk)
Writes benchmarks/results/live.json and prints a table.

``--trickle``: production traffic through ``matryoshka serve`` instead. The 117,659 glosses are
indexed with WordLlama (binary head, autotuned); the server runs in its own process with an API
key; one client, then ten at once, send single-document ``POST /documents`` (real glosses under
new ids) while another client searches throughout. Reported: acknowledged writes per second,
errors, the server's peak open files, search p50/p99 during the writes against the same
searches on the compacted index of the same size afterwards (with the same schedule), the
segments left, and whether every acknowledged write is in the index afterwards. Writes benchmarks/results/live_trickle.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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
from matryoshka.stores import open_writer

K = 10
QUERIES = 200
TUNE = 500  # lemmas the compacted index's schedule is tuned on (not measured)
SINGLE = 100  # queries timed one at a time (median)


def corpus(copies: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Ids, vectors, the measured queries, and other lemmas to tune the schedule on."""
    model = load_model("wordllama")
    glosses = read_glosses()
    vectors = model.encode(glosses.texts, kind="document")
    full = expand(vectors, copies, jitter=0.5)
    ids = [f"{i}" for i in range(len(full))]
    lemmas = model.encode(lemma_queries(glosses, QUERIES + TUNE, seed=3), kind="query")
    return ids, full, lemmas[:QUERIES], lemmas[QUERIES:]


def measure(index: Index, schedule: Schedule, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Recall@10 and latency of one schedule: one query at a time (median) and the whole batch (best of 3)."""
    found = index.search_vectors(queries, K, schedule=schedule)
    ids = index.hits(found)
    recall = recall_at_k(np.array([h.ids for h in ids]), truth)
    single = []
    for query in queries[:SINGLE]:
        started = time.perf_counter()
        index.search_vectors(query[None, :], K, schedule=schedule)
        single.append(time.perf_counter() - started)
    batch = best_seconds(lambda: index.search_vectors(queries, K, schedule=schedule), repeats=3)
    return {
        "recall@10": round(float(recall), 4),
        "one_query_ms": round(1000 * statistics.median(single), 3),
        "batch_ms_per_query": round(1000 * batch / len(queries), 4),
        "segments": len(index.store.segments),
    }


def exact_ids(index: Index, queries: np.ndarray) -> np.ndarray:
    return np.array([h.ids for h in index.hits(index.search_vectors(queries, K, exact=True))])


def build_in_parts(db: Path, ids: list[str], full: np.ndarray, parts: int, schedule: str, autotune) -> float:
    """``index`` of the first part, ``add`` of the others; returns the seconds the adds took."""
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    build_index(db, ids[: bounds[1]], [""] * bounds[1], vectors=full[: bounds[1]], head_index="binary", k=K)
    _keep_schedule(db, schedule, autotune)
    started = time.perf_counter()
    with Index(db) as index:
        for start, stop in zip(bounds[1:-1], bounds[2:]):  # unmerged: the layout is what is measured
            index.add(ids[start:stop], vectors=full[start:stop], merge=False)
    _keep_schedule(db, schedule, autotune)  # an add that doubled the corpus re-tuned it; compare alike
    return time.perf_counter() - started


def _keep_schedule(db: Path, schedule: str, autotune) -> None:
    from dataclasses import replace

    with open_writer(db) as writer:
        writer.save_meta(replace(writer.meta, schedule=schedule, autotune=autotune))


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")


def serve(db: Path, log: Path, key: str) -> tuple[subprocess.Popen, str]:
    """``matryoshka serve`` of ``db`` in its own process, healthy."""
    import httpx

    port = 18000 + os.getpid() % 1000
    handle = open(log, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve", "--db", str(db), "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MATRYOSHKA_API_KEY": key, "PYTHONPATH": str(ROOT / "src")},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if process.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)


def searched(url: str, queries: list[str], stop, latencies: list, errors: list) -> None:
    """Search ``queries`` in turn (until ``stop`` is set, or once through when it is ``None``)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        position = 0
        while (stop is None and position < len(queries)) or (stop is not None and not stop.is_set()):
            started = time.perf_counter()
            answer = client.post("/search", json={"query": queries[position % len(queries)], "k": K})
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200 or len(answer.json()["hits"]) != K:
                errors.append(f"search {answer.status_code}: {answer.text[:200]}")
            position += 1


def search_in_process(url: str, queries: list[str], stop, answers) -> None:
    """:func:`searched` until ``stop``, in a child process; puts (latencies, errors) on ``answers``."""
    latencies: list[float] = []
    errors: list[str] = []
    searched(url, queries, stop, latencies, errors)
    answers.put((latencies, errors))


def trickle(args: argparse.Namespace) -> None:
    """Single-document writes through the server, one client then ten, with searches throughout."""
    import httpx

    glosses = read_glosses()
    work = Path(tempfile.mkdtemp(prefix="matryoshka-trickle-", dir=args.workdir))
    print(f"Machine: {machine()}\nWork folder: {work}", flush=True)
    model = load_model("wordllama")
    started = time.perf_counter()
    rng = np.random.default_rng(1)
    tune = model.encode(lemma_queries(glosses, TUNE, seed=3), kind="query")
    build_index(work / "index", glosses.ids, glosses.texts, encoder=model, head_index="binary", k=K, tune_queries=tune)
    print(f"indexed {len(glosses.ids):,} glosses in {time.perf_counter() - started:.0f} s", flush=True)
    queries = lemma_queries(glosses, QUERIES, seed=11)
    key = "trickle-benchmark-key"
    process, url = serve(work / "index", work / "server.log", key)
    results: dict = {"machine": machine(), "documents": len(glosses.ids), "writes": args.writes, "phases": {}}
    try:
        latencies: list[float] = []
        errors: list[str] = []
        searched(url, queries, None, [], errors)  # warm up
        searched(url, queries * 2, None, latencies, errors)
        base = {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}
        results["search_before"] = base
        print(f"search on the built index: {base}", flush=True)
        order = rng.permutation(len(glosses.texts))
        written: list[str] = []
        for clients in (1, 10):
            count = args.writes // 2
            peak, latencies, failures = [0], [], []

            def write(client_id: int, share: int) -> None:
                with httpx.Client(base_url=url, timeout=60) as client:
                    for i in range(share):
                        name = f"trickle-{clients}-{client_id}-{i}"
                        text = glosses.texts[order[(client_id * share + i) % len(order)]]
                        answer = client.post(
                            "/documents",
                            json={"documents": [{"id": name, "text": text}]},
                            headers={"authorization": f"Bearer {key}"},
                        )
                        if answer.status_code == 200:
                            written.append(name)
                        else:
                            failures.append(f"write {answer.status_code}: {answer.text[:200]}")
                        if i % 20 == 0:
                            peak[0] = max(peak[0], len(os.listdir(f"/proc/{process.pid}/fd")))

            # the searching client runs in a process of its own, so that its latencies are the
            # server's and not those of waiting for this process's writer threads
            context = multiprocessing.get_context("spawn")
            stop, answers = context.Event(), context.Queue()
            reader = context.Process(target=search_in_process, args=(url, queries, stop, answers))
            reader.start()
            began = time.perf_counter()
            writers = [threading.Thread(target=write, args=(c, count // clients)) for c in range(clients)]
            for thread in writers:
                thread.start()
            for thread in writers:
                thread.join()
            seconds = time.perf_counter() - began
            stop.set()
            searched_latencies, search_errors = answers.get(timeout=120)
            reader.join()
            latencies.extend(searched_latencies)
            failures.extend(search_errors)
            phase = {
                "writes": count,
                "writes_per_s": round(count / seconds, 1),
                "errors": len(failures),
                "first_errors": failures[:3],
                "peak_open_files": peak[0],
                "search_p50_ms": percentile(latencies, 50),
                "search_p99_ms": percentile(latencies, 99),
                "search_p99_vs_built": round(percentile(latencies, 99) / base["p99_ms"], 2),
                "searches": len(latencies),
            }
            results["phases"][f"{clients} writer(s)"] = phase
            print(f"{clients} writer(s): {phase}", flush=True)
        with Index(work / "index") as index:
            held = set(index.store.ids_of(np.arange(len(index))).tolist())
            results["acknowledged_present"] = all(name in held for name in written)
            results["acknowledged"] = len(written)
            results["segments_after"] = [s.live_count for s in index.store.segments]
            schedule, autotune = index.meta.schedule, index.meta.autotune
            index.compact()  # the compacted index of the same size, which the server follows,
            _keep_schedule(work / "index", schedule, autotune)  # searched with the same schedule
        time.sleep(3)
        latencies, errors = [], []
        searched(url, queries, None, [], errors)
        searched(url, queries * 2, None, latencies, errors)
        results["search_compacted"] = {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}
        for phase in results["phases"].values():
            phase["search_p99_vs_compacted"] = round(phase["search_p99_ms"] / results["search_compacted"]["p99_ms"], 2)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    print(
        f"\n{'phase':<14}{'writes/s':>10}{'errors':>8}{'peak fds':>10}{'search p50':>12}{'p99':>9}"
        f"{'p99 × compacted':>17}"
    )
    for label, row in results["phases"].items():
        print(
            f"{label:<14}{row['writes_per_s']:>10.1f}{row['errors']:>8}{row['peak_open_files']:>10}"
            f"{row['search_p50_ms']:>12.2f}{row['search_p99_ms']:>9.2f}{row['search_p99_vs_compacted']:>17.2f}"
        )
    compacted = results["search_compacted"]
    print(
        f"search before the writes: p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms; after them, compacted: "
        f"p50 {compacted['p50_ms']} ms, p99 {compacted['p99_ms']} ms\nevery acknowledged write "
        f"({results['acknowledged']:,}) present: {results['acknowledged_present']}; segments after: "
        f"{results['segments_after']}"
    )
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {args.output}")
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="jittered copies of each gloss vector (8: 1M)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the indexes are written (default: a temp dir)"
    )
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/live[_trickle].json")
    parser.add_argument("--trickle", action="store_true", help="single-document writes through the server instead")
    parser.add_argument("--writes", type=int, default=10_000, help="--trickle: writes in all (half by 1, half by 10)")
    args = parser.parse_args()
    name = "live_trickle.json" if args.trickle else "live.json"
    args.output = args.output or ROOT / "benchmarks" / "results" / name
    args.output.parent.mkdir(parents=True, exist_ok=True)  # a bad output path fails now, not after the run
    if not os.access(args.output.parent, os.W_OK) or args.output.is_dir():
        parser.error(f"--output {args.output}: cannot write there")
    if args.trickle:
        trickle(args)
        return
    work = Path(tempfile.mkdtemp(prefix="matryoshka-live-", dir=args.workdir))
    print(f"Machine: {machine()}\nWork folder: {work}", flush=True)
    ids, full, queries, tune = corpus(args.copies)
    n = len(ids)
    print(f"{n:,} vectors of {full.shape[1]} dims, {len(queries)} queries", flush=True)
    results: dict = {"machine": machine(), "documents": n, "dims": int(full.shape[1]), "layouts": {}}

    # the compacted index: one segment, its tuned schedule used for every layout
    started = time.perf_counter()
    build_index(work / "one", ids, [""] * n, vectors=full, head_index="binary", k=K, tune_queries=tune)
    results["build_s"] = round(time.perf_counter() - started, 1)
    with Index(work / "one") as index:
        schedule, autotune = Schedule.parse(index.meta.schedule), index.meta.autotune
        truth = exact_ids(index, queries)
        results["schedule"] = str(schedule)
        results["layouts"]["compacted (1 segment)"] = measure(index, schedule, queries, truth)
        print("compacted", results["layouts"]["compacted (1 segment)"], flush=True)
        # add throughput into the 1M index, precomputed vectors
        rng = np.random.default_rng(5)
        extra = full[rng.choice(n, 20_000, replace=False)]
        throughput = {}
        for batch in (1_000, 10_000):
            adds = 10_000 // batch
            started = time.perf_counter()
            for step in range(adds):
                chunk = extra[step * batch : (step + 1) * batch]
                index.add([f"new-{batch}-{step}-{i}" for i in range(len(chunk))], vectors=chunk)
            seconds = time.perf_counter() - started
            throughput[f"batches of {batch:,}"] = round(10_000 / seconds)
            print(f"add, batches of {batch:,}: {10_000 / seconds:,.0f} documents/s", flush=True)
        results["add_documents_per_s"] = throughput
    shutil.rmtree(work / "one")

    for parts in (10, 50):
        db = work / f"s{parts}"
        add_s = build_in_parts(db, ids, full, parts, str(schedule), autotune)
        with Index(db) as index:
            label = f"{parts} segments"
            results["layouts"][label] = {**measure(index, schedule, queries, truth), "adds_s": round(add_s, 1)}
            print(label, results["layouts"][label], flush=True)
            if parts == 10:  # delete a tenth and add it again: tombstones in every segment, an 11th segment
                rng = np.random.default_rng(9)
                again = np.sort(rng.choice(n, n // 10, replace=False))
                index.delete([ids[i] for i in again], merge=False)
                index.add([ids[i] for i in again], vectors=full[again], merge=False)
                _keep_schedule(db, str(schedule), autotune)
                label = "10 segments + 10% deleted and re-added"
                results["layouts"][label] = measure(index, schedule, queries, truth)
                print(label, results["layouts"][label], flush=True)
        if parts == 10:
            shutil.rmtree(db)
    with Index(work / "s50") as index:
        with open_writer(work / "s50", previous=index.store) as writer:
            started = time.perf_counter()
            writer.compact()
            results["compact_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            index._retune(writer)
            results["retune_s"] = round(time.perf_counter() - started, 1)
        print(f"compact: {results['compact_s']} s, re-tune: {results['retune_s']} s", flush=True)
        results["layouts"]["50 segments, compacted"] = measure(index, schedule, queries, truth)
    shutil.rmtree(work)

    base = results["layouts"]["compacted (1 segment)"]
    print(f"\nSchedule {results['schedule']}, {n:,} documents, k={K}")
    print(f"{'layout':<42}{'recall@10':>10}{'one query ms':>14}{'× compacted':>12}{'batch ms/q':>12}{'×':>7}")
    for label, row in results["layouts"].items():
        print(
            f"{label:<42}{row['recall@10']:>10.4f}{row['one_query_ms']:>14.3f}"
            f"{row['one_query_ms'] / base['one_query_ms']:>12.2f}{row['batch_ms_per_query']:>12.4f}"
            f"{row['batch_ms_per_query'] / base['batch_ms_per_query']:>7.2f}"
        )
    print(
        f"add: {results['add_documents_per_s']} documents/s; compact 1M: {results['compact_s']} s "
        f"(+ re-tune {results['retune_s']} s); build 1M: {results['build_s']} s"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {args.output}")


if __name__ == "__main__":
    main()
