"""Funnel search: a short-prefix search for a wide shortlist, re-ranked by longer and longer prefixes.

A :class:`Schedule` is a list of stages ``(dim, keep)``. Stage 0 searches the store's head
(``dim`` = head dim) for the ``keep`` best rows; each later stage re-scores the survivors with the
first ``dim`` coordinates, re-normalised, and keeps its ``keep`` best. The last stage is at full
dimension, so the final scores are exact cosines. A head may instead be binary (written
``256b:2000``): the sign bits of the first ``dim`` coordinates, searched by Hamming distance; d
bits take the bytes of a d/32 float head and keep far more of the ranking. Re-ranking is
vectorised over the whole batch of queries: each stage scores every query's candidates in one call
(in place by FAISS for the local store, see :mod:`matryoshka.rescore`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ScheduleError, StoreError, UsageError
from .filters import Filter
from .metrics import top_k
from .stores.base import Store
from .stores.segments import DENSE_SHARE
from .vectors import middle_stage_dim, normalize, stage_dims

GATHER_BUDGET = 64 * 2**20  # candidate floats gathered at once per stage (256 MiB)


@dataclass(frozen=True)
class Stage:
    dim: int
    keep: int
    binary: bool = False  # only a head may be binary: Hamming distance over the sign bits of the dim-prefix

    def __str__(self) -> str:
        return f"{self.dim}{'b' if self.binary else ''}:{self.keep}"


@dataclass(frozen=True)
class Schedule:
    """Validated at construction: dims strictly increasing, keeps non-increasing, all positive; only
    the head may be binary (the stages after a binary head start again from any dim)."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, Stage) else Stage(*s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ScheduleError("a schedule needs at least one stage")
        for stage in stages:
            if int(stage.dim) < 1 or int(stage.keep) < 1:
                raise ScheduleError(f"stage {stage.dim}:{stage.keep}: dim and keep must be positive")
        if any(s.binary for s in stages[1:]):
            raise ScheduleError(f"only the first stage (the head) may be binary, got {','.join(map(str, stages))}")
        if stages[0].binary and len(stages) < 2:
            raise ScheduleError(
                f"a binary head ranks by Hamming distance only: follow {stages[0]} with a stage at the full dimension"
            )
        if stages[0].binary and stages[0].dim % 8:
            raise ScheduleError(f"a binary head takes whole bytes: {stages[0].dim} bits is not a multiple of 8")
        dims = [s.dim for s in stages[1:]] if stages[0].binary else [s.dim for s in stages]
        keeps = [s.keep for s in stages]
        if any(b <= a for a, b in zip(dims, dims[1:])):
            raise ScheduleError(f"stage dims must be strictly increasing, got {dims}")
        if any(b > a for a, b in zip(keeps, keeps[1:])):
            raise ScheduleError(f"stage keeps must not increase, got {keeps}")

    @property
    def head_dim(self) -> int:
        return self.stages[0].dim

    @property
    def full_dim(self) -> int:
        return self.stages[-1].dim

    @property
    def shortlist(self) -> int:
        return self.stages[0].keep

    @property
    def binary_head(self) -> bool:
        return self.stages[0].binary

    def check(self, full_dim: int, k: int, corpus_size: int) -> None:
        """Raise if this schedule cannot answer top-``k`` over this index."""
        if self.full_dim != full_dim:
            raise ScheduleError(f"the schedule must end at the full dimension {full_dim}, it ends at {self.full_dim}")
        if self.head_dim > full_dim:
            raise ScheduleError(f"the head uses {self.head_dim} dims but the vectors have {full_dim}")
        if k < 1:
            raise ScheduleError(f"k must be at least 1, got {k}")
        if k > corpus_size:
            raise ScheduleError(f"k={k} is larger than the corpus ({corpus_size} documents)")
        if self.stages[-1].keep < k:
            raise ScheduleError(f"the last stage keeps {self.stages[-1].keep} < k={k}")

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """``"12:2000,24:1000,…,384:10"`` -> Schedule; ``"384b:2000,192:200,384:10"`` has a binary head."""
        stages = []
        for part in text.split(","):
            try:
                dim, keep = part.strip().split(":")
                binary = dim.endswith("b")
                stages.append(Stage(int(dim[:-1] if binary else dim), int(keep), binary))
            except ValueError:
                raise ScheduleError(
                    f"schedule stage {part.strip()!r} is not DIM:KEEP (e.g. 24:1000, or 384b:2000 for a binary head)"
                ) from None
        return cls(tuple(stages))

    @classmethod
    def halving(
        cls,
        full_dim: int,
        k: int,
        shortlist: int,
        head_dim: int | None = None,
        first_cut: int = 2,
        trained: Sequence[int] = (),
    ) -> Schedule:
        """Dims double from the head (default d/32, at least 8) to d, each moved up to one of the
        model's ``trained`` dims when it declares them; the shortlist is divided by ``first_cut``
        after the head, then halves each stage down to ``k`` at the last."""
        dims = stage_dims(full_dim, head_dim, trained)
        keeps = [shortlist] + [max(k, (shortlist // first_cut) >> i) for i in range(len(dims) - 1)]
        keeps[-1] = k
        return cls(tuple(Stage(d, n) for d, n in zip(dims, keeps)))

    @classmethod
    def binary(
        cls,
        full_dim: int,
        k: int,
        shortlist: int,
        bits: int | None = None,
        first_cut: int = 8,
        trained: Sequence[int] = (),
    ) -> Schedule:
        """A binary head of ``bits`` (default: all d), then the d/2 prefix (or the ``trained`` dim
        at or above it) keeping ``shortlist / first_cut``, then the full vectors keeping ``k``."""
        head = Stage(bits or full_dim, shortlist, binary=True)
        middle = [Stage(middle_stage_dim(full_dim, trained), max(k, shortlist // first_cut))] if full_dim >= 2 else []
        return cls((head, *middle, Stage(full_dim, k)))

    def scaled(self, factor: float, k: int, corpus_size: int) -> Schedule:
        """The same stages with every keep but the last multiplied by ``factor`` (capped at the
        corpus), and the last keeping ``k``."""
        keeps = [min(corpus_size, int(np.ceil(s.keep * factor))) for s in self.stages[:-1]] + [k]
        keeps = [max(k, min(keeps[: i + 1])) for i in range(len(keeps))]
        return Schedule(tuple(Stage(s.dim, keep, s.binary) for s, keep in zip(self.stages, keeps)))

    def __str__(self) -> str:
        return ",".join(map(str, self.stages))


@dataclass
class SearchResult:
    """Top-k rows and cosines per query, with the time and shortlist size of each stage."""

    rows: np.ndarray
    scores: np.ndarray
    stage_dims: list[int] = field(default_factory=list)
    stage_keeps: list[int] = field(default_factory=list)
    stage_seconds: list[float] = field(default_factory=list)
    source: Store | None = field(default=None, repr=False)  # the store the rows number (set by Index)
    plan: str = "funnel"  # how it was answered: "funnel", "filtered funnel", "exact over the filtered rows", ...
    passing: int | None = None  # rows that passed the filter (None: no filter)
    schedule: Schedule | None = None  # the schedule the funnel ran, as Index.search_vectors chose it (None: exact)

    @property
    def seconds(self) -> float:
        return float(sum(self.stage_seconds))


# a filtered row scored exactly, per dim, against a head multiply-add (calibrated at 1M rows by
# benchmarks/filters.py: it picks the faster plan at every filter measured there)
EXACT_ROW_COST = 6.0


def funnel_search(
    store: Store,
    queries: np.ndarray,
    schedule: Schedule,
    k: int,
    *,
    head_queries: np.ndarray | None = None,
    where: Filter | None = None,
    plan: str | None = None,
) -> SearchResult:
    """Answer a batch of full-dimension unit queries with the funnel.

    ``head_queries`` lets the early stages use another space than the last (an adapter's
    rotation); by default every stage uses prefixes of ``queries``. ``where`` keeps only the
    rows matching a metadata filter: in a store that searches itself (Milvus) it goes into the
    head search; here it becomes a row mask, and when few rows pass, searching those exactly
    costs less than any funnel (the result's ``plan`` says which ran; ``plan="exact"`` or
    ``"funnel"`` forces one). Fewer than ``k`` matching rows: the rest of each answer is row -1,
    score -inf.
    """
    queries = _as_batch(queries, store.full_dim)
    early = queries if head_queries is None else _as_batch(head_queries, store.full_dim)
    schedule.check(store.full_dim, k, len(store) if where is None else max(k, len(store)))
    check_head(schedule, store)
    if getattr(store, "runs_stages", False):  # a server runs every stage itself (Milvus)
        return _server_side(store, queries, early, schedule, k, where)
    if where is not None:
        return _filtered(store, queries, early, schedule, k, where, plan)
    return _in_chunks(store, queries, early, schedule, k)


def _in_chunks(
    store: Store, queries: np.ndarray, early: np.ndarray, schedule: Schedule, k: int, allowed: np.ndarray | None = None
) -> SearchResult:
    # bound the candidates gathered at once (queries x shortlist x dim) by running the batch in chunks;
    # a store that scores candidates in place holds only their scores
    per_query = max(
        s.keep * (1 if store.scores_in_place(t.dim) else t.dim)
        for s, t in zip(schedule.stages, schedule.stages[1:] or schedule.stages)
    )
    chunk = max(1, GATHER_BUDGET // per_query)
    if len(queries) <= chunk:
        return _funnel_chunk(store, queries, early, schedule, k, allowed)
    parts = [
        _funnel_chunk(store, queries[s : s + chunk], early[s : s + chunk], schedule, k, allowed)
        for s in range(0, len(queries), chunk)
    ]
    return SearchResult(
        np.concatenate([p.rows for p in parts]),
        np.concatenate([p.scores for p in parts]),
        parts[0].stage_dims,
        parts[0].stage_keeps,
        [sum(p.stage_seconds[i] for p in parts) for i in range(len(parts[0].stage_seconds))],
    )


def filtered_plan(schedule: Schedule, corpus_size: int, passing: int) -> str:
    """``"exact"`` when scoring the ``passing`` rows at full dimension costs less than the funnel
    over them (by :func:`schedule_cost`, the head scanning only the passing rows when they are
    few), else ``"funnel"``. A mask passing over a quarter of the corpus always takes the funnel:
    scoring that many rows exactly is a scan the tuned funnel already beats."""
    if passing <= schedule.shortlist:
        return "exact"
    if passing > DENSE_SHARE * corpus_size:
        return "funnel"
    exact = passing * schedule.full_dim * EXACT_ROW_COST
    return "exact" if exact <= schedule_cost(schedule, passing) else "funnel"


def _filtered(
    store: Store,
    queries: np.ndarray,
    early: np.ndarray,
    schedule: Schedule,
    k: int,
    where: Filter,
    plan: str | None = None,
) -> SearchResult:
    started = time.perf_counter()
    allowed = store.filter_mask(where)
    passing = int(np.count_nonzero(allowed))
    mask_seconds = time.perf_counter() - started
    if not passing or (plan or filtered_plan(schedule, len(store), passing)) == "exact":
        started = time.perf_counter()
        scores, rows = store.exact_search(queries, k, allowed=allowed) if passing else _nothing(len(queries), k)
        result = SearchResult(rows, scores.astype(np.float32), [schedule.full_dim], [min(k, passing)], [])
        result.stage_seconds = [time.perf_counter() - started]
        result.plan = "exact over the filtered rows"
    else:
        cut = schedule.scaled(1.0, min(k, passing), passing)
        result = _in_chunks(store, queries, early, cut, min(k, passing), allowed)
        result.plan = "filtered funnel"
        result.rows, result.scores = _pad(result.rows, result.scores, k)
    result.stage_dims.insert(0, 0)
    result.stage_keeps.insert(0, passing)
    result.stage_seconds.insert(0, mask_seconds)
    result.passing = passing
    return result


def _nothing(count: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, k), -np.inf, np.float32), np.full((count, k), -1, np.int64)


def _pad(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Answers of fewer than ``k`` columns widened to ``k`` with -1 / -inf."""
    if rows.shape[1] >= k:
        return rows, scores
    out_scores, out_rows = _nothing(len(rows), k)
    out_rows[:, : rows.shape[1]], out_scores[:, : rows.shape[1]] = rows, scores
    return out_rows, out_scores


def _server_side(
    store: Store, queries: np.ndarray, early: np.ndarray, schedule: Schedule, k: int, where: Filter | None = None
) -> SearchResult:
    """Hand each stage's unit queries to a store that runs the whole funnel (``run_stages``),
    with the filter for its head search."""
    stage_queries = []
    for position, stage in enumerate(schedule.stages):
        source = queries if stage.dim == store.full_dim and position else early
        prefix = source[:, : stage.dim]
        stage_queries.append(prefix if position == 0 and stage.binary else normalize(prefix))
    stages = [(s.dim, s.keep) for s in schedule.stages]
    scores, rows, seconds = store.run_stages(stage_queries, stages, k, where=where)
    keeps = [min(s.keep, len(store)) for s in schedule.stages[:-1]] + [k]
    result = SearchResult(
        rows[:, :k], scores[:, :k].astype(np.float32), [s.dim for s in schedule.stages], keeps, seconds
    )
    result.plan = "funnel in Milvus" + (", filtered in the head search" if where is not None else "")
    return result


def check_head(schedule: Schedule, store: Store) -> None:
    """A binary schedule needs the store's binary head, and a binary head answers only its own bits."""
    binary = getattr(store, "binary_head", False)
    if schedule.binary_head and not binary:
        raise ScheduleError(
            f"schedule {schedule} starts with a binary head, but this index's head holds "
            f"{store.head_dim}-dim float prefixes; build it with --head-index binary"
        )
    if binary and (not schedule.binary_head or schedule.head_dim != store.head_dim):
        raise ScheduleError(
            f"this index's head is binary ({store.head_dim} bits): start the schedule with "
            f"{store.head_dim}b:N, not {schedule.stages[0]}"
        )


def _funnel_chunk(
    store: Store, queries: np.ndarray, early: np.ndarray, schedule: Schedule, k: int, allowed: np.ndarray | None = None
) -> SearchResult:
    result = SearchResult(np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32))
    started = time.perf_counter()
    first = schedule.stages[0]
    head_queries = normalize(early[:, : first.dim])
    if allowed is None:
        scores, rows = store.head_search(head_queries, min(first.keep, len(store)))
    else:
        scores, rows = store.head_search(head_queries, first.keep, allowed=allowed)
    _record(result, first.dim, rows.shape[1], started)
    for stage in schedule.stages[1:]:
        started = time.perf_counter()
        if not store.scores_in_place(stage.dim):
            rows = np.sort(rows, axis=1)  # candidate order is free; sorted rows read storage forwards
        source = queries if stage.dim == store.full_dim else early
        scores = store.rescore(rows, source[:, : stage.dim])
        keep = min(stage.keep, rows.shape[1])
        # only the last stage's order is returned; earlier ones just pick survivors, in any order
        best = top_k(scores, keep) if stage is schedule.stages[-1] else _survivors(scores, keep)
        rows = np.take_along_axis(rows, best, axis=1)
        scores = np.take_along_axis(scores, best, axis=1)
        _record(result, stage.dim, rows.shape[1], started)
    if len(schedule.stages) == 1:
        best = top_k(scores, min(k, scores.shape[1]))
        rows, scores = np.take_along_axis(rows, best, axis=1), np.take_along_axis(scores, best, axis=1)
    result.rows, result.scores = rows[:, :k], scores[:, :k].astype(np.float32)
    return result


def _survivors(scores: np.ndarray, keep: int) -> np.ndarray:
    """Columns of each row's ``keep`` best scores, unordered (each row on its own, so a query gets
    the same survivors alone or in a batch)."""
    if keep >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, keep - 1, axis=1)[:, :keep]


def _record(result: SearchResult, dim: int, keep: int, started: float) -> None:
    result.stage_dims.append(dim)
    result.stage_keeps.append(keep)
    result.stage_seconds.append(time.perf_counter() - started)


def _as_batch(queries: np.ndarray, full_dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != full_dim:
        raise StoreError(f"queries must have shape (n, {full_dim}), got {queries.shape}")
    if not np.isfinite(queries).all():
        raise StoreError("queries contain NaN or infinite values")
    return queries


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k rows that the funnel returned."""
    return float(np.mean(per_query_recall(found, truth)))


def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each query's fraction of its exact top-k rows that the funnel returned."""
    k = truth.shape[1]
    return np.array([len(np.intersect1d(a[:k], b)) / k for a, b in zip(found, truth)])


def recall_lower_bound(recalls: np.ndarray, z: float = 1.645) -> float:
    """One-sided 95% lower bound of the mean recall over queries like these (normal approximation)."""
    if len(recalls) < 2:
        return float(np.mean(recalls))
    return float(np.mean(recalls) - z * np.std(recalls, ddof=1) / np.sqrt(len(recalls)))


def worst_bound(recalls: np.ndarray, groups: np.ndarray | None) -> float:
    """The 95% lower bound of mean recall over the queries, or the lowest of each group's own."""
    if groups is None:
        return recall_lower_bound(recalls)
    groups = np.asarray(groups)
    return min(recall_lower_bound(recalls[groups == label]) for label in np.unique(groups))


@dataclass(frozen=True)
class TuneResult:
    schedule: Schedule
    recall: float
    cost: float
    tried: tuple[tuple[str, float, float, float], ...]  # (schedule, recall, its 95% lower bound, cost)
    passed: bool = False  # reached the target with 95% confidence (else: the most accurate schedule tried)
    by_level: dict[float, TuneResult] = field(default_factory=dict)  # other recall levels tuned with it


TUNE_MARGIN = 0.2  # share of the allowed misses (1 - target recall) that autotune holds back
FIRST_CUTS = (2, 4, 8)  # how sharply autotune tries to cut the shortlist after the head
BINARY_FIRST_CUTS = (2, 4, 8, 16)  # a binary head's shortlist is short already; it goes straight to d/2


BINARY_BIT_COST = 0.2  # a Hamming bit's cost against a float head multiply-add (docs/benchmarks.md)


def schedule_cost(schedule: Schedule, corpus_size: int, gather_penalty: float = 32.0) -> float:
    """Multiply-adds per query: the head scan plus each stage's re-rank. A re-ranked coordinate
    costs ``gather_penalty`` scanned ones: rows read at random against a streamed head."""
    cost = corpus_size * schedule.head_dim * (BINARY_BIT_COST if schedule.binary_head else 1.0)
    previous = min(schedule.shortlist, corpus_size)
    for stage in schedule.stages[1:]:
        cost += gather_penalty * previous * stage.dim
        previous = min(stage.keep, previous)
    return float(cost)


def autotune(
    store: Store,
    sample_queries: np.ndarray,
    k: int = 10,
    target_recall: float = 0.99,
    *,
    head_dims: Sequence[int] | None = None,
    shortlists: Sequence[int] | None = None,
    truth: np.ndarray | None = None,
    head_queries: np.ndarray | None = None,
    two_stage: bool = False,
    groups: np.ndarray | None = None,
    trained: Sequence[int] = (),
    measured: dict[str, np.ndarray] | None = None,
    ceiling: float | None = None,
) -> TuneResult:
    """The cheapest schedule whose recall@k against exact search on ``sample_queries`` reaches
    ``target_recall`` with 95% confidence (the lower bound over queries, not just the mean, so
    that new queries reach it too) and a margin: the misses it may allow, ``1 - target_recall``,
    are cut by ``TUNE_MARGIN``, because the cheapest of many schedules that pass on one sample is
    the one most likely to have passed by luck. ``groups`` (one label per query: kinds of query,
    such as single words and sentences) makes every group reach it on its own, so that a mean
    over easy queries cannot hide a kind that misses. Falls back to the most accurate one tried
    if none does. For each head dim it takes the shortest shortlist that reaches the target, cut
    after the head as sharply as the target allows (by 2, 4 or 8), then halving.

    Head dims other than the store's own are searched by a slow exact scan; to compare head dims
    fairly, tune one store per head dim (as ``index.tune`` does). A store with a binary head is
    tuned on :meth:`Schedule.binary` schedules over its own bits. ``head_queries`` and
    ``two_stage`` tune an adapter's head: head in the adapter's space, then straight to the full
    original vectors. ``trained``: the model's trained prefix dims, which the stages keep to.
    ``measured`` (schedule -> per-query recalls) is read and filled, so that tuning the same store
    and queries for several targets (:func:`autotune_levels`) searches each schedule once.
    ``ceiling``: a cost already reached elsewhere (another head); schedules costing as much are
    not searched, and the result passes only if one below it does."""
    if not 0 < target_recall <= 1:
        raise UsageError(f"target recall must be in (0, 1], got {target_recall}")
    required = target_recall + TUNE_MARGIN * (1 - target_recall)
    queries = _as_batch(sample_queries, store.full_dim)
    n, full = len(store), store.full_dim
    if truth is None:
        _, truth = store.exact_search(queries, k)
    binary = getattr(store, "binary_head", False)
    head_dims = [store.head_dim] if binary else sorted(set(head_dims or [store.head_dim]))
    shortlists = sorted({min(s, n) for s in (shortlists or shortlist_candidates(k, n)) if s >= k})
    tried, best, fallback, skipped = [], None, None, None
    for head in head_dims:
        for shortlist in shortlists:
            passed = affordable = False
            for cut in (1,) if two_stage else BINARY_FIRST_CUTS if binary else FIRST_CUTS:
                if two_stage:
                    schedule = two_stage_schedule(full, k, shortlist, head, binary)
                elif binary:
                    schedule = Schedule.binary(full, k, shortlist, head, first_cut=cut, trained=trained)
                else:
                    schedule = Schedule.halving(full, k, shortlist, head, first_cut=cut, trained=trained)
                cost = schedule_cost(schedule, n)
                if ceiling is not None and cost >= ceiling:
                    skipped = skipped or schedule
                    continue  # a sharper cut costs less and may still be under it
                affordable = True
                recalls = None if measured is None else measured.get(str(schedule))
                if recalls is None:
                    recalls = per_query_recall(
                        funnel_search(store, queries, schedule, k, head_queries=head_queries).rows, truth
                    )
                    if measured is not None:
                        measured[str(schedule)] = recalls
                recall, bound = float(np.mean(recalls)), worst_bound(recalls, groups)
                tried.append((str(schedule), recall, bound, cost))
                if fallback is None or recall > fallback.recall:
                    fallback = TuneResult(schedule, recall, cost, ())
                if recall < required:
                    break  # a sharper cut only loses more
                if bound < required:
                    continue  # near the line: a sharper cut may still pass on these queries
                passed = True
                if best is None or cost < best.cost:
                    best = TuneResult(schedule, recall, cost, (), True)
            if passed or not affordable:
                break  # longer shortlists at this head only cost more
    chosen = best or fallback
    if chosen is None:  # every schedule cost at least the ceiling: none was searched
        return TuneResult(skipped, 0.0, schedule_cost(skipped, n), (), False)
    return TuneResult(chosen.schedule, chosen.recall, chosen.cost, tuple(tried), chosen.passed)


LARGE_CORPUS_STEPS = (3000, 5000, 7000, 10_000)  # shortlists of that many times k, for a corpus of millions
RECALL_LEVELS = (0.9, 0.95, 0.99, 0.999)  # the recall levels an index tunes a schedule for by default


def check_recall(recall: float, what: str = "recall") -> float:
    """A recall level is a number in (0, 1]."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
        raise UsageError(f"{what} must be a number in (0, 1], got {recall!r}")
    return float(recall)


def parse_recall_levels(text: str, what: str = "recall levels") -> tuple[float, ...]:
    """``"0.9,0.95,0.99"`` -> (0.9, 0.95, 0.99); an empty string is no levels."""
    levels = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            levels.append(check_recall(float(part), what))
        except ValueError:
            raise UsageError(f"{what}: {part!r} is not a number in (0, 1]") from None
    return tuple(sorted(set(levels)))


def autotune_levels(
    store: Store, sample_queries: np.ndarray, k: int, levels: Sequence[float], **options
) -> dict[float, TuneResult]:
    """:func:`autotune` for each recall level in ``levels`` on the same queries, each schedule
    searched once whatever the number of levels (a level's cheapest schedule is mostly one a
    higher level tried on its way up)."""
    queries = _as_batch(sample_queries, store.full_dim)
    if options.get("truth") is None:
        options["truth"] = store.exact_search(queries, k)[1]
    measured = options.pop("measured", None)
    measured = {} if measured is None else measured
    return {
        level: autotune(store, queries, k, level, measured=measured, **options)
        for level in sorted({check_recall(level, "a recall level") for level in levels})
    }


def two_stage_schedule(full_dim: int, k: int, shortlist: int, head_dim: int, binary: bool = False) -> Schedule:
    """Head, then the full vectors: the schedule of an index whose head is an adapter's prefix."""
    if head_dim >= full_dim and not binary:
        return Schedule((Stage(full_dim, k),))
    return Schedule((Stage(head_dim, max(k, shortlist), binary), Stage(full_dim, k)))


def shortlist_candidates(k: int, n: int) -> list[int]:
    """From 2k up to 2,000k in steps of about 1.5x, and the whole corpus when that is small enough to re-rank.
    A corpus of millions also gets longer shortlists, up to 1% of its rows: there the highest recall
    levels need more than 2,000k candidates, and each is still far cheaper than exact search."""
    steps = (2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000)
    sizes = [k * m for m in steps] + ([n] if n <= 50_000 else [])
    sizes += [k * m for m in LARGE_CORPUS_STEPS if k * m <= n // 100]
    return sorted({s for s in sizes if s <= n})
