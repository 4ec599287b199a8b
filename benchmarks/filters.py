"""Filtered search at a million vectors: recall and one-query latency at every selectivity,
against exact filtered search.

Corpus: the 117,659 WordNet 3.0 glosses bundled with the package, embedded with WordLlama (256
dims), each plus 8 jittered copies (as in benchmarks/funnel.py): 1,058,931 vectors on the local
store, binary head, schedule tuned on 500 lemmas. Metadata: ``bucket``, an integer 0..9999 drawn
uniformly (independent of the text), so ``{"bucket": {"$lt": b}}`` passes b/10,000 of the corpus;
and ``pos``, each gloss's part of speech (real metadata, correlated with what the text says).

Queries: 200 lemmas, searched one at a time (median) with each filter. Recall@10 is against exact
filtered search (every passing vector scored). Baselines, on the same vectors in RAM:
- FAISS ``IndexFlatIP`` with an ``IDSelectorBitmap`` of the passing rows (FAISS's exact filtered
  search; the bitmap is given, its cost not counted);
- numpy over the passing rows gathered once per filter (the fastest exact search there is when
  the passing rows are known in advance: a pre-partitioned index; the gather is not counted).
Ours counts everything: the filter (a row mask from the metadata columns, cached per filter, as a
service sees the same filters again; the first query's mask time is reported apart), the plan
choice, and the search.

Run:  python benchmarks/filters.py          (about 20 minutes on 2 cores; 2 GB of disk)
Writes benchmarks/results/filters.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import expand, machine

from matryoshka.demo import gloss_metadata, lemma_queries, read_glosses
from matryoshka.index import Index, build_index
from matryoshka.models import load_model

K = 10
QUERIES = 200
TUNE = 500
FILTERS = {
    "100%": {"bucket": {"$gte": 0}},
    "50%": {"bucket": {"$lt": 5000}},
    "5%": {"bucket": {"$lt": 500}},
    "0.5%": {"bucket": {"$lt": 50}},
    "0.01%": {"bucket": {"$lt": 1}},
    "pos = verb": {"pos": "verb"},
    "pos = adverb": {"pos": "adverb"},
}


def corpus(copies: int):
    model = load_model("wordllama")
    glosses = read_glosses()
    vectors = model.encode(glosses.texts, kind="document")
    full = expand(vectors, copies, jitter=0.5)
    rng = np.random.default_rng(7)
    pos = [m["pos"] for m in gloss_metadata(glosses)] * (copies + 1)
    buckets = rng.integers(0, 10_000, len(full))
    docs = [{"bucket": int(b), "pos": p} for b, p in zip(buckets.tolist(), pos)]
    lemmas = model.encode(lemma_queries(glosses, QUERIES + TUNE, seed=3), kind="query")
    return full, docs, np.asarray(pos), buckets, lemmas[:QUERIES], lemmas[QUERIES:]


def passing_rows(spec: dict, pos: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    if "pos" in spec:
        return np.flatnonzero(pos == spec["pos"])
    bound = spec["bucket"]
    return np.flatnonzero(buckets >= bound["$gte"]) if "$gte" in bound else np.flatnonzero(buckets < bound["$lt"])


def median_ms(run, queries: np.ndarray) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        run(query[None, :])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    import faiss
    import pyarrow.compute  # noqa: F401 - loaded once, as the server does at start, not in the first query

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="jittered copies of each gloss vector (8: 1M)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the index is written (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "filters.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="matryoshka-filters-", dir=args.workdir))
    print(f"Machine: {machine()}\nWork folder: {work}", flush=True)
    full, docs, pos, buckets, queries, tune = corpus(args.copies)
    n = len(full)
    print(f"{n:,} vectors of {full.shape[1]} dims, {len(queries)} queries", flush=True)
    started = time.perf_counter()
    build_index(
        work / "index",
        [str(i) for i in range(n)],
        [""] * n,
        vectors=full,
        head_index="binary",
        k=K,
        tune_queries=tune,
        metadata=docs,
    )
    results: dict = {
        "machine": machine(),
        "documents": n,
        "dims": int(full.shape[1]),
        "build_s": round(time.perf_counter() - started, 1),
        "filters": {},
    }
    del docs
    flat = faiss.IndexFlatIP(full.shape[1])
    flat.add(full)
    with Index(work / "index") as index:
        results["schedule"] = index.meta.schedule
        print(f"built in {results['build_s']} s, schedule {results['schedule']}", flush=True)
        for label, spec in FILTERS.items():
            started = time.perf_counter()  # a filter not seen before: its row mask is computed in this query
            index.search_vectors(queries[:1], K, filter=spec)
            first_ms = 1000 * (time.perf_counter() - started)
            rows = passing_rows(spec, pos, buckets)
            mask = np.zeros(n, bool)
            mask[rows] = True
            gathered = np.ascontiguousarray(full[rows])
            scores = queries @ gathered.T
            truth = rows[np.argsort(-scores, axis=1)[:, :K]]
            found = index.search_vectors(queries, K, filter=spec)
            recall = np.mean([len(set(f[f >= 0]) & set(t)) / min(K, len(rows)) for f, t in zip(found.rows, truth)])
            ours = median_ms(lambda q: index.search_vectors(q, K, filter=spec), queries)
            exact_ours = median_ms(lambda q: index.search_vectors(q, K, exact=True, filter=spec), queries)

            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
            params = faiss.SearchParameters(sel=selector)
            faiss_ms = median_ms(lambda q: flat.search(q, K, params=params), queries)
            numpy_ms = median_ms(lambda q: np.argpartition(-(q @ gathered.T), min(K, len(rows)) - 1), queries)
            row = {
                "filter": spec,
                "passing": int(len(rows)),
                "plan": found.plan,
                "recall@10": round(float(recall), 4),
                "one_query_ms": round(ours, 3),
                "first_query_ms": round(first_ms, 3),
                "our_exact_filtered_ms": round(exact_ours, 3),
                "faiss_flat_selector_ms": round(faiss_ms, 3),
                "numpy_pre_gathered_ms": round(numpy_ms, 3),
            }
            results["filters"][label] = row
            print(label, row, flush=True)
    shutil.rmtree(work)

    print(f"\n{n:,} documents, schedule {results['schedule']}, k={K}, one query at a time (median ms)")
    print(
        f"{'filter':<14}{'passing':>10}{'plan':>30}{'recall':>8}{'ours':>8}{'1st':>8}"
        f"{'FAISS sel':>11}{'×':>7}{'numpy pre':>11}{'our exact':>11}"
    )
    for label, row in results["filters"].items():
        print(
            f"{label:<14}{row['passing']:>10,}{row['plan']:>30}{row['recall@10']:>8.3f}{row['one_query_ms']:>8.2f}"
            f"{row['first_query_ms']:>8.2f}{row['faiss_flat_selector_ms']:>11.2f}"
            f"{row['faiss_flat_selector_ms'] / row['one_query_ms']:>7.1f}{row['numpy_pre_gathered_ms']:>11.2f}"
            f"{row['our_exact_filtered_ms']:>11.2f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {args.output}")


if __name__ == "__main__":
    main()
