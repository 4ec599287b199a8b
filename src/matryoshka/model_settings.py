"""What a model needs besides its weights: trained prefix dims, prompts, a step before truncation,
and whether it runs code of its own.

A sentence-transformers folder may state these in ``config_sentence_transformers.json``:

- ``prompts`` (sentence-transformers' own key): ``{"query": "...", "document": "..."}``;
- ``matryoshka_dims`` (the key ``matryoshka train`` writes): the prefix dims the model was trained
  at, e.g. ``[768, 512, 256, 128, 64]``; ``null`` says it was not Matryoshka-trained;
- ``pre_truncation``: a step on the full vectors before they are truncated, ``"layer_norm"`` (as
  nomic-embed-text-v1.5 needs) or ``null``.

What the folder does not state comes from :mod:`matryoshka.catalog` when the model is known there
(by the name given, the ``_name_or_path`` in its ``config.json``, or the folder's own name).
Nothing here loads a model or uses the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .catalog import PRE_TRUNCATION_STEPS, KnownModel, find_known_model
from .errors import ModelError

SETTINGS_FILE = "config_sentence_transformers.json"
DIMS_KEY = "matryoshka_dims"
PRE_TRUNCATION_KEY = "pre_truncation"
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # sentence-transformers' order for encode_document
_NOT_STATED = object()


@dataclass(frozen=True)
class ModelSettings:
    """The settings an encoder runs with; ``known``: the catalog entry that filled any gaps."""

    matryoshka_dims: tuple[int, ...] = ()
    pre_truncation: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    known: KnownModel | None = None


def read_json(path: Path) -> object:
    """A JSON file's content, or ``None`` when it is missing or not JSON (the loader says why later)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def folder_names(folder: Path) -> list[str]:
    """Names a folder may be known by: the hub name it was saved from, then its own name."""
    saved = _as_dict(read_json(folder / "config.json")).get("_name_or_path")
    return [name for name in (saved, folder.name) if isinstance(name, str) and name]


def code_it_ships(folder: Path) -> str | None:
    """What in ``folder`` is code that would run on loading (``None``: nothing): a transformers
    ``auto_map`` (modeling files beside the weights) or a sentence-transformers module of its own."""
    for file in ("config.json", "tokenizer_config.json"):
        if _as_dict(read_json(folder / file)).get("auto_map"):
            return f"{file} maps its classes to code in the folder (auto_map)"
    modules = read_json(folder / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        kind = _as_dict(module).get("type", "")
        if isinstance(kind, str) and kind and not kind.startswith("sentence_transformers."):
            return f"modules.json names a module of its own ({kind})"
    return None


def check_remote_code(name: str, folder: Path | None, trust_remote_code: bool) -> None:
    """Refuse, before anything is loaded, a model that would run its own code when the user has
    not said to trust it: a clear error instead of transformers' traceback (or its prompt)."""
    if trust_remote_code:
        return
    if folder is not None:
        why = code_it_ships(folder)
    else:  # a hub name: what the catalog knows, before anything is downloaded
        known = find_known_model(name)
        why = f"{known.name} ships its modeling code on the hub" if known and known.trust_remote_code else None
    if why is None:
        return
    raise ModelError(
        f"model {name!r} runs code of its own: {why}. Pass --trust-remote-code (trust_remote_code=True in "
        "Python) to run it, if you trust where the model comes from"
    )


def settings_config(source: Path | str) -> dict:
    """``config_sentence_transformers.json`` of a model folder, or of a hub model as cached by
    loading it (``{}`` when there is none)."""
    if isinstance(source, Path):
        return _as_dict(read_json(source / SETTINGS_FILE))
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, SETTINGS_FILE)
    except ValueError:  # not a repo id the cache knows how to hold
        return {}
    return _as_dict(read_json(Path(cached))) if isinstance(cached, str) else {}


def resolve_settings(
    config: Mapping, names: Sequence[str], full_dim: int, prompts: Mapping[str, str | None]
) -> ModelSettings:
    """The settings of a model whose ``config_sentence_transformers.json`` holds ``config``, known by
    ``names``, making ``full_dim``-dim vectors, with sentence-transformers' ``prompts``. A setting
    the folder states wins; the catalog fills the rest when it knows a model of that dimension."""
    known = next((m for m in map(find_known_model, names) if m is not None and m.full_dim == full_dim), None)
    dims = config.get(DIMS_KEY, _NOT_STATED)
    dims = (known.matryoshka_dims if known else ()) if dims is _NOT_STATED else _checked_dims(dims, full_dim)
    step = config.get(PRE_TRUNCATION_KEY, _NOT_STATED)
    step = (known.pre_truncation if known else None) if step is _NOT_STATED else step
    if step is not None and step not in PRE_TRUNCATION_STEPS:
        raise ModelError(
            f"{SETTINGS_FILE}: {PRE_TRUNCATION_KEY} {step!r} is not one of {', '.join(PRE_TRUNCATION_STEPS)} (or null)"
        )
    query = _declared(prompts, QUERY_PROMPT_NAMES) or (known.query_prompt if known else None)
    document = _declared(prompts, DOCUMENT_PROMPT_NAMES) or (known.document_prompt if known else None)
    return ModelSettings(tuple(dims), step, query, document, known)


def _declared(prompts: Mapping[str, str | None], names: Sequence[str]) -> str | None:
    """The first non-empty prompt of ``names``: sentence-transformers fills in empty ones for
    ``query`` and ``document``, which would hide a model's own ``passage`` prompt."""
    return next((prompts[n] for n in names if prompts.get(n)), None)


def _checked_dims(dims: object, full_dim: int) -> tuple[int, ...]:
    if dims is None:
        return ()
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ModelError(f"{SETTINGS_FILE}: {DIMS_KEY} must be a list of whole numbers, got {dims!r}")
    wrong = [d for d in dims if not 1 <= d <= full_dim]
    if wrong:
        raise ModelError(f"{SETTINGS_FILE}: {DIMS_KEY} {wrong} are outside 1..{full_dim} (the model's dimension)")
    return tuple(sorted(set(dims), reverse=True))
