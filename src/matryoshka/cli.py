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

from .data import DataError, read_texts
from .models import DEFAULT_MODEL, ModelError
from .stores import StoreError

app = typer.Typer(
    name="matryoshka",
    help="Matryoshka embeddings end to end: train or adapt a model so its prefixes work, evaluate "
    "every prefix dimension, index and search with funnel search, and serve it.\n\nStart with [bold]matryoshka demo[/bold].",
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
    except (DataError, ModelError, StoreError, ValueError, FileNotFoundError) as exc:
        errors.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(code=2) from None


def _numbers(text: str | None, cast, option: str) -> list | None:
    """``"384,96,24"`` -> [384, 96, 24], or an error that names the option and the bad item."""
    if not text:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(cast(part))
        except ValueError:
            raise ValueError(f"{option}: {part.strip()!r} is not a {'whole ' if cast is int else ''}number") from None
    return values


AdapterOption = typer.Option(None, "--adapter", help="An adapter file from 'matryoshka adapt': prefixes of f(x) instead of x.")


def _load(model: str, query_prompt: str | None, document_prompt: str | None, adapter: Path | None = None):
    from .models import load_model

    with console.status(f"Loading model [bold]{model}[/bold]…"):
        return load_model(model, query_prompt=query_prompt, document_prompt=document_prompt, adapter=adapter)


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
    methods: str = typer.Option("truncate,pca", help="Comma-separated: truncate (plain prefix), pca (prefix after a PCA rotation), adapter (prefix of f(x), with --adapter; added when --adapter is given)."),
    model: str = ModelOption,
    adapter: Optional[Path] = AdapterOption,
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

      matryoshka evaluate --task retrieval --data ../shared/data/scifact --adapter scifact-adapter.npz
    """
    from .adapt import load_adapter
    from .evaluate import parse_dims, parse_methods, planned_steps, run_evaluation
    from .plots import plot_per_dimension

    with user_errors():
        method_list = parse_methods(methods)
        fitted = load_adapter(adapter) if adapter else None
        if fitted is not None and "adapter" not in method_list:
            method_list.append("adapter")
        if not data.exists():
            raise DataError(data, "no such file or folder")
        encoder = _load(model, query_prompt, document_prompt)
        dim_list = parse_dims(dims, encoder.full_dim)
        with _progress() as progress:
            step = progress.add_task("Scoring dimensions", total=planned_steps(dim_list, method_list, encoder.full_dim))
            report = run_evaluation(encoder, task, data, split, dim_list, method_list, batch_size=batch_size,
                                    progress=lambda n: progress.advance(step, n), adapter=fitted)
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
    adapter: Optional[Path] = AdapterOption,
    query_prompt: Optional[str] = QueryPromptOption,
    document_prompt: Optional[str] = DocumentPromptOption,
    batch_size: Optional[int] = BatchOption,
) -> None:
    """Encode texts to a float32 .npy of unit vectors.

    [bold]Examples[/bold]

      matryoshka encode --input docs.jsonl --output docs.npy --dim 128

      matryoshka encode --input docs.jsonl --output docs-48.npy --dim 48 --adapter minilm-adapter.npz
    """
    import numpy as np

    with user_errors():
        if kind not in ("document", "query", "plain"):
            raise ValueError(f"--kind must be document, query or plain, got {kind!r}")
        corpus = read_texts(input)
        encoder = _load(model, query_prompt, document_prompt, adapter)
        vectors = encoder.encode(corpus.texts, dim, kind=None if kind == "plain" else kind, batch_size=batch_size,
                                 show_progress=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        with open(partial, "wb") as handle:
            np.save(handle, vectors)
        partial.replace(output)
        output.with_name(output.name + ".ids.txt").write_text("\n".join(corpus.ids) + "\n", encoding="utf-8")
        console.print(f"{vectors.shape[0]} × {vectors.shape[1]} float32 vectors written to [bold]{output}[/bold]")


DbOption = typer.Option(..., "--db", help="Where the index lives: a folder (the embedded local store), a Milvus Lite "
                        "file ending in .db, or a Milvus server URI such as http://127.0.0.1:19530.")
CollectionOption = typer.Option(None, help="Milvus only: the index's collection name prefix (default 'matryoshka').")


def _load_vectors(path: Path, what: str):
    import numpy as np

    from .stores import StoreError

    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise StoreError(f"{path}: not a .npy array of {what} ({exc})") from None


@app.command()
def index(
    corpus: Path = typer.Option(..., "--corpus", "-c", help="Documents: JSONL/CSV/TSV with 'text' (+ 'id', 'title'), TXT, or a BEIR folder."),
    db: str = DbOption,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model that encodes the corpus (default: 'default'). "
                                        "With --vectors: the model those vectors came from, so text queries work."),
    vectors: Optional[Path] = typer.Option(None, help="Precomputed corpus vectors (.npy, one row per document, in corpus order)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="An adapter file from 'matryoshka adapt': the head searches prefixes of f(x); the last stage the model's own full vectors."),
    head_dim: Optional[int] = typer.Option(None, help="Dims of the head searched first (bits, for a binary head). Default: autotuned among d/32, d/16, d/8, d/4; all d bits for a binary head."),
    head_index: str = typer.Option("flat", help="Head search: 'flat' (float prefixes, exact scan), 'hnsw' (graph over them; for large corpora) or 'binary' (sign bits searched by Hamming distance: d bits cost the RAM of a d/32 float head and keep far more of the ranking; the fastest head at a million rows)."),
    k: int = typer.Option(10, min=1, help="The k that autotune tunes the default schedule for."),
    target_recall: float = typer.Option(0.99, min=0.01, max=1.0, help="Recall@k against exact search that autotune must reach, with 95% confidence over its tuning queries."),
    tune_queries: Optional[Path] = typer.Option(None, help="Real queries to autotune on (text file as for --queries). Default: word windows of the corpus."),
    collection: Optional[str] = CollectionOption,
) -> None:
    """Encode a corpus once and store it for funnel search: a contiguous head prefix beside the full
    vectors, with an autotuned default schedule. All or nothing: the previous index stays searchable
    until the new one is complete.

    [bold]Examples[/bold]

      matryoshka index --corpus docs.jsonl --db ./my-index

      matryoshka index --model wordllama --corpus ../shared/data/scifact --db scifact.db

      matryoshka index --corpus docs.jsonl --vectors docs.npy --db ./byo-index

      matryoshka index --model wordllama --corpus big.jsonl --head-index binary --db ./big-index

      matryoshka index --corpus ../shared/data/scifact --adapter minilm-adapter.npz --db ./adapted-index
    """
    from .index import build_index

    with user_errors():
        documents = read_texts(corpus)
        if adapter is not None and model is None and vectors is not None:
            raise ValueError("--adapter with --vectors needs --model: the adapter belongs to the model the vectors came from")
        encoder = _load(model or DEFAULT_MODEL, None, None, adapter) if (model or vectors is None) else None
        array = _load_vectors(vectors, "corpus vectors") if vectors else None
        tune = None
        if tune_queries is not None:
            if encoder is None:
                raise ValueError("--tune-queries needs --model to encode them")
            tune = getattr(encoder, "base", encoder).encode(read_texts(tune_queries).texts, kind="query")
        from .stores import is_milvus_uri

        milvus = is_milvus_uri(db)
        work = ("Storing" if array is not None else "Encoding") + (", then writing to Milvus" if milvus else "")
        with _progress() as progress:
            step = progress.add_task(work, total=len(documents) * (2 if milvus else 1))
            meta = build_index(db, documents.ids, documents.texts, encoder=encoder, vectors=array, head_dim=head_dim,
                               head_index=head_index, k=k, target_recall=target_recall, tune_queries=tune,
                               collection=collection, progress=lambda n: progress.advance(step, n))
        console.print(f"Indexed [bold]{meta.count}[/bold] documents into [bold]{db}[/bold]: model {meta.model or '(vectors)'}, "
                      f"{meta.full_dim} dims, head {meta.head_dim}{' bits (binary)' if meta.extra.get('head_index') == 'binary' else ''}")
        console.print(f"Default schedule [bold]{meta.schedule}[/bold] (recall@{meta.extra['autotune']['k']} "
                      f"{meta.autotune_recall:.3f} vs exact on {meta.extra['autotune']['queries']})")
        if not meta.extra["autotune"]["reached_with_95pct_confidence"]:
            console.print(f"[yellow]No schedule tried reached recall {target_recall} with 95% confidence; this is the "
                          "most accurate one. Search with --exact, or pass a wider --schedule.[/yellow]")


@app.command()
def search(
    db: str = DbOption,
    query: Optional[str] = typer.Option(None, "--query", "-q", help="One query text."),
    queries: Optional[Path] = typer.Option(None, help="Many queries: JSONL/CSV/TSV with 'text' (+ 'id'), or TXT, one per line."),
    query_vectors: Optional[Path] = typer.Option(None, help="Precomputed query vectors (.npy), for indexes of your own vectors."),
    k: int = typer.Option(10, min=1, help="How many results per query."),
    schedule: Optional[str] = typer.Option(None, help="Funnel stages DIM:KEEP, e.g. 12:2000,24:1000,48:500,96:250,192:100,384:10; a binary head is written BITSb:KEEP, e.g. 384b:2000,192:250,384:10. Default: the index's autotuned one."),
    exact: bool = typer.Option(False, "--exact", help="Exact full-dimension search instead of the funnel (for comparison)."),
    dim: Optional[int] = typer.Option(None, help="Search only the first DIM dimensions (exact scan of the re-normalised prefixes): what a DIM-dim index would return."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Must match the indexing model (checked); default: the index's own."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write one row per query (ids, scores, per-stage time) here."),
    show: int = typer.Option(3, help="How many queries to print as tables."),
    collection: Optional[str] = CollectionOption,
) -> None:
    """Search an index with the funnel (or --exact), printing results and the time spent per stage.

    [bold]Examples[/bold]

      matryoshka search --db ./my-index --query "what causes tides?"

      matryoshka search --db scifact.db --queries questions.txt --k 10 --schedule 8:400,16:200,32:100,64:50,128:25,256:10 --json out.json
    """
    import json

    from .funnel import Schedule
    from .index import Index

    with user_errors():
        given = [x is not None for x in (query, queries, query_vectors)]
        if sum(given) != 1:
            raise ValueError("give exactly one of --query, --queries and --query-vectors")
        opened = Index(db, model=model, collection=collection)
        plan = Schedule.parse(schedule) if schedule else None
        if query_vectors is not None:
            vectors = _load_vectors(query_vectors, "query vectors")
            labels = [str(i) for i in range(len(vectors))]
        else:
            texts = [query] if query is not None else read_texts(queries).texts
            labels = texts
            with console.status(f"Encoding {len(texts)} queries…"):
                vectors = opened.encode_queries(texts)
        result = opened.search_vectors(vectors, k, schedule=plan, exact=exact, dim=dim)
        hits = opened.hits(result)
        stages = [{"dim": d, "keep": n, "ms": 1000 * s} for d, n, s in zip(result.stage_dims, result.stage_keeps, result.stage_seconds)]
        for label, hit in list(zip(labels, hits))[:show]:
            table = Table(title=f"{label[:100]}", title_justify="left")
            table.add_column("#", justify="right")
            table.add_column("score", justify="right")
            table.add_column("id")
            table.add_column("text", overflow="ellipsis", no_wrap=True, max_width=80)
            for rank, (doc_id, score, text) in enumerate(zip(hit.ids, hit.scores, hit.texts), start=1):
                table.add_row(str(rank), f"{score:.4f}", doc_id, text)
            console.print(table)
        mode = f"{dim}-dim prefix" if dim else "exact" if exact else str(plan or opened.schedule_for(k))
        per_stage = "  ".join(f"{s['dim']}d→{s['keep']}: {s['ms']:.1f} ms" for s in stages)
        console.print(f"{len(hits)} queries, {mode}: {1000 * result.seconds / len(hits):.2f} ms/query  [dim]({per_stage}, whole batch)[/dim]")
        if json_path:
            amortised = [{**stage, "ms": stage["ms"] / len(hits)} for stage in stages]
            rows = [{"query": label, "ids": hit.ids, "scores": hit.scores, "stages": amortised}
                    for label, hit in zip(labels, hits)]
            json_path.write_text(json.dumps({"db": db, "k": k, "mode": "prefix" if dim else "exact" if exact else "funnel", "schedule": mode,
                                             "batch_size": len(hits), "batch_stages": stages, "results": rows},
                                            indent=2) + "\n")
            console.print(f"JSON written to [bold]{json_path}[/bold]")


@app.command()
def adapt(
    corpus: Path = typer.Option(..., "--corpus", "-c", help="The documents the adapter is fitted to: JSONL/CSV/TSV with 'text', TXT, or a BEIR folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the adapter (.npz, a few hundred KB)."),
    model: str = ModelOption,
    kind: str = typer.Option("learned", help="pca (rotation onto the corpus' principal axes), orthogonal (PCA refined, cosines unchanged) or learned (free linear map, optional residual MLP)."),
    pairs: Optional[Path] = typer.Option(None, help="(query, relevant document) pairs for the supervised loss: JSONL/CSV/TSV pairs, or a BEIR folder (its train qrels)."),
    steps: int = typer.Option(300, min=1, help="Optimiser steps (orthogonal, learned)."),
    lr: float = typer.Option(5e-4, min=0.0, help="Adam learning rate."),
    hidden: int = typer.Option(0, min=0, help="learned only: units of the residual MLP (0: a linear map)."),
    query_samples: int = typer.Option(5000, min=10, help="Query-like sentences of the corpus used as anchors (word windows where it has none)."),
    queries: Optional[Path] = typer.Option(None, help="Real queries, no relevant documents needed (text file as for search --queries): they fit query heads."),
    query_heads: bool = typer.Option(True, help="With --pairs or --queries: also fit a query-side head for each head dim (d/32 … d/4) on those real queries, so that each query's full top-10 lands in the funnel head's shortlist; a head is kept only if a held-out fifth of the queries gains. Documents and the index are unchanged."),
) -> None:
    """Fit a post-hoc adapter f so that the prefixes of f(x) keep what a model's full vectors know,
    for a model that was not trained with Matryoshka loss (MiniLM, an API model's vectors).

    Use the file with --adapter on encode, evaluate and index; an index built with it searches
    prefixes of f(x) first and returns exactly the model's own full-dimension top-k.

    [bold]Examples[/bold]

      matryoshka adapt --corpus ../shared/data/scifact --output scifact-adapter.npz

      matryoshka adapt --corpus ../shared/data/scifact --pairs ../shared/data/scifact --kind learned --output sup.npz

      matryoshka adapt --corpus docs.jsonl --queries past-queries.txt --kind orthogonal --output with-query-heads.npz

      matryoshka evaluate --task retrieval --data ../shared/data/scifact --adapter scifact-adapter.npz
    """
    import time

    from .adapt import FitSettings, fit_on_texts, make_adapter
    from .data import is_beir_folder, read_pairs

    with user_errors():
        make_adapter(kind)  # an unknown kind fails before any encoding
        documents = read_texts(corpus)
        pair_queries = pair_documents = None
        if pairs is not None:
            if is_beir_folder(pairs):
                from .train import read_training_data

                rows = read_training_data(pairs).columns
                pair_queries, pair_documents = rows["anchor"], rows["positive"]
            else:
                read = read_pairs(pairs)
                pair_queries, pair_documents = read.first, read.second
        encoder = _load(model, None, None)
        with _progress() as progress:
            task = progress.add_task(f"Fitting {kind} adapter", total=steps)
            heads = progress.add_task("Fitting query heads", total=None, visible=False)

            def head_progress(done: int, total: int) -> None:
                progress.update(heads, completed=done, total=total, visible=True)

            settings = FitSettings(steps=steps, lr=lr, progress=lambda step, loss: progress.update(task, completed=step))
            started = time.perf_counter()
            fitted = fit_on_texts(encoder, documents.texts, kind, pair_queries=pair_queries, pair_documents=pair_documents,
                                  settings=settings, query_samples=query_samples, hidden=hidden, query_heads=query_heads,
                                  queries=read_texts(queries).texts if queries is not None else None,
                                  head_progress=head_progress)
        path = fitted.save(output)
        losses = getattr(fitted, "loss_history_", None)
        trained = f", loss {losses[0]:.4f} → {losses[-1]:.4f}" if losses else ""
        console.print(f"{kind} adapter for {encoder.name} fitted on {len(documents)} documents"
                      f"{f' and {len(pair_queries)} pairs' if pair_queries else ''} in {time.perf_counter() - started:.0f} s"
                      f"{trained}: [bold]{path}[/bold]")
        kept = getattr(fitted, "query_heads_", {})
        for dim, (before, after) in getattr(fitted, "query_head_validation_", {}).items():
            console.print(f"query head at {dim} dims: held-out queries' top-10 in the head shortlist {before:.3f} → "
                          f"{after:.3f}, {'kept' if dim in kept else 'not kept (no gain)'}")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", "-d", help="Training rows: JSONL/CSV/TSV pairs (anchor, positive[, negative]) or scored pairs (sentence1, sentence2, score), an STS Benchmark folder, or a BEIR folder (train qrels)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the trained model (and checkpoints/)."),
    model: str = ModelOption,
    dims: Optional[str] = typer.Option(None, help="Matryoshka dims, e.g. 384,192,96,48,24,12. Default: d, d/2, … d/32 (at least 8)."),
    weights: Optional[str] = typer.Option(None, help="One loss weight per dim, e.g. 1,1,1,1,1,1. Default: all 1."),
    epochs: float = typer.Option(1.0, min=0.0, help="Passes over the data."),
    batch_size: int = typer.Option(16, min=2, help="Rows per step (in-batch negatives for contrastive data)."),
    lr: float = typer.Option(2e-5, min=0.0, help="Peak learning rate (linear warm-up and decay)."),
    loss: str = typer.Option("auto", help="auto (cosent for scored pairs; mnrl, or cached-mnrl from batch 128, for contrastive rows), mnrl, cached-mnrl or cosent."),
    eval_data: Optional[Path] = typer.Option(None, help="Per-dimension evaluation during training: an STS folder, a BEIR folder or scored pairs."),
    eval_steps: Optional[int] = typer.Option(None, min=1, help="Evaluate every N steps (default: once per epoch)."),
    save_steps: int = typer.Option(500, min=1, help="Checkpoint every N steps (under OUTPUT/checkpoints)."),
    max_steps: int = typer.Option(-1, help="Stop after N steps (overrides --epochs)."),
    plain: bool = typer.Option(False, "--no-matryoshka", help="Train the base loss alone, without MatryoshkaLoss (a baseline)."),
    seed: int = typer.Option(12, help="Random seed (data order, initialisation of new layers)."),
    rotation: str = typer.Option("orthogonal", help="Start from an adapter's rotation fitted on the training texts: orthogonal "
                                 "(the default: prefixes start better than truncation, full-dim cosines unchanged), pca, "
                                 "or none (the model as it is)."),
) -> None:
    """Fine-tune a sentence-transformers model with MatryoshkaLoss so that every prefix of its
    vectors works as an embedding. Ctrl-C stops and saves the weights reached so far.

    [bold]Examples[/bold]

      matryoshka train --data ../shared/data/stsb --eval-data ../shared/data/stsb --output minilm-sts-matryoshka

      matryoshka train --data pairs.jsonl --dims 384,128,32 --epochs 2 --batch-size 64 --output my-model
    """
    from .train import TrainSettings, read_eval_data, read_training_data
    from .train import train as run_training

    with user_errors():
        dim_list = _numbers(dims, int, "--dims")
        weight_list = _numbers(weights, float, "--weights")
        rows = read_training_data(data)
        evaluation = read_eval_data(eval_data) if eval_data else None
        settings = TrainSettings(dims=dim_list, weights=weight_list, epochs=epochs, batch_size=batch_size, lr=lr,
                                 loss=loss, matryoshka=not plain, max_steps=max_steps, eval_steps=eval_steps,
                                 save_steps=save_steps, seed=seed, rotation=rotation)
        console.print(f"Training [bold]{model}[/bold] on {len(rows)} {rows.kind} rows from {rows.source}")
        result = run_training(model, rows, output, settings, eval_data=evaluation)
        if result.final is not None:
            console.print(report_table(result.final))
        state = "[yellow]interrupted[/yellow] after" if result.interrupted else "trained for"
        console.print(f"{state} {result.steps} steps in {result.seconds:.0f} s ({result.loss}"
                      f"{', MatryoshkaLoss at ' + ','.join(map(str, result.dims)) if not plain else ''}): "
                      f"[bold]{output}[/bold] (loads with load_model or SentenceTransformer)")
        if result.interrupted:
            raise typer.Exit(code=130)


HostOption = typer.Option("127.0.0.1", help="Address to bind. The default, loopback, is reachable from this machine only; "
                          "use 0.0.0.0 to expose it (behind your own proxy and auth).")
PortOption = typer.Option(8000, min=1, max=65535, help="TCP port.")


def _serve(opened, host: str, port: int, limits) -> None:
    from .server import serve as run_server

    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"
    console.print(f"Serving [bold]{opened.meta.count}[/bold] documents ({opened.meta.model or 'vectors'}) at "
                  f"[bold link={url}]{url}[/bold link]   API docs: {url}docs   Ctrl-C stops.")
    run_server(opened, host=host, port=port, limits=limits)


@app.command()
def serve(
    db: str = DbOption,
    host: str = HostOption,
    port: int = PortOption,
    collection: Optional[str] = CollectionOption,
    max_k: int = typer.Option(100, min=1, help="Largest k a /search may ask for."),
    max_texts: int = typer.Option(64, min=1, help="Most texts per /embed or /similarity request."),
    max_text_chars: int = typer.Option(2000, min=1, help="Longest text (characters) any request may send."),
) -> None:
    """Serve an index over HTTP: a JSON API (/search, /embed, /similarity, /info, /healthz; docs at
    /docs) and a web page at / where a dimension slider shows how results change with the prefix length.

    [bold]Examples[/bold]

      matryoshka serve --db ./my-index

      matryoshka serve --db scifact.db --port 9000

      curl -s localhost:8000/search -H 'content-type: application/json' -d '{"query": "what causes tides?", "k": 5}'
    """
    from .index import Index
    from .server import Limits

    with user_errors():
        opened = Index(db, collection=collection)
        with console.status("Loading the model…"):
            _ = opened.encoder
        _serve(opened, host, port, Limits(max_k=max_k, max_texts=max_texts, max_text_chars=max_text_chars))


@app.command()
def demo(
    model: str = ModelOption,
    output_dir: Path = typer.Option(Path("matryoshka-demo"), help="Where the plot, JSON and demo index go."),
    dims: Optional[str] = typer.Option(None, help="Comma-separated prefix dims. Default: d, d/2, … d/32."),
    serve_after: bool = typer.Option(False, "--serve", help="End by serving the demo index: the API and the slider page."),
    host: str = HostOption,
    port: int = PortOption,
) -> None:
    """Show what the project does, offline, on a bundled SQuAD sample: per-dimension retrieval
    quality of the model's own prefixes against PCA prefixes (table and plot), then funnel search
    against exact search over a local index of the same corpus.

    [bold]Example[/bold]

      matryoshka demo

      matryoshka demo --serve     (then open the printed URL)
    """
    import json
    from dataclasses import asdict

    from .demo import SAMPLE_DIR, run_demo
    from .evaluate import parse_dims, planned_steps
    from .plots import plot_per_dimension

    with user_errors():
        console.rule("[bold]matryoshka demo")
        console.print(f"Corpus: bundled slice of SQuAD v1.1 dev (CC BY-SA 4.0), see {SAMPLE_DIR / 'ATTRIBUTION.md'}")
        encoder = _load(model, None, None)
        dim_list = parse_dims(dims, encoder.full_dim)
        output_dir.mkdir(parents=True, exist_ok=True)
        with _progress() as progress:
            step = progress.add_task("Scoring dimensions", total=planned_steps(dim_list, ["truncate", "pca"], encoder.full_dim))
            report, funnel = run_demo(encoder, output_dir, dim_list, progress=lambda n: progress.advance(step, n))
        console.print(report_table(report))
        for note in report.notes:
            console.print(f"[dim]· {note}[/dim]")
        table = Table(title=f"Funnel vs exact search · {funnel.documents} documents, {funnel.queries} questions, k=10")
        for column in ("search", "ms/query", "nDCG@10", "recall@10 vs exact"):
            table.add_column(column, justify="right" if column != "search" else "left")
        table.add_row("exact (full dim)", f"{funnel.exact_ms_per_query:.3f}", f"{funnel.exact_ndcg:.4f}", "1.000")
        table.add_row(f"funnel {funnel.schedule}", f"{funnel.funnel_ms_per_query:.3f}", f"{funnel.funnel_ndcg:.4f}",
                      f"{funnel.recall_vs_exact:.3f}")
        console.print(table)
        console.print(f"Funnel speed-up: [bold]{funnel.speedup:.2f}×[/bold] on this {funnel.documents}-document sample "
                      "(batched): on so few documents exact search is cheaper. The funnel pays off on large corpora "
                      "(3× at 1M vectors, single query; README, benchmarks/funnel.py).")
        report.save_json(output_dir / "evaluation.json")
        (output_dir / "funnel.json").write_text(json.dumps({**asdict(funnel), "speedup": funnel.speedup}, indent=2) + "\n")
        plot = plot_per_dimension(report, output_dir / "evaluation.png")
        console.print(f"Plot: [bold]{plot}[/bold]   JSON: [bold]{output_dir / 'evaluation.json'}[/bold], "
                      f"[bold]{output_dir / 'funnel.json'}[/bold]   Index: [bold]{output_dir / 'index'}[/bold]")
        if serve_after:
            from .index import Index
            from .server import Limits

            opened = Index(output_dir / "index", encoder=encoder)
            _serve(opened, host, port, Limits())


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
