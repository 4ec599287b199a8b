"""Plots a person would rather look at than read: quality per dimension."""

from __future__ import annotations

from pathlib import Path

from .evaluate import EvaluationReport

METRIC_LABELS = {"ndcg@10": "nDCG@10", "spearman": "Spearman (cosine)"}


def plot_per_dimension(report: EvaluationReport, path: Path | str, title: str | None = None) -> Path:
    """Two panels, as in the Hugging Face Matryoshka blog: the score per dimension, and the score
    relative to the same method at full dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(report.dims())
    label = METRIC_LABELS.get(report.metric, report.metric)
    fig, (absolute, relative) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for method in report.methods():
        scores = [report.score(method, d) for d in dims]
        ratios = [100 * report.relative(method, d) for d in dims]
        absolute.plot(dims, scores, marker="o", label=method)
        relative.plot(dims, ratios, marker="o", label=method)
    for axis, ylabel in ((absolute, label), (relative, f"% of full-dimension {label}")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(dims)
        axis.set_xticklabels([str(d) for d in dims])
        axis.set_xlabel("embedding dimension (prefix length)")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        axis.legend()
    relative.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    name = Path(report.data).name or report.data
    fig.suptitle(title or f"{report.model} · {report.task} · {name} ({report.split})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
