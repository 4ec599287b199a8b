"""Build an index from texts (or precomputed vectors) and search it with the funnel or exactly.

The model, prompts and dims are stored with the index; search loads the same encoder, so queries
and documents are always encoded alike.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .adapt import AdaptedEncoder, adapted_queries, load_adapter
from .embedding_cache import cache_path_for_index, user_cache_path
from .errors import MatryoshkaError, StorageError, StoreError, UsageError
from .filters import Filter, parse_filter
from .funnel import (
    RECALL_LEVELS,
    TUNE_MARGIN,
    Schedule,
    SearchResult,
    TuneResult,
    autotune,
    autotune_levels,
    check_recall,
    funnel_search,
    per_query_recall,
    shortlist_candidates,
    worst_bound,
)
from .metadata import MetadataError, infer_schema, merge_schemas
from .models import MODEL_ALIASES, REMOTE_PREFIX, Encoder, load_model, model_options, tuning_dims
from .plans import exact_is_faster, level_for, time_plans
from .samples import AUTOTUNE_SAMPLE, tuning_texts
from .stores import (
    HEAD_INDEXES,
    Autotune,
    IndexMeta,
    Store,
    check_ids,
    is_memory_uri,
    is_milvus_uri,
    open_builder,
    open_store,
    open_writer,
)
from .stores.memory import MemoryStore
from .stores.segments import DeleteReport, SegmentWriter, UpsertReport, check_batch_ids, merge_plan
from .text_checks import check_unicode
from .vectors import (
    check_dim,
    check_storage,
    check_vector_rows,
    default_head_dim,
    head_candidates,
    normalize,
    round_trip,
    validate_vectors,
)

LOG = logging.getLogger("matryoshka")
ENCODE_CHUNK = 256
MILVUS_MAX_TOPK = 16_384  # the most results one Milvus search returns
VECTOR_CHUNK = 8192
AUTO_HEAD = "auto"  # autotune picks the head: see build_index
# from here up, "auto" tunes the sign bits beside the float heads: at 117,659 and 1M rows their scan
# answered a query at the same recall several times faster (docs/benchmarks.md)
AUTO_BINARY_ROWS = 100_000


def _batches(encoder: Encoder | None, texts: Sequence[str], vectors: np.ndarray | None) -> Iterator[np.ndarray]:
    if vectors is not None:
        for start in range(0, len(vectors), VECTOR_CHUNK):
            yield vectors[start : start + VECTOR_CHUNK]
        return
    chunk = getattr(encoder, "encode_chunk", ENCODE_CHUNK)  # an endpoint's: enough for its requests in flight
    for start in range(0, len(texts), chunk):
        yield encoder.encode(texts[start : start + chunk], kind="document")


def build_index(
    db: str | Path,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    encoder: Encoder | None = None,
    vectors: np.ndarray | None = None,
    head_dim: int | None = None,
    head_index: str = AUTO_HEAD,
    k: int = 10,
    target_recall: float = 0.99,
    tune_queries: np.ndarray | None = None,
    collection: str | None = None,
    progress: Callable[[int], None] | None = None,
    metadata: Sequence[dict] | None = None,
    schema: dict[str, str] | None = None,
    recall_levels: Sequence[float] = RECALL_LEVELS,
    storage: str = "float32",
) -> IndexMeta:
    """Encode (or take) the corpus vectors, autotune the head dim and default schedule on a sample
    of the corpus, and store everything. ``recall_levels``: further recall targets a search may ask
    for (``recall=``), each tuned a schedule of its own at the chosen head. Without ``vectors`` the ``encoder`` encodes the texts;
    with both, the vectors are taken as that model's and queries can later be given as text.
    ``metadata``: a dict per document (filterable fields), typed by ``schema`` (inferred if not given).
    ``storage``: how the local store keeps the vectors it re-ranks (``float16`` or ``int8`` for
    half or a quarter of float32's bytes); tuning and final scores are of the vectors as stored.
    ``head_index="auto"``: a float head, or for a corpus of :data:`AUTO_BINARY_ROWS` or more the
    sign bits where autotune finds them cheaper at the target recall.

    All or nothing: the new index becomes visible only once complete. ``progress`` is called with
    the number of documents encoded (and, for Milvus, written) since the last call."""
    if encoder is None and vectors is None:
        raise UsageError("give a model to encode the texts, or precomputed vectors")
    check_recall(target_recall, "the target recall")
    recall_levels = [check_recall(level, "a recall level") for level in recall_levels]
    adapter = encoder.adapter if isinstance(encoder, AdaptedEncoder) else None
    adapter_path = encoder.adapter_path if isinstance(encoder, AdaptedEncoder) else None
    encoder = (
        encoder.base if isinstance(encoder, AdaptedEncoder) else encoder
    )  # documents are stored as the model's own vectors
    ids = check_ids(ids)
    if len(texts) != len(ids):
        raise StoreError(f"{len(texts)} texts for {len(ids)} ids")
    if vectors is not None:
        # checked now, a block at a time, and normalised as they are copied in: a memory-mapped file of any size
        vectors = check_vector_rows(
            vectors, count=len(ids), dim=encoder.full_dim if encoder else None, what="--vectors"
        )
    full_dim = vectors.shape[1] if vectors is not None else encoder.full_dim
    milvus = is_milvus_uri(db)
    if check_storage(storage) != "float32" and milvus:
        raise UsageError(f"--storage {storage} is for the local store; Milvus keeps float32 vectors")
    head_dim = check_head_choice(head_index, head_dim, full_dim, milvus=milvus)
    if head_index == AUTO_HEAD and (head_dim is not None or len(ids) < AUTO_BINARY_ROWS):
        head_index = "flat"  # a head dim counts float dims; a small corpus is scanned in well under a millisecond
    # an adapter's head is a prefix of f(x), which the model's trained dims say nothing about
    trained = tuning_dims(encoder) if encoder is not None and adapter is None else ()
    metadata, schema = check_metadata(metadata, schema, len(ids))
    meta = IndexMeta(
        model=encoder.name if encoder is not None else None,
        full_dim=full_dim,
        head_dim=head_dim or default_head_dim(full_dim, trained),
        count=len(ids),
        head_index="flat" if head_index == AUTO_HEAD else head_index,  # settled by autotune
        query_prompt=getattr(encoder, "query_prompt", None),
        document_prompt=getattr(encoder, "document_prompt", None),
        adapter=adapter_path,
        model_options=model_options(encoder) if encoder is not None else {},
        trained_dims=trained,
        fields=schema or {},
        storage=storage,
    )
    builder = open_builder(db, collection, meta.head_index)
    try:
        full = builder.full_array(len(ids), full_dim)
        written = 0
        for batch in _batches(None if vectors is not None else encoder, list(texts), vectors):
            if vectors is None:
                batch = validate_vectors(batch, dim=full_dim, what="encoded vectors")
            else:  # checked above
                batch = normalize(batch)
            full[written : written + len(batch)] = batch
            written += len(batch)
            if progress:
                progress(len(batch))
        round_trip(full, storage)  # tuned on the vectors as they will be stored
        groups = None
        if tune_queries is not None:
            queries, source = validate_vectors(tune_queries, dim=full_dim, what="tuning queries"), "given queries"
        elif encoder is not None:
            samples, groups = tuning_texts(list(texts))
            queries = encoder.encode(samples, kind="query")
            source = "words, short and long word windows of corpus texts"
        else:
            queries, source = None, "corpus vectors"
        adapted = normalize(adapter.transform(np.asarray(full))) if adapter is not None else None
        tuned = tune(
            full,
            k=min(k, len(ids)),
            target_recall=target_recall,
            head_dims=[head_dim] if head_dim else None,
            trained=trained,
            sample_queries=queries,
            groups=groups,
            adapter=adapter,
            adapted=adapted,
            head_index=head_index,
            two_stage=milvus,  # on Milvus a stage costs by the ids it handles: one cut after the head is cheapest
            max_shortlist=MILVUS_MAX_TOPK if milvus else None,
            levels=() if milvus and head_index in APPROXIMATE_HEADS else recall_levels,
        )
        meta = replace(
            meta,
            head_index="binary" if head_index == AUTO_HEAD and tuned.schedule.binary_head else meta.head_index,
            head_dim=tuned.schedule.head_dim,
            schedule=str(tuned.schedule),
            recall_schedules=level_schedules(tuned.by_level),
            autotune=Autotune(
                k=min(k, len(ids)),
                target_recall=target_recall,
                recall=tuned.recall,
                queries=source,
                passed=tuned.passed,
                corpus_size=len(ids),
            ),
        )
        meta = builder.commit(full, ids, list(texts), meta, progress=progress, head_source=adapted, metadata=metadata)
    except BaseException:
        builder.abort()
        raise
    finally:
        builder.close()
    if milvus and meta.head_index in APPROXIMATE_HEADS:
        meta = tune_on_store(db, collection, full, queries, groups, meta, adapter)
    return record_plan_times(db, collection, meta, corpus_sample(full) if queries is None else queries, adapter)


def corpus_sample(full: np.ndarray) -> np.ndarray:
    """The corpus' own vectors that stand in for queries when none are given (the same rows each time)."""
    rows = np.sort(np.random.default_rng(0).choice(len(full), size=min(AUTOTUNE_SAMPLE, len(full)), replace=False))
    return np.asarray(full[rows])


def record_plan_times(db, collection: str | None, meta: IndexMeta, queries: np.ndarray, adapter=None) -> IndexMeta:
    """Time exact search and each tuned schedule on the index as stored (see :mod:`matryoshka.plans`)
    and record the figures with it, so that a search takes exact search where that is faster."""
    with Index(db, collection=collection) as index:
        seconds = time_plans(index.store, queries, meta, _head_mapper(adapter))
    meta = replace(meta, plan_seconds=seconds)
    with open_writer(db, collection) as writer:
        writer.save_meta(meta)
    return meta


def _head_mapper(adapter) -> Callable[[np.ndarray, int], np.ndarray] | None:
    return None if adapter is None else (lambda queries, dim: adapted_queries(adapter, queries, dim))


def check_metadata(
    metadata: Sequence[dict] | None, schema: dict[str, str] | None, count: int
) -> tuple[list[dict] | None, dict[str, str] | None]:
    """One metadata dict per document, and their schema (inferred when not given)."""
    if metadata is None:
        return None, None
    metadata = [dict(m or {}) for m in metadata]
    if len(metadata) != count:
        raise StoreError(f"{len(metadata)} metadata records for {count} documents")
    try:
        inferred = infer_schema(metadata)
    except MetadataError as exc:
        raise MetadataError(f"record {exc.record}: {exc}") from None
    schema = merge_schemas(schema or {}, inferred) if schema else inferred
    return (metadata, schema) if schema else (None, None)


APPROXIMATE_HEADS = ("hnsw", "binary-ivf")
RETUNE_TEXTS = 5000  # documents whose texts re-tuning draws its sample queries from
VERIFY_SAMPLE = 300  # tuning queries run through an approximate head in Milvus
WIDENINGS = (1.0, 1.5, 2.0, 3.0, 5.0)  # of the tuned shortlist, tried after each head setting


def tune_on_store(
    db, collection, full: np.ndarray, queries: np.ndarray | None, groups, meta: IndexMeta, adapter=None
) -> IndexMeta:
    """Tune an approximate head (HNSW, BIN_IVF_FLAT) on the real Milvus index: the schedule tuned
    in memory assumed an exact head, so run it in Milvus on the tuning queries and, until recall
    reaches the target, search the head more thoroughly (its ``ef`` or ``nprobe``) and then widen
    the shortlist. What passes is recorded with the index."""
    if queries is None:
        return meta
    sample = np.asarray(queries[:VERIFY_SAMPLE])
    kinds = None if groups is None else np.asarray(groups[:VERIFY_SAMPLE])
    k, target = meta.autotune.k, meta.autotune.target_recall
    required = target + TUNE_MARGIN * (1 - target)
    truth = MemoryStore(np.asarray(full), min(8, full.shape[1])).exact_search(sample, k)[1]
    tuned = Schedule.parse(meta.schedule)
    with Index(db, collection=collection) as index:
        store = index.store
        best = None
        for widen in WIDENINGS:
            schedule = tuned.scaled(widen, k, min(len(store), MILVUS_MAX_TOPK))
            for params in store.layout.head_param_ladder():
                store.layout = replace(store.layout, head_params=params)
                head_queries = None if adapter is None else adapted_queries(adapter, sample, schedule.head_dim)
                recalls = per_query_recall(
                    funnel_search(store, sample, schedule, k, head_queries=head_queries).rows, truth
                )
                best = (schedule, params, float(np.mean(recalls)))
                if worst_bound(recalls, kinds) >= required:
                    break
            else:
                continue
            break
        schedule, params, recall = best
        passed = worst_bound(recalls, kinds) >= required
        meta = replace(
            meta,
            schedule=str(schedule),
            autotune=replace(
                meta.autotune,
                recall=recall,
                passed=passed,
                queries=meta.autotune.queries + ", verified on the Milvus index",
            ),
        )
        store.save_tuning(meta, params)
    return meta


def check_head_choice(head_index: str, head_dim: int | None, full_dim: int, *, milvus: bool = False) -> int | None:
    """Fail before any encoding on a head that cannot be built; a binary head defaults to all d
    bits (the bytes of a d/32 float head)."""
    if head_index not in (AUTO_HEAD, *HEAD_INDEXES):
        raise StoreError(f"unknown head index {head_index!r}; choose one of {', '.join((AUTO_HEAD, *HEAD_INDEXES))}")
    if head_index == "binary-ivf" and not milvus:
        raise StoreError(
            "--head-index binary-ivf is a Milvus server's index (BIN_IVF_FLAT); a local index's binary "
            "head is an exact scan: use --head-index binary"
        )
    if head_dim is not None and not 1 <= head_dim <= full_dim:
        raise StoreError(f"head dim {head_dim} is outside 1..{full_dim}")
    if not head_index.startswith("binary"):
        return head_dim
    bits = head_dim or full_dim
    if bits % 8:
        raise StoreError(
            f"a binary head takes whole bytes: {bits} bits is not a multiple of 8; give --head-dim "
            f"{bits - bits % 8 or 8}"
        )
    return bits


def tune(
    full: np.ndarray,
    k: int,
    target_recall: float,
    head_dims: Sequence[int] | None = None,
    sample_queries: np.ndarray | None = None,
    adapter=None,
    adapted: np.ndarray | None = None,
    head_index: str = "flat",
    groups: Sequence[str] | None = None,
    two_stage: bool = False,
    max_shortlist: int | None = None,
    trained: Sequence[int] = (),
    levels: Sequence[float] = (),
) -> TuneResult:
    """Autotune over head dims and shortlists; queries default to a sample of the corpus' own vectors.
    ``groups`` labels each query's kind; each kind must reach the target on its own.
    With an ``adapter`` (``adapted`` = its re-normalised ``f(full)``) the head is searched in the
    adapter's space and the schedules are two-stage: head, then the original full vectors; so are
    they with ``two_stage``. ``max_shortlist``: the longest head answer the store can give. A
    binary head is tuned at its own bits (default all d); the other heads are tuned as exact ones.
    ``head_index="auto"``: the float heads and the binary head at all d bits, the cheapest that passes.
    ``trained``: the model's trained prefix dims; head dims and stages then keep to them.
    ``levels``: further recall targets, each tuned at the chosen head (``by_level`` of the result)."""
    if sample_queries is None:
        sample_queries = corpus_sample(full)
    full_dim = full.shape[1]
    binary = head_index.startswith("binary")
    float_dims = head_dims or head_candidates(full_dim, trained)
    if head_index == AUTO_HEAD:
        kinds = [("binary", [full_dim]), ("flat", float_dims)]
    else:
        kinds = [("binary", head_dims or [full_dim])] if binary else [("flat", float_dims)]
    stores = [
        MemoryStore(full, head, head_index=kind, head=None if adapter is None else normalize(adapted[:, :head]))
        for kind, dims in kinds
        for head in sorted(set(dims))
    ]
    truth = stores[0].exact_search(sample_queries, k)[1]
    options = [
        dict(
            truth=truth,
            groups=None if groups is None else np.asarray(groups),
            two_stage=two_stage or adapter is not None,
            trained=trained,
            shortlists=_shortlists(k, len(full), max_shortlist),
            head_queries=None if adapter is None else adapted_queries(adapter, sample_queries, store.head_dim),
            measured={},
        )
        for store in stores
    ]
    results: list[TuneResult] = []
    for store, option in zip(stores, options):  # each head searched only for schedules cheaper than the best yet
        ceiling = min((r.cost for r in results if r.passed), default=None)
        results.append(autotune(store, sample_queries, k, target_recall, ceiling=ceiling, **option))
    passing = [r for r in results if r.passed]
    chosen = min(passing, key=lambda r: r.cost) if passing else max(results, key=lambda r: r.recall)
    others = sorted({check_recall(level, "a recall level") for level in levels} - {target_recall})
    if not others:
        return chosen
    where = results.index(chosen)
    return replace(chosen, by_level=autotune_levels(stores[where], sample_queries, k, others, **options[where]))


def level_schedules(results: dict[float, TuneResult]) -> dict[str, str]:
    """The stored form of tuned recall levels: ``{"0.95": "256b:500,128:62,256:10", ...}``."""
    return {f"{level:g}": str(result.schedule) for level, result in sorted(results.items())}


def _shortlists(k: int, count: int, longest: int | None) -> list[int] | None:
    if longest is None:
        return None
    return [s for s in shortlist_candidates(k, count) if s <= longest] or [min(longest, count)]


@dataclass
class Hits:
    """One query's answer: ids, cosines, texts and metadata fields, best first."""

    ids: list[str]
    scores: list[float]
    texts: list[str]
    fields: list[dict] | None = None  # each hit's metadata (None: not asked for)

    def __len__(self) -> int:
        return len(self.ids)

    def to_list(self) -> list[dict]:
        """``[{"rank", "id", "score", "text"[, "fields"]}, ...]``, best first."""
        fields = self.fields if self.fields is not None else [None] * len(self.ids)
        return [
            {"rank": rank, "id": i, "score": s, "text": t, **({} if f is None else {"fields": f})}
            for rank, (i, s, t, f) in enumerate(zip(self.ids, self.scores, self.texts, fields), start=1)
        ]

    def __str__(self) -> str:
        return "\n".join(f"{h['rank']:>3}  {h['score']:.4f}  {h['id']}  {h['text'][:80]}" for h in self.to_list())


def search_mode(exact: bool = False, dim: int | None = None) -> str:
    """``"funnel"``, ``"exact"`` (full-dimension scan) or ``"prefix"`` (a scan of ``dim``-prefixes)."""
    return "prefix" if dim else "exact" if exact else "funnel"


def answers_json(
    queries: Sequence[str],
    result: SearchResult,
    hits: Sequence[Hits],
    *,
    k: int,
    mode: str,
    dim: int,
    schedule: Schedule | None = None,
) -> list[dict]:
    """One JSON object per query: what ``matryoshka search --json`` writes and ``POST /search``
    answers. ``stages`` are the whole batch's (dim, keep, milliseconds) per funnel stage."""
    stages = [
        {"dim": d, "keep": n, "ms": round(1000 * s, 3), **({"stage": "filter"} if d == 0 else {})}
        for d, n, s in zip(result.stage_dims, result.stage_keeps, result.stage_seconds)
    ]
    return [
        {
            "query": query,
            "k": k,
            "mode": mode,
            "dim": dim,
            "schedule": str(schedule) if schedule else None,
            "hits": found.to_list(),
            "stages": stages,
            "plan": result.plan,
            **({} if result.passing is None else {"filter_passed": result.passing}),
            "batch_size": len(hits),
        }
        for query, found in zip(queries, hits)
    ]


class Index:
    """An opened index plus the encoder it was built with."""

    def __init__(
        self,
        db: str | Path,
        *,
        model: str | None = None,
        head_index: str | None = None,
        collection: str | None = None,
        encoder: Encoder | None = None,
        previous: Store | None = None,
        embedding_cache: str | Path | bool = True,
    ) -> None:
        """``encoder``: an already loaded model to reuse (checked against the index's, like ``model``);
        ``previous``: this index's store as opened before, whose unchanged parts are reused;
        ``embedding_cache``: for a model behind an endpoint, where its vectors are kept (True: the
        index's own place; False: nowhere, as for a server, which would otherwise keep every text
        a client sends)."""
        self._embedding_cache = embedding_cache
        self.db, self._options = db, {"head_index": head_index, "collection": collection}
        self.store: Store = open_store(db, head_index=head_index, collection=collection, previous=previous)
        self.adapter = None
        if self.meta.adapter:
            try:
                self.adapter = load_adapter(self.meta.adapter)
            except MatryoshkaError as exc:
                raise StoreError(
                    f"this index was built with adapter {self.meta.adapter}, which cannot be loaded: {exc}"
                ) from None
        given_adapter = encoder.adapter_path if isinstance(encoder, AdaptedEncoder) else None
        if given_adapter and given_adapter != self.meta.adapter:
            raise StoreError(f"this index was built with adapter {self.meta.adapter or '(none)'}, not {given_adapter}")
        encoder = encoder.base if isinstance(encoder, AdaptedEncoder) else encoder  # queries: the model's own vectors
        model = encoder.name if encoder is not None and model is None else model
        if model is not None and self.meta.model is not None and _canonical(model) != _canonical(self.meta.model):
            raise StoreError(
                f"this index was built with model {self.meta.model!r}, not {model!r}; "
                "search must use the indexing model"
            )
        self._encoder: Encoder | None = encoder

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            if self.meta.model is None:
                raise StoreError(
                    "this index was built from precomputed vectors: search it with query vectors "
                    "(--query-vectors), or re-index with --model"
                )
            self._encoder = load_model(
                self.meta.model,
                query_prompt=self.meta.query_prompt,
                document_prompt=self.meta.document_prompt,
                **self.meta.model_options,
                **self._remote_load_options(),
            )
        return self._encoder

    def _remote_load_options(self) -> dict:
        """For a model behind an endpoint: its known dimension, and where its vectors are kept
        (beside the index: ``add`` of a text already embedded sends nothing)."""
        if not (self.meta.model or "").startswith(REMOTE_PREFIX):
            return {}
        known = {"full_dim": self.meta.full_dim}  # no request to learn it
        if self._embedding_cache is False:
            return known
        if self._embedding_cache is not True:
            return {**known, "embedding_cache": self._embedding_cache}
        return {**known, "embedding_cache": cache_path_for_index(self.db) or user_cache_path()}

    @property
    def meta(self) -> IndexMeta:
        return self.store.meta

    def __len__(self) -> int:
        """Live documents."""
        return len(self.current_store())

    def current_store(self) -> Store:
        """The store as of now: when a write (here or in another process) has replaced what this
        index opened, the new state is opened, so every search sees every write acknowledged
        before it started. The old store stays usable by searches still running on it. An index
        rebuilt with another model or adapter is not followed here (this object's encoder would
        be wrong for it): :meth:`reopened` makes the new Index."""
        store = self.store
        if not store.is_current():
            fresh = open_store(self.db, previous=store, **self._options)
            if (fresh.meta.model, fresh.meta.adapter, fresh.meta.model_options) != (
                store.meta.model,
                store.meta.adapter,
                store.meta.model_options,
            ):
                fresh.close()  # queries must be encoded another way: only a new Index (reopened()) can follow
                return store
            self.store = store = fresh
        return store

    def close(self) -> None:
        self.store.close()

    def is_current(self) -> bool:
        """Whether this is still the index's current state; a build or write since it was opened
        makes it stale, and :meth:`reopened` opens what replaced it."""
        return self.store.is_current()

    def reopened(self) -> Index:
        """The index as it is now, as a new object (this one keeps answering until closed); the
        loaded model is reused when the index still uses it, and so are the unchanged segments."""
        fresh = Index(self.db, previous=self.store, embedding_cache=self._embedding_cache, **self._options)
        if (
            self._encoder is not None
            and fresh.meta.model is not None
            and self.meta.model is not None
            and _canonical(fresh.meta.model) == _canonical(self.meta.model)
            and (fresh.meta.query_prompt, fresh.meta.document_prompt, fresh.meta.model_options)
            == (self.meta.query_prompt, self.meta.document_prompt, self.meta.model_options)
        ):
            fresh._encoder = self._encoder
        return fresh

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schedule_for(self, k: int, store: Store | None = None, recall: float | None = None) -> Schedule | None:
        """The autotuned schedule, its keeps scaled up when more than the tuned k is asked for.
        With ``recall``, the one tuned for the lowest stored level at or above it (the cheapest
        that promises as much); ``None`` when it is above every tuned level: only exact search
        promises that."""
        store = store or self.store
        found = level_for(store.meta, recall)
        return None if found is None else self._scaled(found[1], k, store)

    def plan_for(
        self, k: int, store: Store | None = None, recall: float | None = None, batch: int = 1
    ) -> Schedule | None:
        """What a search of ``batch`` queries runs when it names no schedule: :meth:`schedule_for`,
        or ``None`` for exact search where that promises the recall and answered faster when the
        index was timed (see :mod:`matryoshka.plans`)."""
        store = store or self.store
        found = level_for(store.meta, recall)
        if found is None or exact_is_faster(store.meta, found[0], batch):
            return None
        return self._scaled(found[1], k, store)

    def _scaled(self, text: str, k: int, store: Store) -> Schedule:
        meta = store.meta
        if not text:
            return Schedule.halving(meta.full_dim, k, max(100, 10 * k), meta.head_dim, trained=meta.trained_dims)
        tuned = Schedule.parse(text)
        return tuned.scaled(max(1.0, k / tuned.stages[-1].keep), k, max(k, len(store)))

    def schedule_warning(self) -> str | None:
        """A sentence when the stored schedule was tuned for a corpus of very different size (it
        may then miss the recall it was tuned for, or spend more than it needs)."""
        store = self.current_store()
        tuned = store.meta.autotune
        if tuned is None or not tuned.corpus_size:
            return None
        ratio = len(store) / tuned.corpus_size
        if 0.5 <= ratio <= 2:
            return None
        return (
            f"the search schedule was tuned on {tuned.corpus_size:,} documents and the index now holds "
            f"{len(store):,}; run 'matryoshka compact --db {self.db}' to re-tune it"
        )

    # writes ------------------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        *,
        metadata: Sequence[dict] | None = None,
        schema: dict[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
        merge: bool = True,
    ) -> UpsertReport:
        """Add documents, or replace those whose id is already in the index (upsert). Texts are
        encoded with the index's model unless ``vectors`` (n, d) are given; both may be given.
        ``metadata``: a dict per document; a new field joins the index's fields, a known one
        must keep its type. Durable when it returns; then segments of like size are merged
        (``merge=False``: left for :meth:`merge`, which a server runs after answering) and the
        schedule is re-tuned when the corpus has doubled since it was. A failure of that upkeep
        does not undo the write: it is logged, and the next write tries again.

        Example::

            with Index("./my-index") as index:
                index.add(["doc-9"], ["Tides are caused by the moon."])
        """
        ids = check_batch_ids(ids, "the documents to add")
        if not ids:
            raise UsageError("nothing to add: no documents given")
        if texts is None and vectors is None:
            raise UsageError("give the documents' texts, their vectors, or both")
        for position, doc_id in enumerate(ids):
            if not doc_id.strip():
                raise StoreError(f"document {position + 1} has an empty id")
            check_unicode(doc_id, f"the id of document {position + 1}")
        if texts is not None:
            texts = list(texts)
            if len(texts) != len(ids):
                raise StoreError(f"{len(texts)} texts for {len(ids)} ids")
            for position, text in enumerate(texts):
                if not isinstance(text, str):
                    raise StoreError(f"document {ids[position]!r}: its text is {type(text).__name__}, not a string")
                check_unicode(text, f"document {ids[position]!r}")
        meta = self.current_store().meta
        metadata, schema = self.check_metadata_fits(metadata, schema, len(ids))
        if vectors is not None:
            full = validate_vectors(vectors, count=len(ids), dim=meta.full_dim, what="vectors")
        else:
            parts = []
            for batch in _batches(self.encoder, texts, None):
                parts.append(validate_vectors(batch, dim=meta.full_dim, what="encoded vectors"))
                if progress:
                    progress(len(batch))
            full = np.concatenate(parts)
        head_source = normalize(self.adapter.transform(full)) if self.adapter is not None else None
        with open_writer(self.db, self._options["collection"], previous=self.store) as writer:
            report = writer.upsert(
                ids, full, texts if texts is not None else [""] * len(ids), head_source, metadata, schema
            )
            report = report._replace(documents=writer.live_count())
            self._upkeep(writer, merge)
        self._follow_write()
        return report

    def check_metadata_fits(
        self, metadata: Sequence[dict] | None, schema: dict[str, str] | None = None, count: int | None = None
    ) -> tuple[list[dict] | None, dict[str, str] | None]:
        """The documents' metadata and its schema, checked against the index's fields (a known
        field keeps its type): a StoreError saying which does not fit."""
        metadata, schema = check_metadata(metadata, schema, len(metadata or ()) if count is None else count)
        if schema:
            try:
                merge_schemas(self.current_store().meta.fields, schema)
            except MetadataError as exc:
                raise StoreError(f"these documents do not fit the index's metadata: {exc}") from None
        return metadata, schema

    def merge(self) -> int:
        """Merge segments of like size (see :mod:`matryoshka.stores.segments`), as a write does
        unless told not to; returns the number of merges made (0 on Milvus, which merges its own)."""
        if merge_plan(getattr(self.current_store(), "segments", ())) is None:
            return 0  # nothing to merge: no writer needed
        with open_writer(self.db, self._options["collection"], previous=self.store) as writer:
            merges = writer.merge_tiers() if isinstance(writer, SegmentWriter) else 0
        if merges:
            self._follow_write()
        return merges

    def _upkeep(self, writer, merge: bool) -> None:
        """After a committed write: merge segments and re-tune a schedule the corpus has outgrown.
        The write stands whatever happens here."""
        try:
            if merge and isinstance(writer, SegmentWriter):
                writer.merge_tiers()
            tuned = writer.meta.autotune
            if tuned is not None and writer.live_count() >= 2 * max(1, tuned.corpus_size):
                self._retune(writer)
        except StorageError as exc:
            LOG.warning("the write was made; merging or re-tuning after it failed: %s", exc)
        except Exception:  # noqa: BLE001 - a bug here must not make a made write look failed
            LOG.exception("the write was made; merging or re-tuning after it failed")

    def _follow_write(self) -> None:
        """Open the state a write made, for the next search; a failure here (no file handles left,
        say) does not make the write fail: it is made, and the next search tries again."""
        try:
            self.current_store()
        except Exception as exc:  # noqa: BLE001 - the write is made whatever happens here
            LOG.warning("the write was made; reopening the index after it failed: %s", exc)

    def writable(self) -> bool:
        """Whether this process could write the index now (a local folder on a read-only file
        system, or one it may not write, cannot be)."""
        if is_milvus_uri(self.db) or is_memory_uri(self.db):
            return True
        return os.access(Path(self.db), os.W_OK) and os.access(Path(self.db) / ".lock", os.W_OK)

    def delete(self, ids: Sequence[str], *, merge: bool = True) -> DeleteReport:
        """Delete documents by id: ``(deleted, not_found, documents)``; an unknown id is reported,
        not an error. A segment left with no live rows is dropped, and like sizes merged (unless
        ``merge=False``)."""
        ids = [str(i) for i in ids]
        if not ids:
            raise UsageError("nothing to delete: no ids given")
        with open_writer(self.db, self._options["collection"], previous=self.store) as writer:
            report = writer.delete(ids)
            report = report._replace(documents=writer.live_count())
            if report.deleted:
                self._upkeep(writer, merge)
        self._follow_write()
        return report

    def compact(self, *, progress: Callable[[int], None] | None = None) -> IndexMeta:
        """Merge the segments and drop deleted rows, then re-tune the schedule on what is left.
        Searches keep answering meanwhile; the next one reads the compacted index."""
        with open_writer(self.db, self._options["collection"], previous=self.store) as writer:
            writer.compact(progress=progress)
            self._retune(writer)
        return self.current_store().meta

    def _retune(self, writer) -> None:
        """Tune the schedule again on the writer's current state, at the stored head."""
        store = writer.store_view()
        try:
            self._retune_on(store, writer)
        finally:
            store.close()

    def _retune_on(self, store: Store, writer) -> None:
        meta, tuned = writer.meta, writer.meta.autotune
        if tuned is None or len(store) < 1:
            return
        k = min(tuned.k, len(store))
        rows = store.sample_rows(RETUNE_TEXTS)
        texts = [t for t in store.texts_of(rows[None, :])[0] if t.strip()] if meta.model is not None else []
        groups = None
        if texts:
            samples, groups = tuning_texts(texts)
            queries, source = self.encoder.encode(samples, kind="query"), "words and word windows of corpus texts"
        else:
            picked = np.sort(np.random.default_rng(1).permutation(rows)[:AUTOTUNE_SAMPLE])
            queries, source = store.document_vectors(picked), "corpus vectors"
        milvus = is_milvus_uri(self.db)
        levels = [float(level) for level in meta.recall_schedules]
        results = autotune_levels(
            store,
            queries,
            k,
            [tuned.target_recall, *levels],
            groups=None if groups is None else np.asarray(groups),
            two_stage=milvus or self.adapter is not None,
            shortlists=_shortlists(k, len(store), MILVUS_MAX_TOPK if milvus else None),
            head_queries=None if self.adapter is None else adapted_queries(self.adapter, queries, meta.head_dim),
            trained=meta.trained_dims,
        )
        result = results.pop(tuned.target_recall)
        meta = replace(
            meta,
            schedule=str(result.schedule),
            recall_schedules=level_schedules(results),
            autotune=Autotune(
                k=k,
                target_recall=tuned.target_recall,
                recall=result.recall,
                queries=source + ", re-tuned",
                passed=result.passed,
                corpus_size=len(store),
            ),
        )
        writer.save_meta(replace(meta, plan_seconds=time_plans(store, queries, meta, _head_mapper(self.adapter))))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query texts as the index's model encodes them; an empty query is refused (it has no meaning
        to search for, and a model answers it with an arbitrary or an all-zero vector)."""
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise UsageError(f"query {position + 1} is empty" if len(texts) > 1 else "the query is empty")
        return self.encoder.encode(texts, kind="query")

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        schedule: Schedule | str | None = None,
        exact: bool = False,
        dim: int | None = None,
        filter: dict | str | None = None,
        fields: Sequence[str] | None = None,
        recall: float | None = None,
    ) -> list[Hits]:
        """Encode query texts with the index's model and search: one :class:`Hits` per query.
        ``filter`` keeps documents whose metadata matches (see :mod:`matryoshka.filters`);
        ``fields`` names the metadata fields each hit returns (default: all); ``recall`` asks
        for the cheapest schedule tuned for at least that recall@k (see :meth:`search_vectors`).

        Example::

            with Index("./my-index") as index:
                print(index.search("what causes tides?", k=3, filter={"year": {"$gte": 2020}})[0])
                fast = index.search("tides", recall=0.9)  # cheaper, tuned to find 9 of the true top 10
        """
        texts = [queries] if isinstance(queries, str) else list(queries)
        plan = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        where = self.parse_filter(filter)  # a bad filter fails before any encoding
        if recall is not None:
            check_recall(recall)
        result = self.search_vectors(
            self.encode_queries(texts), k, schedule=plan, exact=exact, dim=dim, filter=where, recall=recall
        )
        return self.hits(result, fields)

    def parse_filter(self, spec: dict | str | Filter | None) -> Filter | None:
        """A filter checked against this index's metadata fields (a FilterError says what is wrong)."""
        if isinstance(spec, Filter) or spec is None:
            return spec
        return parse_filter(spec, self.current_store().meta.fields)

    def check_fields(self, names: Sequence[str] | None) -> list[str] | None:
        """Field names to return with hits, each one of the index's (``None``: all)."""
        if names is None:
            return None
        known = self.current_store().meta.fields
        for name in names:
            if name not in known:
                raise UsageError(f"unknown field {name!r}; this index's metadata fields: {', '.join(known) or 'none'}")
        return list(names)

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        schedule: Schedule | None = None,
        exact: bool = False,
        dim: int | None = None,
        filter: dict | str | Filter | None = None,
        recall: float | None = None,
    ) -> SearchResult:
        """Funnel search by default; ``exact`` scans the full vectors; ``dim`` scans only the
        re-normalised ``dim`` prefixes, i.e. what an index of ``dim``-dim embeddings would return.
        ``recall`` picks the cheapest schedule the index tuned for at least that recall@k (exact
        search above its highest level). ``filter`` keeps only documents whose metadata matches;
        fewer than ``k`` may, and so may an index holding fewer than ``k`` documents (each query
        then gets all of them)."""
        if recall is not None:
            check_recall(recall)
            if schedule is not None or exact or dim is not None:
                raise UsageError("give a recall level, or a schedule, --exact or a dim: not two of them")
        where = self.parse_filter(filter)
        store = self.current_store()
        meta = store.meta
        queries = validate_vectors(np.atleast_2d(queries), dim=meta.full_dim, what="query vectors")
        if k < 1:
            raise UsageError(f"k={k}: ask for at least one hit")
        if not len(store):
            empty = np.zeros((len(queries), 0))
            return SearchResult(empty.astype(np.int64), empty.astype(np.float32), source=store, plan="empty index")
        if where is None:
            k = min(k, len(store))
        if dim is not None:
            check_dim(dim, meta.full_dim)
            if schedule is not None:
                raise StoreError("give a dim or a schedule, not both")
        chosen = False  # exact search chosen by the index, not asked for
        if schedule is None and not exact and dim is None:
            schedule = self.plan_for(k, store, recall, len(queries))
            exact = chosen = schedule is None
        if exact or (dim is not None and dim != meta.full_dim):
            dim = dim or meta.full_dim
            started = time.perf_counter()
            scoped = {} if where is None else {"where": where}
            if chosen and where is not None and not getattr(store, "runs_stages", False):
                # the filtered plan's exact branch: the same answer, with the filter's stage and count
                result = funnel_search(store, queries, self.schedule_for(k, store), k, where=where, plan="exact")
            else:
                if dim == meta.full_dim:
                    scores, rows = store.exact_search(queries, k, **scoped)
                else:
                    scores, rows = store.exact_search(normalize(queries[:, :dim]), k, dim=dim, **scoped)
                result = SearchResult(rows, scores.astype(np.float32), [dim], [k], [time.perf_counter() - started])
            result.source = store
            result.plan = "exact" if where is None else "exact over the filtered rows"
            if chosen and level_for(meta, recall) is None:
                result.plan += f" (recall {recall:g} is above every level this index tuned)"
            elif chosen:
                result.plan += " (faster than the funnel on this index when it was tuned)"
            return result
        schedule = schedule or self.schedule_for(k, store)
        if self.adapter is None:
            result = funnel_search(store, queries, schedule, k, where=where)
        elif len(schedule.stages) > 2:
            raise StoreError(
                f"an index with an adapter searches its head and then the full vectors: give a two-stage "
                f"schedule like {schedule.stages[0]},{meta.full_dim}:{k}, not {schedule}"
            )
        else:
            head_queries = adapted_queries(self.adapter, queries, schedule.head_dim)
            result = funnel_search(store, queries, schedule, k, head_queries=head_queries, where=where)
        result.source, result.schedule = store, schedule
        return result

    def hits(self, result: SearchResult, fields: Sequence[str] | None = None) -> list[Hits]:
        """Each query's hits (rows of -1, past the last match of a filter, left out), with the
        metadata ``fields`` named (default: all of them)."""
        store = result.source or self.store
        ids = store.ids_of(result.rows)
        texts = store.texts_of(result.rows)
        found = result.rows >= 0
        metadata = store.fields_of(result.rows, fields) if store.meta.fields else None
        return [
            Hits(
                [str(i) for i, ok in zip(ids[q], found[q]) if ok],
                [float(s) for s, ok in zip(result.scores[q], found[q]) if ok],
                [t for t, ok in zip(texts[q], found[q]) if ok],
                None if metadata is None else [m for m, ok in zip(metadata[q], found[q]) if ok],
            )
            for q in range(len(result.rows))
        ]


def _canonical(name: str) -> str:
    alias = MODEL_ALIASES.get(name.lower())
    return {"minilm": "all-MiniLM-L6-v2"}.get(alias, alias or name)
