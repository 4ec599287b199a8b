"""Milvus as the scale-out store: a Milvus Lite file (``*.db``) or a server/cluster URI. Every
funnel stage runs in Milvus; no vector travels to the client to be re-ranked.

**Layout.** Each stage searches its own vector field, stored re-normalised: the head (a float
prefix, or the sign bits of one as a ``BINARY_VECTOR``), the re-rank prefixes ``p{dim}`` (d/4 and
d/2 by default) and the full vector ``full``, beside the row id, the document id and the text.
On Milvus 2.4 and later (Milvus Lite included) they are the fields of one collection per index
generation, ``<name>_<generation>`` (layout ``fields``); Milvus 2.3 allows one vector field per
collection, so there each field is a collection of its own, ``<name>_<generation>_<field>``,
sharing row ids (layout ``collections``).

**Search.** The head is one request for the whole batch; each later stage searches its field
restricted to that query's survivors (``row in [...]``) with ``limit`` = the stage's keep, one
request per query, sent in parallel. The last stage brings the document ids and texts back.

**Metadata.** The head's collection has a JSON field ``match`` that filters search (see
:func:`matryoshka.filters.match_document`; its strings are hex, which Milvus matches whatever they
hold): a metadata filter becomes a Milvus expression on it, evaluated inside the head search. The
full vectors' collection keeps each document's metadata as it was given (``fields``, JSON text),
returned with hits.

**Writes.** A pointer collection ``<name>_meta`` holds the current generation, its layout and the
IndexMeta. A build writes a new generation and then upserts the pointer, so a build that fails or
is killed leaves the previous generation answering; other generations are dropped after the
switch. (Aliases and renames would be the natural tools, but Milvus Lite implements neither.)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BusyError, StoreError
from ..filters import (
    HEX,
    LINE_BREAK,
    NEVER,
    PLAIN,
    Filter,
    joined,
    match_document,
    milvus_expression,
    milvus_string,
)
from ..metadata import merge_schemas
from ..metrics import top_k
from ..vectors import binary_codes, hamming_similarity, normalize
from .base import IndexMeta, check_head_kind
from .milvus_client import connect, disconnect, is_lite, search, server_version
from .segments import DeleteReport, UpsertReport, check_batch

DEFAULT_COLLECTION = "matryoshka"
INSERT_BATCH = 1000
GET_BATCH = 2000
MAX_TEXT_BYTES = 60_000
MAX_TOPK = 16_384
QUERY_WORKERS = 8  # per-query stage requests sent at once (measured faster than one at a time: docs/benchmarks.md)
HEAD_INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "binary": "BIN_FLAT", "binary-ivf": "BIN_IVF_FLAT"}
LITE_INDEX_TYPES = ("FLAT", "BIN_FLAT")
HNSW_BUILD = {"M": 32, "efConstruction": 200}
INDEX_WAIT_S = 1800  # for Milvus to index a new generation
DOCUMENT_FIELDS = ("doc_id", "text")
LEASE_S = 300  # a writer's claim on an index; renewed by each write, left to expire by a killed writer
LOOKUP_BATCH = 1000  # document ids looked up per query


@dataclass(frozen=True)
class Layout:
    """Where an index generation keeps each stage's vectors, and how its head is searched."""

    kind: str  # "fields" (one collection, a vector field per stage) or "collections" (one per field)
    prefix_dims: tuple[int, ...]  # re-rank prefixes stored as fields p{dim}
    head_index_type: str  # FLAT, HNSW, BIN_FLAT or BIN_IVF_FLAT
    head_params: dict = field(default_factory=dict)  # search parameters of an approximate head: nprobe, ef_factor
    nlist: int | None = None  # cells of a BIN_IVF_FLAT head
    filterable: bool = False  # has the metadata fields (``match`` and ``fields``); older layouts do not
    match_strings: str = PLAIN  # how ``match`` holds strings: HEX (filters.stored_string); PLAIN in older layouts

    @property
    def binary_head(self) -> bool:
        return self.head_index_type.startswith("BIN")

    @property
    def approximate_head(self) -> bool:
        return self.head_index_type in ("HNSW", "BIN_IVF_FLAT")

    def fields(self) -> list[str]:
        return ["head", *(f"p{dim}" for dim in self.prefix_dims), "full"]

    def collection(self, base: str, generation: str, field_name: str) -> str:
        return f"{base}_{generation}" if self.kind == "fields" else f"{base}_{generation}_{field_name}"

    def vector_field(self, field_name: str) -> str:
        return field_name if self.kind == "fields" else "vector"

    def head_search_params(self, limit: int) -> dict:
        params: dict = {}
        if self.head_index_type == "HNSW":
            params["ef"] = int(min(32_768, max(64, limit * self.head_params.get("ef_factor", 1))))
        elif self.head_index_type == "BIN_IVF_FLAT":
            params["nprobe"] = int(self.head_params.get("nprobe", 1))
        return {"metric_type": "HAMMING" if self.binary_head else "IP", "params": params}

    def head_param_ladder(self) -> list[dict]:
        """Settings of an approximate head from fast to thorough, for tuning on the real index."""
        if self.head_index_type == "HNSW":
            return [{"ef_factor": factor} for factor in (1, 2, 4, 8)]
        if self.head_index_type == "BIN_IVF_FLAT":
            nlist = self.nlist or 1
            return [{"nprobe": max(1, nlist // divisor)} for divisor in (32, 16, 8, 4, 2, 1)]
        return [{}]


def choose_layout(
    version: tuple[int, int],
    head_index: str,
    full_dim: int,
    head_dim: int,
    count: int,
    lite: bool,
    kind: str | None = None,
) -> Layout:
    """The layout for a new generation: ``fields`` from Milvus 2.4 (and Lite), ``collections``
    before; prefixes d/4 and d/2 (a float head's own dim is the head). Milvus Lite implements
    only exact heads, which is said before anything is written."""
    index_type = HEAD_INDEX_TYPES[head_index]
    if lite and index_type not in LITE_INDEX_TYPES:
        raise StoreError(
            f"Milvus Lite searches only exact heads (FLAT, BIN_FLAT); --head-index {head_index} "
            f"({index_type}) needs a Milvus server"
        )
    kind = kind or ("fields" if version >= (2, 4) else "collections")
    binary = index_type.startswith("BIN")
    prefixes = tuple(
        sorted({d for d in (full_dim // 4, full_dim // 2) if 1 <= d < full_dim and (binary or d != head_dim)})
    )
    nlist = int(np.clip(4 * np.sqrt(count), 1, 65_536)) if index_type == "BIN_IVF_FLAT" else None
    head_params = {"nprobe": max(1, nlist // 16)} if nlist else ({"ef_factor": 1} if index_type == "HNSW" else {})
    return Layout(kind, prefixes, index_type, head_params, nlist, filterable=True, match_strings=HEX)


def _meta_name(collection: str) -> str:
    return f"{collection}_meta"


def _read_pointer(client, collection: str, strong: bool = False) -> tuple[str, Layout, IndexMeta, dict] | None:
    """(generation, layout, meta, state) of the index's current generation; ``state`` holds what
    writes keep beside the metadata: the next free row and the Milvus timestamp of the last write."""
    name = _meta_name(collection)
    if not client.has_collection(name):
        return None
    client.load_collection(name)
    extra = {"consistency_level": "Strong"} if strong else {}
    rows = client.get(name, ids=["current"], output_fields=["value"], **extra)
    if not rows:
        return None
    value = json.loads(rows[0]["value"])
    where = f"index {collection!r}"
    meta = IndexMeta.from_dict(value.get("meta"), where)
    if "layout" not in value:
        raise StoreError(
            f"{where} was written in an earlier Milvus layout (a head and a full collection, re-ranked "
            "by fetching vectors); re-index it with 'matryoshka index' to run every stage in Milvus"
        )
    layout = value["layout"]
    layout["prefix_dims"] = tuple(layout["prefix_dims"])
    state = {
        "next_row": int(value.get("next_row", meta.count)),
        "written_ts": int(value.get("written_ts", 0)),
        "writing": bool(value.get("writing", False)),
    }
    return value["generation"], Layout(**layout), meta, state


def _write_pointer(
    client,
    collection: str,
    generation: str,
    layout: Layout,
    meta: IndexMeta,
    state: dict | None = None,
    flush: bool = True,
) -> None:
    name = _ensure_meta_collection(client, collection)
    value = json.dumps({"generation": generation, "layout": asdict(layout), "meta": meta.to_dict(), **(state or {})})
    client.upsert(name, [{"key": "current", "value": value, "vector": [0.0, 0.0]}])
    if flush:
        client.flush(name)


def _ensure_meta_collection(client, collection: str) -> str:
    from pymilvus import DataType, MilvusClient

    name = _meta_name(collection)
    if not client.has_collection(name):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("value", DataType.VARCHAR, max_length=65_535)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 needs one vector field
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        client.create_collection(name, schema=schema, index_params=index)
    return name


class MilvusStore:
    """An index in Milvus opened for search: every stage of a funnel is a search in Milvus."""

    kind = "milvus"
    runs_stages = True  # the funnel hands it whole schedules (run_stages) instead of re-ranking itself

    def __init__(self, uri: str, *, collection: str = DEFAULT_COLLECTION, head_index: str | None = None) -> None:
        self.uri, self.collection = uri, collection
        self.client = connect(uri, create=False)
        try:
            self._open(head_index)
        except BaseException:
            disconnect(self.client, uri)
            raise
        self._documents: dict[int, tuple[str, str]] = {}
        self._pool = ThreadPoolExecutor(max_workers=QUERY_WORKERS, thread_name_prefix="matryoshka-milvus")
        # released by close(), or when no one holds this store any more (a reader that moved on to a
        # newer state drops the old one without closing it, since a search may still be running on it)
        self._release = weakref.finalize(self, _release, self._pool, self.client, uri)

    def _open(self, head_index: str | None) -> None:
        pointer = _read_pointer(self.client, self.collection)
        if pointer is None:
            raise StoreError(
                f"no matryoshka index {self.collection!r} at {self.uri}; run 'matryoshka index --db {self.uri}' first"
            )
        self.generation, self.layout, self.meta, state = pointer
        self._written_ts = state["written_ts"]
        self._state = (self.generation, self.meta, state["written_ts"])
        self.full_dim, self.head_dim = self.meta.full_dim, self.meta.head_dim
        self.binary_head = self.meta.binary_head
        check_head_kind(self.meta.head_index, head_index, f"index {self.collection!r} at {self.uri}")
        for name in dict.fromkeys(
            self.layout.collection(self.collection, self.generation, f) for f in self.layout.fields()
        ):
            self.client.load_collection(name)

    def __len__(self) -> int:
        return self.meta.count

    # where each stage's vectors are -----------------------------------------------------------
    def stored_dims(self) -> list[int]:
        """The prefix dims searched in Milvus itself: the float head's, the re-rank prefixes, d."""
        return sorted({*([] if self.binary_head else [self.head_dim]), *self.layout.prefix_dims, self.full_dim})

    def _field(self, dim: int, head: bool = False) -> str:
        if head:
            return "head"
        if dim == self.full_dim:
            return "full"
        if dim in self.layout.prefix_dims:
            return f"p{dim}"
        if dim == self.head_dim and not self.binary_head:
            return "head"
        raise StoreError(
            f"this Milvus index keeps prefixes of {', '.join(map(str, self.stored_dims()))} dims; "
            f"a stage at {dim} dims cannot run in Milvus"
        )

    def _search(
        self,
        field_name: str,
        data: list,
        limit: int,
        *,
        expr: str = "",
        outputs: tuple = (),
        params: dict | None = None,
    ):
        name = self.layout.collection(self.collection, self.generation, field_name)
        params = params or {"metric_type": "IP", "params": {}}
        return search(
            self.client,
            name,
            data,
            self.layout.vector_field(field_name),
            params,
            limit,
            expr=expr,
            output_fields=outputs if field_name == "full" or self.layout.kind == "fields" else (),
            guarantee_ts=self._written_ts,
        )

    # the funnel ----------------------------------------------------------------------------------
    def _expression(self, where: Filter | None) -> str:
        """The filter as an expression on the ``match`` field ('' for none)."""
        if where is None:
            return ""
        if not self.layout.filterable:
            raise StoreError(
                f"index {self.collection!r} was built before metadata filters; re-index it with 'matryoshka index' to filter"
            )
        try:
            return milvus_expression(where, "match", self.layout.match_strings)
        except ValueError:  # only plain strings can hold what Milvus cannot match
            raise StoreError(
                f"index {self.collection!r} keeps its metadata strings as given, where Milvus cannot match this "
                "filter's ('/' or a control character in a list's string, or a line break); re-index it with "
                "'matryoshka index'"
            ) from None

    def head_search(self, queries: np.ndarray, n: int, where: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` rows by the head (among those matching ``where``), one request for the batch:
        (scores, rows), padded with -inf / -1."""
        if n > MAX_TOPK:
            raise StoreError(f"Milvus returns at most {MAX_TOPK} results per search; shortlist {n} is too long")
        if queries.shape[1] != self.head_dim:
            raise StoreError(
                f"this Milvus index searches a {self.head_dim}-dim head; the schedule's first stage "
                f"must use {self.head_dim} dims, not {queries.shape[1]}"
            )
        if self.binary_head:
            data = [bytes(code) for code in binary_codes(queries, self.head_dim)]
        else:
            data = np.asarray(queries, np.float32).tolist()
        answers = self._search("head", data, n, params=self.layout.head_search_params(n), expr=self._expression(where))
        scores = [hamming_similarity(s, self.head_dim) for s in answers.scores] if self.binary_head else answers.scores
        return _padded(answers.rows, scores, n)

    def run_stages(
        self,
        stage_queries: Sequence[np.ndarray],
        stages: Sequence[tuple[int, int]],
        k: int,
        where: Filter | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """A whole funnel in Milvus: ``stages`` are (dim, keep), the first the head; ``stage_queries``
        the unit queries of each stage; ``where`` a filter applied in the head search (the later
        stages search only its survivors). Returns (scores, rows) of the last stage, each (nq, k),
        and each stage's seconds."""
        seconds = []
        started = time.perf_counter()
        if len(stages) == 1:  # one stage: a plain search of that field
            scores, rows = self._field_search(stage_queries[0], stages[0][0], min(k, len(self)), where)
            return scores, rows, [time.perf_counter() - started]
        _, rows = self.head_search(stage_queries[0], min(stages[0][1], len(self)), where)
        survivors = [row[row >= 0] for row in rows]
        seconds.append(time.perf_counter() - started)
        scores: list[np.ndarray] = []
        for position, (dim, keep) in enumerate(stages[1:], start=1):
            started = time.perf_counter()
            last = position == len(stages) - 1
            field_name = self._field(dim)
            outputs = self._document_fields() if last else ()

            def stage(
                query: int,
                field_name=field_name,
                keep=keep,
                outputs=outputs,
                shortlists=survivors,
                vectors=stage_queries[position],
            ):
                ids = shortlists[query]
                if not len(ids):
                    return np.zeros(0, np.int64), np.zeros(0, np.float32)
                answers = self._search(
                    field_name,
                    [vectors[query].astype(np.float32).tolist()],
                    min(keep, len(ids)),
                    expr=f"row in {np.sort(ids).tolist()}",  # sorted: Milvus evaluates the term list faster
                    outputs=outputs,
                )
                self._remember(answers, 0)
                return answers.rows[0], answers.scores[0]

            found = list(self._pool.map(stage, range(len(survivors)))) if len(survivors) > 1 else [stage(0)]
            survivors, scores = [f[0] for f in found], [f[1] for f in found]
            seconds.append(time.perf_counter() - started)
        padded_scores, padded_rows = _padded(survivors, scores, k)
        return padded_scores, padded_rows, seconds

    def _document_fields(self) -> tuple[str, ...]:
        return (*DOCUMENT_FIELDS, "fields") if self.layout.filterable else DOCUMENT_FIELDS

    def _field_search(
        self, queries: np.ndarray, dim: int, k: int, where: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        field_name = self._field(dim)
        params = self.layout.head_search_params(k) if field_name == "head" else None
        expr = self._expression(where)
        if expr and self.layout.kind == "collections" and field_name != "head":
            # Milvus 2.3 layout: only the head's collection holds ``match``; its exact twin is the full vectors
            rows = self._matching_rows(expr)
            if not len(rows):
                return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            expr = f"row in {rows.tolist()}"
        answers = self._search(
            field_name,
            normalize(queries[:, :dim]).tolist(),
            k,
            outputs=self._document_fields(),
            params=params,
            expr=expr,
        )
        for query in range(len(answers.rows)):
            self._remember(answers, query)
        return _padded(answers.rows, answers.scores, k)

    def _matching_rows(self, expr: str) -> np.ndarray:
        """Every row whose metadata matches ``expr`` (a query of the head's collection)."""
        name = self.layout.collection(self.collection, self.generation, "head")
        hits = self.client.query(name, filter=expr, output_fields=["row"])
        return np.sort(np.asarray([int(hit["row"]) for hit in hits], np.int64))

    def _remember(self, answers, query: int) -> None:
        """Keep the ids, texts and metadata a final stage brought back, for :meth:`ids_of`,
        :meth:`texts_of` and :meth:`fields_of`."""
        if "doc_id" in answers.fields:
            fields = answers.fields.get("fields", [None] * len(answers.rows))[query]
            for row, doc_id, text, extra in zip(
                answers.rows[query],
                answers.fields["doc_id"][query],
                answers.fields["text"][query],
                fields if fields is not None else [None] * len(answers.rows[query]),
            ):
                self._documents[int(row)] = (doc_id, text, extra)

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(nq, m) cosines of each query with its ``rows``, by a search of that prefix's field
        restricted to them (-inf for rows of -1)."""
        dim = queries.shape[1]
        out = np.full(rows.shape, -np.inf, np.float32)
        for query, row in enumerate(rows):
            valid = row[row >= 0]
            if not len(valid):
                continue
            answers = self._search(
                self._field(dim),
                [normalize(queries[query : query + 1])[0].tolist()],
                len(valid),
                expr=f"row in {valid.tolist()}",
            )
            score_of = dict(zip(answers.rows[0].tolist(), answers.scores[0].tolist()))
            out[query] = [score_of.get(int(r), -np.inf) for r in row]
        return out

    def scores_in_place(self, dim: int) -> bool:
        return True  # candidates are scored where they lie, in Milvus

    def exact_search(
        self, queries: np.ndarray, k: int, dim: int | None = None, where: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search by Milvus over the full vectors, or a stored prefix's field. A prefix that
        is not stored cannot be re-normalised by Milvus: every vector is then read (in blocks of
        ``GET_BATCH`` ids) and scored here, O(corpus), meant for looking at one dimension's results
        (the web page's slider), not for serving large corpora."""
        dim = dim or self.full_dim
        exact_field = dim in self.stored_dims() and not (self._field(dim) == "head" and self.layout.approximate_head)
        if exact_field:
            return self._field_search(np.asarray(queries, np.float32), dim, k, where)
        if where is not None:
            raise StoreError(
                f"a filtered search at {dim} dims needs that prefix stored in Milvus; this index keeps "
                f"{', '.join(map(str, self.stored_dims()))}"
            )
        queries = np.asarray(queries, np.float32)
        scores = np.empty((len(queries), len(self)), np.float32)
        full = self.layout.collection(self.collection, self.generation, "full")
        vector = self.layout.vector_field("full")
        for start in range(0, len(self), GET_BATCH):
            stop = min(start + GET_BATCH, len(self))
            block = np.zeros((stop - start, dim), np.float32)
            for hit in self.client.get(full, ids=list(range(start, stop)), output_fields=[vector]):
                block[int(hit["row"]) - start] = np.asarray(hit[vector][:dim], np.float32)
            scores[:, start:stop] = normalize(queries[:, :dim]) @ normalize(block).T
        rows = top_k(scores, k)
        return np.take_along_axis(scores, rows, axis=1), rows

    # documents -------------------------------------------------------------------------------------
    def sample_rows(self, count: int, seed: int = 0) -> np.ndarray:
        """Up to ``count`` live rows drawn at random (rows are not numbered 0..len-1 once documents
        have been deleted)."""
        state = _read_pointer(self.client, self.collection)
        top = max(1, state[3]["next_row"] if state else len(self))
        drawn = np.unique(np.random.default_rng(seed).integers(0, top, size=min(top, 3 * count)))
        full = self.layout.collection(self.collection, self.generation, "full")
        found = []
        for start in range(0, len(drawn), LOOKUP_BATCH):
            hits = self.client.query(
                full, filter=f"row in {drawn[start : start + LOOKUP_BATCH].tolist()}", output_fields=["row"]
            )
            found.extend(int(hit["row"]) for hit in hits)
        return np.sort(np.asarray(found[:count], np.int64))

    def document_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) full vectors of ``rows``."""
        full = self.layout.collection(self.collection, self.generation, "full")
        vector = self.layout.vector_field("full")
        out = np.zeros((len(rows), self.full_dim), np.float32)
        position = {int(r): i for i, r in enumerate(rows)}
        for start in range(0, len(rows), GET_BATCH):
            for hit in self.client.get(
                full, ids=[int(r) for r in rows[start : start + GET_BATCH]], output_fields=[vector]
            ):
                out[position[int(hit["row"])]] = np.asarray(hit[vector], np.float32)
        return out

    def _fetch_documents(self, rows: np.ndarray) -> None:
        missing = sorted({int(r) for r in np.ravel(rows) if r >= 0 and int(r) not in self._documents})
        full = self.layout.collection(self.collection, self.generation, "full")
        for start in range(0, len(missing), GET_BATCH):
            for hit in self.client.get(
                full, ids=missing[start : start + GET_BATCH], output_fields=list(self._document_fields())
            ):
                self._documents[int(hit["row"])] = (hit["doc_id"], hit["text"], hit.get("fields"))

    def fields_of(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[list[dict]]:
        """Metadata of each row of ``rows`` (2-D) as dicts; ``names`` picks fields."""
        rows = np.atleast_2d(rows)
        self._fetch_documents(rows)
        out = []
        for row in rows:
            found = []
            for r in row:
                extra = self._documents[int(r)][2] if r >= 0 else None
                values = json.loads(extra) if extra else {}
                found.append(values if names is None else {n: values[n] for n in names if n in values})
            out.append(found)
        return out

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        self._fetch_documents(rows)
        return np.vectorize(lambda r: self._documents[int(r)][0] if r >= 0 else "", otypes=[object])(rows)

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        rows = np.atleast_2d(rows)
        self._fetch_documents(rows)
        return [[self._documents[int(r)][1] if r >= 0 else "" for r in row] for row in rows]

    # lifecycle -------------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        return 0  # held by the Milvus process, not ours

    def is_current(self) -> bool:
        pointer = _read_pointer(self.client, self.collection)
        return pointer is not None and (pointer[0], pointer[2], pointer[3]["written_ts"]) == self._state

    def save_tuning(self, meta: IndexMeta, head_params: dict) -> None:
        """Record a schedule (and head settings) tuned on this generation, in its pointer."""
        self.layout = replace(self.layout, head_params=dict(head_params))
        self.meta = meta
        pointer = _read_pointer(self.client, self.collection, strong=True)
        _write_pointer(
            self.client, self.collection, self.generation, self.layout, meta, pointer[3] if pointer else None
        )

    def close(self) -> None:
        """Release the connection (a Milvus Lite file admits one process at a time)."""
        self._release()


def _release(pool: ThreadPoolExecutor, client, uri: str) -> None:
    pool.shutdown(wait=True)
    disconnect(client, uri)


class MilvusWriter:
    """Writes to the current generation in place, with Milvus's own upsert and delete: a
    document keeps its row when it is replaced, a new one takes the next free row. The pointer
    row, written last, carries the live count and the Milvus timestamp of the write, which every
    reader's searches then wait for (so a search that sees the new count sees the new rows)."""

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION) -> None:
        self.uri, self.collection = uri, collection
        self.client = connect(uri, create=False)
        try:
            pointer = _read_pointer(self.client, collection, strong=True)
            if pointer is None:
                raise StoreError(
                    f"no matryoshka index {collection!r} at {uri}; run 'matryoshka index --db {uri}' first"
                )
            self.generation, self.layout, self.meta, self.state = pointer
            self._lease = _take_lease(self.client, collection)
            self._recover()
        except BaseException:
            disconnect(self.client, uri)
            raise

    def _name(self, field_name: str = "full") -> str:
        return self.layout.collection(self.collection, self.generation, field_name)

    def _names(self) -> list[str]:
        return list(dict.fromkeys(self._name(f) for f in self.layout.fields()))

    def _recover(self) -> None:
        """After a writer was killed between its rows and the pointer (the pointer still says it was
        writing): count the live rows again, and move the next free row past any it wrote."""
        if not self.state.get("writing"):
            return
        stray = self.client.query(
            self._name(), filter=f"row >= {self.state['next_row']}", output_fields=["row"], consistency_level="Strong"
        )
        if stray:
            self.state["next_row"] = max(int(hit["row"]) for hit in stray) + 1
        counted = self.client.query(self._name(), filter="", output_fields=["count(*)"], consistency_level="Strong")
        live = int(counted[0]["count(*)"])
        self._save(replace(self.meta, count=live))

    def _rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The row of each of ``ids`` in the index (those not in it left out)."""
        wanted = set(ids)
        found: dict[str, int] = {}
        for start in range(0, len(ids), LOOKUP_BATCH):
            hits = self.client.query(
                self._name(),
                filter=ids_expression(ids[start : start + LOOKUP_BATCH]),
                output_fields=["row", "doc_id"],
                consistency_level="Strong",
            )
            found.update((hit["doc_id"], int(hit["row"])) for hit in hits if hit["doc_id"] in wanted)
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
        """Add documents; an id already in the index keeps its row and gets the new vectors, text
        and metadata (a new field joins the index's fields)."""
        ids = check_batch(ids, full, texts)
        if schema:
            if not self.layout.filterable:
                raise StoreError(
                    f"index {self.collection!r} was built before metadata; re-index it to add documents with metadata"
                )
            self.meta = replace(self.meta, fields=merge_schemas(self.meta.fields, schema))
        if any(len(str(i).encode("utf-8")) > 1024 for i in ids):
            raise StoreError("a document id longer than 1,024 bytes cannot be stored in Milvus")
        existing = self._rows_of(ids)
        next_row = self.state["next_row"]
        rows = []
        for doc_id in ids:
            if doc_id in existing:
                rows.append(existing[doc_id])
            else:
                rows.append(next_row)
                next_row += 1
        source = full if head_source is None else head_source
        self._mark_writing()
        for start in range(0, len(ids), INSERT_BATCH):
            stop = start + INSERT_BATCH
            write_rows(
                self.client,
                self.layout,
                self.collection,
                self.generation,
                rows[start:stop],
                np.asarray(full[start:stop]),
                np.asarray(source[start:stop]),
                ids[start:stop],
                list(texts[start:stop]),
                self.meta,
                verb="upsert",
                metadata=None if metadata is None else metadata[start:stop],
            )
        added = len(ids) - len(existing)
        self.state["next_row"] = next_row
        self._save(replace(self.meta, count=self.meta.count + added))
        return UpsertReport(added=added, replaced=len(existing))

    def delete(self, ids: Sequence[str]) -> DeleteReport:
        """Delete documents by id; ids not in the index are reported, not an error."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        existing = self._rows_of(ids)
        if existing:
            self._mark_writing()
            for name in self._names():
                self.client.delete(name, ids=sorted(existing.values()))
            self._save(replace(self.meta, count=self.meta.count - len(existing)))
        return DeleteReport([i for i in ids if i in existing], [i for i in ids if i not in existing])

    def compact(self, progress=None) -> None:
        """Ask Milvus to merge its segments and drop deleted rows (it does so in the background too)."""
        for name in [] if is_lite(self.uri) else self._names():  # Milvus Lite compacts on its own only
            compact = getattr(self.client, "compact", None)
            if compact is not None:
                try:
                    compact(name)
                except Exception:  # noqa: BLE001 - a server that refuses leaves the data correct, compacted later
                    pass
        if progress:
            progress(self.meta.count)

    def live_count(self) -> int:
        return self.meta.count

    def store_view(self) -> MilvusStore:
        return MilvusStore(self.uri, collection=self.collection)

    def save_meta(self, meta: IndexMeta) -> None:
        self._save(replace(meta, count=self.meta.count))

    def _mark_writing(self) -> None:
        """Say in the pointer that rows are being written, so that a writer killed before it
        writes the pointer again is repaired by the next one."""
        _write_pointer(
            self.client,
            self.collection,
            self.generation,
            self.layout,
            self.meta,
            {**self.state, "writing": True},
            flush=is_lite(self.uri),
        )

    def _save(self, meta: IndexMeta) -> None:
        from pymilvus.client import ts_utils

        if is_lite(self.uri):  # a server keeps what it acknowledged in its log; Milvus Lite on flush
            for name in self._names():
                self.client.flush(name)
        written = [ts_utils.get_collection_ts(name) or 0 for name in self._names()]
        self.state["written_ts"] = max([self.state.get("written_ts", 0), *written])
        self.state["writing"] = False
        self.meta = meta
        _write_pointer(
            self.client, self.collection, self.generation, self.layout, meta, self.state, flush=is_lite(self.uri)
        )
        self._lease = _take_lease(self.client, self.collection, self._lease)

    def __enter__(self) -> MilvusWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.delete(_meta_name(self.collection), ids=["writer"])
        finally:
            disconnect(self.client, self.uri)


def ids_expression(ids: Sequence[str]) -> str:
    """A Milvus expression for the rows whose ``doc_id`` is one of ``ids``. An id holding a line
    break, which no Milvus literal holds (:func:`matryoshka.filters.milvus_string`), is looked up
    as the ids lying between its text up to the break followed by the characters just below and
    just above that break: a few more rows than its own, which the caller drops by their id."""
    plain = [i for i in ids if not LINE_BREAK.search(i)]
    parts = [f"doc_id in [{', '.join(milvus_string(i) for i in plain)}]"] if plain else []
    for doc_id in dict.fromkeys(i for i in ids if LINE_BREAK.search(i)):
        cut = LINE_BREAK.search(doc_id).start()
        before, at = doc_id[:cut], ord(doc_id[cut])
        low, high = milvus_string(before + chr(at - 1)), milvus_string(before + chr(at + 1))
        parts.append(f"(doc_id > {low} and doc_id < {high})")
    return joined(parts, "or") if parts else NEVER


def _take_lease(client, collection: str, ours: str | None = None) -> str:
    """Claim the index for one writer: a ``writer`` row in the pointer collection naming the
    holder and when the claim lapses. Another live claim is an error naming its holder; a claim
    whose holder was a process of this host that is gone (killed, crashed) is taken over at once
    rather than after it lapses."""
    import os
    import socket

    name = _ensure_meta_collection(client, collection)
    host = socket.gethostname()
    rows = client.get(name, ids=["writer"], output_fields=["value"], consistency_level="Strong")
    if rows:
        held = json.loads(rows[0]["value"])
        if held.get("token") != ours and held.get("until", 0) > time.time() and not _holder_is_gone(held, host):
            raise BusyError(
                f"index {collection!r} is being written by {held.get('holder', 'another process')}; "
                "wait for it to finish, then try again"
            )
    token = ours or f"{host}:{os.getpid()}:{time.monotonic_ns()}"
    value = {
        "token": token,
        "holder": f"process {os.getpid()} on {host}",
        "host": host,
        "space": process_space(),
        "pid": os.getpid(),
        "until": time.time() + LEASE_S,
    }
    client.upsert(name, [{"key": "writer", "value": json.dumps(value), "vector": [0.0, 0.0]}])
    return token


def process_space() -> str:
    """What makes a pid mean one process: this boot of this machine and this pid namespace (two
    containers may share a host name and not their pids)."""
    import os

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "unknown"


def _holder_is_gone(held: dict, host: str) -> bool:
    """Whether a lease's holder was a process of ``host`` (and of this boot and pid namespace)
    that no longer runs (a lease written before leases named their host and pid is read from its
    token, ``host:pid:ns``)."""
    import os

    if held.get("space", process_space()) != process_space() or process_space() == "unknown":
        return False  # its pid may be another namespace's: it cannot be known to be gone
    holder_host, pid = held.get("host"), held.get("pid")
    if holder_host is None:
        parts = str(held.get("token", "")).rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        holder_host, pid = parts[0], int(parts[1])
    if holder_host != host or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: no signal, only whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, as another user's
        return False
    return False


def _padded(rows: list[np.ndarray], scores: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query results as (nq, width) arrays, best first; missing answers are -inf / -1."""
    out_scores = np.full((len(rows), width), -np.inf, np.float32)
    out_rows = np.full((len(rows), width), -1, np.int64)
    for query, (row, score) in enumerate(zip(rows, scores)):
        order = np.argsort(-np.asarray(score), kind="stable")[:width]
        out_rows[query, : len(order)] = np.asarray(row)[order]
        out_scores[query, : len(order)] = np.asarray(score)[order]
    return out_scores, out_rows


class MilvusBuilder:
    """Stages vectors in a temporary memory map, then writes a new generation and switches to it."""

    def __init__(
        self, uri: str, collection: str = DEFAULT_COLLECTION, head_index: str = "flat", layout: str | None = None
    ) -> None:
        self.uri, self.collection, self.layout_kind = uri, collection, layout
        if head_index not in HEAD_INDEX_TYPES:
            raise StoreError(f"unknown head index {head_index!r}; choose one of {', '.join(HEAD_INDEX_TYPES)}")
        if is_lite(uri) and HEAD_INDEX_TYPES[head_index] not in LITE_INDEX_TYPES:
            choose_layout((2, 5), head_index, 2, 1, 1, lite=True)  # raises the error that says why
        self.client = connect(uri)
        self.version = server_version(self.client, uri)
        self.generation = "g" + time.strftime("%Y%m%d%H%M%S") + f"{int(time.time() * 1000) % 1000:03d}"
        self.staging = Path(tempfile.mkdtemp(prefix="matryoshka-milvus-"))
        self.created: list[str] = []

    def full_array(self, count: int, dim: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.staging / "full.npy", mode="w+", dtype=np.float32, shape=(count, dim))

    def commit(
        self,
        full: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str],
        meta: IndexMeta,
        progress=None,
        head_source: np.ndarray | None = None,
        metadata: Sequence[dict] | None = None,
    ) -> IndexMeta:
        """Write a new generation and switch the pointer to it; returns the metadata as stored.
        ``head_source``: where the head prefix comes from when it is not ``full`` (an adapter's ``f(x)``);
        ``metadata``: a dict per document, typed by ``meta.fields``."""
        layout = choose_layout(
            self.version, meta.head_index, meta.full_dim, meta.head_dim, len(ids), is_lite(self.uri), self.layout_kind
        )
        self._create(layout, meta)
        for start in range(0, len(ids), INSERT_BATCH):
            stop = min(start + INSERT_BATCH, len(ids))
            write_rows(
                self.client,
                layout,
                self.collection,
                self.generation,
                list(range(start, stop)),
                np.asarray(full[start:stop]),
                np.asarray((full if head_source is None else head_source)[start:stop]),
                ids[start:stop],
                texts[start:stop],
                meta,
                metadata=None if metadata is None else metadata[start:stop],
            )
            if progress:
                progress(stop - start)
        for name in self.created:
            self.client.flush(name)
            self._wait_for_indexes(name)
            # created collections load at once, on rows not yet indexed; load again to serve the indexes
            self.client.release_collection(name)
            self.client.load_collection(name)
        meta = replace(meta, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_pointer(self.client, self.collection, self.generation, layout, meta)
        self.created = []
        self._drop_other_generations(keep=self.generation)
        shutil.rmtree(self.staging, ignore_errors=True)
        return meta

    def _create(self, layout: Layout, meta: IndexMeta) -> None:
        from pymilvus import DataType, MilvusClient

        dims = {"head": meta.head_dim, "full": meta.full_dim, **{f"p{d}": d for d in layout.prefix_dims}}
        groups = [layout.fields()] if layout.kind == "fields" else [[f] for f in layout.fields()]
        for group in groups:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("row", DataType.INT64, is_primary=True)
            index = self.client.prepare_index_params()
            for field_name in group:
                binary = field_name == "head" and layout.binary_head
                name = layout.vector_field(field_name)
                schema.add_field(
                    name, DataType.BINARY_VECTOR if binary else DataType.FLOAT_VECTOR, dim=dims[field_name]
                )
                if field_name == "head":
                    params = (
                        {"nlist": layout.nlist}
                        if layout.nlist
                        else HNSW_BUILD
                        if layout.head_index_type == "HNSW"
                        else {}
                    )
                    index.add_index(
                        field_name=name,
                        index_type=layout.head_index_type,
                        metric_type="HAMMING" if binary else "IP",
                        params=params,
                    )
                else:
                    index.add_index(field_name=name, index_type="FLAT", metric_type="IP")
            if "head" in group:
                schema.add_field("match", DataType.JSON)
            if "full" in group:
                schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
                schema.add_field("text", DataType.VARCHAR, max_length=65_535)
                schema.add_field("fields", DataType.VARCHAR, max_length=65_535)
            collection = layout.collection(self.collection, self.generation, group[0])
            self.client.create_collection(collection, schema=schema, index_params=index)
            self.created.append(collection)

    def _wait_for_indexes(self, name: str) -> None:
        """Until Milvus has indexed every flushed row: a segment not yet indexed is searched exactly,
        so an approximate head tuned before that would look better than it is."""
        deadline = time.monotonic() + INDEX_WAIT_S
        for index_name in self.client.list_indexes(name):
            while True:
                described = self.client.describe_index(name, index_name)
                if int(described.get("pending_index_rows", 0)) == 0 and (
                    int(described.get("indexed_rows", 0)) >= int(described.get("total_rows", 0))
                ):
                    break
                if time.monotonic() > deadline:
                    raise StoreError(f"Milvus did not finish indexing {name} ({index_name}) in {INDEX_WAIT_S} s")
                time.sleep(0.5)

    def _drop_other_generations(self, keep: str) -> None:
        prefix = f"{self.collection}_g"
        for name in self.client.list_collections():
            if name.startswith(prefix) and not name.startswith(f"{self.collection}_{keep}"):
                self.client.drop_collection(name)

    def close(self) -> None:
        disconnect(self.client, self.uri)

    def abort(self) -> None:
        for name in self.created:
            try:
                self.client.drop_collection(name)
            except Exception:  # noqa: BLE001 - best effort: the pointer never named these
                pass
        shutil.rmtree(self.staging, ignore_errors=True)


def write_rows(
    client,
    layout: Layout,
    collection: str,
    generation: str,
    rows: Sequence[int],
    block: np.ndarray,
    source: np.ndarray,
    ids: Sequence[str],
    texts: Sequence[str],
    meta: IndexMeta,
    verb: str = "insert",
    metadata: Sequence[dict] | None = None,
) -> None:
    """Write documents as ``rows`` of a generation, every stage's field (``verb``: ``insert`` for
    new rows, ``upsert`` to replace rows that may exist), with their ``metadata`` where the layout
    keeps it."""
    if layout.binary_head:
        heads = [bytes(code) for code in binary_codes(source, meta.head_dim)]
    else:
        heads = normalize(source[:, : meta.head_dim]).tolist()
    columns = {
        "head": heads,
        "full": block.tolist(),
        **{f"p{d}": normalize(block[:, :d]).tolist() for d in layout.prefix_dims},
    }
    documents = [{"doc_id": str(doc_id)[:1024], "text": _clip(text)} for doc_id, text in zip(ids, texts)]
    records = metadata if metadata is not None else [{}] * len(rows)
    matches = (
        [{"match": match_document(m, meta.fields, layout.match_strings)} for m in records]
        if layout.filterable
        else [{}] * len(rows)
    )
    if layout.filterable:
        for document, record in zip(documents, records):
            document["fields"] = json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False)
    write = getattr(client, verb)
    if layout.kind == "fields":
        name = layout.collection(collection, generation, "head")
        write(
            name,
            [
                {"row": int(r), **{f: columns[f][i] for f in columns}, **documents[i], **matches[i]}
                for i, r in enumerate(rows)
            ],
        )
        return
    for field_name in layout.fields():
        name = layout.collection(collection, generation, field_name)
        extra = documents if field_name == "full" else matches if field_name == "head" else [{}] * len(rows)
        write(name, [{"row": int(r), "vector": columns[field_name][i], **extra[i]} for i, r in enumerate(rows)])


def _clip(text: str) -> str:
    """Milvus VARCHAR holds at most 65,535 bytes; keep whole characters under that."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_TEXT_BYTES else data[:MAX_TEXT_BYTES].decode("utf-8", "ignore")
