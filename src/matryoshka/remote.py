"""An OpenAI-compatible embeddings endpoint as the model: OpenAI's text-embedding-3, or any
server that copied its API (Hugging Face TEI, vLLM, Infinity, Ollama, ``matryoshka serve``).

Requests go through the official ``openai`` client, which retries 408/409/429/5xx and lost
connections with exponential backoff and honours ``Retry-After``. Texts are sent in batches
that keep within the endpoint's count and token limits, a few at once. Full vectors are asked
for unless the user names ``dimensions``: the funnel slices them itself. Every answer is checked
(count, order, dimension, finite numbers) before it is used or cached, and documents already in
the embedding cache are never sent again.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .catalog import find_known_model
from .embedding_cache import EmbeddingCache
from .errors import EndpointError, ModelError
from .text_checks import check_texts
from .vectors import PRE_TRUNCATION, check_dim, truncate

OPENAI_API_BASE = "https://api.openai.com/v1"
MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's limit on inputs per request
MAX_TOKENS_PER_REQUEST = 300_000  # OpenAI's limit on tokens per request, summed over its inputs
DEFAULT_BATCH_SIZE = 256  # texts per request: large enough to amortise a round trip, small enough to retry cheaply
BYTES_PER_TOKEN_ESTIMATE = (
    3  # UTF-8 bytes per token, on the low side (English averages about 4), so batches stay under the token limit
)
MAX_BATCH_BYTES = 600_000  # of a request's texts as JSON: under the 1 MB bodies servers take by default (matryoshka serve's, TEI's 2 MB)
PLACEHOLDER_KEY = "no-key"  # servers that ask for no key still need the client to send one

# Settings a user tunes through the environment (the flags stay few): defaults, names
ENVIRONMENT = {
    "timeout": ("MATRYOSHKA_API_TIMEOUT", 60.0),  # seconds per request
    "max_retries": ("MATRYOSHKA_API_RETRIES", 5),  # after the first try
    "concurrency": ("MATRYOSHKA_API_CONCURRENCY", 4),  # requests in flight
    "max_batch_tokens": ("MATRYOSHKA_API_MAX_BATCH_TOKENS", MAX_TOKENS_PER_REQUEST),
}


def resolve_api_base(api_base: str | None) -> str:
    """``api_base``, else ``OPENAI_BASE_URL``, else OpenAI's own; checked to be an http(s) URL."""
    base = (api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE).strip().rstrip("/")
    example = "an http(s) URL such as http://localhost:8000/v1"
    try:
        parsed = urlparse(base)
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise ModelError(f"--api-base {base!r} is not {example} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ModelError(f"--api-base {base!r} is not {example}")
    if parsed.username or parsed.password:
        raise ModelError(
            "--api-base holds a user name or password, which an index would record: give the key in OPENAI_API_KEY"
        )
    return base


def _setting(name: str, given: float | int | None) -> float | int:
    variable, default = ENVIRONMENT[name]
    if given is not None:
        return given
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = type(default)(text)
    except ValueError:
        raise ModelError(
            f"{variable}={text!r} is not a {'number' if isinstance(default, float) else 'whole number'}"
        ) from None
    if not math.isfinite(value) or value < (0 if name == "max_retries" else 1e-3):
        raise ModelError(f"{variable}={text!r} is too small")
    return value


@dataclass
class RemoteEncoder:
    """Vectors from an endpoint; ``texts_sent`` counts the texts paid for by this object."""

    client: object  # openai.OpenAI
    model: str
    api_base: str
    full_dim: int
    dimensions: int | None = None  # sent with every request when the user asked for it
    matryoshka_dims: tuple[int, ...] = ()
    query_prompt: str | None = None
    document_prompt: str | None = None
    cache: EmbeddingCache | None = None
    pre_truncation: str | None = None  # a known model's step on its full vectors (nomic's layer norm)
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int = MAX_TOKENS_PER_REQUEST
    concurrency: int = 4
    texts_sent: int = field(default=0, init=False)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def encode_chunk(self) -> int:
        """Texts per call that keep every request slot busy (``build_index`` encodes in such chunks)."""
        return self.batch_size * self.concurrency

    @property
    def options(self) -> dict:
        """What an index records to reach this endpoint again (never the key)."""
        return {"api_base": self.api_base, **({"dimensions": self.dimensions} if self.dimensions else {})}

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: str | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Unit rows, one per text. Documents found in the cache are not sent; queries are not
        cached (a server would otherwise store every query it is asked)."""
        texts = check_texts(texts)
        if dim is not None:
            check_dim(dim, self.full_dim)
        prompt = {"query": self.query_prompt, "document": self.document_prompt}.get(kind or "")
        sent = [prompt + text for text in texts] if prompt else texts
        full = np.empty((len(sent), self.full_dim), np.float32)
        cache = self.cache if kind != "query" else None
        missing = list(range(len(sent)))
        if cache is not None and sent:
            stored = cache.get_many(sent)
            missing = [i for i, vector in enumerate(stored) if vector is None or len(vector) != self.full_dim]
            for i, vector in enumerate(stored):
                if vector is not None and len(vector) == self.full_dim:
                    full[i] = vector
            if progress and len(sent) > len(missing):
                progress(len(sent) - len(missing))
        if missing:
            wanted = Counter(sent[i] for i in missing)  # a text given twice is sent once
            received = self._fetch(list(wanted), batch_size or self.batch_size, cache, wanted, progress)
            for i in missing:
                full[i] = received[sent[i]]
        if self.pre_truncation:
            full = PRE_TRUNCATION[self.pre_truncation](full)
        return truncate(full, dim)

    def _fetch(
        self,
        texts: list[str],
        batch_size: int,
        cache: EmbeddingCache | None,
        positions: Counter,
        progress: Callable[[int], None] | None,
    ) -> dict[str, np.ndarray]:
        """Send ``texts`` in batches, a few at once. Each answered batch is cached as it arrives,
        so a failure later (or a kill) loses none that was paid for; the first failure (or Ctrl-C)
        stops new requests and is raised once those in flight are answered and kept (a second
        Ctrl-C does not wait)."""
        batches = plan_batches(texts, min(batch_size, MAX_INPUTS_PER_REQUEST), self.max_batch_tokens)
        received: dict[str, np.ndarray] = {}
        failure: BaseException | None = None
        interrupted = False
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            pending: dict[Future, list[str]] = {}
            queue = list(enumerate(batches))
            while (queue and failure is None) or pending:
                while queue and failure is None and len(pending) < self.concurrency:
                    number, batch = queue.pop(0)
                    pending[pool.submit(self._request, batch, number, len(batches))] = batch
                try:
                    done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                except KeyboardInterrupt as exc:  # the first Ctrl-C: no new requests, keep the answers paid for
                    if interrupted:
                        raise
                    interrupted, failure = True, failure or exc
                    continue
                for future in done:
                    batch = pending.pop(future)
                    try:
                        vectors = future.result()
                    except BaseException as exc:
                        failure = failure or exc
                        continue
                    if cache is not None:
                        cache.put_many(batch, vectors)
                    received.update(zip(batch, vectors))
                    self.texts_sent += len(batch)
                    if progress:
                        progress(sum(positions[text] for text in batch))
        if failure is not None:
            raise failure
        return received

    def _request(self, batch: list[str], number: int, batches: int) -> np.ndarray:
        where = f"{self.api_base} (model {self.model!r}, batch {number + 1} of {batches}, {len(batch)} texts)"
        return self._vectors(self._create(batch, where), len(batch), where)

    def _create(self, batch: list[str], where: str) -> object:
        """The endpoint's answer to ``batch``, or an error naming ``where`` and what went wrong."""
        import openai

        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            response = self.client.embeddings.create(model=self.model, input=batch, encoding_format="base64", **extra)
        except openai.AuthenticationError as exc:
            raise EndpointError(
                f"{where}: the endpoint refused the API key (401); set OPENAI_API_KEY: {_said(exc)}"
            ) from None
        except openai.APITimeoutError:
            raise EndpointError(
                f"{where}: no answer within {self.client.timeout}s, also after {self.client.max_retries} retries "
                "(MATRYOSHKA_API_TIMEOUT and MATRYOSHKA_API_RETRIES set these)"
            ) from None
        except openai.APIConnectionError as exc:
            raise EndpointError(f"{where}: cannot connect ({exc.__cause__ or exc})") from None
        except openai.APIStatusError as exc:
            raise EndpointError(f"{where}: HTTP {exc.status_code}: {_said(exc)}") from None
        except (openai.APIResponseValidationError, ValueError, TypeError) as exc:
            raise EndpointError(f"{where}: the answer is not an embeddings response ({_short(str(exc))})") from None
        return response

    def _vectors(self, response: object, count: int, where: str) -> np.ndarray:
        data = getattr(response, "data", None)
        if not isinstance(data, list):
            raise EndpointError(f"{where}: the answer is not an embeddings response ({_short(repr(response))})")
        if len(data) != count:
            raise EndpointError(f"{where}: the endpoint returned {len(data)} vectors for {count} texts")
        indexes = [getattr(item, "index", i) for i, item in enumerate(data)]
        if sorted(indexes) != list(range(count)):
            raise EndpointError(f"{where}: the answer's indexes are not 0..{count - 1}")
        rows = np.empty((count, self.full_dim), np.float32)
        for row, i in enumerate(np.argsort(indexes)):
            vector = _decode(data[i].embedding, where)
            if vector.shape != (self.full_dim,):
                raise EndpointError(
                    f"{where}: the endpoint returned a {vector.size}-dim vector where {self.full_dim} dims were expected"
                )
            rows[row] = vector
        if not np.isfinite(rows).all():
            raise EndpointError(f"{where}: the endpoint returned vectors holding NaN or infinity")
        if not np.any(rows, axis=1).all():
            raise EndpointError(f"{where}: the endpoint returned an all-zero vector")
        return rows


def _decode(embedding: object, where: str) -> np.ndarray:
    if isinstance(embedding, str):  # base64 of little-endian float32, as asked
        try:
            raw = base64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError):
            raise EndpointError(f"{where}: an embedding is neither a list of numbers nor base64") from None
        if len(raw) % 4:
            raise EndpointError(f"{where}: a base64 embedding is {len(raw)} bytes, not whole float32 numbers")
        return np.frombuffer(raw, "<f4").astype(np.float32)
    try:  # a server that ignores encoding_format answers with numbers
        return np.asarray(embedding, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise EndpointError(f"{where}: an embedding is neither a list of numbers nor base64") from None


def _said(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return _short(str(message or exc))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def estimated_tokens(text: str) -> int:
    """An upper-leaning guess of a text's tokens without the endpoint's tokenizer."""
    return len(text.encode("utf-8")) // BYTES_PER_TOKEN_ESTIMATE + 1


def plan_batches(
    texts: Sequence[str], max_count: int, max_tokens: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[str]]:
    """Consecutive batches of at most ``max_count`` texts, ``max_tokens`` estimated tokens and
    ``max_bytes`` of JSON (a single text over a limit goes alone: the endpoint judges it)."""
    batches: list[list[str]] = []
    current: list[str] = []
    tokens = size = 0
    for text in texts:
        cost, length = estimated_tokens(text), len(json.dumps(text)) + 2
        if current and (len(current) >= max_count or tokens + cost > max_tokens or size + length > max_bytes):
            batches.append(current)
            current, tokens, size = [], 0, 0
        current.append(text)
        tokens += cost
        size += length
    if current:
        batches.append(current)
    return batches


def load_remote_model(
    model: str,
    *,
    api_base: str | None = None,
    dimensions: int | None = None,
    cache: str | Path | None = None,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    concurrency: int | None = None,
    max_batch_tokens: int | None = None,
    full_dim: int | None = None,
) -> RemoteEncoder:
    """An encoder for ``model`` at an OpenAI-compatible endpoint. Its full dimension comes from
    ``dimensions``, the catalog of known models, the endpoint's ``/models`` entry (``matryoshka
    serve`` states it) or, failing those, one probe request; ``full_dim`` (an index's, checked
    against every answer) saves that request."""
    import openai

    if not model.strip():
        raise ModelError("openai:NAME needs a model name after 'openai:', e.g. openai:text-embedding-3-small")
    base = resolve_api_base(api_base)
    key = os.environ.get("OPENAI_API_KEY")
    if not key and urlparse(base).hostname == urlparse(OPENAI_API_BASE).hostname:
        raise ModelError(f"{base} needs an API key: set OPENAI_API_KEY")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ModelError(f"--dimensions must be a whole number of at least 1, got {dimensions!r}")
    client = openai.OpenAI(
        api_key=key or PLACEHOLDER_KEY,
        base_url=base,
        timeout=float(_setting("timeout", timeout)),
        max_retries=int(_setting("max_retries", max_retries)),
    )
    known = find_known_model(f"openai:{model}") or find_known_model(model)
    trained = tuple(known.matryoshka_dims) if known else ()
    full_dim = dimensions or full_dim or (known.full_dim if known else None)
    if full_dim is None or not trained:  # a GET, not a paid request, where the endpoint lists its models
        served_dim, served_trained = _served_dims(client, model)
        full_dim, trained = full_dim or served_dim, trained or served_trained
    encoder = RemoteEncoder(
        client=client,
        model=model,
        api_base=base,
        full_dim=full_dim or 1,
        dimensions=dimensions,
        matryoshka_dims=tuple(d for d in trained if d <= (full_dim or 0)),
        pre_truncation=known.pre_truncation if known and dimensions is None else None,  # on full vectors only
        query_prompt=query_prompt if query_prompt is not None else (known.query_prompt if known else None),
        document_prompt=document_prompt if document_prompt is not None else (known.document_prompt if known else None),
        max_batch_tokens=int(_setting("max_batch_tokens", max_batch_tokens)),
        concurrency=int(_setting("concurrency", concurrency)),
    )
    if not full_dim:  # one probe: the endpoint's answer says its dimension
        encoder.full_dim = _probe_dim(encoder)
    if cache is not None:
        scope = "\0".join([base, model, str(dimensions or "")])
        encoder.cache = EmbeddingCache(cache, scope)
    return encoder


def _served_dims(client, model: str) -> tuple[int | None, tuple[int, ...]]:
    """The full and Matryoshka dims an endpoint's ``/models/{model}`` states, where it does
    (``matryoshka serve`` does; OpenAI does not)."""
    import openai

    try:
        entry = client.models.retrieve(model)
    except (openai.OpenAIError, ValueError, TypeError):
        return None, ()
    extra = getattr(entry, "model_extra", None) or {}
    full = extra.get("dimensions")
    trained = extra.get("matryoshka_dimensions") or ()
    if not isinstance(full, int) or isinstance(full, bool) or full < 1:
        return None, ()
    return full, tuple(d for d in trained if isinstance(d, int) and not isinstance(d, bool) and 0 < d <= full)


def _probe_dim(encoder: RemoteEncoder) -> int:
    """Send one short text and read the dimension of the answer."""
    where = f"{encoder.api_base} (model {encoder.model!r}, a probe for its dimension)"
    data = getattr(encoder._create(["dimension probe"], where), "data", None)
    if not isinstance(data, list) or len(data) != 1:
        raise EndpointError(f"{where}: the answer is not an embeddings response")
    dim = _decode(data[0].embedding, where).size
    if dim < 1:
        raise EndpointError(f"{where}: the endpoint returned an empty vector")
    return dim
