"""The HTTP API and the web page: FastAPI over one opened :class:`~matryoshka.index.Index`.

Requests carry texts and numbers only, never paths: the server reads nothing but the index it
was started with and the web page shipped in the package. Every limit is checked before any
work is done and answered with a 4xx whose message names the field and the limit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .adapt import adapted
from .batching import MicroBatcher
from .errors import (
    BusyError,
    EndpointError,
    MatryoshkaError,
    ModelError,
    ReadOnlyError,
    ScheduleError,
    StorageError,
    UsageError,
)
from .filters import Filter
from .funnel import Schedule, Stage, check_head
from .http_guards import BodyGuard, TimedHttpProtocol, bind
from .index import Index, answers_json, search_mode
from .metadata import RESERVED_FIELDS
from .models import Encoder, TextKind, matryoshka_dims, token_counts
from .openai_api import (
    OPENAI_MAX_INPUTS,
    EmbeddingModel,
    LoadedModel,
    OpenAIEmbeddings,
    install_openai_api,
    is_openai_path,
    openai_error_body,
    openai_error_response,
    upstream_failure,
)
from .text_checks import check_unicode
from .vectors import check_dim, halving_dims, stage_dims, truncate

WEB_DIR = Path(__file__).resolve().parent / "web"
LOG = logging.getLogger("matryoshka")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond is refused with a 4xx before work starts."""

    max_text_chars: int = 2_000
    max_texts: int = 64
    max_k: int = 100
    max_dims: int = 64
    max_shortlist: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 64  # concurrent /search requests answered by one encode and one funnel call
    max_write_documents: int = 256  # documents (or ids) per write request
    max_document_chars: int = 20_000  # of one document's text in a write
    max_write_batch: int = 1024  # documents of concurrent write requests committed together (one segment, one fsync)
    read_timeout_s: float = 10.0  # for a request's headers, and then for its body, to arrive whole
    max_inputs: int = OPENAI_MAX_INPUTS  # texts per /v1/embeddings request: OpenAI's own limit (LangChain sends 1,000)
    # characters of one /v1 input: OpenAI's 8,192 tokens at about 4 characters each (what the model
    # cannot take is cut, as everywhere), so that documents of any ordinary length can be indexed through /v1
    max_input_chars: int = 32_768


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Body):
    texts: list[str] = Field(description="Texts to embed.")
    dim: int | None = Field(None, description="Prefix dimension (1..full dim); default the full dimension.")
    kind: Literal["query", "document"] = Field("document", description="Encode with the query or the document prompt.")


class SearchRequest(_Body):
    query: str
    k: int = Field(10, description="How many hits to return.")
    dim: int | None = Field(None, description="Search only the first `dim` dimensions (an exact scan of the prefixes).")
    schedule: list[tuple[int, int]] | None = Field(
        None,
        description="Funnel stages as [[dim, keep], ...]; default: the index's autotuned schedule. "
        "On an index with a binary head the first stage is that head (dim = its bits).",
    )
    exact: bool = Field(False, description="Exact full-dimension search instead of the funnel.")
    recall: float | None = Field(
        None,
        strict=True,  # a number, not true or "0.9"
        description="The recall@k needed, in (0, 1]: the cheapest schedule the index tuned for at least that level "
        "(GET /info lists them); above its highest level the search is exact. Default: the index's target.",
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='Keep only documents whose metadata matches, e.g. {"lang": "en", "year": {"$gte": 2020}}; '
        "operators $eq $ne $gt $gte $lt $lte $in $nin $and $or $not.",
    )
    fields: list[str] | None = Field(None, description="Metadata fields returned with each hit; default all.")


class SimilarityRequest(_Body):
    query: str
    texts: list[str]
    dims: list[int] | None = Field(None, description="Prefix dimensions; default d/32 … d.")


class DocumentIn(_Body):
    id: str = Field(description="The document's id; a document with this id already in the index is replaced.")
    text: str = Field(description="The document's text, encoded by the index's model.")
    metadata: dict[str, Any] | None = Field(
        None, description="Filterable fields: strings, numbers, booleans or lists of strings."
    )


class UpsertRequest(_Body):
    documents: list[DocumentIn] = Field(description="Documents to add or replace.")


class DeleteRequest(_Body):
    ids: list[str] = Field(description="Ids of the documents to delete; ids not in the index are listed, not an error.")


@dataclass(frozen=True)
class WriteOp:
    """A checked write request: an upsert (``ids``, ``texts``, ``metadata``) or a delete (``ids``).
    Concurrent ones are committed together (group commit), each answered once durable."""

    kind: Literal["upsert", "delete"]
    ids: tuple[str, ...]
    texts: tuple[str, ...] = ()
    metadata: tuple[dict, ...] = ()


@dataclass(frozen=True)
class SearchPlan:
    """A checked /search request. Plans with the same ``key`` are searched as one batch."""

    query: str
    k: int
    mode: Literal["funnel", "exact", "prefix"]
    dim: int | None
    schedule: Schedule | None
    where: Filter | None = None
    fields: tuple[str, ...] | None = None
    recall: float | None = None  # the recall level asked for (the index's schedule for it, when searched)

    @property
    def key(self) -> tuple:
        """Plans that may share one search: the same k, mode, schedule, recall, filter and fields."""
        where = self.where.key if self.where else None
        return (self.k, self.mode, self.dim, self.schedule, self.recall, where, self.fields)


class DeniedError(Exception):
    """A write without the server's API key (401) or with another key (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LimitError(Exception):
    """A request asked for more than the server's limits allow."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class SearchService:
    """The work behind the endpoints, on one index. Encoding and store access each hold a lock:
    tokenizers and the Milvus store's per-batch cache are not safe to share between threads.

    The service follows its index: every search first checks whether a write or a build has
    replaced what it has open and opens the new state (see :meth:`Index.current_store`), and
    :meth:`follow` (run by a background thread) reopens the whole index, model included, when a
    rebuild changed how queries are encoded; until then searches answer from the old state."""

    def __init__(self, index: Index, limits: Limits = Limits(), writable: bool = False) -> None:
        self.index, self.limits, self.writable = index, limits, writable
        self._encode_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._reopen_lock = threading.Lock()
        self._write_lock = threading.Lock()

    @property
    def meta(self):
        return self.index.meta

    @property
    def full_dim(self) -> int:
        return self.index.meta.full_dim

    @property
    def marks(self) -> list[int]:
        """d/32 … d: the slider's marks and the default dims of /similarity."""
        return sorted(halving_dims(self.full_dim, smallest=1))

    # following the index ------------------------------------------------------------------------
    def follow(self) -> bool:
        """Switch to the index's current state if it has changed; True if it did. The new state is
        opened (and its model loaded) before the switch, so searches never wait for it."""
        with self._reopen_lock:
            if self.index.is_current():
                return False
            with self._store_lock:  # a write: open what it changed, reusing the rest
                self.index.current_store()
            if self.index.is_current():
                return True
            fresh = self.index.reopened()  # a rebuild with another model or adapter
            _ = fresh.encoder  # load a new model, if the index now uses one, before switching to it
            with self._write_lock, self._store_lock, self._encode_lock:  # no write encodes across the switch
                stale, self.index = self.index, fresh
            stale.close()
            return True

    def health(self) -> dict:
        """A real search through the whole path (encoder aside), or the error that stops it."""
        probe = np.zeros((1, self.full_dim), np.float32)
        probe[0, 0] = 1.0
        with self._store_lock:
            self.index.search_vectors(probe, 1)
            documents = len(self.index.store)
        return {"status": "ok", "documents": documents}

    # checks -------------------------------------------------------------------------------------
    def check_texts(self, texts: list[str], field: str) -> None:
        if not texts:
            raise LimitError(f"{field}: give at least one text")
        if len(texts) > self.limits.max_texts:
            raise LimitError(
                f"{field}: {len(texts)} texts is more than the limit of {self.limits.max_texts} per request", 413
            )
        for position, text in enumerate(texts):
            self.check_text(text, f"{field}[{position}]")

    def check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise LimitError(f"{field}: the text is empty")
        try:
            check_unicode(text, field)
        except ModelError as exc:
            raise LimitError(str(exc)) from None
        if len(text) > self.limits.max_text_chars:
            raise LimitError(
                f"{field}: {len(text)} characters is more than the limit of {self.limits.max_text_chars}", 413
            )

    def check_dim(self, dim: int, field: str) -> int:
        try:
            return check_dim(dim, self.full_dim)
        except ModelError as exc:
            raise LimitError(f"{field}: {exc}") from None

    def check_k(self, k: int) -> int:
        """``k`` within the limit; an index of fewer documents answers with all of them."""
        if not 1 <= k <= self.limits.max_k:
            raise LimitError(f"k: {k} is outside 1..{self.limits.max_k}")
        return k

    # work ---------------------------------------------------------------------------------------
    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        with self._encode_lock:
            return self.index.encoder.encode(texts, kind=kind)

    def embed_full(self, texts: list[str], kind: TextKind | None = None) -> tuple[np.ndarray, list[int]]:
        """Full unit vectors of ``texts`` as this index's early stages see documents (its adapter's
        ``f(x)``, re-normalised, when it has one), encoded plainly or as ``kind`` (with that
        prompt), and the tokens each text cost."""
        with self._encode_lock:  # the tokenizer too: it is not safe to share between threads
            index = self.index
            vectors = index.encoder.encode(texts, kind=kind)
            counts = token_counts(index.encoder, texts)
        return (adapted(index.adapter, vectors) if index.adapter is not None else vectors), counts

    def info(self) -> dict:
        default = self.index.schedule_for(10)
        return {
            "model": self.meta.model,
            "adapter": self.meta.adapter,
            "full_dim": self.full_dim,
            "head_dim": self.meta.head_dim,
            "binary_head": bool(getattr(self.index.store, "binary_head", False)),
            "corpus_size": len(self.index.store),
            "store": getattr(self.index.store, "kind", "unknown"),
            "storage": self.meta.storage,
            "default_schedule": [[s.dim, s.keep] for s in default.stages],
            "default_schedule_text": str(default),
            "default_plan": "funnel" if self.index.plan_for(10) is not None else "exact",
            "autotune_recall": self.meta.autotune_recall,
            "recall_levels": {f"{level:g}": schedule for level, schedule in self.meta.schedules_by_recall().items()},
            "marks": self.marks,
            "limits": asdict(self.limits),
            "read_only": not (self.writable and self.index.writable()),
            "schedule_warning": self.index.schedule_warning(),
            "fields": dict(self.meta.fields),
        }

    def embed(self, request: EmbedRequest) -> dict:
        self.check_texts(request.texts, "texts")
        dim = self.check_dim(request.dim, "dim") if request.dim is not None else self.full_dim
        vectors = truncate(self.encode(request.texts, request.kind), dim)
        return {"model": self.meta.model, "dim": dim, "kind": request.kind, "vectors": vectors.tolist()}

    def prepare(self, request: SearchRequest) -> SearchPlan:
        """Check a /search request against the limits before any work; the plan is what runs."""
        self.check_text(request.query, "query")
        k = self.check_k(request.k)
        schedule = None
        if request.dim is not None:
            self.check_dim(request.dim, "dim")
            if request.schedule is not None or request.exact:
                raise LimitError("dim: give one of dim, schedule or exact")
        if request.recall is not None:
            if request.schedule is not None or request.exact or request.dim is not None:
                raise LimitError("recall: give one of recall, dim, schedule or exact")
            if not 0 < request.recall <= 1:
                raise LimitError(f"recall: {request.recall} is not in (0, 1]")
        if request.schedule is not None:
            if request.exact:
                raise LimitError("schedule: give a schedule or exact, not both")
            schedule = self._schedule(request.schedule, k)
        dim = request.dim if request.dim not in (None, self.full_dim) else None
        mode = search_mode(exact=request.exact or request.dim is not None, dim=dim)
        where = self.index.parse_filter(request.filter)
        try:
            fields = self.index.check_fields(request.fields)
        except UsageError as exc:
            raise LimitError(f"fields: {exc}") from None
        # no schedule: the index's own, when searched
        named = None if fields is None else tuple(fields)
        return SearchPlan(request.query, k, mode, dim, schedule, where, named, request.recall)

    def search(self, request: SearchRequest) -> dict:
        answer = self.search_many([self.prepare(request)])[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def search_many(self, plans: Sequence[SearchPlan]) -> list[dict | BaseException]:
        """All queries encoded in one call; one vectorised search per group of plans that ask for the same thing."""
        started = time.perf_counter()
        queries = self.encode([plan.query for plan in plans])
        encode_ms = round(1000 * (time.perf_counter() - started), 3)
        groups: dict[tuple, list[int]] = {}
        for position, plan in enumerate(plans):
            groups.setdefault(plan.key, []).append(position)
        answers: list[dict | BaseException] = [None] * len(plans)  # type: ignore[list-item]
        for positions in groups.values():
            plan = plans[positions[0]]
            searched = time.perf_counter()
            try:
                result, hits, schedule = self._search_following(queries[positions], plan)
            except MatryoshkaError as exc:
                for position in positions:
                    answers[position] = exc
                continue
            search_ms = round(1000 * (time.perf_counter() - searched), 3)
            found = answers_json(
                [plans[p].query for p in positions],
                result,
                hits,
                k=plan.k,
                mode="exact" if plan.mode == "funnel" and schedule is None else plan.mode,
                dim=plan.dim or self.full_dim,
                schedule=schedule,
            )
            for position, answer in zip(positions, found):
                answers[position] = {**answer, "encode_ms": encode_ms, "search_ms": search_ms}
        return answers

    def _search_following(self, queries: np.ndarray, plan: SearchPlan):
        """Search; if the store fails (a Milvus generation dropped by a new build, say), switch to
        the index's current state and search once more."""
        for attempt in range(2):
            try:
                with self._store_lock:
                    result = self.index.search_vectors(
                        queries,
                        plan.k,
                        schedule=plan.schedule,
                        exact=plan.mode == "exact",
                        dim=plan.dim,
                        filter=plan.where,
                        recall=plan.recall,
                    )
                    schedule = result.schedule if plan.mode == "funnel" else None  # None: the index chose exact
                    return result, self.index.hits(result, plan.fields), schedule
            except MatryoshkaError:
                raise
            except Exception:
                if attempt or not self.follow():
                    raise
        raise AssertionError("unreachable")

    def _schedule(self, stages: list[tuple[int, int]], k: int) -> Schedule:
        for position, (dim, keep) in enumerate(stages):
            self.check_dim(dim, f"schedule[{position}]")
            if keep > self.limits.max_shortlist:
                raise LimitError(
                    f"schedule[{position}]: keep {keep} is more than the limit of {self.limits.max_shortlist}"
                )
        binary = getattr(self.index.store, "binary_head", False)
        try:
            schedule = Schedule(tuple(Stage(dim, keep, binary and i == 0) for i, (dim, keep) in enumerate(stages)))
            schedule.check(self.full_dim, k, len(self.index.store))
            check_head(schedule, self.index.store)
        except ScheduleError as exc:
            raise LimitError(f"schedule: {exc}") from None
        return schedule

    # writes ---------------------------------------------------------------------------------------
    def check_ids(self, ids: list[str], field: str) -> None:
        if not ids:
            raise LimitError(f"{field}: give at least one")
        if len(ids) > self.limits.max_write_documents:
            raise LimitError(
                f"{field}: {len(ids)} is more than the limit of {self.limits.max_write_documents} per request", 413
            )
        first: dict[str, int] = {}
        for position, doc_id in enumerate(ids):
            where = f"{field}[{position}]" + (".id" if field == "documents" else "")
            if not doc_id.strip():
                raise LimitError(f"{where}: the id is empty")
            if len(doc_id.encode("utf-8", "surrogatepass")) > 1024:
                raise LimitError(f"{where}: an id is at most 1,024 bytes", 413)
            try:
                check_unicode(doc_id, where)
            except ModelError as exc:
                raise LimitError(str(exc)) from None
            if doc_id in first:
                raise LimitError(f"{where}: the same id as {field}[{first[doc_id]}]")
            first[doc_id] = position

    def prepare_upsert(self, request: UpsertRequest) -> WriteOp:
        """Check a write against the limits before any work."""
        ids = [document.id for document in request.documents]
        self.check_ids(ids, "documents")
        texts = [document.text for document in request.documents]
        for position, document in enumerate(request.documents):
            field = f"documents[{position}].text"
            if len(document.text) > self.limits.max_document_chars:
                raise LimitError(
                    f"{field}: {len(document.text)} characters is more than the limit of "
                    f"{self.limits.max_document_chars}",
                    413,
                )
            if not document.text.strip():
                raise LimitError(f"{field}: the text is empty")
            try:
                check_unicode(document.text, field)
            except ModelError as exc:
                raise LimitError(str(exc)) from None
            for name in RESERVED_FIELDS:
                if name in (document.metadata or {}):
                    raise LimitError(
                        f"documents[{position}].metadata.{name}: {name!r} is the document's own; "
                        "give it beside metadata, not in it"
                    )
        self.check_writable()
        return WriteOp("upsert", tuple(ids), tuple(texts), tuple(d.metadata or {} for d in request.documents))

    def prepare_delete(self, request: DeleteRequest) -> WriteOp:
        self.check_ids(request.ids, "ids")
        self.check_writable()
        return WriteOp("delete", tuple(request.ids))

    def check_writable(self) -> None:
        if not self.index.writable():
            raise ReadOnlyError(f"the index at {self.index.db} cannot be written: its place is read-only")

    def write_many(self, ops: Sequence[WriteOp]) -> list[dict | BaseException]:
        """Commit writes that arrived together as few writes as their order allows (group commit:
        one segment and one manifest switch for a run of upserts, one for a run of deletes);
        each op is answered only once its run is durable. A run that fails is retried op by op,
        so one bad write fails alone and the others' answers stay true."""
        answers: dict[int, dict | BaseException] = {}
        checked = []
        for position, op in enumerate(ops):
            try:
                if op.kind == "upsert" and any(op.metadata):
                    self.index.check_metadata_fits(list(op.metadata))  # a type clash fails this op alone
                checked.append((position, op))
            except MatryoshkaError as exc:
                answers[position] = exc
        for run in self._runs(checked):
            try:
                answers.update(zip((p for p, _ in run), self._commit_run([op for _, op in run])))
            except (StorageError, BusyError) as exc:  # every op's, not one op's: no retry, nothing written
                answers.update((p, exc) for p, _ in run)
            except MatryoshkaError as exc:  # perhaps one op's: each is tried alone
                if len(run) == 1:
                    answers[run[0][0]] = exc
                    continue
                for position, op in run:
                    try:
                        answers[position] = self._commit_run([op])[0]
                    except Exception as failed:  # noqa: BLE001 - this op's own answer
                        answers[position] = failed
            except Exception as exc:  # noqa: BLE001 - a bug or a fault: this run's answer, not the others'
                LOG.error("a write failed", exc_info=exc)
                answers.update((p, exc) for p, _ in run)
        return [answers[position] for position in range(len(ops))]

    def _runs(self, ops: Sequence[tuple[int, WriteOp]]) -> list[list[tuple[int, WriteOp]]]:
        """Consecutive ops of one kind with no id in common, up to ``max_write_batch`` documents
        (on Milvus, one op a run: its writer does not say which ids each op replaced)."""
        runs: list[list[tuple[int, WriteOp]]] = []
        seen: set[str] = set()
        size = 0
        grouped = getattr(self.index.store, "kind", "") != "milvus"
        for position, op in ops:
            run = runs[-1] if runs else None
            if (
                run is None
                or not grouped
                or run[0][1].kind != op.kind
                or size + len(op.ids) > self.limits.max_write_batch
                or not seen.isdisjoint(op.ids)
            ):
                runs.append([(position, op)])
                seen, size = set(op.ids), len(op.ids)
            else:
                run.append((position, op))
                seen.update(op.ids)
                size += len(op.ids)
        return runs

    def _commit_run(self, run: list[WriteOp]) -> list[dict]:
        ids = [i for op in run for i in op.ids]
        with self._write_lock:
            if run[0].kind == "delete":
                report = self.index.delete(ids, merge=False)
                deleted = set(report.deleted)
                return [
                    {
                        "deleted": sum(i in deleted for i in op.ids),
                        "not_found": [i for i in op.ids if i not in deleted],
                        "documents": report.documents,
                    }
                    for op in run
                ]
            texts = [t for op in run for t in op.texts]
            metadata = [m for op in run for m in op.metadata]
            vectors = self.encode(texts, "document")
            report = self.index.add(ids, texts, vectors, metadata=metadata if any(metadata) else None, merge=False)
        if len(run) == 1:
            return [{"added": report.added, "replaced": report.replaced, "documents": report.documents}]
        replaced = set(report.replaced_ids or ())
        answers = []
        for op in run:
            count = sum(i in replaced for i in op.ids)
            answers.append({"added": len(op.ids) - count, "replaced": count, "documents": report.documents})
        return answers

    def merge_after_writes(self) -> None:
        """Merge segments of like size, after the writes that made them were answered: the
        next writes wait for it (and are then committed together), searches do not."""
        with self._write_lock:
            self.index.merge()

    def similarity(self, request: SimilarityRequest) -> dict:
        self.check_text(request.query, "query")
        self.check_texts(request.texts, "texts")
        dims = request.dims or self.marks
        if len(dims) > self.limits.max_dims:
            raise LimitError(f"dims: {len(dims)} dims is more than the limit of {self.limits.max_dims}", 413)
        for position, dim in enumerate(dims):
            self.check_dim(dim, f"dims[{position}]")
        query = self.encode([request.query], "query")
        texts = self.encode(request.texts, "document")
        table = np.stack([truncate(texts, d) @ truncate(query, d)[0] for d in dims], axis=1)
        return {
            "query": request.query,
            "dims": dims,
            "texts": request.texts,
            "similarities": table.astype(np.float64).round(6).tolist(),
        }


MAX_ECHO_CHARS = 80  # of a field name quoted back in an error; inputs themselves are never echoed
FOLLOW_INTERVAL_S = 1.0  # how often the server checks whether its index was rebuilt or written


def _validation_message(exc: RequestValidationError) -> str:
    """One line per problem, naming the field: pydantic's own words, or the JSON parser's. The
    rejected input is never quoted back: it may be huge, or not representable in JSON (NaN)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        where = where if len(where) <= MAX_ECHO_CHARS else where[: MAX_ECHO_CHARS - 1] + "…"
        if error.get("type") == "json_invalid":
            lines.append(
                f"malformed JSON: {error.get('ctx', {}).get('error', error.get('msg'))} "
                f"(at character {error.get('loc', ('', '?'))[-1]})"
            )
        else:
            lines.append(f"{where}: {error.get('msg')}")
    return "; ".join(lines)


class IndexFollower:
    """A daemon thread that has the service follow its index: a rebuild or a write is served
    within about ``interval`` seconds, with no request failing on the way."""

    def __init__(self, service: SearchService, interval: float = FOLLOW_INTERVAL_S) -> None:
        self.service, self.interval = service, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="matryoshka-follower", daemon=True)
        self.error: str | None = None  # why the last attempt to follow failed, if it did

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.service.follow()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - the old state keeps answering; /healthz reports this
                self.error = f"{type(exc).__name__}: {exc}"


class IndexModel:
    """The index's own model on ``/v1``, named as the index names it, following the index through
    rebuilds. Its Matryoshka dims are the model's own; with an adapter, which does not record the
    dims it was fitted for, they are those that ``matryoshka adapt`` fits every adapter for (the
    halvings d … d/32 of :func:`~matryoshka.vectors.stage_dims`). The index's schedule would be a
    poorer stand-in: with an adapter it has two stages, the head and the full dimension."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    @property
    def id(self) -> str:
        return self.service.meta.model or ""

    @property
    def full_dim(self) -> int:
        return self.service.full_dim

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        index = self.service.index
        if index.adapter is None:
            return matryoshka_dims(index.encoder)
        return tuple(sorted(stage_dims(self.full_dim), reverse=True))

    def embed(self, texts: list[str], kind: TextKind | None = None) -> tuple[np.ndarray, list[int]]:
        return self.service.embed_full(texts, kind)


def served_models(service: SearchService | None, models: Mapping[str, Encoder]) -> list[EmbeddingModel]:
    """What ``/v1`` serves: the index's own model under its model name (none for an index built
    from vectors alone), then each of ``models`` under its key. A key naming the index's model is
    that model, served once; unless the index has an adapter, whose vectors are ``f(x)``: the
    plain model cannot then share its name."""
    served: list[EmbeddingModel] = []
    if service is not None and service.meta.model is not None:
        served.append(IndexModel(service))
    for name, encoder in models.items():
        if not name.strip():
            raise UsageError("a served model's name is empty")
        if service is not None and name == service.meta.model:
            if service.index.adapter is not None:
                raise UsageError(
                    f"the index already serves {name!r} on /v1, with its adapter {service.meta.adapter}: "
                    "the plain model cannot share that name; serve the index alone, or the model alone"
                )
            continue
        served.append(LoadedModel(name, encoder))
    return served


def create_app(
    index: Index | None,
    limits: Limits = Limits(),
    follow_interval: float = FOLLOW_INTERVAL_S,
    api_key: str | None = None,
    models: Mapping[str, Encoder] | None = None,
) -> FastAPI:
    """The FastAPI application: the JSON API, its OpenAPI docs at ``/docs`` (served from the
    package, no CDN), the page at ``/``, and an OpenAI-compatible embeddings API at ``/v1``
    (:mod:`matryoshka.openai_api`) serving the index's model and each of ``models`` (by name).
    With ``index=None`` only the models are served (``/v1``, ``/healthz``, ``/info``), and the
    index's endpoints answer 404 saying why. With an ``api_key`` it also takes writes
    (``POST /documents``, ``POST /documents/delete``) from clients that send it as a bearer
    token, and ``/v1`` needs it for every request, as OpenAI's API does; without one the server
    is read-only and the write endpoints do not exist."""
    if api_key is not None and not api_key.strip():
        raise UsageError("the API key is empty; give a secret, or no key for a read-only server")
    if index is None and not models:
        raise UsageError("nothing to serve: give an index (--db), a model (--model), or both")
    service = SearchService(index, limits, writable=api_key is not None) if index is not None else None
    embeddings = OpenAIEmbeddings(
        served_models(service, models or {}),
        max_inputs=limits.max_inputs,
        max_text_chars=limits.max_input_chars,
        max_batch=limits.max_batch,
        keys=_key_encodings(api_key) if api_key is not None else None,
    )
    if service is None:
        app = _new_app(limits, embeddings, [embeddings])
        _add_model_only_routes(app, embeddings, limits)
        return app
    if index.meta.fields:  # filters need it: loaded now rather than in the first filtered request
        import pyarrow.compute  # noqa: F401

    batcher: MicroBatcher[SearchPlan, dict] = MicroBatcher(service.search_many, max_batch=limits.max_batch)
    writes: MicroBatcher[WriteOp, dict] = MicroBatcher(
        service.write_many, max_batch=limits.max_write_batch, after_batch=service.merge_after_writes
    )
    follower = IndexFollower(service, follow_interval)
    app = _new_app(limits, embeddings, [embeddings, batcher, writes, follower])
    app.state.service, app.state.batcher, app.state.follower = service, batcher, follower
    app.state.writes = writes

    @app.get("/healthz", summary="Readiness: a real search through the index answers (503 when it cannot).")
    def healthz():
        try:
            return service.health()
        except Exception as exc:  # noqa: BLE001 - any failure means this server cannot answer
            return JSONResponse({"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}, status_code=503)

    @app.get("/info", summary="Model, dimensions, corpus size, default funnel schedule and limits.")
    def info() -> dict:
        return service.info()

    @app.post("/embed", summary="Embed texts, truncated to `dim` and re-normalised.")
    def embed(request: EmbedRequest) -> dict:
        return service.embed(request)

    @app.post("/search", summary="Funnel search (default), exact search, or search at one prefix dimension.")
    async def search(request: SearchRequest) -> dict:
        # checked here, answered by the batcher together with whatever else is waiting
        return await asyncio.wrap_future(batcher.submit(service.prepare(request)))

    @app.post("/similarity", summary="The query's cosine to each text at each prefix dimension.")
    def similarity(request: SimilarityRequest) -> dict:
        return service.similarity(request)

    if api_key is not None:
        accepted = _key_encodings(api_key)

        def authorized(request: Request) -> None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise DeniedError("writes need the server's API key: send 'Authorization: Bearer <key>'", 401)
            sent = token.strip(" \t").encode("latin-1")  # the bytes as sent (headers are decoded as Latin-1)
            if not any([secrets.compare_digest(sent, key) for key in accepted]):
                raise DeniedError("the API key is not this server's", 403)

        @app.post(
            "/documents",
            summary="Add documents, or replace those whose id is already indexed (needs the API key).",
            dependencies=[Depends(authorized)],
        )
        async def upsert(request: UpsertRequest) -> dict:
            # checked here; committed by the write queue with whatever other writes are waiting
            return await asyncio.wrap_future(writes.submit(service.prepare_upsert(request)))

        @app.post(
            "/documents/delete",
            summary="Delete documents by id (needs the API key).",
            dependencies=[Depends(authorized)],
        )
        async def delete(request: DeleteRequest) -> dict:
            return await asyncio.wrap_future(writes.submit(service.prepare_delete(request)))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _new_app(limits: Limits, embeddings: OpenAIEmbeddings, workers: Sequence) -> FastAPI:
    """What every server has: its background ``workers`` (started in this order, stopped in the
    reverse), the body guard, the error handlers (OpenAI's error shape on ``/v1``, the project's
    ``{"error": message}`` elsewhere) and the ``/v1`` API."""
    from fastapi_offline import FastAPIOffline

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = []
        try:
            for worker in workers:
                worker.start()
                started.append(worker)
            yield
        finally:
            for worker in reversed(started):
                worker.stop()

    app = FastAPIOffline(
        title="matryoshka",
        summary="Matryoshka embeddings: funnel search, per-dimension similarity and an OpenAI-compatible API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.embeddings = embeddings
    app.add_middleware(
        BodyGuard, max_bytes=limits.max_body_bytes, timeout_s=limits.read_timeout_s, error_body=_refusal_body
    )

    @_answers(app, RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @_answers(app, LimitError)
    async def over_limit(request: Request, exc: LimitError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @_answers(app, DeniedError)
    async def denied(request: Request, exc: DeniedError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @_answers(app, MatryoshkaError)
    async def bad_value(request: Request, exc: Exception):
        if isinstance(exc, EndpointError):
            return JSONResponse({"error": upstream_failure(exc)}, status_code=exc.status)
        status = 409 if isinstance(exc, BusyError) else exc.status if isinstance(exc, StorageError) else 422
        return JSONResponse({"error": str(exc)}, status_code=status)

    @_answers(app, StarletteHTTPException)
    async def not_here(request: Request, exc: StarletteHTTPException):
        return await http_exception_handler(request, exc)  # FastAPI's own answer (404, 405)

    @_answers(app, Exception)
    async def failed(request: Request, exc: Exception):
        # a bug or a fault nobody foresaw: still a JSON answer, naming the kind of failure only
        LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)

    install_openai_api(app, embeddings)
    return app


def _answers(app: FastAPI, kind: type[BaseException]):
    """Register the decorated handler for ``kind`` everywhere but on ``/v1``, whose clients expect
    OpenAI's error shape (:func:`~matryoshka.openai_api.openai_error_response`)."""

    def register(handler):
        async def answer(request: Request, exc: Exception):
            if is_openai_path(request.url.path):
                return openai_error_response(request, exc)
            return await handler(request, exc)

        app.add_exception_handler(kind, answer)
        return handler

    return register


def _refusal_body(path: str, status: int, message: str) -> dict:
    """The body guard's refusals (413, 408) in the shape the path's clients expect."""
    return openai_error_body(message, status) if is_openai_path(path) else {"error": message}


INDEX_PATHS = ("/", "/search", "/embed", "/similarity", "/documents", "/documents/delete")


def _add_model_only_routes(app: FastAPI, embeddings: OpenAIEmbeddings, limits: Limits) -> None:
    """A server of models without an index: readiness, what it serves, and a clear 404 from each
    endpoint that needs an index."""

    @app.get("/healthz", summary="Readiness: each served model encodes a probe text (503 when one cannot).")
    def healthz():
        try:
            return {"status": "ok", "models": embeddings.health()}
        except Exception as exc:  # noqa: BLE001 - any failure means this server cannot answer
            return JSONResponse({"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}, status_code=503)

    @app.get("/info", summary="The served models (see GET /v1/models) and the limits; there is no index.")
    def info() -> dict:
        return {"index": None, "models": embeddings.model_list()["data"], "limits": asdict(limits), "read_only": True}

    async def needs_an_index(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "error": f"{request.url.path} needs an index, and this server has none (it serves models only: "
                "start it with --db to search an index); embeddings are at POST /v1/embeddings"
            },
            status_code=404,
        )

    for path in INDEX_PATHS:
        app.add_api_route(path, needs_an_index, methods=["GET", "POST"], include_in_schema=False)


def _key_encodings(api_key: str) -> list[bytes]:
    """The bytes a client may send for ``api_key``: its UTF-8, and its Latin-1 where it has one
    (clients differ in how they encode a header that is not ASCII). Spaces at its ends are not
    part of it: HTTP drops them from a header."""
    key = api_key.strip(" \t")
    accepted = [key.encode("utf-8")]
    try:
        accepted.append(key.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return accepted


KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this long


def serve(
    index: Index | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    log_level: str = "warning",
    on_ready=None,
    api_key: str | None = None,
    models: Mapping[str, Encoder] | None = None,
) -> None:
    """Take the port (a UsageError if it is busy), then run the app with uvicorn until interrupted;
    the index is closed on the way out. ``on_ready`` is called once the port is taken and the app
    made. ``models``: served on ``/v1`` by name, beside the index's own (see :func:`create_app`)."""
    import uvicorn

    sock = bind(host, port)
    try:
        app = create_app(index, limits, api_key=api_key, models=models)
        if on_ready is not None:
            on_ready()
        config = uvicorn.Config(app, log_level=log_level, http=TimedHttpProtocol, timeout_keep_alive=KEEP_ALIVE_S)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if index is not None:
            index.close()
