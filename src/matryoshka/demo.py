"""The demo, offline and measured live: what Matryoshka training buys at each dimension, and a
funnel search over every WordNet 3.0 gloss that beats exact search on the same vectors.

Part one scores a Matryoshka-trained model (WordLlama) beside a standard one (all-MiniLM-L6-v2,
its plain prefixes and a PCA rotation) at every prefix dimension, on a bundled slice of SQuAD v1.1
dev. Part two embeds all 117,659 WordNet glosses with WordLlama, indexes them with the default
head (autotune picks the sign bits at this size), and answers real lemma queries (words a person
looks up) with the funnel and with exact search.
Every figure is measured in the run.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import read_beir
from .errors import DataError
from .evaluate import EvaluationReport, evaluate_retrieval_vectors
from .funnel import recall_at_k
from .index import Index, build_index
from .models import Encoder
from .vectors import halving_dims

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SQUAD_DIR = SAMPLE_DIR / "squad"
SQUAD_SPLIT = "dev"
WORDNET_FILE = SAMPLE_DIR / "wordnet" / "glosses.jsonl.gz"
TUNE_QUERIES = 500
TEST_QUERIES = 2000
SINGLE_QUERIES = 200
BATCH_REPEATS = 3

Progress = Callable[[str, int, int], None]  # (task, done so far, total)


def _silent(task: str, done: int, total: int) -> None:
    """The default progress: none."""


# --------------------------------------------------------------------------- part one: quality per dimension


@dataclass
class QualityComparison:
    """nDCG@10 per prefix, each model at d, d/2, … d/32 of its own full dimension."""

    reports: dict[str, EvaluationReport]  # label -> report (one method each)
    documents: int
    queries: int

    def fractions(self) -> list[int]:
        """Denominators of the compared prefixes: 1 (full), 2, 4, … 32."""
        dims = {label: sorted(r.dims(), reverse=True) for label, r in self.reports.items()}
        return [2**i for i in range(min(len(d) for d in dims.values()))]

    def relative(self, label: str, fraction: int) -> tuple[int, float, float]:
        """(dim, nDCG@10, % of the same model's full-dimension score) at ``d / fraction``."""
        report = self.reports[label]
        method = report.methods()[0]
        dim = report.full_dim // fraction
        return dim, report.score(method, dim), report.relative(method, dim)


def compare_quality(
    models: dict[str, tuple[Encoder, Sequence[str]]], progress: Progress = _silent
) -> QualityComparison:
    """Encode the SQuAD slice once per model and score each of its methods (``truncate``: plain
    prefixes; ``pca``: prefixes after a PCA rotation fitted on the corpus) at every halving."""
    data = read_beir(SQUAD_DIR, SQUAD_SPLIT)
    reports: dict[str, EvaluationReport] = {}
    texts = len(data.query_texts) + len(data.corpus)
    for name, (encoder, methods) in models.items():
        done = 0

        def advance(count: int, name: str = name) -> None:
            nonlocal done
            done += count
            progress(f"Encoding the SQuAD slice with {name}", done, texts)

        queries = encoder.encode(data.query_texts, kind="query", progress=advance)
        documents = encoder.encode(data.corpus.texts, kind="document", progress=advance)
        dims = halving_dims(encoder.full_dim)
        for method in methods:
            report = evaluate_retrieval_vectors(
                queries,
                documents,
                data,
                dims,
                [method],
                model=encoder.name,
                data_name="bundled SQuAD v1.1 dev slice",
                split=SQUAD_SPLIT,
            )
            reports[f"{name} {method}"] = report
    return QualityComparison(reports, len(data.corpus), len(data.query_texts))


def plot_quality(comparison: QualityComparison, path: Path | str) -> Path:
    """One panel: % of each model's full-dimension nDCG@10 against the share of dims kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = comparison.fractions()
    fig, axis = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for label in comparison.reports:
        shares = [100 * comparison.relative(label, f)[2] for f in fractions]
        axis.plot(fractions, shares, marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xticks(fractions)
    axis.set_xticklabels(["d" if f == 1 else f"d/{f}" for f in fractions])
    axis.set_xlabel("prefix of the embedding kept (d = the model's full dimension)")
    axis.set_ylabel("% of full-dimension nDCG@10")
    axis.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title(f"Quality per prefix · {comparison.documents} SQuAD paragraphs, {comparison.queries} questions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- part two: funnel over WordNet


@dataclass(frozen=True)
class Glosses:
    ids: list[str]
    texts: list[str]
    lemmas: list[list[str]]


def read_glosses(path: Path = WORDNET_FILE) -> Glosses:
    """The bundled WordNet glosses: id, gloss and lemmas per synset."""
    if not path.is_file():
        raise DataError(path, "the bundled WordNet glosses are missing; reinstall matryoshka")
    ids, texts, lemmas = [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            ids.append(record["id"])
            texts.append(record["text"])
            lemmas.append(record["lemmas"])
    return Glosses(ids, texts, lemmas)


PARTS_OF_SPEECH = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def gloss_metadata(glosses: Glosses) -> list[dict]:
    """Filterable fields of each gloss: its part of speech (from the synset id, ``bank.n.…``)
    and its lemmas, so the served demo answers filters like ``{"pos": "verb"}``."""
    return [
        {"pos": PARTS_OF_SPEECH.get(synset.split(".")[-2], "other"), "lemmas": list(lemmas)}
        for synset, lemmas in zip(glosses.ids, glosses.lemmas)
    ]


def lemma_queries(glosses: Glosses, count: int, seed: int = 0) -> list[str]:
    """Distinct lemmas in a fixed random order: the words people look up in a dictionary."""
    words = sorted({lemma for lemmas in glosses.lemmas for lemma in lemmas})
    order = np.random.default_rng(seed).permutation(len(words))[:count]
    return [words[i] for i in order]


@dataclass
class FunnelShowdown:
    """The funnel against exact search over the same vectors, one query at a time and in a batch."""

    documents: int
    full_dim: int
    head: str  # the head autotune chose: "flat" or "binary"
    schedule: str
    tune_queries: int
    test_queries: int
    recall_at_10: float
    single_exact_ms: float
    single_funnel_ms: float
    batch_size: int
    batch_exact_qps: float
    batch_funnel_qps: float
    exact_ram_bytes: int
    funnel_ram_bytes: int
    # what the index ran for the batch: the funnel, or exact search where it timed that faster
    batch_plan: str = "funnel"
    examples: list[tuple[str, list[str]]] = field(default_factory=list)  # (query, funnel top-3 ids)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step

    @property
    def single_speedup(self) -> float:
        return self.single_exact_ms / self.single_funnel_ms

    @property
    def batch_speedup(self) -> float:
        return self.batch_funnel_qps / self.batch_exact_qps

    @property
    def ram_ratio(self) -> float:
        return self.exact_ram_bytes / self.funnel_ram_bytes


def funnel_showdown(encoder: Encoder, index_dir: Path, progress: Progress = _silent) -> FunnelShowdown:
    """Embed every gloss, build a default index (autotune picks its head) tuned on real lemma
    queries, and time the funnel against exact search (FAISS's flat inner-product index, the exact search a user would
    pick) on lemma queries the tuning never saw."""
    import faiss

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    glosses = read_glosses()
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress("Embedding the WordNet glosses with wordllama", done, len(glosses.ids))

    vectors = encoder.encode(glosses.texts, kind="document", progress=advance)
    words = lemma_queries(glosses, TUNE_QUERIES + TEST_QUERIES)
    tune = encoder.encode(words[:TUNE_QUERIES], kind="query")
    test_words = words[TUNE_QUERIES:]
    test = encoder.encode(test_words, kind="query")
    seconds["embed"] = time.perf_counter() - started

    started = time.perf_counter()
    progress("Indexing and tuning on lemma queries (autotune picks the head)", 0, 1)
    build_index(
        index_dir,
        glosses.ids,
        glosses.texts,
        encoder=encoder,
        vectors=vectors,
        tune_queries=tune,
        metadata=gloss_metadata(glosses),
    )
    progress("Indexing and tuning on lemma queries (autotune picks the head)", 1, 1)
    seconds["index"] = time.perf_counter() - started

    started = time.perf_counter()
    index = Index(index_dir, encoder=encoder)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth = exact.search(test, 10)[1]
    # the funnel's own recall; a batch this large may be answered exactly (see ``batch_plan``)
    funnel = index.search_vectors(test, 10, schedule=index.schedule_for(10))
    recall = recall_at_k(funnel.rows, truth)

    single = test[:SINGLE_QUERIES]
    exact_ms = _per_query_ms(
        lambda q: exact.search(q, 10), single, progress, "Timing exact search, one query at a time"
    )
    funnel_ms = _per_query_ms(
        lambda q: index.search_vectors(q, 10), single, progress, "Timing the funnel, one query at a time"
    )
    progress("Timing both on a batch", 0, 2)
    exact_s = best_seconds(lambda: exact.search(test, 10))
    progress("Timing both on a batch", 1, 2)
    plans: list[str] = []  # what the index ran for the batch (each timed run's answer says)
    funnel_s = best_seconds(lambda: plans.append(index.search_vectors(test, 10).plan))
    progress("Timing both on a batch", 2, 2)
    seconds["measure"] = time.perf_counter() - started

    hits = index.hits(index.search_vectors(test[:3], 10))
    showdown = FunnelShowdown(
        documents=len(glosses.ids),
        full_dim=vectors.shape[1],
        head=index.meta.head_index,
        schedule=str(index.schedule_for(10)),
        tune_queries=TUNE_QUERIES,
        test_queries=len(test),
        recall_at_10=recall,
        single_exact_ms=exact_ms,
        single_funnel_ms=funnel_ms,
        batch_size=len(test),
        batch_exact_qps=len(test) / exact_s,
        batch_funnel_qps=len(test) / funnel_s,
        exact_ram_bytes=int(vectors.nbytes),
        funnel_ram_bytes=index.store.memory_bytes(),
        batch_plan=plans[-1],
        examples=[(word, found.ids[:3]) for word, found in zip(test_words, hits)],
        seconds=seconds,
    )
    index.close()
    return showdown


def _per_query_ms(search: Callable[[np.ndarray], object], queries: np.ndarray, progress: Progress, task: str) -> float:
    """Median milliseconds of one query searched alone (after one warm-up query)."""
    search(queries[:1])
    times = []
    for position in range(len(queries)):
        started = time.perf_counter()
        search(queries[position : position + 1])
        times.append(time.perf_counter() - started)
        if (position + 1) % 50 == 0 or position + 1 == len(queries):
            progress(task, position + 1, len(queries))
    return 1000 * float(np.median(times))


def best_seconds(run: Callable[[], object], repeats: int = BATCH_REPEATS) -> float:
    """The fastest of ``repeats`` runs: the run least disturbed by whatever else the machine did."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def save_results(
    output_dir: Path, quality: QualityComparison, showdown: FunnelShowdown, extra: Sequence[tuple[str, object]] = ()
) -> Path:
    """Everything measured, as JSON beside the plot."""
    from dataclasses import asdict

    path = output_dir / "demo.json"
    payload = {
        "quality": {label: report.to_dict() for label, report in quality.reports.items()},
        "funnel": {
            **asdict(showdown),
            "single_speedup": showdown.single_speedup,
            "batch_speedup": showdown.batch_speedup,
            "ram_ratio": showdown.ram_ratio,
        },
        **dict(extra),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
