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
