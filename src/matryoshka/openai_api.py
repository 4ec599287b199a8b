"""The OpenAI-compatible embeddings API: ``POST /v1/embeddings``, ``GET /v1/models`` and
``GET /v1/models/{model}``, in OpenAI's request, response and error shapes.

Code written for OpenAI's embeddings endpoint (the ``openai`` package, LangChain's
``OpenAIEmbeddings``, anything that takes a base URL) works against ``matryoshka serve`` by
pointing it at ``http://host:port/v1``; a Matryoshka model's ``dimensions`` parameter then costs
nothing but a slice. Texts are encoded plainly (no query or document prompt), since the API does
not say which a text is and OpenAI's own models make no difference either; a served index's model
gives the vectors its index holds (its adapter's ``f(x)``, re-normalised, when it has one).

Every answer on ``/v1`` that is not a success is OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` with OpenAI's status codes, so that clients
raise their usual exceptions (``openai.BadRequestError`` and so on). A request is checked whole
before any work, then waits for the micro-batcher, which encodes the texts of concurrent
requests to the same model in one call: a bad request fails alone, and never holds up others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import MicroBatcher
from .errors import EndpointError, MatryoshkaError, StorageError
from .filters import json_kind
from .models import Encoder, TextKind, matryoshka_dims, token_counts
from .text_checks import check_unicode
from .vectors import truncate

LOG = logging.getLogger("matryoshka")
PREFIX = "/v1"
OPENAI_MAX_INPUTS = 2048  # texts per request that OpenAI's own endpoint takes
OWNER = "matryoshka"
ENCODING_FORMATS = ("float", "base64")
REQUEST_FIELDS = ("input", "model", "dimensions", "encoding_format", "user", "input_type")
# input_type, an extension (NVIDIA's and Voyage's APIs have it): which of the model's prompts to apply
INPUT_TYPES: dict[str, TextKind] = {"query": "query", "document": "document", "passage": "document"}
MAX_ECHO_CHARS = 80  # of a name quoted back in an error; texts are never quoted back
TOKEN_ARRAYS = "token arrays are not supported here: send the texts themselves, as strings"


def is_openai_path(path: str) -> bool:
    """Whether ``path`` belongs to this API (its errors then take OpenAI's shape)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


# ----------------------------------------------------------------------------------- errors


class OpenAIError(Exception):
    """A refusal in OpenAI's terms: the status, the message, and the ``param`` it is about."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.kind = message, status, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def openai_error_body(message: str, status: int) -> dict:
    """OpenAI's error object for a refusal made outside this module (the body guard's 413 and 408)."""
    codes = {413: "request_too_large", 408: "request_timeout"}
    return OpenAIError(message, status, code=codes.get(status)).body()


def openai_error_response(request: Request, exc: BaseException) -> JSONResponse:
    """Any failure on a ``/v1`` path as OpenAI's error object: refusals keep their status, the
    project's own errors are the request's fault (400), anything else is a 500 that names only
    the kind of failure (the rest is in the server's log)."""
    if isinstance(exc, OpenAIError):
        error = exc
    elif isinstance(exc, RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        error = OpenAIError(f"invalid request: {problems}")
    elif isinstance(exc, StarletteHTTPException):
        where = f"{request.method} {_short(request.url.path)}"
        if exc.status_code == 404:
            error = OpenAIError(
                f"Unknown request URL: {where}. This server answers POST /v1/embeddings, GET /v1/models "
                "and GET /v1/models/{model}.",
                404,
                code="unknown_url",
            )
        elif exc.status_code == 405:
            error = OpenAIError(f"Method not allowed: {where}.", 405, code="method_not_allowed")
        else:
            error = OpenAIError(str(exc.detail), exc.status_code)
        error.headers = exc.headers  # a 405's Allow
    elif isinstance(exc, StorageError):
        error = OpenAIError(str(exc), exc.status, kind="server_error")
    elif isinstance(exc, EndpointError):
        error = OpenAIError(upstream_failure(exc), exc.status, kind="server_error", code="upstream_error")
    elif isinstance(exc, MatryoshkaError):
        error = OpenAIError(str(exc))
    else:
        LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        error = OpenAIError(f"internal error ({type(exc).__name__}); see the server's log", 500, kind="server_error")
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def upstream_failure(exc: EndpointError) -> str:
    """What a client is told when the model's own endpoint failed: that it did, not where it is
    (the endpoint's address and the details go to the server's log)."""
    LOG.error("the model's endpoint failed: %s", exc)
    return "the model's embeddings endpoint failed or answered wrongly; see this server's log (try again later)"


def _short(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 1] + "…"


def _json_type(value: Any) -> str:
    return json_kind(value, array="an array")  # OpenAI's word


# ----------------------------------------------------------------------------------- models


class EmbeddingModel(Protocol):
    """A model served on this API under ``id``."""

    @property
    def id(self) -> str: ...

    @property
    def full_dim(self) -> int: ...

    @property
    def matryoshka_dims(self) -> tuple[int, ...]: ...

    def embed(self, texts: list[str], kind: TextKind | None = None) -> tuple[np.ndarray, list[int]]:
        """Unit full-dimension vectors of ``texts`` (with the ``kind``'s prompt), and the tokens each text cost."""
        ...


class LoadedModel:
    """A model served by name (``serve --model``), with a lock of its own: tokenizers are not
    safe to share between threads."""

    def __init__(self, model_id: str, encoder: Encoder) -> None:
        self._id, self.encoder = model_id, encoder
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self._id

    @property
    def full_dim(self) -> int:
        return self.encoder.full_dim

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return matryoshka_dims(self.encoder)

    def embed(self, texts: list[str], kind: TextKind | None = None) -> tuple[np.ndarray, list[int]]:
        with self._lock:
            return self.encoder.encode(texts, kind=kind), token_counts(self.encoder, texts)


# ----------------------------------------------------------------------------------- requests


class EmbeddingsRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` (for the API docs: the endpoint checks it by hand, so
    that each refusal names its ``param`` as OpenAI's do)."""

    input: str | list[str] = Field(description="A text, or a list of texts (token arrays are not supported).")
    model: str = Field(description="A served model's id (GET /v1/models lists them).")
    dimensions: int | None = Field(None, description="Keep the first `dimensions` dims, re-normalised (1..full).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: lists of numbers; `base64`: little-endian float32 bytes, base64-encoded."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    input_type: Literal["query", "document", "passage"] | None = Field(
        None,
        description="Not in OpenAI's API: apply the model's query or document prompt (e.g. nomic's "
        "'search_query: '). Without it texts are encoded as given.",
    )


@dataclass(frozen=True)
class EmbeddingJob:
    """A checked request: what the batcher encodes and what its answer is cut to."""

    model: EmbeddingModel
    model_id: str
    texts: tuple[str, ...]
    dim: int | None
    encoding_format: str
    kind: TextKind | None = None


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # full dimension, unit rows
    tokens: int


class OpenAIEmbeddings:
    """The work behind ``/v1``: the served models, the checks, the micro-batcher and the answers.

    ``max_inputs``: texts per request (OpenAI's own limit is 2,048, and LangChain sends up to
    1,000 at a time, so it is kept apart from the smaller limit of ``/embed``); the request body's
    byte limit (the body guard's) still bounds it. ``keys``: the bytes a client may send as its
    bearer token (``None``: no key needed)."""

    def __init__(
        self,
        models: Sequence[EmbeddingModel],
        *,
        max_inputs: int = OPENAI_MAX_INPUTS,
        max_text_chars: int = 2_000,
        max_batch: int = 64,
        keys: Sequence[bytes] | None = None,
    ) -> None:
        self.models = list(models)
        self.max_inputs, self.max_text_chars, self.keys = max_inputs, max_text_chars, keys
        self.created = int(time.time())
        self.batcher: MicroBatcher[EmbeddingJob, Embedded] = MicroBatcher(self.embed_many, max_batch=max_batch)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    # the served models ----------------------------------------------------------------------------
    def served(self) -> dict[str, EmbeddingModel]:
        """By id, as of now (an index's model may change when the index is rebuilt)."""
        return {model.id: model for model in self.models}

    def find(self, model_id: str) -> EmbeddingModel:
        model = self.served().get(model_id)
        if model is None:
            ids = ", ".join(self.served()) or "(none)"
            raise OpenAIError(
                f"The model {_short(model_id)!r} does not exist on this server; it serves: {ids}.",
                404,
                param="model",
                code="model_not_found",
            )
        return model

    def describe(self, model: EmbeddingModel) -> dict:
        """OpenAI's model object, with the full dimension and the prefix dims the model was trained
        or adapted for (empty when unknown)."""
        return {
            "id": model.id,
            "object": "model",
            "created": self.created,
            "owned_by": OWNER,
            "dimensions": model.full_dim,
            "matryoshka_dimensions": list(model.matryoshka_dims),
        }

    def model_list(self) -> dict:
        return {"object": "list", "data": [self.describe(model) for model in self.served().values()]}

    def health(self) -> list[str]:
        """Each model encodes a probe text; the ids, or the first failure."""
        for model in self.models:
            model.embed(["ok"])
        return list(self.served())

    # checks ---------------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        """The server's key as ``Authorization: Bearer <key>``, when it has one (401 otherwise)."""
        if self.keys is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "You didn't provide an API key: send this server's key as 'Authorization: Bearer <key>'."
        else:
            sent = token.strip(" \t").encode("latin-1")  # the bytes as sent (headers are decoded as Latin-1)
            if any([secrets.compare_digest(sent, key) for key in self.keys]):  # every key compared: no timing
                return
            message = "Incorrect API key provided: it is not this server's key."
        raise OpenAIError(message, 401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def prepare(self, body: bytes) -> EmbeddingJob:
        """Check a request body whole, before any work; every refusal names its ``param``."""
        request = _parse_json(body)
        for name in request:
            if name not in REQUEST_FIELDS:
                raise OpenAIError(f"Unrecognized request argument supplied: {_short(name)}", param=_short(name))
        model_id = request.get("model")
        if not isinstance(model_id, str):
            raise OpenAIError(
                "model: give the id of a served model (GET /v1/models lists them)"
                + ("" if model_id is None else f"; got {_json_type(model_id)}"),
                param="model",
            )
        texts = self._texts(request.get("input"))
        dim = request.get("dimensions")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise OpenAIError(f"dimensions: expected an integer; got {_json_type(dim)}", param="dimensions")
        encoding_format = request.get("encoding_format")
        encoding_format = "float" if encoding_format is None else encoding_format
        if encoding_format not in ENCODING_FORMATS:
            shown = _short(repr(encoding_format)) if isinstance(encoding_format, str) else _json_type(encoding_format)
            raise OpenAIError(f"encoding_format: {shown} is not one of 'float', 'base64'", param="encoding_format")
        input_type = request.get("input_type")
        if input_type is not None and (not isinstance(input_type, str) or input_type not in INPUT_TYPES):
            shown = _short(repr(input_type)) if isinstance(input_type, str) else _json_type(input_type)
            raise OpenAIError(f"input_type: {shown} is not one of 'query', 'document', 'passage'", param="input_type")
        model = self.find(model_id)
        if dim is not None and not 1 <= dim <= model.full_dim:
            raise OpenAIError(
                f"dimensions: {dim} is outside 1..{model.full_dim} (the full dimension of {model.id})",
                param="dimensions",
            )
        return EmbeddingJob(model, model_id, tuple(texts), dim, encoding_format, INPUT_TYPES.get(input_type))

    def _texts(self, value: Any) -> list[str]:
        if isinstance(value, str):
            texts, names = [value], ["input"]
        elif isinstance(value, list):
            if not value:
                raise OpenAIError("input: the list is empty; give at least one text", param="input")
            if len(value) > self.max_inputs:
                raise OpenAIError(
                    f"input: {len(value):,} texts is more than the limit of {self.max_inputs:,} per request",
                    param="input",
                )
            if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
                raise OpenAIError(f"input: {TOKEN_ARRAYS}", param="input")
            texts, names = value, [f"input[{position}]" for position in range(len(value))]
        else:
            got = "nothing" if value is None else _json_type(value)
            raise OpenAIError(f"input: give a string or a list of strings; got {got}", param="input")
        for text, name in zip(texts, names):
            self._check_text(text, name)
        return texts

    def _check_text(self, text: Any, name: str) -> None:
        if isinstance(text, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in text):
            raise OpenAIError(f"{name}: {TOKEN_ARRAYS}", param="input")
        if not isinstance(text, str):
            raise OpenAIError(f"{name}: expected a string; got {_json_type(text)}", param="input")
        if not text.strip():
            raise OpenAIError(f"{name}: the text is empty", param="input")
        if len(text) > self.max_text_chars:
            raise OpenAIError(
                f"{name}: {len(text):,} characters is more than the limit of {self.max_text_chars:,}", param="input"
            )
        try:
            check_unicode(text, name)
        except MatryoshkaError as exc:
            raise OpenAIError(str(exc), param="input") from None

    # work -----------------------------------------------------------------------------------------
    def embed_many(self, jobs: Sequence[EmbeddingJob]) -> list[Embedded]:
        """The texts of all jobs for one model encoded in one call (a failure is retried job by
        job by the batcher, so one bad job fails alone)."""
        groups: dict[tuple[int, str | None], list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault((id(job.model), job.kind), []).append(position)
        answers: list[Embedded] = [None] * len(jobs)  # type: ignore[list-item]
        for positions in groups.values():
            first = jobs[positions[0]]
            vectors, counts = first.model.embed([text for p in positions for text in jobs[p].texts], first.kind)
            start = 0
            for position in positions:
                end = start + len(jobs[position].texts)
                answers[position] = Embedded(vectors[start:end], sum(counts[start:end]))
                start = end
        return answers


def _parse_json(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except json.JSONDecodeError as exc:
        raise OpenAIError(
            f"We could not parse the JSON body of your request: {exc.msg} (at character {exc.pos})"
        ) from None
    except UnicodeDecodeError:
        raise OpenAIError("We could not parse the JSON body of your request: it is not UTF-8 text") from None
    except RecursionError:
        raise OpenAIError("We could not parse the JSON body of your request: it is nested too deeply") from None
    if not isinstance(request, dict):
        raise OpenAIError(f"the request body must be a JSON object with 'model' and 'input'; got {_json_type(request)}")
    return request


def render(job: EmbeddingJob, embedded: Embedded) -> bytes:
    """OpenAI's response: each vector cut to ``dimensions`` and re-normalised, as numbers or as
    base64 of its little-endian float32 bytes."""
    vectors = truncate(embedded.vectors, job.dim)
    if job.encoding_format == "base64":
        encoded: list = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        encoded = vectors.tolist()
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "embedding": vector, "index": i} for i, vector in enumerate(encoded)],
        "model": job.model_id,
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens},
    }
    return json.dumps(answer, separators=(",", ":")).encode()


def install_openai_api(app: FastAPI, embeddings: OpenAIEmbeddings) -> None:
    """Add the ``/v1`` routes to ``app``, and the handler that answers their refusals. The app's
    other handlers must answer ``/v1`` paths with :func:`openai_error_response` (see ``server.py``)."""

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return openai_error_response(request, exc)

    app.add_exception_handler(OpenAIError, refused)
    router = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible"], dependencies=[Depends(embeddings.authorize)])

    @router.post(
        "/embeddings",
        summary="OpenAI-compatible embeddings: each text's vector cut to `dimensions` and re-normalised.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
            }
        },
    )
    async def create_embeddings(request: Request) -> Response:
        job = embeddings.prepare(await request.body())
        embedded = await asyncio.wrap_future(embeddings.batcher.submit(job))
        return Response(await run_in_threadpool(render, job, embedded), media_type="application/json")

    @router.get("/models", summary="The served models, with their full and Matryoshka dimensions.")
    def list_models() -> dict:
        return embeddings.model_list()

    @router.get("/models/{model_id:path}", summary="One served model.")
    def retrieve_model(model_id: str) -> dict:
        return embeddings.describe(embeddings.find(model_id))

    app.include_router(router)
