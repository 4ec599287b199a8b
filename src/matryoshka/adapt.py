"""Post-hoc adapters that make a model's prefixes carry meaning (scikit-learn style).

An adapter maps full vectors to full vectors; its prefixes are then used for short searches.
Learned state lives in attributes ending with ``_`` and is saved as plain arrays (``.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NotFittedError(RuntimeError):
    """transform() was called before fit()."""


class PCAAdapter:
    """Rotate vectors onto the principal axes of a reference set (most variance first).

    The rotation is orthogonal and applied without centring, so full-dimension cosines are
    unchanged; only the order of information along the prefix changes.
    """

    kind = "pca"

    def fit(self, vectors: np.ndarray) -> "PCAAdapter":
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or len(vectors) < 2:
            raise ValueError(f"PCA needs at least 2 vectors in a 2-D array, got shape {vectors.shape}")
        self.mean_ = vectors.mean(axis=0)
        centred = vectors - self.mean_
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(vectors) - 1))
        order = np.argsort(eigenvalues)[::-1]
        self.explained_variance_ = eigenvalues[order]
        self.components_ = eigenvectors[:, order].astype(np.float32)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise NotFittedError("PCAAdapter.transform() called before fit()")
        return np.asarray(vectors, dtype=np.float32) @ self.components_

    def fit_transform(self, vectors: np.ndarray) -> np.ndarray:
        return self.fit(vectors).transform(vectors)

    def save(self, path: Path | str) -> None:
        np.savez(path, kind=self.kind, components_=self.components_, mean_=self.mean_,
                 explained_variance_=self.explained_variance_)

    @classmethod
    def load(cls, path: Path | str) -> "PCAAdapter":
        with np.load(path) as saved:
            adapter = cls()
            adapter.components_ = saved["components_"]
            adapter.mean_ = saved["mean_"]
            adapter.explained_variance_ = saved["explained_variance_"]
        return adapter
