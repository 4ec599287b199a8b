"""The ``matryoshka`` command: thin typer wrappers over the library API."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .data import read_texts, read_vectors, write_vectors
from .display import TaskProgress, progress_display
from .errors import DataError, MatryoshkaError, UsageError, storage_error
from .models import DEFAULT_MODEL

# before any model library is imported (they are, lazily, inside the commands): tokenizers would
# warn about forked workers, and libraries that set up logging would bury the results in INFO lines
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

app = typer.Typer(
    name="matryoshka",
    help="Matryoshka embeddings end to end: train or adapt a model so its prefixes work, evaluate "
    "every prefix dimension, index and search with funnel search, and serve it.\n\nStart with [bold]matryoshka demo[/bold].",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
)
LOG_WIDTH = 120  # columns of tables printed to a file or a pipe (a terminal uses its own width)
console = Console(stderr=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else LOG_WIDTH)
errors = Console(stderr=True)

ModelOption = typer.Option(
    DEFAULT_MODEL,
    "--model",
    "-m",
    help="'default' (all-MiniLM-L6-v2, bundled), 'wordllama' (bundled, Matryoshka-trained), a local "
    "sentence-transformers folder, or a hub name (needs a network).",
)
QueryPromptOption = typer.Option(
    None, help="Text prepended to queries, e.g. 'search_query: ' (default: the model's own 'query' prompt)."
)
DocumentPromptOption = typer.Option(
    None, help="Text prepended to documents (default: the model's own 'document' prompt)."
)
BatchOption = typer.Option(
    None, min=1, help="Texts per encoding batch (default: the model's own, 32 for transformers)."
)
TrustRemoteCodeOption = typer.Option(
    False,
    "--trust-remote-code",
    help="Run the code a model ships with its weights (nomic-embed-text-v1.5 and gte-multilingual-base "
    "do): only for a model whose source you trust, since it runs as you. An index records it, so "
    "search, add and serve load the model the same way.",
)


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE)  # the machine's, not a bug


@contextmanager
def user_errors() -> Iterator[None]:
    """A :class:`MatryoshkaError` (bad files, bad options) becomes one red line and exit code 2;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except MatryoshkaError as exc:
        errors.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        told = storage_error(exc, exc.filename or "its place")
        errors.print(Text.assemble(("error: ", "bold red"), str(told)), highlight=False, soft_wrap=True)
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
            raise UsageError(f"{option}: {part.strip()!r} is not a {'whole ' if cast is int else ''}number") from None
    return values


AdapterOption = typer.Option(
    None, "--adapter", help="An adapter file from 'matryoshka adapt': prefixes of f(x) instead of x."
)


ApiBaseOption = typer.Option(
    None,
    "--api-base",
    help="For --model openai:NAME: the endpoint's base URL, e.g. http://localhost:8000/v1 (default: "
    "$OPENAI_BASE_URL, else OpenAI's). The key comes from $OPENAI_API_KEY and is never stored.",
)
DimensionsOption = typer.Option(
    None,
    "--dimensions",
    min=1,
    help="For --model openai:NAME: ask the endpoint for vectors of this many dims (its 'dimensions' "
    "parameter). Default: full vectors, which matryoshka slices itself.",
)
EmbeddingCacheOption = typer.Option(
    None,
    "--embedding-cache",
    help="For --model openai:NAME: the file that keeps every vector received, so that a rerun sends "
    "only texts not yet embedded. Default: inside the index (index, add), else "
    "~/.cache/matryoshka/embedding-cache.sqlite.",
)


def _remote_options(model: str | None, api_base: str | None, dimensions: int | None, cache: Path | None, db=None):
    """The load_model keywords for an ``openai:`` model, or an error when they are given for another."""
    from .embedding_cache import cache_path_for_index, user_cache_path
    from .models import REMOTE_PREFIX

    if not (model or "").startswith(REMOTE_PREFIX):
        if api_base is not None or dimensions is not None or cache is not None:
            raise UsageError("--api-base, --dimensions and --embedding-cache are for --model openai:NAME")
        return {}
    place = cache or (cache_path_for_index(db) if db is not None else None) or user_cache_path()
    return {"api_base": api_base, "dimensions": dimensions, "embedding_cache": place}


def _load(model: str, query_prompt: str | None, document_prompt: str | None, adapter: Path | None = None, **options):
    """``options``: :func:`matryoshka.models.load_model`'s other keyword arguments, those given."""
    from .models import load_model

    with console.status(f"Loading model [bold]{model}[/bold]…"):
        encoder = load_model(model, query_prompt=query_prompt, document_prompt=document_prompt, **options)
        if adapter is None:
            return encoder
        from .adapt import with_adapter

        return with_adapter(encoder, adapter)


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


def _progress():
    return progress_display(console)


@app.command()
def evaluate(
    task: str = typer.Option(
        ..., "--task", "-t", help="'retrieval' (nDCG@10, recall@10/100, MRR@10) or 'sts' (cosine Spearman)."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="A BEIR folder (retrieval), an STS Benchmark folder, or a JSONL/CSV/TSV of scored pairs (sts).",
    ),
    split: str = typer.Option("test", help="Which split: qrels/<split>.tsv for BEIR, sts-<split>.csv for STS."),
    dims: str | None = typer.Option(None, help="Comma-separated prefix dims, e.g. 384,96,24. Default: d, d/2, … d/32."),
    methods: str = typer.Option(
        "truncate,pca",
        help="Comma-separated: truncate (plain prefix), pca (prefix after a PCA rotation), adapter (prefix of f(x), with --adapter; added when --adapter is given).",
    ),
    model: str = ModelOption,
    adapter: Path | None = AdapterOption,
    json_path: Path | None = typer.Option(None, "--json", help="Write the per-dimension results as JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a two-panel PNG (score, and % of full) here."),
    query_prompt: str | None = QueryPromptOption,
    document_prompt: str | None = DocumentPromptOption,
    batch_size: int | None = BatchOption,
    api_base: str | None = ApiBaseOption,
    dimensions: int | None = DimensionsOption,
    embedding_cache: Path | None = EmbeddingCacheOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Score a model at every prefix dimension, encoding each text only once.

    [bold]Examples[/bold]

      matryoshka evaluate --task retrieval --data ./scifact --split test --dims 384,192,96,48,24,12 --json out.json

      matryoshka evaluate --task sts --data ./stsb --dims 384,48,12 --plot sts.png

      matryoshka evaluate --task retrieval --data ./scifact --adapter scifact-adapter.npz
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
        remote = _remote_options(model, api_base, dimensions, embedding_cache)
        encoder = _load(model, query_prompt, document_prompt, trust_remote_code=trust_remote_code, **remote)
        dim_list = parse_dims(dims, encoder.full_dim)
        with _progress() as progress:
            step = progress.add_task("Scoring dimensions", total=planned_steps(dim_list, method_list, encoder.full_dim))
            report = run_evaluation(
                encoder,
                task,
                data,
                split,
                dim_list,
                method_list,
                batch_size=batch_size,
                progress=lambda n: progress.advance(step, n),
                adapter=fitted,
            )
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
    input: Path = typer.Option(
        ...,
        "--input",
        "-i",
        help="Texts: JSONL/CSV/TSV with a 'text' column (optional 'id', 'title'), or TXT, one text per line.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Where to write the float32 .npy (ids go beside it in <output>.ids.txt)."
    ),
    dim: int | None = typer.Option(None, help="Keep the first DIM dimensions (re-normalised). Default: full."),
    kind: str = typer.Option("document", help="'document', 'query' or 'plain': which of the model's prompts to apply."),
    model: str = ModelOption,
    adapter: Path | None = AdapterOption,
    query_prompt: str | None = QueryPromptOption,
    document_prompt: str | None = DocumentPromptOption,
    batch_size: int | None = BatchOption,
    api_base: str | None = ApiBaseOption,
    dimensions: int | None = DimensionsOption,
    embedding_cache: Path | None = EmbeddingCacheOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Encode texts to a float32 .npy of unit vectors.

    [bold]Examples[/bold]

      matryoshka encode --input docs.jsonl --output docs.npy --dim 128

      matryoshka encode --input docs.jsonl --output docs-48.npy --dim 48 --adapter minilm-adapter.npz

      OPENAI_API_KEY=sk-... matryoshka encode --model openai:text-embedding-3-small --input docs.jsonl --output docs.npy
    """
    with user_errors():
        if kind not in ("document", "query", "plain"):
            raise UsageError(f"--kind must be document, query or plain, got {kind!r}")
        if output.is_dir():
            raise DataError(output, "is a folder; give a file name ending in .npy")
        remote = _remote_options(model, api_base, dimensions, embedding_cache)
        corpus = read_texts(input)
        encoder = _load(model, query_prompt, document_prompt, adapter, trust_remote_code=trust_remote_code, **remote)
        with _progress() as progress:
            step = progress.add_task("Encoding", total=len(corpus))
            vectors = encoder.encode(
                corpus.texts,
                dim,
                kind=None if kind == "plain" else kind,
                batch_size=batch_size,
                progress=lambda n: progress.advance(step, n),
            )
        write_vectors(output, vectors, corpus.ids)
        console.print(f"{vectors.shape[0]} × {vectors.shape[1]} float32 vectors written to [bold]{output}[/bold]")


DbOption = typer.Option(
    ...,
    "--db",
    help="Where the index lives: a folder (the embedded local store), a Milvus Lite "
    "file ending in .db, or a Milvus server URI such as http://127.0.0.1:19530.",
)
CollectionOption = typer.Option(None, help="Milvus only: the index's collection name prefix (default 'matryoshka').")


@app.command()
def index(
    corpus: Path = typer.Option(
        ...,
        "--corpus",
        "-c",
        help="Documents: JSONL/CSV/TSV with 'text' (+ 'id', 'title'), TXT, or a BEIR folder. Every other "
        "field (column) is stored as filterable metadata: strings, integers, floats, booleans, lists of strings.",
    ),
    db: str = DbOption,
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model that encodes the corpus (default: 'default'). "
        "With --vectors: the model those vectors came from, so text queries work.",
    ),
    vectors: Path | None = typer.Option(
        None, help="Precomputed corpus vectors (.npy, one row per document, in corpus order)."
    ),
    adapter: Path | None = typer.Option(
        None,
        "--adapter",
        help="An adapter file from 'matryoshka adapt': the head searches prefixes of f(x); the last stage the model's own full vectors.",
    ),
    head_dim: int | None = typer.Option(
        None,
        help="Dims of the head searched first (bits, for a binary head). Default: autotuned among d/32, d/16, d/8, d/4 "
        "(each moved up to a trained dim, for a model that declares its Matryoshka dims); all d bits for a binary head.",
    ),
    head_index: str = typer.Option(
        "auto",
        help="Head search: 'auto' (default: 'flat' below 100,000 documents or with --head-dim; from there the "
        "sign bits where autotune finds them cheaper at the target recall), 'flat' (float prefixes, exact scan), "
        "'hnsw' (graph over them), 'binary' (sign bits "
        "searched by Hamming distance: d bits cost the RAM of a d/32 float head and keep far more of the ranking; the "
        "fastest head at a million rows) or 'binary-ivf' (Milvus's BIN_IVF_FLAT over the sign bits). On Milvus these "
        "are FLAT, HNSW, BIN_FLAT and BIN_IVF_FLAT; Milvus Lite builds only FLAT and BIN_FLAT, and an approximate head "
        "(hnsw, binary-ivf) is tuned by searching the built index.",
    ),
    storage: str = typer.Option(
        "float32",
        help="How the local store keeps the vectors the funnel re-ranks: 'float32', 'float16' (half the disk and page "
        "cache; scores within about 5e-5 of float32's) or 'int8' (a quarter: a scale per row, its largest coordinate at "
        "±127; scores within about 2e-3, and slightly lower recall against float32's exact search). Autotune, exact "
        "search and the final scores all use the vectors as stored.",
    ),
    k: int = typer.Option(10, min=1, help="The k that autotune tunes the default schedule for."),
    target_recall: float = typer.Option(
        0.99,
        min=0.01,
        max=1.0,
        help="Recall@k against exact search that autotune must reach, with 95% confidence over its tuning queries.",
    ),
    recall_levels: str = typer.Option(
        "0.9,0.95,0.99,0.999",
        help="Further recall@k levels to tune a schedule for, comma-separated ('' for none): 'search --recall 0.95' "
        "then takes the cheapest schedule tuned for at least 0.95, and a recall above every level searches exactly.",
    ),
    tune_queries: Path | None = typer.Option(
        None, help="Real queries to autotune on (text file as for --queries). Default: word windows of the corpus."
    ),
    collection: str | None = CollectionOption,
    api_base: str | None = ApiBaseOption,
    dimensions: int | None = DimensionsOption,
    embedding_cache: Path | None = EmbeddingCacheOption,
    query_prompt: str | None = QueryPromptOption,
    document_prompt: str | None = DocumentPromptOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Encode a corpus once and store it for funnel search: a contiguous head prefix beside the full
    vectors, with an autotuned default schedule. All or nothing: the previous index stays searchable
    until the new one is complete.

    [bold]Examples[/bold]

      matryoshka index --corpus docs.jsonl --db ./my-index

      matryoshka index --model wordllama --corpus ./scifact --db scifact.db

      matryoshka index --corpus docs.jsonl --vectors docs.npy --db ./byo-index

      matryoshka index --model wordllama --corpus big.jsonl --head-index binary --db ./big-index

      matryoshka index --corpus ./scifact --adapter minilm-adapter.npz --db ./adapted-index

      matryoshka index --model openai:text-embedding-3-small --corpus docs.jsonl --db ./openai-index

      matryoshka index --model openai:wordllama --api-base http://localhost:8000/v1 --corpus docs.jsonl --db ./via-api

      matryoshka index --model ./nomic-embed-text-v1.5 --trust-remote-code --corpus docs.jsonl --db ./nomic-index

    The model's prompts (its own, the catalog's, or --query-prompt/--document-prompt) are recorded
    with the index, and so are its trained Matryoshka dims: the default head and funnel stages keep
    to them ('matryoshka models' lists the known ones).

    A JSONL line such as {"id": "d1", "text": "…", "lang": "en", "year": 2021, "tags": ["a"]} gives the
    document the metadata fields lang, year and tags, for 'search --where'.
    """
    from .funnel import parse_recall_levels
    from .index import build_index
    from .vectors import check_storage

    with user_errors():
        levels = parse_recall_levels(recall_levels, "--recall-levels")
        check_storage(storage)
        documents = read_texts(corpus)
        if adapter is not None and model is None and vectors is not None:
            raise UsageError(
                "--adapter with --vectors needs --model: the adapter belongs to the model the vectors came from"
            )
        if model is None and vectors is not None and (query_prompt is not None or document_prompt is not None):
            raise UsageError("--query-prompt and --document-prompt need --model: the prompts are that model's")
        remote = _remote_options(model, api_base, dimensions, embedding_cache, db)
        options = {"trust_remote_code": trust_remote_code, **remote}
        encoder = (
            _load(model or DEFAULT_MODEL, query_prompt, document_prompt, adapter, **options)
            if (model or vectors is None)
            else None
        )
        array = read_vectors(vectors, "corpus vectors") if vectors else None
        tune = None
        if tune_queries is not None:
            if encoder is None:
                raise UsageError("--tune-queries needs --model to encode them")
            tune = getattr(encoder, "base", encoder).encode(read_texts(tune_queries).texts, kind="query")
        from .stores import is_milvus_uri

        milvus = is_milvus_uri(db)
        work = ("Storing" if array is not None else "Encoding") + (", then writing to Milvus" if milvus else "")
        with _progress() as progress:
            step = progress.add_task(work, total=len(documents) * (2 if milvus else 1))
            meta = build_index(
                db,
                documents.ids,
                documents.texts,
                encoder=encoder,
                vectors=array,
                head_dim=head_dim,
                head_index=head_index,
                k=k,
                target_recall=target_recall,
                recall_levels=levels,
                tune_queries=tune,
                collection=collection,
                progress=lambda n: progress.advance(step, n),
                metadata=documents.metadata,
                schema=documents.schema,
                storage=storage,
            )
        console.print(
            f"Indexed [bold]{meta.count:,}[/bold] documents into [bold]{db}[/bold]: model {meta.model or '(vectors)'}, "
            f"{meta.full_dim} dims{'' if meta.storage == 'float32' else f' stored as {meta.storage}'}, "
            f"head {meta.head_dim}{' bits (binary)' if meta.binary_head else ''}"
        )
        if meta.fields:
            console.print(f"Metadata fields: {describe_fields(meta.fields)}", markup=False)
        tuned = meta.autotune
        console.print(
            f"Default schedule [bold]{meta.schedule}[/bold] (recall@{tuned.k} "
            f"{tuned.recall:.3f} vs exact on {tuned.queries})"
        )
        if not tuned.passed:
            console.print(
                f"[yellow]No schedule tried reached recall {target_recall} with 95% confidence; this is the "
                "most accurate one. Search with --exact, or pass a wider --schedule.[/yellow]"
            )
        if meta.recall_schedules:
            console.print(
                "Recall levels for --recall: "
                + ", ".join(f"{level:g} → {schedule}" for level, schedule in meta.schedules_by_recall().items()),
                markup=False,
            )


@app.command()
def add(
    corpus: Path = typer.Option(
        ...,
        "--corpus",
        "-c",
        help="Documents to add, as for 'index': JSONL/CSV/TSV with 'text' (+ 'id' and metadata fields), TXT, or BEIR.",
    ),
    db: str = DbOption,
    vectors: Path | None = typer.Option(
        None,
        help="Their precomputed vectors (.npy, one row per document, in corpus order); else the index's model encodes them.",
    ),
    id_prefix: str | None = typer.Option(
        None,
        "--id-prefix",
        help="For a corpus without ids (TXT, or no 'id' field): name its documents PREFIX + line number. "
        "Without it such a corpus is refused, since its line numbers would replace the index's documents 1, 2, ...",
    ),
    collection: str | None = CollectionOption,
    embedding_cache: Path | None = typer.Option(
        None,
        "--embedding-cache",
        help="For an index built through an endpoint (openai:NAME) with --embedding-cache: the same file, so "
        "that texts already embedded are not sent again. Default: the cache inside the index.",
    ),
) -> None:
    """Add documents to an index while it serves, without rebuilding: a document whose id is
    already there is replaced (upsert). Durable once this returns. Segments of like size are
    merged as they gather, and the schedule is re-tuned when the corpus has doubled since it
    was last tuned.

    [bold]Examples[/bold]

      matryoshka add --db ./my-index --corpus new-docs.jsonl

      matryoshka add --db ./byo-index --corpus new-docs.jsonl --vectors new-docs.npy

      matryoshka add --db ./my-index --corpus notes.txt --id-prefix notes-2026-12-
    """
    from .index import Index

    with user_errors():
        documents = read_texts(corpus)
        if documents.numbered:
            if id_prefix is None:
                raise UsageError(
                    f"{corpus} gives its documents no ids, so they would be numbered 1, 2, ... and replace "
                    "the index's documents of those ids; give each an 'id', or name them with --id-prefix PREFIX"
                )
            documents = replace(documents, ids=[id_prefix + i for i in documents.ids])
        elif id_prefix is not None:
            raise UsageError(f"{corpus} gives its documents ids; --id-prefix is for a corpus without them")
        array = read_vectors(vectors, "vectors") if vectors else None
        with Index(db, collection=collection, embedding_cache=embedding_cache or True) as opened:
            with _progress() as progress:
                step = progress.add_task("Encoding" if array is None else "Storing", total=len(documents))
                report = opened.add(
                    documents.ids,
                    documents.texts,
                    array,
                    metadata=documents.metadata,
                    schema=documents.schema,
                    progress=lambda n: progress.advance(step, n),
                )
            console.print(
                f"Added [bold]{report.added:,}[/bold] and replaced [bold]{report.replaced:,}[/bold] documents in "
                f"[bold]{db}[/bold]; it now holds {report.documents:,}"
            )


@app.command()
def delete(
    ids: list[str] = typer.Argument(None, help="Ids of the documents to delete."),
    db: str = DbOption,
    ids_file: Path | None = typer.Option(None, "--ids", help="A text file of ids to delete, one per line."),
    collection: str | None = CollectionOption,
) -> None:
    """Delete documents by id. Ids not in the index are listed, not an error. The rows stay on disk
    until 'matryoshka compact'; searches skip them at once.

    [bold]Examples[/bold]

      matryoshka delete --db ./my-index doc-17 doc-42

      matryoshka delete --db ./my-index --ids stale-ids.txt
    """
    from .data import read_ids
    from .index import Index

    with user_errors():
        wanted = list(ids or []) + (read_ids(ids_file) if ids_file else [])
        if not wanted:
            raise UsageError("give the ids to delete, as arguments or with --ids FILE")
        with Index(db, collection=collection) as opened:
            report = opened.delete(wanted)
            console.print(
                f"Deleted [bold]{len(report.deleted):,}[/bold] documents from [bold]{db}[/bold]; it now holds "
                f"{report.documents:,}"
            )
        if report.not_found:
            shown = ", ".join(report.not_found[:10]) + (" …" if len(report.not_found) > 10 else "")
            console.print(f"{len(report.not_found):,} id(s) were not in the index: {shown}", markup=False)


@app.command()
def compact(db: str = DbOption, collection: str | None = CollectionOption) -> None:
    """Merge an index's segments into one, drop deleted rows, and re-tune its search schedule.
    Searches keep answering meanwhile; the next search after it reads the compacted index.

    [bold]Example[/bold]

      matryoshka compact --db ./my-index
    """
    from .index import Index

    with user_errors():
        with Index(db, collection=collection) as opened:
            with _progress() as progress:
                step = progress.add_task("Compacting", total=len(opened))
                meta = opened.compact(progress=lambda n: progress.advance(step, n))
            console.print(
                f"Compacted [bold]{db}[/bold]: {meta.count:,} documents; schedule [bold]{meta.schedule}[/bold] "
                f"(recall@{meta.autotune.k} {meta.autotune.recall:.3f})"
                if meta.autotune
                else f"Compacted [bold]{db}[/bold]: {meta.count:,} documents"
            )


@app.command()
def search(
    db: str = DbOption,
    query: str | None = typer.Option(None, "--query", "-q", help="One query text."),
    queries: Path | None = typer.Option(
        None, help="Many queries: JSONL/CSV/TSV with 'text' (+ 'id'), or TXT, one per line."
    ),
    query_vectors: Path | None = typer.Option(
        None, help="Precomputed query vectors (.npy), for indexes of your own vectors."
    ),
    k: int = typer.Option(10, min=1, help="How many results per query."),
    schedule: str | None = typer.Option(
        None,
        help="Funnel stages DIM:KEEP, e.g. 12:2000,24:1000,48:500,96:250,192:100,384:10; a binary head is written BITSb:KEEP, e.g. 384b:2000,192:250,384:10. Default: the index's autotuned one.",
    ),
    exact: bool = typer.Option(
        False, "--exact", help="Exact full-dimension search instead of the funnel (for comparison)."
    ),
    dim: int | None = typer.Option(
        None,
        help="Search only the first DIM dimensions (exact scan of the re-normalised prefixes): what a DIM-dim index would return.",
    ),
    recall: float | None = typer.Option(
        None,
        help="The recall@k you need, e.g. 0.95: the cheapest schedule the index tuned for at least that level "
        "('matryoshka index' prints them, and a server's GET /info); above its highest level the search is exact. Default: the index's target.",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Must match the indexing model (checked); default: the index's own."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Write one row per query (ids, scores, per-stage time) here."
    ),
    show: int = typer.Option(3, help="How many queries to print as tables."),
    where: str | None = typer.Option(
        None,
        "--where",
        "-w",
        help='Keep only documents whose metadata matches this JSON filter, e.g. \'{"lang": "en", "year": {"$gte": 2020}}\'. '
        "Operators: $eq $ne $gt $gte $lt $lte $in $nin, $and $or $not (on a list field $eq and $in mean 'holds').",
    ),
    fields: str | None = typer.Option(
        None, help="Metadata fields to show with each hit, comma-separated (default: all; '' for none)."
    ),
    collection: str | None = CollectionOption,
) -> None:
    """Search an index with the funnel (or --exact), printing results and the time spent per stage.

    [bold]Examples[/bold]

      matryoshka search --db ./my-index --query "what causes tides?"

      matryoshka search --db ./my-index --query "tides" --where '{"lang": "en", "year": {"$gte": 2020}}' --fields lang,year

      matryoshka search --db scifact.db --queries questions.txt --k 10 --schedule 8:400,16:200,32:100,64:50,128:25,256:10 --json out.json
    """
    from .data import write_json
    from .funnel import Schedule
    from .index import Index, answers_json, search_mode

    with user_errors():
        if sum(x is not None for x in (query, queries, query_vectors)) != 1:
            raise UsageError("give exactly one of --query, --queries and --query-vectors")
        if json_path is not None and json_path.is_dir():
            raise DataError(json_path, "is a folder; give a file name for the JSON")
        opened = Index(db, model=model, collection=collection)
        plan = Schedule.parse(schedule) if schedule else None
        scope = opened.parse_filter(where)  # a bad filter fails before any encoding
        names = opened.check_fields([f.strip() for f in fields.split(",") if f.strip()] if fields is not None else None)
        if query_vectors is not None:
            vectors = read_vectors(query_vectors, "query vectors")
            labels = [str(i) for i in range(len(vectors))]
        else:
            labels = [query] if query is not None else read_texts(queries).texts
            with console.status(f"Encoding {len(labels)} queries…"):
                vectors = opened.encode_queries(labels)
        if recall is not None and (plan is not None or exact or dim is not None):
            raise UsageError("give --recall, or --schedule, --exact or --dim: not two of them")
        mode = search_mode(exact=exact, dim=dim)
        result = opened.search_vectors(vectors, k, schedule=plan, exact=exact, dim=dim, filter=scope, recall=recall)
        plan = result.schedule if mode == "funnel" else None  # what ran: a level's schedule, or none where exact
        if mode == "funnel" and plan is None:
            mode = "exact"
        hits = opened.hits(result, names)
        for label, found in list(zip(labels, hits))[:show]:
            console.print(hits_table(label, found, min(console.width, 160)))
        described = f"{dim}-dim prefix" if dim else result.plan if mode == "exact" else str(plan)
        if recall is not None:
            described += f" (for recall ≥ {recall:g})"
        per_stage = "  ".join(
            f"{'filter' if d == 0 else f'{d}d'}→{n:,}: {1000 * s:.1f} ms"
            for d, n, s in zip(result.stage_dims, result.stage_keeps, result.stage_seconds)
        )
        how = f", {result.plan}" if scope is not None and described != result.plan else ""
        console.print(
            Text.assemble(
                f"{len(hits)} queries, {described}{how}: {1000 * result.seconds / len(hits):.2f} ms/query  ",
                (f"({per_stage}, whole batch)", "dim"),
            )
        )
        warning = opened.schedule_warning() if mode == "funnel" and schedule is None else None
        if warning:
            console.print(Text("Note: " + warning, style="yellow"))
        if json_path:
            answers = answers_json(labels, result, hits, k=k, mode=mode, dim=dim or opened.meta.full_dim, schedule=plan)
            write_json(json_path, {"db": str(db), "results": answers})
            console.print(f"JSON written to [bold]{json_path}[/bold]")


def hits_table(label: str, found, width: int) -> Table:
    """One query's hits in ``width`` columns: rank, score and id keep their width, the text gets
    the rest and ends in an ellipsis (rich would rather squeeze the narrow columns to nothing);
    metadata fields, when the hits carry any, get a column of their own."""
    hits = found.to_list()
    shown = any(hit.get("fields") for hit in hits)
    rank_width = len(str(len(hits))) + 1
    id_width = min(ID_WIDTH, width // 4, max([len(h["id"]) for h in hits] + [2]))
    fields_width = FIELDS_WIDTH if shown else 0
    text_width = max(10, width - rank_width - SCORE_WIDTH - id_width - fields_width - 13 - 3 * shown)
    table = Table(title=Text(label[:100]), title_justify="left")
    table.add_column("#", justify="right", width=rank_width, no_wrap=True)
    table.add_column("score", justify="right", width=SCORE_WIDTH, no_wrap=True)
    table.add_column("id", width=id_width, no_wrap=True, overflow="ellipsis")
    table.add_column("text", width=text_width, no_wrap=True, overflow="ellipsis")
    if shown:
        table.add_column("fields", width=fields_width, overflow="fold")
    for hit in hits:
        text = " ".join(hit["text"].split())
        text = text if len(text) <= text_width else text[: text_width - 1] + "…"
        cells = [str(hit["rank"]), f"{hit['score']:.4f}", Text(hit["id"]), Text(text)]
        if shown:
            cells.append(Text(describe_values(hit.get("fields") or {})))
        table.add_row(*cells)
    if not hits:
        table.caption = "no document matches"
    return table


def describe_fields(schema: dict) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in schema.items())


def describe_values(values: dict) -> str:
    return "  ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in values.items())


ID_WIDTH = 30
SCORE_WIDTH = 7
FIELDS_WIDTH = 36


@app.command()
def adapt(
    corpus: Path = typer.Option(
        ...,
        "--corpus",
        "-c",
        help="The documents the adapter is fitted to: JSONL/CSV/TSV with 'text', TXT, or a BEIR folder.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the adapter (.npz, a few hundred KB)."),
    model: str = ModelOption,
    kind: str = typer.Option(
        "learned",
        help="pca (rotation onto the corpus' principal axes), orthogonal (PCA refined, cosines unchanged) or learned (free linear map, optional residual MLP).",
    ),
    pairs: Path | None = typer.Option(
        None,
        help="(query, relevant document) pairs for the supervised loss: JSONL/CSV/TSV pairs, or a BEIR folder (its train qrels).",
    ),
    steps: int = typer.Option(300, min=1, help="Optimiser steps (orthogonal, learned)."),
    lr: float = typer.Option(5e-4, min=0.0, help="Adam learning rate."),
    hidden: int = typer.Option(0, min=0, help="learned only: units of the residual MLP (0: a linear map)."),
    query_samples: int = typer.Option(
        5000, min=10, help="Query-like sentences of the corpus used as anchors (word windows where it has none)."
    ),
    queries: Path | None = typer.Option(
        None,
        help="Real queries, no relevant documents needed (text file as for search --queries): they fit query heads.",
    ),
    query_heads: bool = typer.Option(
        True,
        help="With --pairs or --queries: also fit a query-side head for each head dim (d/32 … d/4) on those real queries, so that each query's full top-10 lands in the funnel head's shortlist; a head is kept only if a held-out fifth of the queries gains. Documents and the index are unchanged.",
    ),
    api_base: str | None = ApiBaseOption,
    dimensions: int | None = DimensionsOption,
    embedding_cache: Path | None = EmbeddingCacheOption,
    query_prompt: str | None = QueryPromptOption,
    document_prompt: str | None = DocumentPromptOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Fit a post-hoc adapter f so that the prefixes of f(x) keep what a model's full vectors know,
    for a model that was not trained with Matryoshka loss (MiniLM, an API model's vectors).

    Use the file with --adapter on encode, evaluate and index; an index built with it searches
    prefixes of f(x) first and returns exactly the model's own full-dimension top-k.

    [bold]Examples[/bold]

      matryoshka adapt --corpus ./scifact --output scifact-adapter.npz

      matryoshka adapt --corpus ./scifact --pairs ./scifact --kind learned --output sup.npz

      matryoshka adapt --corpus docs.jsonl --queries past-queries.txt --kind orthogonal --output with-query-heads.npz

      matryoshka evaluate --task retrieval --data ./scifact --adapter scifact-adapter.npz
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
        remote = _remote_options(model, api_base, dimensions, embedding_cache)
        encoder = _load(model, query_prompt, document_prompt, trust_remote_code=trust_remote_code, **remote)
        with _progress() as progress:
            encoding = progress.add_task("Encoding the corpus", total=len(documents))
            task = progress.add_task(f"Fitting {kind} adapter", total=steps)
            heads = progress.add_task("Fitting query heads", total=None, visible=False)

            def head_progress(done: int, total: int) -> None:
                progress.update(heads, completed=done, total=total, visible=True)

            settings = FitSettings(
                steps=steps, lr=lr, progress=lambda step, loss: progress.update(task, completed=step)
            )
            started = time.perf_counter()
            fitted = fit_on_texts(
                encoder,
                documents.texts,
                kind,
                pair_queries=pair_queries,
                pair_documents=pair_documents,
                settings=settings,
                query_samples=query_samples,
                hidden=hidden,
                query_heads=query_heads,
                queries=read_texts(queries).texts if queries is not None else None,
                head_progress=head_progress,
                encode_progress=lambda n: progress.advance(encoding, n),
            )
        path = fitted.save(output)
        losses = getattr(fitted, "loss_history_", None)
        trained = f", loss {losses[0]:.4f} → {losses[-1]:.4f}" if losses else ""
        console.print(
            f"{kind} adapter for {encoder.name} fitted on {len(documents)} documents"
            f"{f' and {len(pair_queries)} pairs' if pair_queries else ''} in {time.perf_counter() - started:.0f} s"
            f"{trained}: [bold]{path}[/bold]"
        )
        kept = getattr(fitted, "query_heads_", {})
        for dim, (before, after) in getattr(fitted, "query_head_validation_", {}).items():
            console.print(
                f"query head at {dim} dims: held-out queries' top-10 in the head shortlist {before:.3f} → "
                f"{after:.3f}, {'kept' if dim in kept else 'not kept (no gain)'}"
            )


@app.command()
def train(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Training rows: JSONL/CSV/TSV pairs (anchor, positive[, negative]) or scored pairs (sentence1, sentence2, score), an STS Benchmark folder, or a BEIR folder (train qrels).",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the trained model (and checkpoints/)."),
    model: str = ModelOption,
    dims: str | None = typer.Option(
        None, help="Matryoshka dims, e.g. 384,192,96,48,24,12. Default: d, d/2, … d/32 (at least 8)."
    ),
    weights: str | None = typer.Option(None, help="One loss weight per dim, e.g. 1,1,1,1,1,1. Default: all 1."),
    epochs: float = typer.Option(1.0, min=0.0, help="Passes over the data."),
    batch_size: int = typer.Option(16, min=2, help="Rows per step (in-batch negatives for contrastive data)."),
    lr: float = typer.Option(2e-5, min=0.0, help="Peak learning rate (linear warm-up and decay)."),
    loss: str = typer.Option(
        "auto",
        help="auto (cosent for scored pairs; mnrl, or cached-mnrl from batch 128, for contrastive rows), mnrl, cached-mnrl or cosent.",
    ),
    eval_data: Path | None = typer.Option(
        None, help="Per-dimension evaluation during training: an STS folder, a BEIR folder or scored pairs."
    ),
    eval_steps: int | None = typer.Option(None, min=1, help="Evaluate every N steps (default: once per epoch)."),
    save_steps: int = typer.Option(500, min=1, help="Checkpoint every N steps (under OUTPUT/checkpoints)."),
    max_steps: int = typer.Option(-1, help="Stop after N steps (overrides --epochs)."),
    plain: bool = typer.Option(
        False, "--no-matryoshka", help="Train the base loss alone, without MatryoshkaLoss (a baseline)."
    ),
    seed: int = typer.Option(12, help="Random seed (data order, initialisation of new layers)."),
    rotation: str = typer.Option(
        "orthogonal",
        help="Start from an adapter's rotation fitted on the training texts: orthogonal "
        "(the default: prefixes start better than truncation, full-dim cosines unchanged), pca, "
        "or none (the model as it is).",
    ),
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Fine-tune a sentence-transformers model with MatryoshkaLoss so that every prefix of its
    vectors works as an embedding. Ctrl-C stops and saves the weights reached so far.

    [bold]Examples[/bold]

      matryoshka train --data ./stsb --eval-data ./stsb --output minilm-sts-matryoshka

      matryoshka train --data pairs.jsonl --dims 384,128,32 --epochs 2 --batch-size 64 --output my-model
    """
    from .train import TrainSettings, read_eval_data, read_training_data
    from .train import train as run_training

    with user_errors():
        dim_list = _numbers(dims, int, "--dims")
        weight_list = _numbers(weights, float, "--weights")
        rows = read_training_data(data)
        evaluation = read_eval_data(eval_data) if eval_data else None
        settings = TrainSettings(
            dims=dim_list,
            weights=weight_list,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            matryoshka=not plain,
            max_steps=max_steps,
            eval_steps=eval_steps,
            save_steps=save_steps,
            seed=seed,
            rotation=rotation,
        )
        console.print(f"Training [bold]{model}[/bold] on {len(rows)} {rows.kind} rows from {rows.source}")
        result = run_training(
            model,
            rows,
            output,
            settings,
            eval_data=evaluation,
            show_progress=console.is_terminal,
            trust_remote_code=trust_remote_code,
        )
        if result.final is not None:
            console.print(report_table(result.final))
        state = "[yellow]interrupted[/yellow] after" if result.interrupted else "trained for"
        console.print(
            f"{state} {result.steps} steps in {result.seconds:.0f} s ({result.loss}"
            f"{', MatryoshkaLoss at ' + ','.join(map(str, result.dims)) if not plain else ''}): "
            f"[bold]{output}[/bold] (loads with load_model or SentenceTransformer)"
        )
        if result.interrupted:
            raise typer.Exit(code=130)


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON instead of a table."),
) -> None:
    """List the bundled models and the known open and hosted Matryoshka models: their dims, the
    prefix dims they were trained at, their prompts, whether they run code of their own
    (--trust-remote-code) and where they load from. Any other sentence-transformers folder or hub
    name works too; a folder may state its Matryoshka dims in config_sentence_transformers.json.

    [bold]Examples[/bold]

      matryoshka models

      matryoshka models --json
    """
    import json

    from .models import listed_models

    rows = listed_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console.print(models_table(rows))


def models_table(rows: list[dict]) -> Table:
    table = Table(title="Models (--model NAME)")
    table.add_column("name", overflow="fold")
    table.add_column("dims", justify="right")
    table.add_column("Matryoshka dims", overflow="fold")
    table.add_column("prompts", overflow="fold")
    table.add_column("remote code", justify="center")
    table.add_column("loads from", overflow="fold")
    for row in rows:
        name = Text(row["name"], style="bold")
        if row["aliases"]:
            name.append(f"\n{', '.join(row['aliases'])}", style="dim")
        prompts = "\n".join(
            f"{kind}: {prompt!r}"
            for kind, prompt in (("query", row["query_prompt"]), ("document", row["document_prompt"]))
            if prompt
        )
        dims = ",".join(map(str, row["matryoshka_dims"])) or "-"
        if row["pre_truncation"]:
            dims += f"\n(after {row['pre_truncation'].replace('_', ' ')})"
        table.add_row(
            name,
            str(row["full_dim"]),
            dims,
            Text(prompts or "-"),
            "yes" if row["trust_remote_code"] else "no",
            row["loads_from"],
        )
    return table


HostOption = typer.Option(
    "127.0.0.1",
    help="Address to bind. The default, loopback, is reachable from this machine only; "
    "use 0.0.0.0 to expose it (behind your own proxy and auth).",
)
PortOption = typer.Option(8000, min=1, max=65535, help="TCP port.")


def _serve(opened, host: str, port: int, limits, api_key: str | None = None, models: dict | None = None) -> None:
    from .server import serve as run_server

    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"

    def ready() -> None:  # printed once the port is ours, not before
        if opened is not None:
            served = f"Serving [bold]{opened.meta.count:,}[/bold] documents ({opened.meta.model or 'vectors'}) at "
            served += f"[bold link={url}]{url}[/bold link]   OpenAI-compatible embeddings: {url}v1"
            access = "Writes and /v1 need the API key" if api_key is not None else "Read-only"
        else:
            served = f"Serving [bold]{', '.join(models or {})}[/bold] at [bold]{url}v1[/bold] (OpenAI-compatible embeddings, no index)"
            access = "Requests need the API key" if api_key is not None else "No API key needed"
        console.print(f"{served}   API docs: {url}docs   {access}.   Ctrl-C stops.")

    run_server(opened, host=host, port=port, limits=limits, on_ready=ready, api_key=api_key, models=models)


@app.command()
def serve(
    db: str | None = typer.Option(
        None,
        "--db",
        help="The index to serve: a folder (the embedded local store), a Milvus Lite file ending in .db, "
        "or a Milvus server URI. Its model is served on /v1 too, under the index's model name.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A model to serve on the OpenAI-compatible API (/v1/embeddings) under this name: 'default', "
        "'wordllama', a local sentence-transformers folder or a hub name. Alone (no --db): an embeddings "
        "server with no index; with --db: served beside the index's own model.",
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="With --model: run the code that model ships. An index's own model needs no flag: it is "
        "loaded as recorded when the index was built.",
    ),
    host: str = HostOption,
    port: int = PortOption,
    collection: str | None = CollectionOption,
    max_k: int = typer.Option(100, min=1, help="Largest k a /search may ask for."),
    max_texts: int = typer.Option(64, min=1, help="Most texts per /embed or /similarity request."),
    max_inputs: int = typer.Option(
        2048, min=1, help="Most texts per /v1/embeddings request (OpenAI's own limit is 2048)."
    ),
    max_text_chars: int = typer.Option(2000, min=1, help="Longest text (characters) any request may send."),
    max_input_chars: int = typer.Option(
        32_768,
        min=1,
        help="Longest text (characters) of one /v1/embeddings input: about OpenAI's 8,192 tokens, so that whole "
        "documents can be indexed through /v1. What the model cannot take is cut, as everywhere.",
    ),
    api_base: str | None = ApiBaseOption,
    dimensions: int | None = DimensionsOption,
    read_timeout: float = typer.Option(
        10.0, min=0.1, help="Seconds a client has to send a request's headers, and then its body, before it is cut off."
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="MATRYOSHKA_API_KEY",
        show_envvar=True,
        help="Take writes (POST /documents, POST /documents/delete) from clients that send this key as "
        "'Authorization: Bearer <key>', and ask it of every /v1 request. Without a key the server is "
        "read-only and /v1 is open. Prefer the environment variable: a command line is visible to other "
        "users of the machine.",
    ),
) -> None:
    """Serve an index over HTTP: a JSON API (/search, /embed, /similarity, /info, /healthz; docs at
    /docs), a web page at / where a dimension slider shows how results change with the prefix length,
    and an OpenAI-compatible embeddings API (POST /v1/embeddings, GET /v1/models) that takes
    'dimensions'. With --model alone it serves that model's embeddings, with no index.
    With an API key it also takes writes while it serves; searches see them at once.

    [bold]Examples[/bold]

      matryoshka serve --db ./my-index

      matryoshka serve --db scifact.db --port 9000

      curl -s localhost:8000/search -H 'content-type: application/json' -d '{"query": "what causes tides?", "k": 5}'

      matryoshka serve --model wordllama

      curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
        -d '{"model": "wordllama", "input": ["a very large dog"], "dimensions": 64}'

      In Python, with the official client (any api_key, unless the server has one):

        from openai import OpenAI
        client = OpenAI(base_url="http://localhost:8000/v1", api_key="none")
        client.embeddings.create(model="wordllama", input=["a very large dog"], dimensions=64)

      MATRYOSHKA_API_KEY=s3cret matryoshka serve --db ./my-index

      curl -s localhost:8000/documents -H 'authorization: Bearer s3cret' -H 'content-type: application/json' \\
        -d '{"documents": [{"id": "n1", "text": "Spring tides follow the full moon."}]}'
    """
    from .index import Index
    from .server import Limits

    with user_errors():
        if db is None and model is None:
            raise UsageError(
                "give --db (an index to search and serve) or --model (a model to serve embeddings), or both"
            )
        remote = _remote_options(model, api_base, dimensions, None)
        remote.pop("embedding_cache", None)  # a server keeps no cache: it would keep every text a client sends
        opened = Index(db, collection=collection, embedding_cache=False) if db is not None else None
        if opened is not None:
            with console.status("Loading the model…"):
                _ = opened.encoder
        models = {}
        if model is not None:  # the index's own model, when it is the one named, is loaded once
            same = opened is not None and opened.meta.model == model and opened.adapter is None
            models[model] = (
                opened.encoder if same else _load(model, None, None, trust_remote_code=trust_remote_code, **remote)
            )
        limits = Limits(
            max_k=max_k,
            max_texts=max_texts,
            max_inputs=max_inputs,
            max_text_chars=max_text_chars,
            max_input_chars=max_input_chars,
            read_timeout_s=read_timeout,
        )
        _serve(opened, host, port, limits, api_key, models)


@app.command()
def demo(
    output_dir: Path = typer.Option(
        Path("matryoshka-demo"), help="Where the plot, the JSON of every figure and the demo index go."
    ),
    serve_after: bool = typer.Option(
        False, "--serve", help="End by serving the WordNet index: the API and the slider page."
    ),
    host: str = HostOption,
    port: int = PortOption,
) -> None:
    """Show what Matryoshka embeddings buy, offline, every figure measured in the run (a minute or two
    on a laptop): quality at every prefix of a Matryoshka-trained model (wordllama) beside a standard
    one (all-MiniLM-L6-v2, plain prefixes and PCA), then funnel search against exact search over all
    117,659 WordNet 3.0 glosses, with real lemma queries.

    [bold]Examples[/bold]

      matryoshka demo

      matryoshka demo --serve     (then open the printed URL and type a word)
    """
    from .demo import SQUAD_DIR, WORDNET_FILE, compare_quality, funnel_showdown, plot_quality, save_results

    with user_errors():
        started = time.perf_counter()
        output_dir.mkdir(parents=True, exist_ok=True)
        console.rule("[bold]matryoshka demo")
        console.print(
            "[bold]1 · Quality at every prefix[/bold]: a Matryoshka-trained model against a standard one, "
            f"on a bundled slice of SQuAD v1.1 dev (CC BY-SA 4.0, {SQUAD_DIR / 'ATTRIBUTION.md'})"
        )
        wordllama, minilm = _load("wordllama", None, None), _load("default", None, None)
        with _progress() as progress:
            quality = compare_quality(
                {"wordllama": (wordllama, ["truncate"]), "MiniLM": (minilm, ["truncate", "pca"])},
                progress=TaskProgress(progress),
            )
        console.print(quality_table(quality))
        plot = plot_quality(quality, output_dir / "quality.png")
        console.print(f"Plot: [bold]{plot}[/bold]")
        console.print(
            f"\n[bold]2 · Funnel search[/bold] over every WordNet 3.0 gloss ({WORDNET_FILE.parent / 'NOTICE.md'}), "
            "embedded with wordllama, binary head; lemma queries the tuning never saw"
        )
        with _progress() as progress:
            showdown = funnel_showdown(wordllama, output_dir / "wordnet-index", progress=TaskProgress(progress))
        console.print(showdown_table(showdown))
        for word, ids in showdown.examples:
            console.print(Text.assemble("  ", (repr(word), "bold"), " → ", ", ".join(ids)))
        console.print(
            Text.assemble(
                "\nOne query at a time, the funnel answered ",
                (f"{showdown.single_speedup:.1f}× faster", "bold green"),
                " than exact search, finding ",
                (f"{showdown.recall_at_10:.3f}", "bold"),
                f" of its top-10 and holding {showdown.ram_ratio:.0f}× less in RAM; a batch of {showdown.batch_size:,} ran at ",
                f"{showdown.batch_speedup:.1f}× exact search's speed",
                "."
                if showdown.batch_plan == "funnel"
                else " (the index ran it as exact search, which it timed faster for a batch this large).",
            )
        )
        path = save_results(output_dir, quality, showdown, [("seconds", round(time.perf_counter() - started, 1))])
        console.print(
            f"Every figure: [bold]{path}[/bold]   Index: [bold]{output_dir / 'wordnet-index'}[/bold]   "
            f"({time.perf_counter() - started:.0f} s)"
        )
        if serve_after:
            from .index import Index
            from .server import Limits

            _serve(Index(output_dir / "wordnet-index", encoder=wordllama), host, port, Limits())
        else:
            console.print(
                f"See it in a browser: [bold]matryoshka demo --serve[/bold], or "
                f"[bold]matryoshka serve --db {output_dir / 'wordnet-index'}[/bold], then open http://localhost:{port}/"
            )


def quality_table(quality) -> Table:
    """nDCG@10 at d, d/2, … d/32 of each model's own dimension, with the share of its full score."""
    table = Table(title=f"nDCG@10 per prefix · {quality.documents} paragraphs, {quality.queries} questions")
    table.add_column("prefix", style="bold")
    for label in quality.reports:
        table.add_column(label, justify="right")
    for fraction in quality.fractions():
        cells = []
        for label in quality.reports:
            dim, score, share = quality.relative(label, fraction)
            cells.append(f"{dim:>3} dims  {score:.3f}  [cyan]{100 * share:5.1f}%[/cyan]")
        table.add_row("d" if fraction == 1 else f"d/{fraction}", *cells)
    return table


def showdown_table(showdown) -> Table:
    table = Table(
        title=f"Funnel vs exact search · {showdown.documents:,} glosses × {showdown.full_dim} dims, k=10, "
        f"{showdown.test_queries:,} lemma queries"
    )
    table.add_column("")
    table.add_column("exact (FAISS flat)", justify="right")
    table.add_column(f"funnel {showdown.schedule}", justify="right")
    table.add_column("gain", justify="right", style="bold green")
    table.add_row("recall@10 against exact", "1.000", f"{showdown.recall_at_10:.3f}", "")
    table.add_row(
        "one query, median ms",
        f"{showdown.single_exact_ms:.2f}",
        f"{showdown.single_funnel_ms:.2f}",
        f"{showdown.single_speedup:.1f}×",
    )
    table.add_row(
        f"batch of {showdown.batch_size:,}, queries/s",
        f"{showdown.batch_exact_qps:,.0f}",
        f"{showdown.batch_funnel_qps:,.0f}",
        f"{showdown.batch_speedup:.1f}×",
    )
    table.add_row(
        "RAM held (funnel: head and norms;\nfull vectors memory-mapped)",
        _megabytes(showdown.exact_ram_bytes),
        _megabytes(showdown.funnel_ram_bytes),
        f"{showdown.ram_ratio:.0f}× less",
    )
    return table


def _megabytes(count: int) -> str:
    return f"{count / 2**20:,.1f} MB"


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
