"""Query-like samples drawn from a corpus, for tuning and fitting when no real queries are given.

Autotune and adapter fitting both need queries. Whole documents used as queries would find
themselves and make every shortlist look long enough, so these samples are windows or
sentences of the corpus' own texts, encoded as queries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

AUTOTUNE_SAMPLE = 600
WORD = re.compile(r"[^\W\d_][\w'-]{2,}")  # a word of three characters or more, starting with a letter
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def pseudo_queries(
    texts: Sequence[str], encoder, count: int = AUTOTUNE_SAMPLE, seed: int = 0, unit: str = "window"
) -> np.ndarray:
    """Query-like samples of ``texts`` (:func:`query_like_texts`), encoded as queries by ``encoder``."""
    return encoder.encode(query_like_texts(texts, count, seed, unit), kind="query")


def tuning_texts(texts: Sequence[str], count: int = AUTOTUNE_SAMPLE, seed: int = 0) -> tuple[list[str], list[str]]:
    """Queries of three kinds for autotune, a third each, and the kind of each: ``word`` (single
    words drawn evenly from the corpus' vocabulary, so mostly rare ones, like a dictionary
    lookup), ``short`` (windows of 2 or 3 words) and ``long`` (windows of 4 to 12 words). Short
    and unusual queries are the hardest for a funnel's head; autotune makes each kind reach the
    target on its own."""
    rng = np.random.default_rng(seed)
    per_kind = max(1, count // 3)
    vocabulary = sorted({word for text in texts for word in WORD.findall(text)})
    words = [vocabulary[i] for i in rng.choice(len(vocabulary), size=min(per_kind, len(vocabulary)), replace=False)]
    short = _windows(texts, rng, per_kind, 2, 3)
    long = _windows(texts, rng, per_kind, 4, 12)
    return words + short + long, ["word"] * len(words) + ["short"] * len(short) + ["long"] * len(long)


def query_like_texts(
    texts: Sequence[str], count: int = AUTOTUNE_SAMPLE, seed: int = 0, unit: str = "window"
) -> list[str]:
    """``unit="window"``: a random window of 4 to 12 words from random documents.
    ``unit="sentence"`` (adapter fitting): whole sentences of 5 to 40 words, which read like the
    claims and questions users type; a corpus with too few such sentences (titles, keywords)
    gets windows instead."""
    rng = np.random.default_rng(seed)
    if unit == "sentence":
        samples = _sentences(texts, rng, count)
        if len(samples) >= max(1, min(count, len(texts)) // 4):
            return samples
    return _windows(texts, rng, count)


def _windows(texts: Sequence[str], rng: np.random.Generator, count: int, low: int = 4, high: int = 12) -> list[str]:
    windows = []
    for row in rng.choice(len(texts), size=min(count, len(texts)), replace=False):
        words = texts[row].split()
        width = int(rng.integers(low, high + 1))
        start = int(rng.integers(0, max(1, len(words) - width + 1)))
        windows.append(" ".join(words[start : start + width]) or texts[row])
    return windows


def _sentences(texts: Sequence[str], rng: np.random.Generator, count: int) -> list[str]:
    found = [s for text in texts for s in SENTENCE_END.split(text) if 5 <= len(s.split()) <= 40]
    if len(found) <= count:
        return found
    return [found[i] for i in rng.choice(len(found), size=count, replace=False)]
