"""Smaller storage for the vectors the funnel re-ranks (``index --storage``), on the funnel benchmark's 1M set.

For float32, float16 and int8 storage this builds a real local index from the same vectors (a binary head over
the sign bits and the default recall levels, autotuned on the same 200 lemma queries), then measures:

- the bytes of the stored full vectors on disk (what the page cache must hold for the re-rank to stay in RAM),
  the build time and the resident memory of the opened index;
- recall@10 against exact float32 search (FAISS ``IndexFlatIP``), for each recall level's schedule and for the
  index's own exact search, so that any loss the storage causes shows;
- one query at a time (median ms over ``--single`` queries) and a batch of 1,000 (queries/s, the better of two
  runs) at each level;
- the precision of the final scores: over every returned hit, the largest and the 99.9th-percentile difference
  between the score the index reports and the float32 cosine of the same query and document.

Corpus and queries as in ``benchmarks/funnel.py`` (WordNet glosses by WordLlama plus jittered copies to 1M;
1,000 lemma queries). Run:  python benchmarks/storage.py   (about 15 minutes on 2 cores)
      python benchmarks/storage.py --size 117659   (a quick look)
Writes benchmarks/results/storage.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import build_from_vectors, expand, machine, resident_mb  # noqa: E402
from funnel import load_wordnet  # noqa: E402

from matryoshka.funnel import RECALL_LEVELS, recall_at_k  # noqa: E402
from matryoshka.index import Index  # noqa: E402
from matryoshka.models import load_model  # noqa: E402
from matryoshka.vectors import STORAGES  # noqa: E402

K = 10


def measure(storage: str, corpus, queries, tune_queries, truth, single: int, work: Path) -> list[dict]:
    db = work / storage
    meta, build_s = build_from_vectors(db, corpus, tune_queries, storage)
    disk = sum(f.stat().st_size for f in (db / "segments").glob("*/full.npy"))
    before = resident_mb()
    rows = []
    with Index(str(db)) as index:
        opened_mb = resident_mb() - before
        plans = {f"{level:g}": {"recall": level} for level in meta.schedules_by_recall()} | {"exact": {"exact": True}}
        for label, plan in plans.items():
            options = dict(plan)
            if "recall" in options:  # the level's own schedule, even where exact search was timed faster
                options = {"schedule": index.schedule_for(K, recall=options["recall"])}
            best, result = float("inf"), None
            for _ in range(2):
                began = time.perf_counter()
                result = index.search_vectors(queries, K, **options)
                best = min(best, time.perf_counter() - began)
            one = []
            for query in queries[:single]:
                began = time.perf_counter()
                index.search_vectors(query[None], K, **options)
                one.append(time.perf_counter() - began)
            valid = result.rows >= 0
            true = np.einsum("qd,qkd->qk", queries, corpus[np.maximum(result.rows, 0)])
            error = np.abs(result.scores - true)[valid]
            rows.append(
                {
                    "storage": storage,
                    "plan": label,
                    "schedule": str(options.get("schedule") or "exact"),
                    "recall@10": round(recall_at_k(result.rows, truth), 4),
                    "batch_qps": round(len(queries) / best, 1),
                    "one_query_ms": round(1000 * float(np.median(one)), 3),
                    "score_error_max": float(f"{error.max():.2e}"),
                    "score_error_p999": float(f"{np.quantile(error, 0.999):.2e}"),
                    "disk_mb": round(disk / 2**20, 1),
                    "resident_mb": round(opened_mb, 1),
                    "build_s": round(build_s, 1),
                }
            )
            print(
                f"{storage:<8} {label:<6} recall {rows[-1]['recall@10']:.4f}  {rows[-1]['batch_qps']:>8,.0f} q/s  "
                f"{rows[-1]['one_query_ms']:>7.2f} ms  error ≤ {rows[-1]['score_error_max']:.1e}",
                flush=True,
            )
    shutil.rmtree(db)
    return rows


def print_table(results: list[dict]) -> None:
    header = "| storage | plan | recall@10 vs float32 exact | one query ms | batch q/s | score error max (p99.9) | disk MB | resident MB | build s |"
    print("\n" + header + "\n|" + "---|" * 9)
    for r in results:
        print(
            f"| {r['storage']} | {r['plan']} | {r['recall@10']:.4f} | {r['one_query_ms']:.2f} | {r['batch_qps']:,.0f} | "
            f"{r['score_error_max']:.1e} ({r['score_error_p999']:.1e}) | {r['disk_mb']:,.0f} | {r['resident_mb']:,.0f} | "
            f"{r['build_s']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--storages", default=",".join(STORAGES), help="comma-separated: float32,float16,int8")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "storage.json")
    parser.add_argument("--work", type=Path, default=None, help="where the indexes are built (default: a temp folder)")
    args = parser.parse_args()
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    if unknown := [s for s in storages if s not in STORAGES]:
        parser.error(f"unknown storage {unknown[0]!r}; choose from {', '.join(STORAGES)}")
    if args.size < 1_000 or args.queries < 10 or not 1 <= args.single <= args.queries:
        parser.error("--size must be at least 1,000, --queries at least 10, --single between 1 and --queries")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write {args.out}")
    work = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.work))
    needed = args.size * 256 * 4 * 2.5  # the float32 index and its build's staging copy, at most
    if shutil.disk_usage(work).free < needed:
        parser.error(
            f"{work} has {shutil.disk_usage(work).free / 2**30:.1f} GiB free; the indexes need about {needed / 2**30:.1f}"
        )
    import faiss

    glosses, lemmas = load_wordnet()
    model = load_model("wordllama")
    documents = model.encode(glosses, kind="document")
    picked = np.random.default_rng(42).choice(len(lemmas), size=args.queries + 200, replace=False)
    query_vectors = model.encode([lemmas[i] for i in picked], kind="query")
    queries, tune_queries = query_vectors[: args.queries], query_vectors[args.queries :]
    copies = max(0, -(-args.size // len(documents)) - 1)
    corpus = np.ascontiguousarray(expand(documents, copies, 0.5)[: args.size] if copies else documents[: args.size])
    flat = faiss.IndexFlatIP(corpus.shape[1])
    flat.add(corpus)
    _, truth = flat.search(queries, K)
    del flat
    results: list[dict] = []
    try:
        for storage in storages:
            results += measure(storage, corpus, queries, tune_queries, truth, args.single, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = {
        "machine": machine(),
        "n": len(corpus),
        "dim": corpus.shape[1],
        "queries": len(queries),
        "k": K,
        "levels": list(RECALL_LEVELS),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
