"""Funnel search against exact search, HNSW and the Milvus bootcamp notebook's funnel.

Corpus: the 117,659 WordNet 3.0 glosses in ../shared/data/wordnet, embedded with WordLlama (a
Matryoshka-trained static model, 256 dims). Queries: lemmas of 1,000 random synsets ("reverse
dictionary" queries), encoded as queries; a further 200 lemmas are used only to autotune.
The 1M set is made around the real embeddings: each gloss vector plus 8 jittered copies
(Gaussian noise scaled per dimension by the corpus' own standard deviation, times --jitter,
then re-normalised), so every vector stays near a real one and keeps the Matryoshka ordering of
information along the prefix. Recall@10 is measured against exact full-dimension search on the
same vectors. Batch timings are the best of two runs for every method; single queries are timed once,
after five warm-up queries. The funnel runs with a flat float head, an HNSW head and a binary head
(the sign bits of all 256 dims), each autotuned on the 200 tuning queries, and at several shortlists
around the tuned one. HNSW (M 32, efConstruction 200) runs at efSearch 32 ... 4096, so that its
curve crosses the funnel's. The run ends with a table of the project's four targets, judged from
these rows (the fastest funnel setting that reaches the recall each target asks for).

Run:  python benchmarks/funnel.py            (about 23 minutes on 2 cores)
      python benchmarks/funnel.py --sizes 117659 --skip-hnsw   (a quick look)
      python benchmarks/funnel.py --scale 10m   (10M rows against exact search and FAISS IVF: benchmarks/scale.py)
Writes benchmarks/results/funnel.json and funnel.png, and prints a table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import expand, machine  # noqa: E402
from scale import check_room, scale_rows  # noqa: E402
from scale import run as run_scale  # noqa: E402
from scale import write as write_scale  # noqa: E402

from matryoshka.funnel import RECALL_LEVELS, funnel_search, recall_at_k  # noqa: E402
from matryoshka.index import tune  # noqa: E402
from matryoshka.models import load_model  # noqa: E402
from matryoshka.rescore import rerank  # noqa: E402
from matryoshka.selection import scan_shortlist, select_shortlist  # noqa: E402
from matryoshka.stores.memory import MemoryStore  # noqa: E402
from matryoshka.vectors import STORAGES, normalize  # noqa: E402

K = 10
HNSW_M = 32
WORDNET = ROOT.parent / "shared" / "data" / "wordnet" / "synsets.jsonl.gz"


def load_wordnet() -> tuple[list[str], list[str]]:
    with gzip.open(WORDNET, "rt", encoding="utf-8") as handle:
        synsets = [json.loads(line) for line in handle]
    glosses = [s["gloss"] for s in synsets]
    lemmas = [s["lemmas"][0].replace("_", " ").split("(")[0] for s in synsets]
    return glosses, lemmas


def timed(run, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def exact_numpy(corpus: np.ndarray, queries: np.ndarray, k: int = K, block: int = 131_072) -> np.ndarray:
    """Blocked BLAS product + argpartition: the plain exact baseline."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_r = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(corpus), block):
        scores = queries @ corpus[start : start + block].T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_r = np.concatenate([best_r, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_r, keep, axis=1)
    return best_r


def notebook_funnel(corpus: np.ndarray, query: np.ndarray, full_dim: int):
    """The Milvus bootcamp notebook's funnel, re-implemented: a 128-dim head (scaled to the model:
    d/6) searched with limit=128, then pandas row-by-row re-ranking at 256, 512, 768 (scaled:
    d/3, 2d/3, d), halving the list at each step."""
    import pandas as pd

    head = max(8, full_dim // 6)
    dims = [max(head + 1, full_dim // 3), max(head + 2, 2 * full_dim // 3), full_dim]
    head_q = query[:head] / np.linalg.norm(query[:head])
    heads = corpus[:, :head]
    scores = heads @ head_q / np.linalg.norm(heads, axis=1)
    top = np.argpartition(-scores, 127)[:128]
    frame = pd.DataFrame({"row": top, "vector": list(corpus[top])})
    limit = 128
    for dim in dims:
        q = query[:dim] / np.linalg.norm(query[:dim])
        frame["score"] = frame["vector"].apply(lambda v: float(np.dot(v[:dim] / np.linalg.norm(v[:dim]), q)))
        limit = max(K, limit // 2)
        frame = frame.sort_values("score", ascending=False).head(limit)
    return frame["row"].to_numpy()[:K]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(method, n, dim, batch, recall, seconds, queries, ram_mb, build_s, **extra):
    return {
        "method": method,
        "n": int(n),
        "dim": int(dim),
        "batch": int(batch),
        "recall@10": round(float(recall), 4),
        "qps": round(queries / seconds, 1),
        "ms_per_query": round(1000 * seconds / queries, 4),
        "ram_mb": round(float(ram_mb), 1),
        "build_s": round(float(build_s), 2),
        **extra,
    }


def bench_size(corpus, queries, tune_queries, args, results):
    n, dim = corpus.shape
    single = queries[: args.single]
    print(f"\n== n={n:,} x {dim} ==", flush=True)
    full_mb = corpus.nbytes / 2**20

    seconds, truth = timed(lambda: exact_numpy(corpus, queries), repeats=2)  # best of two, as for the funnel
    results.append(row("exact numpy BLAS", n, dim, len(queries), 1.0, seconds, len(queries), full_mb, 0))
    seconds, _ = timed(lambda: [exact_numpy(corpus, q[None]) for q in single])
    results.append(row("exact numpy BLAS", n, dim, 1, 1.0, seconds, len(single), full_mb, 0))

    build, flat = timed(lambda: _flat(corpus))
    seconds, (_, found) = timed(lambda: flat.search(queries, K), repeats=2)
    results.append(
        row(
            "exact FAISS IndexFlatIP",
            n,
            dim,
            len(queries),
            recall_at_k(found, truth),
            seconds,
            len(queries),
            full_mb,
            build,
        )
    )
    seconds, _ = timed(lambda: [flat.search(q[None], K) for q in single])
    results.append(row("exact FAISS IndexFlatIP", n, dim, 1, 1.0, seconds, len(single), full_mb, build))
    flat = None  # free the index before the next one is built

    if not args.skip_hnsw:
        build, hnsw = timed(lambda: _hnsw(corpus, args.hnsw_ef_construction))
        graph_mb = full_mb + n * HNSW_M * 2 * 4 / 2**20
        graph = {"m": HNSW_M, "ef_construction": args.hnsw_ef_construction}
        for ef in args.hnsw_ef:
            hnsw.hnsw.efSearch = ef
            seconds, (_, found) = timed(lambda: hnsw.search(queries, K), repeats=2)
            results.append(
                row(
                    "FAISS HNSW full-dim",
                    n,
                    dim,
                    len(queries),
                    recall_at_k(found, truth),
                    seconds,
                    len(queries),
                    graph_mb,
                    build,
                    ef_search=ef,
                    **graph,
                )
            )
            seconds, found1 = timed(lambda: np.concatenate([hnsw.search(q[None], K)[1] for q in single]))
            results.append(
                row(
                    "FAISS HNSW full-dim",
                    n,
                    dim,
                    1,
                    recall_at_k(found1, truth[: len(single)]),
                    seconds,
                    len(single),
                    graph_mb,
                    build,
                    ef_search=ef,
                    **graph,
                )
            )
        hnsw = None

    notebook_queries = queries[: args.notebook_queries]
    seconds, found = timed(lambda: np.stack([notebook_funnel(corpus, q, dim) for q in notebook_queries]))
    results.append(
        row(
            "notebook funnel (pandas)",
            n,
            dim,
            1,
            recall_at_k(found, truth[: len(notebook_queries)]),
            seconds,
            len(notebook_queries),
            full_mb,
            0,
        )
    )

    tune_s, tuned = timed(lambda: tune(corpus, K, args.target_recall, sample_queries=tune_queries))
    print(f"autotune: {tuned.schedule} (recall {tuned.recall:.4f} on tuning queries) in {tune_s:.1f} s", flush=True)
    binary_tune_s, binary_tuned = timed(
        lambda: tune(
            corpus, K, args.target_recall, sample_queries=tune_queries, head_index="binary", levels=RECALL_LEVELS
        )
    )
    print(
        f"autotune, binary head: {binary_tuned.schedule} (recall {binary_tuned.recall:.4f}) in {binary_tune_s:.1f} s",
        flush=True,
    )
    factors = {
        "flat": (0.5, 1.4, 2.0),
        "hnsw": (0.5,),
        "binary": (0.05, 0.1, 0.2, 0.5, 1.4, 2.0, 3.0, 4.0),
    }  # binary: across HNSW's recall range
    for kind in ("flat", "hnsw", "binary"):
        chosen, chosen_s = (binary_tuned, binary_tune_s) if kind == "binary" else (tuned, tune_s)
        head = chosen.schedule.head_dim
        build, store = timed(lambda: MemoryStore(corpus, head, head_index=kind))
        schedules = {str(chosen.schedule): chosen.schedule}
        levels = {str(chosen.schedule): args.target_recall}
        if kind == "binary":  # the schedule each recall level was tuned to, as `search --recall` runs it
            for level, result in chosen.by_level.items():
                schedules[str(result.schedule)] = result.schedule
                levels[str(result.schedule)] = level
        for factor in factors[kind]:
            s = chosen.schedule.scaled(factor, K, n)
            schedules.setdefault(str(s), s)
        for label, schedule in schedules.items():
            seconds, result = timed(lambda: funnel_search(store, queries, schedule, K), repeats=2)
            ram = store.memory_bytes() / 2**20  # with the prefix norms the stages computed
            stage_ms = [round(1000 * s, 1) for s in result.stage_seconds]
            results.append(
                row(
                    f"funnel local ({kind} head)",
                    n,
                    dim,
                    len(queries),
                    recall_at_k(result.rows, truth),
                    seconds,
                    len(queries),
                    ram,
                    build + chosen_s,
                    schedule=label,
                    tuned=label == str(chosen.schedule),
                    recall_level=levels.get(label),
                    stage_ms=stage_ms,
                )
            )
            for q in single[:5]:  # warm up the one-query path (thread pools, caches) as the batch warmed up its own
                funnel_search(store, q[None], schedule, K)
            seconds, rows = timed(
                lambda: np.concatenate([funnel_search(store, q[None], schedule, K).rows for q in single])
            )
            results.append(
                row(
                    f"funnel local ({kind} head)",
                    n,
                    dim,
                    1,
                    recall_at_k(rows, truth[: len(single)]),
                    seconds,
                    len(single),
                    ram,
                    build + chosen_s,
                    schedule=label,
                    tuned=label == str(chosen.schedule),
                    recall_level=levels.get(label),
                )
            )
        if kind == "flat":
            rerank_anatomy(store, queries, tuned.schedule, results)
        store = None

    anatomy(corpus, queries, tuned.schedule, results)
    if n <= args.milvus_max:
        milvus(corpus, queries, single, truth, tuned.schedule, results)
        milvus(corpus, queries, single, truth, binary_tuned.schedule, results, head_index="binary")
    return tuned


def anatomy(corpus, queries, schedule, results):
    """Where a batch's head stage goes: the product, or choosing the shortlist from its scores."""
    import faiss

    head = normalize(corpus[:, : schedule.head_dim])
    q = normalize(queries[:, : schedule.head_dim])
    gemm, scores = timed(lambda: q @ head.T)
    select, _ = timed(lambda: np.argpartition(-scores, schedule.shortlist - 1, axis=1)[:, : schedule.shortlist])
    sampled, _ = timed(lambda: select_shortlist(scores, schedule.shortlist))
    scores = None  # free the whole score matrix before the tiled scan
    tiled, _ = timed(lambda: scan_shortlist(q, head, schedule.shortlist))
    index = faiss.IndexFlatIP(head.shape[1])
    index.add(head)
    fused, _ = timed(lambda: index.search(q, schedule.shortlist))
    results.append(
        {
            "method": "anatomy of the head stage",
            "n": len(corpus),
            "dim": schedule.head_dim,
            "batch": len(queries),
            "numpy_product_ms": round(1000 * gemm, 1),
            "numpy_argpartition_ms": round(1000 * select, 1),
            "sampled_threshold_select_ms": round(1000 * sampled, 1),
            "tiled_scan_ms": round(1000 * tiled, 1),
            "faiss_flat_search_ms": round(1000 * fused, 1),
            "shortlist": schedule.shortlist,
        }
    )
    print(
        f"head stage, batch {len(queries)}, shortlist {schedule.shortlist}: numpy product {1000 * gemm:.0f} ms; "
        f"selection by argpartition {1000 * select:.0f} ms, by sampled threshold (ours) {1000 * sampled:.0f} ms; "
        f"product and selection in cache-sized tiles (ours, what the store runs) {1000 * tiled:.0f} ms; FAISS IndexFlatIP search (product + heap) {1000 * fused:.0f} ms",
        flush=True,
    )


def rerank_anatomy(store, queries, schedule, results):
    """The second stage's re-rank: gathering candidate prefixes then multiplying (numpy), against
    scoring them in place with stored prefix norms (FAISS by-index kernels; what the store runs)."""
    if len(schedule.stages) < 2:
        return
    dim, n = schedule.stages[1].dim, schedule.shortlist
    _, rows = store.head_search(normalize(queries[:, : schedule.head_dim]), n)
    rows = np.sort(rows, axis=1)
    q = queries[:, :dim]
    gathered, _ = timed(lambda: rerank(store.gather(rows, dim), q))
    in_place, _ = timed(lambda: store.rescore(rows, q))
    results.append(
        {
            "method": "anatomy of a re-rank stage",
            "n": len(store),
            "dim": dim,
            "batch": len(queries),
            "candidates": n,
            "numpy_gather_and_product_ms": round(1000 * gathered, 1),
            "faiss_in_place_ms": round(1000 * in_place, 1),
        }
    )
    print(
        f"re-rank of {n} candidates at {dim} dims, batch {len(queries)}: numpy gather + product {1000 * gathered:.0f} ms; "
        f"FAISS in place (ours) {1000 * in_place:.0f} ms",
        flush=True,
    )


def milvus(corpus, queries, single, truth, schedule, results, head_index="flat"):
    from matryoshka.index import Index, build_index

    with tempfile.TemporaryDirectory() as folder:
        db = f"{folder}/bench.db"
        ids = [str(i) for i in range(len(corpus))]
        build, _ = timed(
            lambda: build_index(
                db, ids, [""] * len(ids), vectors=corpus, head_dim=schedule.head_dim, head_index=head_index
            )
        )
        with Index(db) as index:
            batch = queries[:100]
            seconds, result = timed(lambda: index.search_vectors(batch, K, schedule=schedule))
            method = "funnel Milvus Lite" + (f" ({head_index} head)" if head_index != "flat" else "")
            results.append(
                row(
                    method,
                    len(corpus),
                    corpus.shape[1],
                    len(batch),
                    recall_at_k(result.rows, truth[: len(batch)]),
                    seconds,
                    len(batch),
                    0,
                    build,
                    schedule=str(schedule),
                )
            )
            few = single[:50]
            seconds, rows = timed(
                lambda: np.concatenate([index.search_vectors(q[None], K, schedule=schedule).rows for q in few])
            )
            results.append(
                row(
                    method,
                    len(corpus),
                    corpus.shape[1],
                    1,
                    recall_at_k(rows, truth[: len(few)]),
                    seconds,
                    len(few),
                    0,
                    build,
                    schedule=str(schedule),
                )
            )


def _flat(corpus):
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    return index


def _hnsw(corpus, ef_construction: int):
    import faiss

    index = faiss.IndexHNSWFlat(corpus.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(corpus)
    return index


SUBLINEAR_TRIED = (
    "heads that read less were tried and lose recall or speed here: IVF, RaBitQ, graphs over sign bits, a prefix "
    "and the full vectors' 8-bit codes (benchmarks/sublinear_heads.py), and a scan split over two cores"
)


def targets(results: list[dict], n: int) -> list[dict]:
    """The project's four targets at corpus size ``n``, judged from the rows measured here: for
    each, the fastest funnel setting that reaches the recall asked for, and the ratio reached."""
    rows = [r for r in results if r.get("n") == n and "qps" in r]
    funnels = [r for r in rows if r["method"].startswith("funnel local")]

    def fastest(batch: int, recall: float) -> dict | None:
        passing = [r for r in funnels if (r["batch"] > 1) == (batch > 1) and r["recall@10"] >= recall]
        return max(passing, key=lambda r: r["qps"], default=None)

    def baseline(method: str, batch: int) -> list[dict]:
        return [r for r in rows if r["method"] == method and (r["batch"] > 1) == (batch > 1)]

    def verdict(goal, base, target, *, ram_target=None) -> dict:
        found = fastest(base["batch"], target.get("recall", base["recall@10"]))
        entry = {
            "goal": goal,
            "baseline": base["method"],
            "baseline_setting": base.get("schedule") or base.get("ef_search"),
            "batch": base["batch"],
            "baseline_recall": base["recall@10"],
            "baseline_qps": base["qps"],
            "funnel": found and f"{found['method']} {found.get('schedule', '')}".strip(),
            "funnel_recall": found and found["recall@10"],
            "funnel_qps": found and found["qps"],
            "speedup": found and round(found["qps"] / base["qps"], 2),
            "target_speedup": target["speedup"],
        }
        met = found is not None and found["qps"] >= target["speedup"] * base["qps"]
        if ram_target is not None:
            entry["ram_ratio"] = found and round(base["ram_mb"] / max(found["ram_mb"], 1e-9), 1)
            entry["target_ram_ratio"] = ram_target
            met = met and base["ram_mb"] >= ram_target * found["ram_mb"]
        entry["met"] = bool(met)
        entry["why_not"] = "" if met else shortfall(found, base, target)
        return entry

    def shortfall(found: dict | None, base: dict, target: dict) -> str:
        """The measured reason a goal is missed: how much of the funnel's time its head's full
        scan takes (from the batch run's stage times), hence the most any re-ranking could give."""
        if found is None:
            return "no funnel setting reaches that recall"
        split = next(
            (r["stage_ms"] for r in funnels if r.get("stage_ms") and r.get("schedule") == found.get("schedule")), None
        )
        if not split:
            return "see below the table"
        share = split[0] / sum(split)
        return (
            f"the head's full scan is {share:.0%} of the time: {found['qps'] / share / base['qps']:.1f}x at most "
            "with free re-ranking (see below the table)"
        )

    verdicts = []
    for batch in sorted({r["batch"] for r in rows if r["method"] == "exact numpy BLAS"}, reverse=True):
        for base in baseline("exact numpy BLAS", batch) if batch > 1 else []:
            verdicts.append(verdict(">= 5x exact BLAS at recall >= 0.99", base, {"recall": 0.99, "speedup": 5}))
        exact_singles = baseline("exact numpy BLAS", 1) + baseline("exact FAISS IndexFlatIP", 1)
        if batch == 1 and exact_singles:  # against the fastest exact search one query at a time
            fastest_exact = max(exact_singles, key=lambda r: r["qps"])
            verdicts.append(
                verdict(
                    ">= 20x lower latency than the fastest exact search at recall >= 0.99",
                    fastest_exact,
                    {"recall": 0.99, "speedup": 20},
                )
            )
        for base in baseline("exact FAISS IndexFlatIP", batch) if batch > 1 else []:
            verdicts.append(verdict(">= 5x FAISS IndexFlatIP at recall >= 0.99", base, {"recall": 0.99, "speedup": 5}))
        for base in baseline("FAISS HNSW full-dim", batch):
            verdicts.append(
                verdict(">= 2x HNSW's QPS at its recall, >= 4x less RAM", base, {"speedup": 2}, ram_target=4)
            )
        for base in baseline("notebook funnel (pandas)", 1):
            verdicts.append(verdict(">= 100x the notebook at its recall", {**base, "batch": batch}, {"speedup": 100}))
    return verdicts


def print_table(results):
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Funnel search benchmark (recall@10 against exact full-dimension search)")
    for column in ("method", "n", "batch", "schedule / ef", "recall@10", "QPS", "ms/query", "RAM MB", "build s"):
        table.add_column(column, justify="left" if column in ("method", "schedule / ef") else "right")
    for r in results:
        if "qps" not in r:
            continue
        setting = r.get("schedule") or (f"ef={r['ef_search']}" if "ef_search" in r else "")
        if r.get("recall_level"):
            setting += f" (--recall {r['recall_level']:g})"
        table.add_row(
            r["method"],
            f"{r['n']:,}",
            str(r["batch"]),
            setting,
            f"{r['recall@10']:.4f}",
            f"{r['qps']:,.0f}",
            f"{r['ms_per_query']:.3f}",
            f"{r['ram_mb']:,.0f}",
            f"{r['build_s']:.1f}",
        )
    Console(width=160).print(table)


def print_targets(verdicts: list[dict], n: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Targets at n = {n:,}: the fastest funnel setting at the recall each asks for")
    for column in (
        "goal",
        "batch",
        "baseline",
        "its recall",
        "its QPS",
        "funnel",
        "recall",
        "QPS",
        "speed-up",
        "RAM ratio",
        "met",
        "why not",
    ):
        table.add_column(column, justify="left" if column in ("goal", "baseline", "funnel") else "right")
    for v in verdicts:
        setting = f" ({v['baseline_setting']})" if v["baseline_setting"] is not None else ""
        table.add_row(
            v["goal"],
            str(v["batch"]),
            v["baseline"] + setting,
            f"{v['baseline_recall']:.4f}",
            f"{v['baseline_qps']:,.0f}",
            v["funnel"] or "none reaches that recall",
            f"{v['funnel_recall']:.4f}" if v["funnel"] else "",
            f"{v['funnel_qps']:,.0f}" if v["funnel"] else "",
            f"{v['speedup']}x / {v['target_speedup']}x" if v["funnel"] else "",
            f"{v['ram_ratio']}x / {v['target_ram_ratio']}x" if v.get("ram_ratio") else "",
            "yes" if v["met"] else "no",
            v.get("why_not", ""),
        )
    console = Console(width=240)
    console.print(table)
    if any(not v["met"] for v in verdicts):
        console.print(f"Where a goal is missed: {SUBLINEAR_TRIED}.")


def plot(results, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in results if "qps" in r})
    methods = list(dict.fromkeys(r["method"] for r in results if "qps" in r))
    colours = {
        m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)
    }  # one colour per method, batch or single
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.6), constrained_layout=True, squeeze=False)
    for axis, n in zip(axes[0], sizes):
        for batch, marker in ((1000, "o"), (1, "s")):
            for method in dict.fromkeys(r["method"] for r in results if r.get("n") == n and "qps" in r):
                points = sorted(
                    (r["recall@10"], r["qps"])
                    for r in results
                    if r["method"] == method and r["n"] == n and r["batch"] in ((batch,) if batch == 1 else (100, 1000))
                )
                if points:
                    axis.plot(
                        [p[1] for p in points],
                        [p[0] for p in points],
                        marker=marker,
                        linestyle="-" if batch > 1 else ":",
                        color=colours[method],
                        label=f"{method}, {'batch' if batch > 1 else 'single'}",
                    )
        axis.set_xscale("log")
        axis.set_xlabel("queries per second (log)")
        axis.set_ylabel("recall@10 vs exact")
        axis.set_title(f"n = {n:,}")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle("Funnel search vs exact, HNSW and the notebook funnel (WordLlama 256-d, WordNet)")
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the plot and the targets table from --out's JSON"
    )
    parser.add_argument(
        "--sizes", default="117659,1000000", help="corpus sizes; above 117,659 the jittered copies are added"
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--notebook-queries", type=int, default=50)
    parser.add_argument("--jitter", type=float, default=0.5)
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument(
        "--hnsw-ef",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[32, 64, 128, 256, 512, 1024, 2048, 4096],
        help="HNSW efSearch values; the large ones find where HNSW's recall meets the funnel's",
    )
    parser.add_argument(
        "--hnsw-ef-construction",
        type=int,
        default=200,
        help="HNSW build effort: 200 reaches recall 0.97 at efSearch 256 on the 1M set, where 64 stops at 0.90",
    )
    parser.add_argument("--milvus-max", type=int, default=117_659, help="largest n also run on Milvus Lite")
    parser.add_argument(
        "--scale",
        default=None,
        help="run the scale benchmark instead (benchmarks/scale.py): 10m builds a 10,000,000-row index from a "
        "memory-mapped file and compares it with exact search and FAISS IVF; writes funnel_<scale>.json",
    )
    parser.add_argument("--scale-storage", default="float32", help="--storage of the scale run's index")
    parser.add_argument("--work", type=Path, default=None, help="where the scale run writes its files (default /tmp)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/funnel.json")
    args = parser.parse_args()
    if args.scale is not None:
        try:
            args.scale_rows = scale_rows(args.scale)
        except ValueError as exc:
            parser.error(str(exc))
        if args.scale_storage not in STORAGES:
            parser.error(f"--scale-storage must be one of {', '.join(STORAGES)}")
    args.out = args.out or ROOT / "benchmarks" / "results" / (
        f"funnel_{args.scale}.json" if args.scale else "funnel.json"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write {args.out}")
    if args.replot:
        results = json.loads(args.out.read_text())["results"]
        for n in sorted({r["n"] for r in results if "qps" in r}):
            print_targets(targets(results, n), n)
        plot(results, args.out.with_suffix(".png"))
        return
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    glosses, lemmas = load_wordnet()
    model = load_model("wordllama")
    if args.scale is not None:  # before any encoding: the disk the scale run needs
        check_room(args.work, args.scale_rows, model.full_dim)
    started = time.perf_counter()
    documents = model.encode(glosses, kind="document")
    encode_s = time.perf_counter() - started
    rng = np.random.default_rng(42)
    picked = rng.choice(len(lemmas), size=args.queries + 200, replace=False)
    query_vectors = model.encode([lemmas[i] for i in picked], kind="query")
    queries, tune_queries = query_vectors[: args.queries], query_vectors[args.queries :]
    print(f"encoded {len(glosses):,} glosses in {encode_s:.1f} s", flush=True)
    if args.scale is not None:
        write_scale(run_scale(args, documents, queries, tune_queries), args.out)
        return
    results: list[dict] = []
    for size in (int(s) for s in args.sizes.split(",")):
        copies = max(0, -(-size // len(documents)) - 1)
        corpus = documents if copies == 0 else expand(documents, copies, args.jitter)[:size]
        bench_size(np.ascontiguousarray(corpus[:size]), queries, tune_queries, args, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "model": "wordllama (256-d)",
        "corpus": "WordNet 3.0 glosses (+ jittered copies above 117,659)",
        "queries": f"{args.queries} WordNet lemmas; 200 more for autotune",
        "k": K,
        "encode_s": round(encode_s, 1),
        "peak_rss_mb": round(rss_mb()),
        "results": results,
        "targets": {str(n): targets(results, n) for n in sorted({r["n"] for r in results if "qps" in r})},
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print_table(results)
    for n, verdicts in payload["targets"].items():
        print_targets(verdicts, int(n))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
