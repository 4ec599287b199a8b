"""The ``matryoshka`` command: thin typer wrappers over the library API."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .data import DataError
from .models import DEFAULT_MODEL, ModelError

app = typer.Typer(
    name="matryoshka",
    help="Matryoshka embeddings end to end: evaluate every prefix dimension, encode, and (soon) "
    "index, search and serve with funnel search.\n\nStart with [bold]matryoshka demo[/bold].",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=False)
errors = Console(stderr=True)

ModelOption = typer.Option(
    DEFAULT_MODEL, "--model", "-m",
    help="'default' (all-MiniLM-L6-v2, bundled), 'wordllama' (bundled, Matryoshka-trained), a local "
    "sentence-transformers folder, or a hub name (needs a network).",
)
QueryPromptOption = typer.Option(None, help="Text prepended to queries, e.g. 'search_query: ' (default: the model's own 'query' prompt).")
DocumentPromptOption = typer.Option(None, help="Text prepended to documents (default: the model's own 'document' prompt).")
BatchOption = typer.Option(None, min=1, help="Texts per encoding batch (default: the model's own, 32 for transformers).")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (bad files, bad options) into one red line and exit code 2."""
    try:
        yield
    except (DataError, ModelError, ValueError, FileNotFoundError) as exc:
        errors.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(code=2) from None


def _load(model: str, query_prompt: str | None, document_prompt: str | None):
    from .models import load_model

    with console.status(f"Loading model [bold]{model}[/bold]…"):
        return load_model(model, query_prompt=query_prompt, document_prompt=document_prompt)


def report_table(report) -> Table:
    """A rich table: one row per (method, dim), each metric a column, plus % of the method's full-dim score."""
    metric_names = ["spearman"] if report.task == "sts" else ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
    table = Table(title=f"{report.model} · {report.task} · {Path(report.data).name} ({report.split})")
    table.add_column("method")
    table.add_column("dim", justify="right", style="bold")
    for metric in metric_names:
        table.add_column(metric, justify="right")
    table.add_column(f"% full {report.metric}", justify="right", style="cyan")
    for method in report.methods():
        for dim in report.dims():
            cells = [method, str(dim)] + [f"{report.score(method, dim, m):.4f}" for m in metric_names]
            table.add_row(*cells, f"{100 * report.relative(method, dim):.1f}%", end_section=dim == report.dims()[-1])
    return table


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def evaluate(
    task: str = typer.Option(..., "--task", "-t", help="'retrieval' (nDCG@10, recall@10/100, MRR@10) or 'sts' (cosine Spearman)."),
    data: Path = typer.Option(..., "--data", "-d", help="A BEIR folder (retrieval), an STS Benchmark folder, or a JSONL/CSV/TSV of scored pairs (sts)."),
    split: str = typer.Option("test", help="Which split: qrels/<split>.tsv for BEIR, sts-<split>.csv for STS."),
    dims: Optional[str] = typer.Option(None, help="Comma-separated prefix dims, e.g. 384,96,24. Default: d, d/2, … d/32."),
    methods: str = typer.Option("truncate,pca", help="Comma-separated: truncate (plain prefix), pca (prefix after a PCA rotation)."),
    model: str = ModelOption,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the per-dimension results as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a two-panel PNG (score, and % of full) here."),
    query_prompt: Optional[str] = QueryPromptOption,
    document_prompt: Optional[str] = DocumentPromptOption,
    batch_size: Optional[int] = BatchOption,
) -> None:
    """Score a model at every prefix dimension, encoding each text only once.

    [bold]Examples[/bold]

      matryoshka evaluate --task retrieval --data ../shared/data/scifact --split test --dims 384,192,96,48,24,12 --json out.json

      matryoshka evaluate --task sts --data ../shared/data/stsb --dims 384,48,12 --plot sts.png
    """
    from .evaluate import parse_dims, parse_methods, planned_steps, run_evaluation
    from .plots import plot_per_dimension

    with user_errors():
        method_list = parse_methods(methods)
        if not data.exists():
            raise DataError(data, "no such file or folder")
        encoder = _load(model, query_prompt, document_prompt)
        dim_list = parse_dims(dims, encoder.full_dim)
        with _progress() as progress:
            step = progress.add_task("Scoring dimensions", total=planned_steps(dim_list, method_list, encoder.full_dim))
            report = run_evaluation(encoder, task, data, split, dim_list, method_list, batch_size=batch_size,
                                    progress=lambda n: progress.advance(step, n))
        console.print(report_table(report))
        for note in report.notes:
            console.print(f"[dim]· {note}[/dim]")
        if json_path:
            report.save_json(json_path)
            console.print(f"JSON written to [bold]{json_path}[/bold]")
        if plot:
            plot_per_dimension(report, plot)
            console.print(f"Plot written to [bold]{plot}[/bold]")


@app.command()
def encode(
    input: Path = typer.Option(..., "--input", "-i", help="Texts: JSONL/CSV/TSV with a 'text' column (optional 'id', 'title'), or TXT, one text per line."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the float32 .npy (ids go beside it in <output>.ids.txt)."),
    dim: Optional[int] = typer.Option(None, help="Keep the first DIM dimensions (re-normalised). Default: full."),
    kind: str = typer.Option("document", help="'document', 'query' or 'plain': which of the model's prompts to apply."),
    model: str = ModelOption,
    query_prompt: Optional[str] = QueryPromptOption,
    document_prompt: Optional[str] = DocumentPromptOption,
    batch_size: Optional[int] = BatchOption,
) -> None:
    """Encode texts to a float32 .npy of unit vectors.

    [bold]Example[/bold]

      matryoshka encode --input docs.jsonl --output docs.npy --dim 128
    """
    import numpy as np

    from .data import read_texts

    with user_errors():
        if kind not in ("document", "query", "plain"):
            raise ValueError(f"--kind must be document, query or plain, got {kind!r}")
        corpus = read_texts(input)
        encoder = _load(model, query_prompt, document_prompt)
        vectors = encoder.encode(corpus.texts, dim, kind=None if kind == "plain" else kind, batch_size=batch_size,
                                 show_progress=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        with open(partial, "wb") as handle:
            np.save(handle, vectors)
        partial.replace(output)
        output.with_name(output.name + ".ids.txt").write_text("\n".join(corpus.ids) + "\n", encoding="utf-8")
        console.print(f"{vectors.shape[0]} × {vectors.shape[1]} float32 vectors written to [bold]{output}[/bold]")


@app.command()
def demo(
    model: str = ModelOption,
    output_dir: Path = typer.Option(Path("matryoshka-demo"), help="Where the plot and JSON go."),
    dims: Optional[str] = typer.Option(None, help="Comma-separated prefix dims. Default: d, d/2, … d/32."),
) -> None:
    """Show what the project does, offline, on a bundled SQuAD sample: per-dimension retrieval
    quality of the model's own prefixes against PCA prefixes, as a table and a plot.

    [bold]Example[/bold]

      matryoshka demo
    """
    from .demo import SAMPLE_DIR, SAMPLE_SPLIT
    from .evaluate import parse_dims, planned_steps, run_evaluation
    from .plots import plot_per_dimension

    with user_errors():
        console.rule("[bold]matryoshka demo")
        console.print(f"Corpus: bundled slice of SQuAD v1.1 dev (CC BY-SA 4.0), see {SAMPLE_DIR / 'ATTRIBUTION.md'}")
        encoder = _load(model, None, None)
        dim_list = parse_dims(dims, encoder.full_dim)
        methods = ["truncate", "pca"]
        with _progress() as progress:
            step = progress.add_task("Scoring dimensions", total=planned_steps(dim_list, methods, encoder.full_dim))
            report = run_evaluation(encoder, "retrieval", SAMPLE_DIR, SAMPLE_SPLIT, dim_list, methods,
                                    progress=lambda n: progress.advance(step, n))
        report.data = "bundled SQuAD sample"
        console.print(report_table(report))
        for note in report.notes:
            console.print(f"[dim]· {note}[/dim]")
        output_dir.mkdir(parents=True, exist_ok=True)
        report.save_json(output_dir / "evaluation.json")
        plot = plot_per_dimension(report, output_dir / "evaluation.png")
        console.print(f"Plot: [bold]{plot}[/bold]   JSON: [bold]{output_dir / 'evaluation.json'}[/bold]")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
