"""What every benchmark reports alongside its figures."""

from __future__ import annotations

import os
import platform

import numpy as np


def machine() -> str:
    """CPU model, cores, RAM, OS and Python: the figures mean little without them."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GiB RAM, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def expand(vectors: np.ndarray, copies: int, jitter: float, seed: int = 0) -> np.ndarray:
    """The real vectors plus ``copies`` jittered copies of each (Gaussian noise scaled per dimension
    by the vectors' own standard deviation times ``jitter``), re-normalised: a larger corpus with
    the real one's geometry."""
    rng = np.random.default_rng(seed)
    scale = (vectors.std(axis=0) * jitter).astype(np.float32)
    parts = [vectors]
    for _ in range(copies):
        noisy = vectors + rng.standard_normal(vectors.shape, dtype=np.float32) * scale
        parts.append((noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
    return np.concatenate(parts)


def resident_mb(kind: str = "RssAnon") -> float:
    """This process's anonymous resident memory now (page cache of mapped files excluded), or
    with ``kind="RssFile"`` the mapped files' pages it holds."""
    for line in open("/proc/self/status"):
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_from_vectors(db, corpus: np.ndarray, tune_queries: np.ndarray, storage: str = "float32"):
    """A local index of ``corpus`` (ids "0", "1", …, no texts) with a binary head and the default
    recall levels, tuned on ``tune_queries``: (its metadata, seconds to build)."""
    import time

    from matryoshka.index import build_index

    started = time.perf_counter()
    meta = build_index(
        str(db),
        [str(i) for i in range(len(corpus))],
        [""] * len(corpus),
        vectors=corpus,
        tune_queries=tune_queries,
        head_index="binary",
        storage=storage,
    )
    return meta, time.perf_counter() - started
