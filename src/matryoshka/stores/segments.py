"""An index made of segments: immutable blocks of rows, some of them deleted.

A write never changes a segment: new and replaced documents go to a new segment, and deleting a
document marks its row in a tombstone set. Searches see only live rows, numbered 0..len-1 in
segment order, so a deleted row never takes a shortlist place: the head of every live row is
gathered into one contiguous array when the store opens (the head is what a search holds in RAM
anyway), and a head scan over ten segments is one scan, as over one. Re-ranking reads each
candidate where it lies, in its own segment's full vectors. An HNSW head keeps a graph per
segment, searched with the segment's tombstones excluded.

:class:`SegmentWriter` holds the rules every store's writer shares (upsert, delete, compact,
and the merge policy); the local store persists its changes as files, the memory store by
swapping objects.

Merge policy (as Lucene's and RocksDB's size tiers): a segment's tier is the power of
:data:`MERGE_FACTOR` below its live row count, and when one tier holds ``MERGE_FACTOR``
segments they are merged into one of the next tier. A trickle of one-document writes so keeps
at most ``MERGE_FACTOR - 1`` segments per tier, a number of segments logarithmic in the number
of rows, and copies each row once per tier it climbs. A segment whose rows are all deleted is
dropped at the next write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from ..errors import StoreError
from ..filters import Filter, row_mask
from ..metadata import concat_tables, empty_table, merge_schemas, rows_as_dicts, to_table
from ..metrics import top_k
from ..rescore import unit_cosines_one
from ..selection import HammingShortlist, scan_shortlist
from ..vectors import STORAGES, binary_codes, hamming_similarity, normalize, prefix_norm_dims, prefix_norms, to_storage
from .base import IndexMeta
from .memory import HNSW_M, HNSW_MIN_EF_SEARCH, exact_top_k, make_head_index, rescore_rows
from .string_columns import IdLookup, concat_columns, string_column, take_strings

NO_ROWS = np.zeros(0, np.int64)
MASK_CACHE = 32  # row masks of recent filters kept per segment
STORE_MASK_CACHE = 8  # ... and for the live rows of an opened store
_CACHE_LOCK = threading.Lock()  # guards the mask caches' bookkeeping (searches run in several threads)
EXACT_ROWS_BLOCK = 65_536  # filtered rows scored at once by an exact search
DENSE_SHARE = 0.25  # a filter passing more of the rows than this is applied to a scan of every row
MERGE_FACTOR = 8  # segments of one size tier merged into one once this many have gathered


@dataclass
class Segment:
    """One block of rows as stored. ``full`` is (n, d) unit rows (an array or a memory map);
    ``head`` (n, head_dim) the re-normalised float head, or ``codes`` (n, head_dim / 8) the sign
    bits of a binary head; ``norms`` each row's prefix norm at the stage dims; ``ids`` and
    ``texts`` Arrow string columns (:mod:`.string_columns`); ``deleted`` the
    sorted rows of this segment that are deleted; ``metadata`` a ``pyarrow.Table`` of its rows'
    metadata (``None``: none)."""

    name: str
    full: np.ndarray
    ids: pa.Array  # (n,) document ids
    head: np.ndarray | None
    codes: np.ndarray | None
    norms: dict[int, np.ndarray]
    texts: pa.Array  # (n,) document texts
    graph: object | None = None  # FAISS HNSW graph over the head, for an hnsw head
    deleted: np.ndarray = field(default_factory=lambda: NO_ROWS)
    tombstones: str | None = None  # where ``deleted`` was read from, for a store on files
    metadata: object | None = None  # pyarrow.Table, a row per row of the segment
    _masks: dict = field(default_factory=dict, repr=False)  # filter key -> row mask, shared by this segment's copies
    _id_lookup: IdLookup = field(default_factory=IdLookup, repr=False)  # shared by copies

    def __len__(self) -> int:
        return int(self.full.shape[0])

    @property
    def live(self) -> np.ndarray | None:
        """Rows not deleted (``None``: all of them)."""
        if not len(self.deleted):
            return None
        keep = np.ones(len(self), bool)
        keep[self.deleted] = False
        return np.flatnonzero(keep)

    @property
    def live_count(self) -> int:
        return len(self) - len(self.deleted)

    def live_rows_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The row holding each of ``doc_ids`` in this segment, -1 where there is none or it is deleted."""
        rows = self._id_lookup.rows_of(self.ids, doc_ids)
        if len(self.deleted):
            rows[np.isin(rows, self.deleted)] = -1
        return rows

    def mask(self, flt: Filter) -> np.ndarray:
        """Which rows (deleted or not) match ``flt``; kept for the segment's life, since its rows
        never change (a few recent filters, so a filter a service sees again costs nothing)."""
        found = self._masks.get(flt.key)
        if found is None:
            found = row_mask(flt, self.metadata, len(self))
            with _CACHE_LOCK:
                while len(self._masks) >= MASK_CACHE:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[flt.key] = found
        return found

    def with_deleted(self, rows: np.ndarray) -> Segment:
        """This segment with ``rows`` deleted too (a new object sharing the arrays; this one is not changed)."""
        return replace(self, deleted=np.union1d(self.deleted, np.asarray(rows, np.int64)))


def live_rows(segment: Segment) -> np.ndarray:
    """The rows of ``segment`` that are not deleted, in order."""
    live = segment.live
    return np.arange(len(segment)) if live is None else live


def gather_live(segments: Sequence[Segment], name: str, lives: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """The array attribute ``name`` (``full``, ``head``, ``codes``) of every segment at its
    live rows, concatenated in segment order: the rows a reader numbers 0..n-1. ``lives``: each
    segment's :attr:`Segment.live`, when already known."""
    lives = [s.live for s in segments] if lives is None else lives
    return np.concatenate(
        [
            np.asarray(getattr(s, name)) if live is None else np.asarray(getattr(s, name))[live]
            for s, live in zip(segments, lives)
        ]
    )


def merged_segment(name: str, segments: Sequence[Segment], meta: IndexMeta, full: np.ndarray) -> Segment:
    """One segment of every live row of ``segments``, in order (what compaction writes). ``full``
    holds their vectors already, copied by the caller (who may stream them to disk); the heads,
    prefix norms, ids and texts are taken as stored, not computed again."""
    rows = [live_rows(s) for s in segments]
    head = gather_live(segments, "codes" if meta.binary_head else "head")
    graph = make_head_index(head, "hnsw") if meta.head_index == "hnsw" and len(head) else None
    metadata = None
    if meta.fields and any(s.metadata is not None for s in segments):
        metadata = concat_tables(
            [empty_table(len(r)) if s.metadata is None else s.metadata.take(r) for s, r in zip(segments, rows)],
            meta.fields,
        )
    return Segment(
        name=name,
        full=full,
        metadata=metadata,
        ids=concat_columns([s.ids.take(pa.array(r)) for s, r in zip(segments, rows)]),
        head=None if meta.binary_head else head,
        codes=head if meta.binary_head else None,
        norms={dim: np.concatenate([s.norms[dim][r] for s, r in zip(segments, rows)]) for dim in meta.prefix_norm_dims},
        texts=concat_columns([s.texts.take(pa.array(r)) for s, r in zip(segments, rows)]),
        graph=graph,
    )


def make_segment(
    name: str,
    full: np.ndarray,
    ids: Sequence[str],
    texts: Sequence[str],
    meta: IndexMeta,
    head_source: np.ndarray | None = None,
    head: np.ndarray | None = None,
    metadata: Sequence[dict] | None = None,
) -> Segment:
    """A segment in RAM from unit vectors (or rows already in ``meta.storage``): the head is cut
    from ``head_source`` (an adapter's ``f(x)``) or from ``full``, unless ``head`` gives it as
    stored (float rows, or sign bits for a binary head). ``metadata``: a dict per document, typed
    by ``meta.fields``."""
    source = full if head_source is None else head_source
    stored = full if full.dtype == STORAGES[meta.storage] else to_storage(full, meta.storage)
    dims = list(meta.prefix_norm_dims) or prefix_norm_dims(full.shape[1], meta.trained_dims, meta.storage)
    table = prefix_norms(stored, dims)
    codes = graph = None
    if meta.binary_head:
        codes = binary_codes(source, meta.head_dim) if head is None else head
        head = None
    else:
        if head is None:
            head = normalize(np.asarray(source[:, : meta.head_dim], dtype=np.float32))
        if meta.head_index == "hnsw" and len(head):
            graph = make_head_index(head, "hnsw")
    return Segment(
        name=name,
        full=stored if isinstance(stored, np.ndarray) else np.asarray(stored),
        ids=string_column(ids),
        head=head,
        codes=codes,
        norms={dim: np.ascontiguousarray(table[:, i]) for i, dim in enumerate(dims)},
        texts=string_column(texts),
        graph=graph,
        metadata=to_table(metadata, meta.fields) if metadata is not None and meta.fields else None,
    )


class SegmentedStore:
    """The funnel protocol (:class:`~matryoshka.stores.base.Store`) over the live rows of segments."""

    kind = "segments"

    def __init__(self, segments: Sequence[Segment], meta: IndexMeta) -> None:
        self.meta = meta
        self.full_dim, self.head_dim = meta.full_dim, meta.head_dim
        self.head_index_kind = meta.head_index
        self.binary_head = meta.binary_head
        self.segments = list(segments)
        lives = [s.live for s in self.segments]
        counts = [s.live_count for s in self.segments]
        self._live = lives  # per segment: its live rows (None: all), in the order they are numbered
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._count = int(self._starts[-1])
        self._filters: dict[str, list] = {}  # filter key -> [mask, passing rows or None]
        self._head = None
        if self._count and self.binary_head:
            self._head = HammingShortlist(gather_live(self.segments, "codes", lives))
        elif self._count and self.head_index_kind != "hnsw":
            self._head = np.ascontiguousarray(gather_live(self.segments, "head", lives), dtype=np.float32)

    def __len__(self) -> int:
        return self._count

    # rows ----------------------------------------------------------------------------------------
    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment, row within it) of each live row number (-1 stays -1 in both)."""
        rows = np.asarray(rows, np.int64)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        which = np.where(rows >= 0, np.minimum(which, len(self.segments) - 1), -1)
        local = np.full(rows.shape, -1, np.int64)
        for s, live in enumerate(self._live):
            mask = which == s
            if mask.any():
                offsets = rows[mask] - self._starts[s]
                local[mask] = offsets if live is None else live[offsets]
        return which, local

    # the funnel ----------------------------------------------------------------------------------
    def filter_mask(self, flt: Filter) -> np.ndarray:
        """Which live rows match ``flt``: (len,) booleans, from each segment's cached mask (kept
        here too, with the passing rows once asked for, for the last few filters)."""
        entry = self._filters.get(flt.key)
        if entry is None:
            parts = [
                segment.mask(flt) if live is None else segment.mask(flt)[live]
                for segment, live in zip(self.segments, self._live)
            ]
            entry = [np.concatenate(parts) if parts else np.zeros(0, bool), None]
            with _CACHE_LOCK:
                while len(self._filters) >= STORE_MASK_CACHE:
                    self._filters.pop(next(iter(self._filters)))
                self._filters[flt.key] = entry
        return entry[0]

    def _passing(self, allowed: np.ndarray) -> np.ndarray:
        """The rows ``allowed`` passes, sorted (remembered for a mask this store made)."""
        with _CACHE_LOCK:
            entries = list(self._filters.values())
        for entry in entries:
            if entry[0] is allowed:
                if entry[1] is None:
                    entry[1] = np.flatnonzero(allowed)
                return entry[1]
        return np.flatnonzero(allowed)

    def head_search(
        self, queries: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` live rows by the head, among the ``allowed`` ones (a boolean mask over live
        rows; ``None``: all). A first stage of another dim falls back to an exact scan. A mask
        passing few rows scans only theirs; one passing many scans every row for a longer list
        and keeps the allowed, exactly (a query whose list holds too few allowed rows is answered
        from the allowed rows alone)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.binary_head and queries.shape[1] != self.head_dim:
            raise StoreError(
                f"this index's binary head holds {self.head_dim} bits; got {queries.shape[1]}-dim head queries"
            )
        if allowed is None:
            return self._head_search(queries, min(n, self._count))
        passing = self._passing(allowed)
        n = min(n, len(passing))
        if not n:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        dense = len(passing) > DENSE_SHARE * self._count
        if self.head_index_kind == "hnsw" and queries.shape[1] == self.head_dim and dense:
            return self._graph_search(queries, n, allowed)  # a graph walk loses its way when few rows pass
        if dense and self.binary_head:
            distances, rows = self._head.search(binary_codes(queries, self.head_dim), n, allowed=allowed)
            return hamming_similarity(distances, self.head_dim), rows.astype(np.int64)
        if dense and self.head_index_kind != "hnsw":
            wider = min(self._count, int(np.ceil(1.2 * n * self._count / len(passing))) + 64)
            scores, rows = self._head_search(queries, wider)
            keep = allowed[np.maximum(rows, 0)] & (rows >= 0)
            enough = keep.sum(axis=1) >= n
            out_scores = np.full((len(queries), n), -np.inf, np.float32)
            out_rows = np.full((len(queries), n), -1, np.int64)
            for q in np.flatnonzero(enough):
                picked = np.flatnonzero(keep[q])
                best = picked[np.argsort(-scores[q, picked], kind="stable")[:n]]
                out_scores[q], out_rows[q] = scores[q, best], rows[q, best]
            if not enough.all():
                short = np.flatnonzero(~enough)
                out_scores[short], out_rows[short] = self._subset_search(queries[short], n, passing)
            return out_scores, out_rows
        return self._subset_search(queries, n, passing)

    def _subset_search(self, queries: np.ndarray, n: int, passing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` of the live rows ``passing`` by the head: their head rows gathered and scanned."""
        if self.binary_head:
            distances, rows = self._head.search(
                binary_codes(queries, self.head_dim), n, allowed=_mask_of(passing, self._count)
            )
            return hamming_similarity(distances, self.head_dim), rows.astype(np.int64)
        if queries.shape[1] != self.head_dim:
            return self.exact_search(queries, n, dim=queries.shape[1], allowed=_mask_of(passing, self._count))
        else:
            head = self._head[passing] if self._head is not None else self._gathered(passing, "head", self.head_dim)
            scores, local = scan_shortlist(queries, head, n)
        return scores, np.where(local >= 0, passing[np.maximum(local, 0)], -1)

    def _gathered(self, rows: np.ndarray, name: str, width: int) -> np.ndarray:
        """The array attribute ``name`` (``full``, ``head``) of live ``rows``, read from each
        segment: (len(rows), width) float32 (an hnsw head keeps no gathered copy of its head)."""
        which, local = self._locate(np.asarray(rows, np.int64))
        out = np.zeros((len(which), width), np.float32)
        for s, segment in enumerate(self.segments):
            mask = which == s
            if mask.any():
                out[mask] = getattr(segment, name)[local[mask]]
        return out

    def _head_search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.binary_head:
            distances, rows = self._head.search(binary_codes(queries, self.head_dim), n)
            return hamming_similarity(distances, self.head_dim), rows.astype(np.int64)
        if queries.shape[1] != self.head_dim:
            return self.exact_search(queries, n, dim=queries.shape[1])
        if self.head_index_kind == "hnsw":
            return self._graph_search(queries, n)
        return scan_shortlist(queries, self._head, n)

    def _graph_search(
        self, queries: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each segment's graph without its tombstones (and, with ``allowed``, only its allowed
        rows), merged: the top ``n`` of the union."""
        import faiss

        all_scores, all_rows = [], []
        for s, segment in enumerate(self.segments):
            count = segment.live_count
            if not count:
                continue
            params = faiss.SearchParametersHNSW(efSearch=max(min(n, count), HNSW_MIN_EF_SEARCH))
            if allowed is not None:
                # a walk meets passing rows at the mask's share: widen it as much
                params.efSearch = int(min(count, params.efSearch * self._count / max(1, np.count_nonzero(allowed))))
                local = self._locate(np.flatnonzero(allowed[self._starts[s] : self._starts[s + 1]]) + self._starts[s])[
                    1
                ]
                if not len(local):
                    continue
                count = len(local)
                bitmap = np.packbits(_mask_of(local, len(segment)), bitorder="little")
                params.sel = selector = faiss.IDSelectorBitmap(len(segment), faiss.swig_ptr(bitmap))  # noqa: F841
            elif len(segment.deleted):
                skipped = faiss.IDSelectorBatch(segment.deleted)
                params.sel = selector = faiss.IDSelectorNot(skipped)  # noqa: F841 - both must outlive the search
            scores, local = segment.graph.search(queries, min(n, count), params=params)
            all_scores.append(scores)
            all_rows.append(self._numbers(s, local.astype(np.int64)))
        if not all_scores:
            return np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = np.concatenate(all_scores, axis=1), np.concatenate(all_rows, axis=1)
        scores[rows < 0] = -np.inf
        if scores.shape[1] > n:
            best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
            scores, rows = np.take_along_axis(scores, best, axis=1), np.take_along_axis(rows, best, axis=1)
        return scores, rows

    def _numbers(self, segment: int, local: np.ndarray) -> np.ndarray:
        """Live row numbers of rows of one segment (-1 for -1)."""
        live = self._live[segment]
        numbers = local if live is None else np.searchsorted(live, local)
        return np.where(local >= 0, numbers + self._starts[segment], -1)

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Prefix cosines of each query with its candidates, each read in its own segment: the
        candidates are sorted by row number, which groups them by segment, and each segment
        scores only its own (a block per query, padded with -1 to the longest)."""
        dim = queries.shape[1]
        if len(self.segments) == 1 and self._live[0] is None:
            segment = self.segments[0]
            return rescore_rows(segment.full, rows, queries, segment.norms.get(dim))
        rows = np.asarray(rows, np.int64)
        nq, m = rows.shape
        if nq == 1:
            return self._rescore_one(rows[0], queries)[None, :]
        order = np.argsort(rows, axis=1, kind="stable")
        ordered = np.take_along_axis(rows, order, axis=1)
        # where each segment's block starts in each query's sorted candidates, found in one search
        spread = np.arange(nq, dtype=np.int64)[:, None] * (self._count + 2)
        bounds = np.searchsorted((ordered + 1 + spread).ravel(), (self._starts[None, :] + 1 + spread).ravel())
        bounds = bounds.reshape(nq, -1) - np.arange(nq)[:, None] * m
        scores = np.full((nq, m), -np.inf, np.float32)
        for s, segment in enumerate(self.segments):
            first, counts = bounds[:, s], bounds[:, s + 1] - bounds[:, s]
            width = int(counts.max())
            if not width:
                continue
            columns = first[:, None] + np.arange(width)
            valid = np.arange(width) < counts[:, None]
            columns = np.where(valid, columns, 0)
            local = np.take_along_axis(ordered, columns, axis=1) - self._starts[s]
            live = self._live[s]
            local = np.where(valid, local if live is None else live[np.where(valid, local, 0)], -1)
            part = rescore_rows(segment.full, local, queries, segment.norms.get(dim))
            which_query = np.broadcast_to(np.arange(nq)[:, None], valid.shape)[valid]
            scores[which_query, columns[valid]] = part[valid]
        out = np.empty_like(scores)
        np.put_along_axis(out, order, scores, axis=1)
        return out

    def _rescore_one(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """:meth:`rescore` for one query: its sorted candidates sliced by segment."""
        dim = query.shape[1]
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        bounds = np.searchsorted(ordered, self._starts)
        scores = np.full(len(rows), -np.inf, np.float32)
        unit = np.ascontiguousarray(query[0] / (np.linalg.norm(query[0]) or 1.0), dtype=np.float32)
        for s in np.flatnonzero(np.diff(bounds)):
            segment, live = self.segments[s], self._live[s]
            local = ordered[bounds[s] : bounds[s + 1]] - self._starts[s]
            local = local if live is None else live[local]
            norms = segment.norms.get(dim)
            part = unit_cosines_one(segment.full, local, unit, norms)
            if part is None:
                part = rescore_rows(segment.full, local[None, :], query, norms)[0]
            scores[bounds[s] : bounds[s + 1]] = part
        out = np.empty_like(scores)
        out[order] = scores
        return out

    def scores_in_place(self, dim: int) -> bool:
        from ..rescore import fusable

        return all(fusable(s.full, dim) for s in self.segments)

    def exact_search(
        self,
        queries: np.ndarray,
        k: int,
        dim: int | None = None,
        allowed: np.ndarray | None = None,
        where: Filter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` live rows (among the ``allowed`` ones, or those matching ``where``) by
        the full vectors, or by re-normalised ``dim`` prefixes; fewer than ``k`` rows pass: padded
        with -1 / -inf. A mask passing few rows scores only theirs, where they lie."""
        if where is not None:
            allowed = self.filter_mask(where)
        if allowed is not None and np.count_nonzero(allowed) <= DENSE_SHARE * self._count:
            return self._exact_rows(queries, k, self._passing(allowed), dim)
        parts = []
        for s, segment in enumerate(self.segments):
            numbers = None
            if len(segment.deleted) or len(self.segments) > 1 or allowed is not None:
                numbers = self._numbers(s, np.arange(len(segment)))
                numbers[segment.deleted] = -1
                if allowed is not None:
                    live = numbers >= 0
                    numbers[live] = np.where(allowed[numbers[live]], numbers[live], -1)
            parts.append((segment.full, numbers, segment.norms.get(self.full_dim)))
        return exact_top_k(queries, k, parts, dim)

    def _exact_rows(
        self, queries: np.ndarray, k: int, rows: np.ndarray, dim: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of the live ``rows`` (sorted), each scored in its own segment."""
        queries = np.ascontiguousarray(queries[:, : dim or self.full_dim], dtype=np.float32)
        best_scores = np.full((len(queries), 0), -np.inf, np.float32)
        best_rows = np.zeros((len(queries), 0), np.int64)
        dim = queries.shape[1]
        step = EXACT_ROWS_BLOCK if self.scores_in_place(dim) else max(1024, 2**24 // (len(queries) * dim))
        for start in range(0, len(rows), step):  # a prefix not scored in place is gathered: bound the copy
            block = rows[start : start + step]
            scores = self.rescore(np.broadcast_to(block, (len(queries), len(block))), queries)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_rows = np.concatenate([best_rows, np.broadcast_to(block, scores.shape)], axis=1)
            keep = top_k(best_scores, min(k, best_scores.shape[1]))
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
        if best_rows.shape[1] < k:
            pad = k - best_rows.shape[1]
            best_scores = np.concatenate([best_scores, np.full((len(queries), pad), -np.inf, np.float32)], axis=1)
            best_rows = np.concatenate([best_rows, np.full((len(queries), pad), -1, np.int64)], axis=1)
        return best_scores, best_rows

    # documents -----------------------------------------------------------------------------------
    def sample_rows(self, count: int, seed: int = 0) -> np.ndarray:
        """Up to ``count`` live rows drawn at random, sorted."""
        drawn = np.random.default_rng(seed).choice(self._count, size=min(count, self._count), replace=False)
        return np.sort(drawn).astype(np.int64)

    def document_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) full vectors of live rows, unit length as the index scores them."""
        gathered = self._gathered(rows, "full", self.full_dim)
        return gathered if self.meta.storage == "float32" else normalize(gathered)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        return self._strings_at("ids", rows)

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        return self._strings_at("texts", np.atleast_2d(rows)).tolist()

    def _strings_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The ``ids`` or ``texts`` of live rows, as an object array shaped as ``rows`` ("" at -1);
        each segment's column is read at its own rows, so no column is ever copied whole."""
        rows = np.asarray(rows, np.int64)
        out = np.full(rows.shape, "", object)
        if not self._count:
            return out
        which, local = self._locate(rows)
        for s in np.unique(which[which >= 0]).tolist():
            mask = which == s
            out[mask] = take_strings(getattr(self.segments[s], name), local[mask])
        return out

    def fields_of(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[list[dict]]:
        """Metadata of each row of ``rows`` (2-D) as dicts, without missing values; ``names`` picks fields."""
        rows = np.atleast_2d(np.asarray(rows, np.int64))
        which, local = self._locate(rows)
        out = [[{} for _ in row] for row in rows.tolist()]
        for s, segment in enumerate(self.segments):
            mask = which == s
            if segment.metadata is None or not mask.any():
                continue
            where = np.argwhere(mask)
            for (q, j), found in zip(where.tolist(), rows_as_dicts(segment.metadata, local[mask], names)):
                out[q][j] = found
        return out

    # lifecycle -----------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """RAM the search needs beyond the memory-mapped full vectors: the head, graphs, norms."""
        graph = self._count * HNSW_M * 2 * 4 if self.head_index_kind == "hnsw" else 0
        bits = self.head_dim // 8 if self.binary_head else self.head_dim * 4
        norms = sum(a.nbytes for s in self.segments for a in s.norms.values())
        return int(self._count * bits + graph + norms)

    def is_current(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release here; stores on files close theirs."""


def _mask_of(rows: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[rows] = True
    return mask


class UpsertReport(NamedTuple):
    added: int  # ids new to the index
    replaced: int  # ids that were there and now hold the new vectors
    documents: int = -1  # live documents in the index after the write (-1: not known)
    replaced_ids: tuple[str, ...] | None = None  # which ids were replaced (None: not known)


class DeleteReport(NamedTuple):
    deleted: list[str]
    not_found: list[str]
    documents: int = -1  # live documents in the index after the write (-1: not known)


def check_batch_ids(ids: Sequence[str], what: str = "this batch") -> list[str]:
    """Ids as strings; a batch must not name one document twice (which text would win?)."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise StoreError(f"id {duplicate!r} appears more than once in {what}")
    return ids


def check_batch(ids: Sequence[str], full: np.ndarray, texts: Sequence[str]) -> list[str]:
    """A write's ids (see :func:`check_batch_ids`), with one vector and one text per id."""
    ids = check_batch_ids(ids)
    if len(texts) != len(ids) or len(full) != len(ids):
        raise StoreError(f"{len(ids)} ids, {len(texts)} texts and {len(full)} vectors: give one of each per document")
    return ids


def size_tier(rows: int, factor: int = MERGE_FACTOR) -> int:
    """The size tier of a segment of ``rows`` live rows: the power of ``factor`` below it."""
    tier = 0
    while rows >= factor:
        rows //= factor
        tier += 1
    return tier


def merge_plan(segments: Sequence[Segment], factor: int = MERGE_FACTOR) -> list[int] | None:
    """Positions of the segments to merge next: the first ``factor`` of the smallest tier that
    holds that many (``None``: no tier does)."""
    tiers: dict[int, list[int]] = {}
    for position, segment in enumerate(segments):
        tiers.setdefault(size_tier(segment.live_count, factor), []).append(position)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= factor:
            return tiers[tier][:factor]
    return None


def without_empty(segments: Sequence[Segment]) -> list[Segment]:
    """``segments`` less those whose rows are all deleted (an index keeps at least one segment)."""
    kept = [s for s in segments if s.live_count]
    return kept or list(segments[-1:])


class SegmentWriter:
    """What a write does to a segmented index, whatever keeps it: the rules of upsert, delete and
    compaction over the current segments. A subclass says how a new state is made durable
    (:meth:`_commit`) and how a segment is written (:meth:`_new_segment`)."""

    def __init__(self, segments: Sequence[Segment], meta: IndexMeta) -> None:
        self.segments = list(segments)
        self.meta = meta

    def _find(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(segment, row) of each of ``ids`` that is live in the index."""
        found: dict[str, tuple[int, int]] = {}
        ids = list(ids)
        for s, segment in enumerate(self.segments):
            rows = segment.live_rows_of(ids)
            for position in np.flatnonzero(rows >= 0).tolist():
                found[ids[position]] = (s, int(rows[position]))
        return found

    def upsert(
        self,
        ids: Sequence[str],
        full: np.ndarray,
        texts: Sequence[str],
        head_source: np.ndarray | None = None,
        metadata: Sequence[dict] | None = None,
        schema: dict[str, str] | None = None,
    ) -> UpsertReport:
        """Add documents; an id already in the index is replaced (its old row is deleted, and its
        metadata goes with it). ``metadata``: a dict per document, of the types ``schema`` gives,
        which joins the index's fields (a field keeps its type)."""
        ids = check_batch(ids, full, texts)
        if metadata is not None and len(metadata) != len(ids):
            raise StoreError(f"{len(metadata)} metadata records for {len(ids)} documents")
        if schema:
            self.meta = replace(self.meta, fields=merge_schemas(self.meta.fields, schema))
        found = self._find(ids)
        replaced = list(found.values())
        segments = [s for s in self._with_deleted(replaced) if s.live_count]
        segment = self._new_segment(full, ids, texts, head_source, metadata)
        segments.append(segment)
        self._commit(segments)
        return UpsertReport(len(ids) - len(replaced), len(replaced), self.live_count(), tuple(found))

    def delete(self, ids: Sequence[str]) -> DeleteReport:
        """Delete documents by id; ids not in the index are reported, not an error."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        where = self._find(ids)
        found = [i for i in ids if i in where]
        missing = [i for i in ids if i not in where]
        if found:
            self._commit(without_empty(self._with_deleted([where[i] for i in found])))
        return DeleteReport(found, missing, self.live_count())

    def merge_tiers(self, progress: Callable[[int], None] | None = None) -> int:
        """Merge segments of like size (see the module's merge policy) until no tier is full;
        each merge is a write of its own, durable when made. Returns the number of merges."""
        merges = 0
        while (plan := merge_plan(self.segments)) is not None:
            chosen = set(plan)
            merged = self._merged([self.segments[i] for i in plan], progress)
            self._commit(
                [merged if i == plan[0] else s for i, s in enumerate(self.segments) if i == plan[0] or i not in chosen]
            )
            merges += 1
        return merges

    def compact(self, progress: Callable[[int], None] | None = None) -> Segment:
        """Merge the live rows of every segment into one new segment and switch to it. Readers
        keep answering from the segments they opened; the next search after the switch reads the
        new one. ``progress`` is called with the rows copied since its last call."""
        merged = self._merged(self.segments, progress)
        self._commit([merged])
        return merged

    def _with_deleted(self, places: Sequence[tuple[int, int]]) -> list[Segment]:
        by_segment: dict[int, list[int]] = {}
        for s, row in places:
            by_segment.setdefault(s, []).append(row)
        return [
            segment.with_deleted(np.asarray(by_segment[s])) if s in by_segment else segment
            for s, segment in enumerate(self.segments)
        ]

    def store_view(self) -> SegmentedStore:
        """The state this writer holds, searchable (for re-tuning)."""
        return SegmentedStore(self.segments, self.meta)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Let the next writer in."""

    def live_count(self, segments: Sequence[Segment] | None = None) -> int:
        return sum(s.live_count for s in (self.segments if segments is None else segments))

    def _new_segment(self, full, ids, texts, head_source, metadata=None) -> Segment:
        raise NotImplementedError

    def _merged(self, segments: Sequence[Segment], progress: Callable[[int], None] | None = None) -> Segment:
        """One new segment, stored, of the live rows of ``segments`` in order (not yet committed)."""
        raise NotImplementedError

    def _commit(self, segments: list[Segment]) -> None:
        """Make ``segments`` the index's state (its new segments already written), with the live count in the meta."""
        raise NotImplementedError
