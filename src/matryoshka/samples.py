"""Query-like samples drawn from a corpus, for tuning and fitting when no real queries are given.

Autotune and adapter fitting both need queries. Whole documents used as queries would find
themselves and make every shortlist look long enough, so these samples are windows or
sentences of the corpus' own texts, encoded as queries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

AUTOTUNE_SAMPLE = 200
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def pseudo_queries(
    texts: Sequence[str], encoder, count: int = AUTOTUNE_SAMPLE, seed: int = 0, unit: str = "window"
) -> np.ndarray:
    """Query-like samples of ``texts`` (:func:`query_like_texts`), encoded as queries by ``encoder``."""
    return encoder.encode(query_like_texts(texts, count, seed, unit), kind="query")


def query_like_texts(
    texts: Sequence[str], count: int = AUTOTUNE_SAMPLE, seed: int = 0, unit: str = "window"
) -> list[str]:
    """``unit="window"`` (autotune): a random window of 4 to 12 words from random documents.
    ``unit="sentence"`` (adapter fitting): whole sentences of 5 to 40 words, which read like the
    claims and questions users type; a corpus with too few such sentences (titles, keywords)
    gets windows instead."""
    rng = np.random.default_rng(seed)
    samples = _sentences(texts, rng, count) if unit == "sentence" else []
    if len(samples) < min(count, len(texts)) // 4:
        samples = _windows(texts, rng, count)
    return samples


def _windows(texts: Sequence[str], rng: np.random.Generator, count: int) -> list[str]:
    windows = []
    for row in rng.choice(len(texts), size=min(count, len(texts)), replace=False):
        words = texts[row].split()
        width = int(rng.integers(4, 13))
        start = int(rng.integers(0, max(1, len(words) - width + 1)))
        windows.append(" ".join(words[start : start + width]) or texts[row])
    return windows


def _sentences(texts: Sequence[str], rng: np.random.Generator, count: int) -> list[str]:
    found = [s for text in texts for s in SENTENCE_END.split(text) if 5 <= len(s.split()) <= 40]
    if len(found) <= count:
        return found
    return [found[i] for i in rng.choice(len(found), size=count, replace=False)]
