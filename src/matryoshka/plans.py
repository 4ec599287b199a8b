"""Which plan answers a search: the schedule tuned for the recall asked for, or exact search where
that is faster on this index.

An index records, when it is tuned, the seconds per query of its store's own exact search and of
each tuned level's schedule, one query at a time, in a batch, and (on a store that searches in
process, where it is quick enough to time one) in a large batch, where exact search's matrix
products pay off most (:func:`time_plans`). A search then takes the faster of the two plans that promise the recall it asks for: exact search promises
every level, so on a small corpus, or on a store whose exact search is quick, no default is
slower than exact search. A recall above every tuned level is answered exactly too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .funnel import Schedule, check_recall, funnel_search
from .stores.base import IndexMeta, Store

BATCH_FROM = 16  # queries searched together from which a batch's figures apply
LARGE_BATCH = 1024  # queries from which a large batch's figures apply, where both plans have them
LARGE_BATCH_BUDGET_S = 4.0  # a large batch is timed only where it should take about this long at most
TIMED_SINGLE = 16  # tuning queries timed one at a time, at most
TIMED_BATCH = 256  # tuning queries timed as one batch
# a plan's single queries stop after this long (after the third); its batches grow while the next fits it
TIMING_BUDGET_S = 0.1
EXACT = "exact"  # the plan_seconds key of exact search


def level_for(meta: IndexMeta, recall: float | None) -> tuple[str, str] | None:
    """``(level, schedule)`` of the lowest tuned level at or above ``recall`` (the cheapest
    schedule that promises it); the default target's without ``recall``; ``None`` when ``recall``
    is above every tuned level. An index tuned for no level has its default schedule (or none)."""
    levels = meta.schedules_by_recall()
    default = meta.autotune.target_recall if meta.autotune is not None else None
    if recall is None or not levels:
        if recall is not None and check_recall(recall) >= 1:
            return None
        return (f"{default:g}" if default is not None else "", meta.schedule or "")
    recall = check_recall(recall)
    for level, schedule in levels.items():
        if level >= recall - 1e-12:
            return f"{level:g}", schedule
    return None


def exact_is_faster(meta: IndexMeta, level: str, batch: int) -> bool:
    """Whether exact search answered faster than ``level``'s schedule when the index was timed,
    for a batch of this many queries."""
    exact, funnel = meta.plan_seconds.get(EXACT), meta.plan_seconds.get(level)
    if not exact or not funnel:
        return False
    column = 0 if batch < BATCH_FROM else 2 if batch >= LARGE_BATCH and len(exact) == len(funnel) == 3 else 1
    return exact[column] < funnel[column]


def time_plans(
    store: Store,
    queries: np.ndarray,
    meta: IndexMeta,
    head_queries: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> dict[str, list[float]]:
    """Seconds per query ``[one at a time, in a batch, in a large batch]`` of exact search and of
    every tuned level's schedule on ``store``, over the tuning ``queries`` (repeated to make the
    large batch, which is left out where it would take too long); ``head_queries(queries, dim)``
    maps queries into an adapter's head space. A single-query figure is a median, a batch's the
    better of two runs; on a slow store (a server) each plan is timed for about
    :data:`TIMING_BUDGET_S`, so indexing stays quick wherever the figures are clear anyway."""
    k = min(meta.autotune.k if meta.autotune else 10, len(store))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not len(store) or not len(queries):
        return {}

    def exact(batch: np.ndarray) -> object:
        return store.exact_search(batch, k)

    # a server's batch is its own affair: the large batch is timed for stores that search in process
    large = not getattr(store, "runs_stages", False)
    figures = {EXACT: _seconds(exact, queries, large)}
    for level, text in meta.schedules_by_recall().items():
        schedule = Schedule.parse(text).scaled(1.0, k, len(store))

        def funnel(batch: np.ndarray, schedule: Schedule = schedule) -> object:
            early = None if head_queries is None else head_queries(batch, schedule.head_dim)
            return funnel_search(store, batch, schedule, k, head_queries=early)

        figures[f"{level:g}"] = _seconds(funnel, queries, large)
    return figures


def _seconds(run: Callable[[np.ndarray], object], queries: np.ndarray, large: bool = True) -> list[float]:
    single = queries[:TIMED_SINGLE]
    run(single[:1])  # warm: first calls pay for lazy set-up
    one: list[float] = []
    for row in range(len(single)):
        started = time.perf_counter()
        run(single[row : row + 1])
        one.append(time.perf_counter() - started)
        if len(one) >= 3 and sum(one) > TIMING_BUDGET_S:
            break
    size = min(BATCH_FROM, len(queries))
    many: list[float] = []
    while True:  # batches of 16, 64, 256 queries while the next fits the budget; the largest timed twice
        started = time.perf_counter()
        run(queries[:size])
        elapsed = time.perf_counter() - started
        many.append(elapsed / size)
        largest = size >= min(TIMED_BATCH, len(queries))
        if (largest and (len(many) >= 2 or elapsed > TIMING_BUDGET_S)) or 4 * elapsed > TIMING_BUDGET_S:
            break
        if not largest:
            size, many = min(4 * size, TIMED_BATCH, len(queries)), []
    figures = [float(np.median(one)), float(min(many))]
    if large and min(many) * LARGE_BATCH <= LARGE_BATCH_BUDGET_S:
        repeated = np.resize(queries, (LARGE_BATCH, queries.shape[1]))
        started = time.perf_counter()
        run(repeated)
        figures.append((time.perf_counter() - started) / LARGE_BATCH)
    return figures
