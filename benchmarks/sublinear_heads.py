"""Heads that do not scan every row, tried on the funnel benchmark's 1M set before one is built in.

A sublinear head must put each query's exact top-10 into a short shortlist while reading a small part of the
corpus. This script measures, for each candidate built with FAISS, the recall@10 after an exact full-dimension
re-rank of its shortlist, its queries/s in a batch of 1,000 and its memory:

- IVF partitions of the full vectors (``IndexIVFFlat``, 1,024 lists): recall against the share of lists probed,
  the ceiling of any IVF head, whatever its codes;
- IVF with RaBitQ codes (``IndexIVFRaBitQ``: sign bits of each residual scored against the float query) on the
  256-dim vectors and on their 64-dim prefix;
- a graph over the sign bits (``IndexBinaryHNSW``, M 16), the binary head made sublinear;
- a graph over the 128-dim prefix in 8-bit scalar codes (``IndexHNSWSQ``, M 16);
- with ``--heads full-graphs``: graphs over all 256 dims in 8-bit scalar codes (``IndexHNSWSQ``, M 32 and M 16,
  efConstruction 200), beside full-dimension float HNSW (``IndexHNSWFlat``, M 32, efConstruction 200) in the same
  run: whether a graph that navigates by the full vectors' codes, re-ranked exactly, beats plain HNSW. These rows
  also time one query at a time (re-rank included).

Corpus and queries as in ``benchmarks/funnel.py`` (WordNet glosses by WordLlama plus jittered copies to 1M; 1,000
lemma queries). Run:  python benchmarks/sublinear_heads.py   (about 10 minutes on 2 cores)
Writes benchmarks/results/sublinear_heads.json and prints a table. The full-dimension graphs take about 25 minutes:
  python benchmarks/sublinear_heads.py --heads full-graphs --out benchmarks/results/sublinear_graphs.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import expand, machine  # noqa: E402
from funnel import load_wordnet  # noqa: E402

from matryoshka.funnel import recall_at_k  # noqa: E402
from matryoshka.models import load_model  # noqa: E402

K = 10
SINGLE_QUERIES = 300  # timed one at a time


def reranked(corpus: np.ndarray, queries: np.ndarray, shortlist: np.ndarray) -> np.ndarray:
    """Each query's top 10 of its shortlist by exact full-dimension cosine (in chunks: bounded memory)."""
    out = np.empty((len(queries), K), np.int64)
    for start in range(0, len(queries), 100):
        rows = shortlist[start : start + 100]
        scores = np.einsum("qsd,qd->qs", corpus[np.maximum(rows, 0)], queries[start : start + 100])
        scores[rows < 0] = -np.inf
        out[start : start + 100] = np.take_along_axis(rows, np.argsort(-scores, axis=1)[:, :K], axis=1)
    return out


def timed_search(index, queries: np.ndarray, n: int, params=None) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    _, rows = index.search(queries, n, params=params) if params is not None else index.search(queries, n)
    return time.perf_counter() - started, rows


def unit_prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    prefix = np.ascontiguousarray(vectors[:, :dim])
    return prefix / np.linalg.norm(prefix, axis=1, keepdims=True)


def code_heads(corpus: np.ndarray, queries: np.ndarray, sample: np.ndarray, record) -> None:
    """IVF partitions, RaBitQ codes, and graphs over sign bits or the 128-dim prefix."""
    import faiss

    n, dim = corpus.shape
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 1024, faiss.METRIC_INNER_PRODUCT)
    ivf.train(sample)
    ivf.add(corpus)
    build = time.perf_counter() - started
    for probes in (64, 128, 256, 512):
        seconds, rows = timed_search(ivf, queries, K, faiss.SearchParametersIVF(nprobe=probes))
        record(
            "IVF partitions (IVFFlat 1024)",
            f"nprobe {probes} ({probes / 1024:.0%})",
            rows,
            seconds,
            n * dim * 4 / 2**20,
            build,
        )
    del ivf

    for head_dim in (dim, 64):
        heads = unit_prefix(corpus, head_dim)
        started = time.perf_counter()
        rabitq = faiss.IndexIVFRaBitQ(faiss.IndexFlatIP(head_dim), head_dim, 1024, faiss.METRIC_INNER_PRODUCT)
        rabitq.train(unit_prefix(sample, head_dim))
        rabitq.add(heads)
        build = time.perf_counter() - started
        memory = n * (rabitq.code_size + 8) / 2**20
        for probes in (32, 128):
            params = faiss.IVFRaBitQSearchParameters()
            params.nprobe, params.qb = probes, 8
            seconds, rows = timed_search(rabitq, unit_prefix(queries, head_dim), 1000, params)
            record(
                f"IVF-RaBitQ {head_dim}-dim (1024 lists)", f"nprobe {probes}, 1000 rows", rows, seconds, memory, build
            )
        del rabitq, heads

    codes, query_codes = np.packbits(corpus > 0, axis=1), np.packbits(queries > 0, axis=1)
    started = time.perf_counter()
    graph = faiss.IndexBinaryHNSW(dim, 16)
    graph.hnsw.efConstruction = 64
    graph.add(codes)
    build = time.perf_counter() - started
    for ef in (250, 500, 1000):
        graph.hnsw.efSearch = ef
        seconds, rows = timed_search(graph, query_codes, ef)
        record(
            "HNSW over sign bits (M 16)",
            f"ef {ef}, {ef} rows",
            rows,
            seconds,
            n * (dim / 8 + 16 * 2 * 4) / 2**20,
            build,
        )
    del graph

    heads = unit_prefix(corpus, 128)
    started = time.perf_counter()
    graph = faiss.IndexHNSWSQ(128, faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 64
    graph.train(unit_prefix(sample, 128))
    graph.add(heads)
    build = time.perf_counter() - started
    for ef, rows_kept in ((256, 200), (512, 400), (1024, 800)):
        seconds, rows = timed_search(
            graph, unit_prefix(queries, 128), rows_kept, faiss.SearchParametersHNSW(efSearch=ef)
        )
        record(
            "HNSW over 128-dim SQ8 (M 16)",
            f"ef {ef}, {rows_kept} rows",
            rows,
            seconds,
            n * (128 + 16 * 2 * 4) / 2**20,
            build,
        )


def full_graphs(corpus: np.ndarray, queries: np.ndarray, sample: np.ndarray, truth: np.ndarray, results: list) -> None:
    """Graphs over all dims: float HNSW (the baseline, its own scores exact) against graphs over 8-bit codes whose
    ``ef`` candidates are re-ranked exactly; one query at a time and in a batch of 1,000."""
    import faiss

    n, dim = corpus.shape
    single = queries[:SINGLE_QUERIES]
    graphs = (
        ("FAISS HNSW full-dim float (M 32)", 32, None, dim * 4),
        ("HNSW over 256-dim SQ8 (M 32)", 32, faiss.ScalarQuantizer.QT_8bit, dim),
        ("HNSW over 256-dim SQ8 (M 16)", 16, faiss.ScalarQuantizer.QT_8bit, dim),
    )
    for name, m, quantizer, code_bytes in graphs:
        if quantizer is None:
            graph = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        else:
            graph = faiss.IndexHNSWSQ(dim, quantizer, m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 200
        started = time.perf_counter()
        if not graph.is_trained:
            graph.train(sample)
        graph.add(corpus)
        build = time.perf_counter() - started
        for ef in (32, 64, 128, 256, 512, 1024):
            params = faiss.SearchParametersHNSW(efSearch=ef)
            keep = K if quantizer is None else ef

            def answer(batch: np.ndarray, graph=graph, params=params, keep=keep) -> np.ndarray:
                rows = graph.search(batch, keep, params=params)[1]
                return rows if quantizer is None else reranked(corpus, batch, rows)

            started = time.perf_counter()
            one = np.concatenate([answer(q[None]) for q in single])
            one_ms = (time.perf_counter() - started) / len(single) * 1000
            seconds, found = timed_search(graph, queries, keep, params)
            started = time.perf_counter()
            found = found if quantizer is None else reranked(corpus, queries, found)
            seconds += time.perf_counter() - started
            recall = recall_at_k(found, truth)
            results.append(
                {
                    "head": name,
                    "setting": f"ef {ef}" + ("" if quantizer is None else f", {ef} rows re-ranked"),
                    "recall@10": round(recall, 4),
                    "recall@10_one_query": round(recall_at_k(one, truth[: len(single)]), 4),
                    "qps": round(len(queries) / seconds, 1),
                    "one_query_ms": round(one_ms, 3),
                    "memory_mb": round(n * (code_bytes + 2 * m * 4) / 2**20, 1),
                    "build_s": round(build, 1),
                }
            )
            print(
                f"{name:<34} ef {ef:<5} recall {recall:.4f}  {len(queries) / seconds:>7,.0f} q/s  {one_ms:.2f} ms one",
                flush=True,
            )
        del graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sublinear_heads.json")
    parser.add_argument(
        "--heads",
        choices=("codes", "full-graphs"),
        default="codes",
        help="'codes': IVF partitions, RaBitQ and graphs over sign bits or a short prefix; 'full-graphs': graphs over "
        "all dims in 8-bit codes against float HNSW",
    )
    args = parser.parse_args()
    if args.size < 10_000 or args.queries < 10:
        parser.error("--size must be at least 10,000 and --queries at least 10")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write {args.out}")
    import faiss

    glosses, lemmas = load_wordnet()
    model = load_model("wordllama")
    documents = model.encode(glosses, kind="document")
    picked = np.random.default_rng(42).choice(len(lemmas), size=args.queries, replace=False)
    queries = model.encode([lemmas[i] for i in picked], kind="query")
    copies = max(0, -(-args.size // len(documents)) - 1)
    corpus = np.ascontiguousarray(expand(documents, copies, 0.5)[: args.size])
    n, dim = corpus.shape
    flat = faiss.IndexFlatIP(dim)
    flat.add(corpus)
    _, truth = flat.search(queries, K)
    del flat
    results: list[dict] = []

    def record(head: str, setting: str, shortlist: np.ndarray, seconds: float, memory_mb: float, build_s: float):
        recall = recall_at_k(reranked(corpus, queries, shortlist), truth)
        results.append(
            {
                "head": head,
                "setting": setting,
                "recall@10": round(recall, 4),
                "head_qps": round(len(queries) / seconds, 1),
                "memory_mb": round(memory_mb, 1),
                "build_s": round(build_s, 1),
            }
        )
        print(f"{head:<34} {setting:<22} recall {recall:.4f}  {len(queries) / seconds:>8,.0f} q/s", flush=True)

    sample = corpus[np.random.default_rng(0).choice(n, size=min(n, 100_000), replace=False)]
    if args.heads == "codes":
        code_heads(corpus, queries, sample, record)
    else:
        full_graphs(corpus, queries, sample, truth, results)

    payload = {"machine": machine(), "n": n, "queries": len(queries), "k": K, "results": results}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
