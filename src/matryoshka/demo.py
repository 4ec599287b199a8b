"""The demo: per-dimension quality and funnel search on a bundled slice of SQuAD v1.1 dev
(CC BY-SA 4.0, in BEIR layout), offline, encoding everything once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .data import read_beir
from .evaluate import EvaluationReport, evaluate_retrieval_vectors, ranking_metrics
from .funnel import recall_at_k
from .index import Index, build_index
from .models import Encoder

SAMPLE_DIR = Path(__file__).resolve().parent / "sample" / "squad"
SAMPLE_SPLIT = "dev"
TIMING_REPEATS = 5


@dataclass
class FunnelSummary:
    """Funnel against exact search on the demo's questions."""

    schedule: str
    recall_vs_exact: float
    funnel_ms_per_query: float
    exact_ms_per_query: float
    funnel_ndcg: float
    exact_ndcg: float
    documents: int
    queries: int

    @property
    def speedup(self) -> float:
        return self.exact_ms_per_query / self.funnel_ms_per_query


def _best_seconds(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_demo(encoder: Encoder, output_dir: Path, dims: Sequence[int],
             progress: Callable[[int], None] | None = None) -> tuple[EvaluationReport, FunnelSummary]:
    data = read_beir(SAMPLE_DIR, SAMPLE_SPLIT)
    queries = encoder.encode(data.query_texts, kind="query")
    documents = encoder.encode(data.corpus.texts, kind="document")
    report = evaluate_retrieval_vectors(queries, documents, data, dims, ["truncate", "pca"], model=encoder.name,
                                        data_name="bundled SQuAD sample", split=SAMPLE_SPLIT, progress=progress)
    build_index(output_dir / "index", data.corpus.ids, data.corpus.texts, encoder=encoder, vectors=documents)
    index = Index(output_dir / "index")
    exact = index.search_vectors(queries, 10, exact=True)
    funnel = index.search_vectors(queries, 10)
    exact_s = _best_seconds(lambda: index.search_vectors(queries, 10, exact=True))
    funnel_s = _best_seconds(lambda: index.search_vectors(queries, 10))
    summary = FunnelSummary(
        schedule=str(index.schedule_for(10)),
        recall_vs_exact=recall_at_k(funnel.rows, exact.rows),
        funnel_ms_per_query=1000 * funnel_s / len(queries),
        exact_ms_per_query=1000 * exact_s / len(queries),
        funnel_ndcg=ranking_metrics(funnel.rows, data)["ndcg@10"],
        exact_ndcg=ranking_metrics(exact.rows, data)["ndcg@10"],
        documents=len(data.corpus),
        queries=len(queries),
    )
    return report, summary
