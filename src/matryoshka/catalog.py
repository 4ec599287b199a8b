"""What is known about open and hosted Matryoshka models without loading them.

A model's own files do not always say what using it well needs: which prefix dims it was trained
at, which prompts it expects, whether it ships code, or a step its authors apply before truncating.
This catalog says it for a few well-known models, from their model cards, so that ``load_model``
can fill in what a model folder does not state and the index can default to trained prefixes.
Facts only: no loading, no network, no imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

_REMOTE_PREFIX = "openai:"  # how load_model names a model behind an OpenAI-compatible endpoint
PRE_TRUNCATION_STEPS = ("layer_norm",)  # steps a model may need on its full vectors before truncation


@dataclass(frozen=True)
class KnownModel:
    """One model's facts. ``matryoshka_dims``: the prefix dims it was trained at, largest first;
    ``pre_truncation``: a step on the full vectors before they are truncated (``"layer_norm"``);
    ``remote``: served by an OpenAI-compatible endpoint (``openai:NAME``), not loaded locally."""

    name: str
    aliases: tuple[str, ...] = ()
    full_dim: int = 0
    matryoshka_dims: tuple[int, ...] = ()
    query_prompt: str | None = None
    document_prompt: str | None = None
    trust_remote_code: bool = False
    pre_truncation: str | None = None
    remote: bool = False
    note: str = ""


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        "nomic-ai/nomic-embed-text-v1.5",
        aliases=("nomic-embed-text-v1.5", "nomic-embed-text"),
        full_dim=768,
        matryoshka_dims=(768, 512, 256, 128, 64),
        query_prompt="search_query: ",
        document_prompt="search_document: ",
        trust_remote_code=True,
        pre_truncation="layer_norm",
        note="its card truncates after a layer norm of the pooled vector; 8192 tokens",
    ),
    KnownModel(
        "Alibaba-NLP/gte-multilingual-base",
        aliases=("gte-multilingual-base",),
        full_dim=768,
        matryoshka_dims=(768, 512, 384, 256, 128),
        trust_remote_code=True,
        note="its card: elastic dense embeddings from 128 to 768 dims; 70+ languages",
    ),
    KnownModel(
        "mixedbread-ai/mxbai-embed-large-v1",
        aliases=("mxbai-embed-large-v1", "mxbai-embed-large"),
        full_dim=1024,
        matryoshka_dims=(1024, 512, 256, 128, 64),
        query_prompt="Represent this sentence for searching relevant passages: ",
        note="queries take the prompt, documents none; 512 tokens",
    ),
    KnownModel(
        "text-embedding-3-small",
        full_dim=1536,
        matryoshka_dims=(1536, 768, 512, 256),
        remote=True,
        note="OpenAI; shortened server-side with 'dimensions'",
    ),
    KnownModel(
        "text-embedding-3-large",
        full_dim=3072,
        matryoshka_dims=(3072, 1024, 256),
        remote=True,
        note="OpenAI; shortened server-side with 'dimensions'",
    ),
)


def _names(model: KnownModel) -> set[str]:
    names = {model.name, *model.aliases}
    return {n.lower() for n in names} | {n.rpartition("/")[2].lower() for n in names}


def find_known_model(name: str) -> KnownModel | None:
    """The catalog entry for ``name``: a hub name (``nomic-ai/nomic-embed-text-v1.5``), a short
    alias (``nomic-embed-text-v1.5``), either with ``openai:`` before it (an endpoint may serve an
    open model too), or a folder path ending in one of them; case does not matter. ``None`` when
    the model is not in the catalog."""
    key = name.strip().rstrip("/")
    if key.lower().startswith(_REMOTE_PREFIX):
        key = key[len(_REMOTE_PREFIX) :]
    key = key.lower()
    for model in KNOWN_MODELS:
        names = _names(model)
        if key in names or key.rpartition("/")[2] in names:
            return model
    return None
