"""Quality at every prefix dimension, for several ways of choosing the prefix.

Texts are encoded once at full dimension; each (method, dim) is scored by transforming,
slicing and re-normalising those vectors, so ten dimensions cost one encoding pass.
Methods: ``truncate`` (the model's own prefix) and ``pca`` (the prefix after a PCA rotation
fitted on the corpus, or on the STS training split).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .adapt import PCAAdapter
from .data import Pairs, RetrievalData, is_beir_folder, is_sts_folder, read_beir, read_pairs, read_sts
from .errors import DataError, UsageError
from .models import Encoder
from .vectors import check_dim, halving_dims, truncate

METHODS = ("truncate", "pca", "adapter")
RETRIEVAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
PRIMARY_METRIC = {"retrieval": "ndcg@10", "sts": "spearman"}
QUERY_BLOCK = 1024


def parse_dims(text: str | None, full_dim: int) -> list[int]:
    """``"384,48,12"`` -> sorted unique dims, each validated against ``full_dim``; None -> defaults."""
    if not text:
        return halving_dims(full_dim)
    try:
        dims = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--dims must be comma-separated integers, got {text!r}") from None
    if not dims:
        raise UsageError("--dims is empty")
    return sorted({check_dim(d, full_dim) for d in dims}, reverse=True)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    methods = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


@dataclass
class EvaluationReport:
    """Per-dimension scores; ``to_dict`` is the stable JSON other tools read."""

    model: str
    task: str
    data: str
    split: str
    full_dim: int
    results: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.task]

    def score(self, method: str, dim: int, metric: str | None = None) -> float:
        metric = metric or self.metric
        for row in self.results:
            if row["method"] == method and row["dim"] == dim:
                return row[metric]
        raise KeyError((method, dim))

    def relative(self, method: str, dim: int) -> float:
        """Score at ``dim`` as a fraction of the same method's full-dimension score."""
        full = self.score(method, self.full_dim)
        return self.score(method, dim) / full if full else float("nan")

    def methods(self) -> list[str]:
        return list(dict.fromkeys(row["method"] for row in self.results))

    def dims(self) -> list[int]:
        return sorted({row["dim"] for row in self.results}, reverse=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


Transform = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]


def _transforms(methods: Sequence[str], fit_vectors: np.ndarray, adapter=None) -> dict[str, Transform]:
    out: dict[str, Transform] = {}
    for method in methods:
        if method == "truncate":
            out[method] = lambda x: x
        elif method == "pca":
            out[method] = PCAAdapter().fit(fit_vectors).transform
        elif method == "adapter":
            if adapter is None:
                raise UsageError("method 'adapter' needs an adapter file (--adapter PATH, made by 'matryoshka adapt')")
            out[method] = adapter.transform
    return out


def _with_full_dim(dims: Sequence[int], full_dim: int) -> list[int]:
    """Relative scores need the full dimension, so it is always measured."""
    return sorted(set(dims) | {full_dim}, reverse=True)


def score_retrieval(
    queries: np.ndarray,
    documents: np.ndarray,
    data: RetrievalData,
    depth: int = 100,
) -> dict[str, float]:
    """Mean nDCG@10, recall@10, recall@100 and MRR@10 of exact cosine search (unit vectors in)."""
    ranked = np.concatenate(
        [metrics.top_k(queries[s : s + QUERY_BLOCK] @ documents.T, depth) for s in range(0, len(queries), QUERY_BLOCK)]
    )
    return ranking_metrics(ranked, data)


def ranking_metrics(ranked: np.ndarray, data: RetrievalData) -> dict[str, float]:
    """Mean nDCG@10, recall@10, recall@100 and MRR@10 of ranked corpus rows (one row per query)."""
    gains, ideal, n_relevant = metrics.gain_matrix(ranked, data.corpus.ids, data.query_ids, data.qrels)
    return {
        "ndcg@10": float(metrics.ndcg_at_k(gains, ideal, 10).mean()),
        "recall@10": float(metrics.recall_at_k(gains, n_relevant, 10).mean()),
        "recall@100": float(metrics.recall_at_k(gains, n_relevant, 100).mean()),
        "mrr@10": float(metrics.mrr_at_k(gains, 10).mean()),
    }


def evaluate_retrieval(
    encoder: Encoder,
    data: RetrievalData,
    dims: Sequence[int],
    methods: Sequence[str] = METHODS,
    *,
    data_name: str = "",
    split: str = "test",
    batch_size: int | None = None,
    progress: Progress | None = None,
    adapter=None,
) -> EvaluationReport:
    """Encode queries and corpus once, then score every (method, dim)."""
    query_vectors = encoder.encode(data.query_texts, kind="query", batch_size=batch_size)
    doc_vectors = encoder.encode(data.corpus.texts, kind="document", batch_size=batch_size)
    return evaluate_retrieval_vectors(
        query_vectors,
        doc_vectors,
        data,
        dims,
        methods,
        model=encoder.name,
        data_name=data_name,
        split=split,
        progress=progress,
        adapter=adapter,
    )


def evaluate_retrieval_vectors(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    data: RetrievalData,
    dims: Sequence[int],
    methods: Sequence[str] = METHODS,
    *,
    model: str = "",
    data_name: str = "",
    split: str = "test",
    progress: Progress | None = None,
    adapter=None,
) -> EvaluationReport:
    """Score every (method, dim) from full-dimension vectors already encoded; ``adapter`` is the
    fitted adapter behind the ``adapter`` method."""
    full_dim = doc_vectors.shape[1]
    report = EvaluationReport(model, "retrieval", data_name, split, full_dim)
    report.notes.append(f"{len(data.query_ids)} queries, {len(data.corpus)} documents")
    if "pca" in methods:
        report.notes.append("pca fitted on the corpus vectors")
    for method, transform in _transforms(methods, doc_vectors, adapter).items():
        q_rot, d_rot = transform(query_vectors), transform(doc_vectors)
        for dim in _with_full_dim(dims, full_dim):
            scores = score_retrieval(truncate(q_rot, dim), truncate(d_rot, dim), data)
            report.results.append({"method": method, "dim": dim, **scores})
            if progress:
                progress(1)
    return report


def evaluate_sts(
    encoder: Encoder,
    pairs: Pairs,
    dims: Sequence[int],
    methods: Sequence[str] = METHODS,
    *,
    fit_texts: Sequence[str] | None = None,
    data_name: str = "",
    split: str = "test",
    batch_size: int | None = None,
    progress: Progress | None = None,
    adapter=None,
) -> EvaluationReport:
    """Cosine Spearman against gold scores at each (method, dim); each unique sentence encoded once.

    ``fit_texts`` (e.g. the training split's sentences) is what PCA is fitted on; without it PCA
    is fitted on the evaluated sentences themselves, which the report notes.
    """
    if pairs.scores is None:
        raise UsageError("STS evaluation needs scored pairs (a 'score' column)")
    unique = list(dict.fromkeys([*pairs.first, *pairs.second]))
    position = {text: i for i, text in enumerate(unique)}
    vectors = encoder.encode(unique, batch_size=batch_size)
    left = np.fromiter((position[t] for t in pairs.first), dtype=np.int64, count=len(pairs))
    right = np.fromiter((position[t] for t in pairs.second), dtype=np.int64, count=len(pairs))
    report = EvaluationReport(encoder.name, "sts", data_name, split, encoder.full_dim)
    report.notes.append(f"{len(pairs)} pairs, {len(unique)} unique sentences")
    fit_vectors = vectors
    if "pca" in methods:
        if fit_texts:
            fit_vectors = encoder.encode(list(dict.fromkeys(fit_texts)), batch_size=batch_size)
            report.notes.append(f"pca fitted on {len(fit_vectors)} training sentences")
        else:
            report.notes.append("pca fitted on the evaluated sentences (no training split given)")
    for method, transform in _transforms(methods, fit_vectors, adapter).items():
        rotated = transform(vectors)
        for dim in _with_full_dim(dims, encoder.full_dim):
            prefix = truncate(rotated, dim)
            cosines = metrics.cosine_rows(prefix[left], prefix[right])
            report.results.append({"method": method, "dim": dim, "spearman": metrics.spearman(cosines, pairs.scores)})
            if progress:
                progress(1)
    return report


def run_evaluation(
    encoder: Encoder,
    task: str,
    data_path: Path | str,
    split: str,
    dims: Sequence[int],
    methods: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    adapter=None,
) -> EvaluationReport:
    """Read ``data_path`` for ``task`` and evaluate: the one entry point the CLI and demo share."""
    data_path = Path(data_path)
    if task == "retrieval":
        if not is_beir_folder(data_path):
            raise DataError(
                data_path, "retrieval evaluation needs a BEIR folder (corpus.jsonl[.gz], queries.jsonl[.gz], qrels/)"
            )
        data = read_beir(data_path, split)
        return evaluate_retrieval(
            encoder,
            data,
            dims,
            methods,
            data_name=str(data_path),
            split=split,
            batch_size=batch_size,
            progress=progress,
            adapter=adapter,
        )
    if task == "sts":
        fit_texts = None
        if is_sts_folder(data_path):
            pairs = read_sts(data_path, split)
            if split != "train" and "pca" in methods:
                try:
                    train = read_sts(data_path, "train")
                    fit_texts = [*train.first, *train.second]
                except DataError as exc:
                    if not str(exc).endswith("in this folder"):
                        raise
        else:
            pairs = read_pairs(data_path)
            if pairs.scores is None:
                raise DataError(data_path, "STS evaluation needs a 'score' column")
        return evaluate_sts(
            encoder,
            pairs,
            dims,
            methods,
            fit_texts=fit_texts,
            data_name=str(data_path),
            split=split,
            batch_size=batch_size,
            progress=progress,
            adapter=adapter,
        )
    raise UsageError(f"unknown task {task!r}; choose 'retrieval' or 'sts'")


def planned_steps(dims: Sequence[int], methods: Sequence[str], full_dim: int) -> int:
    return len(_with_full_dim(dims, full_dim)) * len(methods)
