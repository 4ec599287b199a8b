"""Post-hoc adapters against plain truncation and PCA, judged on held-out queries.

SciFact (../shared/data/scifact, BEIR): every adapter is fitted on the corpus' vectors (with
query-like sentences of the corpus as anchors); the supervised variants also see the 809
train queries' relevant documents. Every adapter is scored again with query heads fitted on the
809 train queries' texts (``+query heads``; no qrels needed, a fifth held out to keep or drop each head). Scored on the 300 test queries, which no adapter sees:
nDCG@10 per dimension, and, as a funnel head, recall@10 of the exact full-dimension top-10
when a d/8 head's shortlist of 100/200/500 is re-ranked by the model's own full vectors.
STS Benchmark: fitted on the train split's sentences, Spearman on the test split per dimension.
Models: all-MiniLM-L6-v2 (not Matryoshka-trained) and WordLlama (already Matryoshka), to show
the adapter does not hurt a model whose prefixes already work.

Run:  python benchmarks/adapter.py                      (~15 minutes on 2 cores)
      python benchmarks/adapter.py --models minilm --skip-sts   (SciFact only)
Writes benchmarks/results/adapter.json and adapter.png, and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import machine  # noqa: E402

from matryoshka import metrics  # noqa: E402
from matryoshka.adapt import FitSettings, adapted_queries, fit_query_heads, make_adapter  # noqa: E402
from matryoshka.data import read_beir, read_sts  # noqa: E402
from matryoshka.evaluate import ranking_metrics  # noqa: E402
from matryoshka.funnel import recall_at_k  # noqa: E402
from matryoshka.models import load_model  # noqa: E402
from matryoshka.samples import pseudo_queries  # noqa: E402
from matryoshka.vectors import (  # noqa: E402
    halving_dims,
    head_candidates,
    truncate,  # noqa: E402
)

DATA = ROOT.parent / "shared" / "data"
SHORTLISTS = (100, 200, 500)
VARIANTS = [
    ("truncate", None, False),
    ("pca", "pca", False),
    ("orthogonal", "orthogonal", False),
    ("learned", "learned", False),
    ("orthogonal+pairs", "orthogonal", True),
    ("learned+pairs", "learned", True),
]


def head_recall(queries, documents, transform, head_dim: int, truth, query_transform=None) -> dict[str, float]:
    """Recall@10 of the exact full-dim top-10 after a ``head_dim`` head shortlist is re-ranked by the full vectors."""
    head = truncate((query_transform or transform)(queries), head_dim) @ truncate(transform(documents), head_dim).T
    out = {}
    for n in SHORTLISTS:
        shortlist = metrics.top_k(head, n)
        rescored = np.einsum("qd,qnd->qn", queries, documents[shortlist])
        best = np.take_along_axis(shortlist, metrics.top_k(rescored, 10), axis=1)
        out[f"recall@10_shortlist_{n}"] = recall_at_k(best, truth)
    return out


def scifact(model_name: str, args, results: list[dict]) -> None:
    encoder = load_model(model_name)
    test, train = read_beir(DATA / "scifact", "test"), read_beir(DATA / "scifact", "train")
    documents = encoder.encode(test.corpus.texts, kind="document")
    queries = encoder.encode(test.query_texts, kind="query")
    anchors = pseudo_queries(test.corpus.texts, encoder, count=args.anchors, unit="sentence")
    row_of = {doc_id: row for row, doc_id in enumerate(test.corpus.ids)}
    pair_queries, pair_rows = [], []
    train_vectors = encoder.encode(train.query_texts, kind="query")
    for position, query_id in enumerate(train.query_ids):
        for doc_id, grade in train.qrels[query_id].items():
            if grade > 0:
                pair_queries.append(train_vectors[position])
                pair_rows.append(row_of[doc_id])
    pairs = (np.asarray(pair_queries), np.asarray(pair_rows))
    dims = halving_dims(encoder.full_dim)
    truth = metrics.top_k(queries @ documents.T, 10)
    full_ndcg = ranking_metrics(truth, test)["ndcg@10"]
    for name, kind, supervised in VARIANTS:
        started = time.perf_counter()
        if kind is None:
            transform = lambda x: x  # noqa: E731
        else:
            adapter = make_adapter(kind, FitSettings(steps=args.steps))
            adapter.fit(documents, queries=anchors, pairs=pairs if supervised else None)
            transform = adapter.transform
        fit_s = time.perf_counter() - started
        scifact_row(name, fit_s, queries, documents, transform, None, encoder, dims, test, truth, full_ndcg, results)
        if kind is not None:  # the same adapter with query heads fitted on the train queries (documents unchanged)
            started = time.perf_counter()
            fit_query_heads(
                adapter,
                documents,
                train_vectors,
                [d for d in head_candidates(encoder.full_dim) if d < encoder.full_dim],
                anchors=anchors,
            )
            print(
                f"  query heads kept at {sorted(adapter.query_heads_)}; held-out train-query recall before/after: "
                f"{ {d: (round(b, 3), round(a, 3)) for d, (b, a) in adapter.query_head_validation_.items()} }"
            )
            heads_s = fit_s + time.perf_counter() - started
            scifact_row(
                f"{name}+query heads",
                heads_s,
                queries,
                documents,
                transform,
                adapter,
                encoder,
                dims,
                test,
                truth,
                full_ndcg,
                results,
            )


def scifact_row(name, fit_s, queries, documents, transform, heads, encoder, dims, test, truth, full_ndcg, results):
    """nDCG@10 per dim and head recall for one method; ``heads``: an adapter whose query heads
    map the queries at the dims it has them for."""
    d = transform(documents)
    row = {
        "model": encoder.name,
        "data": "scifact",
        "method": name,
        "fit_seconds": round(fit_s, 1),
        "full_ndcg@10": full_ndcg,
    }
    for dim in dims:
        q = transform(queries) if heads is None else adapted_queries(heads, queries, dim)
        ranked = metrics.top_k(truncate(q, dim) @ truncate(d, dim).T, 10)
        row[f"ndcg@10_{dim}"] = ranking_metrics(ranked, test)["ndcg@10"]
    head = encoder.full_dim // 8
    query_transform = None if heads is None else (lambda x: adapted_queries(heads, x, head))
    row.update(head_recall(queries, documents, transform, head, truth, query_transform))
    results.append(row)
    print_row(row, dims, "ndcg@10")


def sts(model_name: str, args, results: list[dict]) -> None:
    encoder = load_model(model_name)
    train, test = read_sts(DATA / "stsb", "train"), read_sts(DATA / "stsb", "test")
    fit_texts = list(dict.fromkeys([*train.first, *train.second]))
    fit_vectors = encoder.encode(fit_texts)
    unique = list(dict.fromkeys([*test.first, *test.second]))
    vectors = encoder.encode(unique)
    position = {t: i for i, t in enumerate(unique)}
    left = np.array([position[t] for t in test.first])
    right = np.array([position[t] for t in test.second])
    dims = halving_dims(encoder.full_dim)
    for name, kind, supervised in VARIANTS:
        if supervised:
            continue  # STS has no (query, relevant document) pairs
        started = time.perf_counter()
        if kind is None:
            transform = lambda x: x  # noqa: E731
        else:
            # STS compares sentence to sentence: the sentences themselves are the anchors
            transform = make_adapter(kind, FitSettings(steps=args.steps)).fit(fit_vectors).transform
        row = {
            "model": encoder.name,
            "data": "stsb",
            "method": name,
            "fit_seconds": round(time.perf_counter() - started, 1),
        }
        rotated = transform(vectors)
        for dim in dims:
            prefix = truncate(rotated, dim)
            row[f"spearman_{dim}"] = metrics.spearman(metrics.cosine_rows(prefix[left], prefix[right]), test.scores)
        results.append(row)
        print_row(row, dims, "spearman")


def print_row(row: dict, dims: list[int], metric: str) -> None:
    full = row.get(f"full_{metric}", row.get(f"{metric}_{dims[0]}"))
    cells = " ".join(f"{100 * row[f'{metric}_{d}'] / full:6.1f}" for d in dims)
    recall = " ".join(f"{row[f'recall@10_shortlist_{n}']:.3f}" for n in SHORTLISTS if f"recall@10_shortlist_{n}" in row)
    print(
        f"{row['model'][:18]:<18} {row['data']:<8} {row['method']:<29} {cells}   {recall}   fit {row['fit_seconds']}s",
        flush=True,
    )


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["data"]) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, data) in zip(axes[0], panels):
        metric = "ndcg@10" if data == "scifact" else "spearman"
        for row in (r for r in results if r["model"] == model and r["data"] == data):
            dims = sorted(int(k.rsplit("_", 1)[1]) for k in row if k.startswith(metric + "_"))
            full = row.get(f"full_{metric}", row[f"{metric}_{dims[-1]}"])
            ax.plot(dims, [100 * row[f"{metric}_{d}"] / full for d in dims], marker="o", label=row["method"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dimensions")
        ax.set_ylabel(f"% of full-dim {metric}")
        ax.set_title(f"{model[:24]} · {data}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,wordllama")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--anchors", type=int, default=5000, help="query-like sentences of the corpus")
    parser.add_argument("--skip-sts", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapter.json")
    args = parser.parse_args()
    results: list[dict] = []
    print(
        "model              data     method                        % of full per dim (d … d/32)   head d/8 recall@10 (100/200/500)"
    )
    for model in args.models.split(","):
        scifact(model, args, results)
        if not args.skip_sts:
            sts(model, args, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "steps": args.steps, "results": results}, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"machine: {machine()}\nwritten: {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
