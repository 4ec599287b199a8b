"""The embedded default store: a folder, memory-mapped, no server.

Layout::

    DB/current -> builds/<stamp>        (symlink, swapped atomically when a build completes)
    DB/builds/<stamp>/meta.json         IndexMeta
                     head.npy           n x head_dim, re-normalised, loaded into RAM (contiguous)
                     head_codes.npy     instead of head.npy for a binary head: n x head_dim/8 bytes of sign bits
                     full.npy           n x d unit vectors, memory-mapped; stages read only the rows they touch
                     head.hnsw          optional FAISS HNSW graph over the head
                     prefix_norms.npy   n x stages: each row's norm at the stage dims, in RAM, so that a
                                        re-ranking stage reads each candidate row once
                     ids.json, texts.jsonl

A build is written to ``builds/<stamp>.partial`` and renamed, then ``current`` is re-pointed with
``os.replace``; a build that fails or is killed leaves the previous index searchable and unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..funnel import head_candidates, stage_dims
from ..models import normalize
from .base import IndexMeta, StoreError, binary_codes, check_head_kind
from .memory import MemoryStore, make_head_index, prefix_norms


def norm_dims(full_dim: int) -> list[int]:
    """Stage dims below full that the default and autotuned schedules can use and that re-ranking
    reads in place (those that divide the full dim)."""
    dims = {dim for head in head_candidates(full_dim) for dim in stage_dims(full_dim, head)} - {full_dim}
    return sorted(dim for dim in dims if full_dim % dim == 0)


class LocalStore(MemoryStore):
    """A built index folder opened for search: head in RAM, full vectors memory-mapped."""

    kind = "local"

    def __init__(self, root: Path | str, *, head_index: str | None = None) -> None:
        self.root = Path(root)
        current = self.root / "current"
        if not current.exists():
            raise StoreError(f"{self.root} is not a matryoshka index folder (no 'current' build); run 'matryoshka index' first")
        self.path = current.resolve()
        meta = IndexMeta.from_json((self.path / "meta.json").read_text())
        built = meta.extra.get("head_index", "flat")
        check_head_kind(built, head_index, str(self.root))
        kind = head_index or built
        codes = np.load(self.path / "head_codes.npy") if kind == "binary" else None
        head = None if kind == "binary" else np.load(self.path / "head.npy")
        graph: str | object = kind
        if kind == "hnsw" and (self.path / "head.hnsw").exists():
            import faiss

            graph = faiss.read_index(str(self.path / "head.hnsw"))
        norms = {}
        if (self.path / "prefix_norms.npy").exists():  # builds made before it was kept have none
            table = np.load(self.path / "prefix_norms.npy")
            norms = {int(dim): np.ascontiguousarray(table[:, i]) for i, dim in enumerate(meta.extra.get("prefix_norm_dims", []))}
        super().__init__(np.load(self.path / "full.npy", mmap_mode="r"), meta.head_dim, head=head,
                         head_index=graph, meta=meta, prefix_norms=norms, head_codes=codes)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        if self._ids is None:
            self._ids = np.asarray(json.loads((self.path / "ids.json").read_text()), dtype=object)
        return self._ids[rows]

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        if self._texts is None:
            with open(self.path / "texts.jsonl", encoding="utf-8") as handle:
                self._texts = [json.loads(line) for line in handle]
        return super().texts_of(rows)

    def save_meta(self) -> None:
        """Rewrite meta.json atomically."""
        partial = self.path / "meta.json.partial"
        partial.write_text(self.meta.to_json())
        os.replace(partial, self.path / "meta.json")


class LocalBuilder:
    """Stages a build in ``builds/<stamp>.partial``; :meth:`commit` makes it the current index."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()) and not (root / "builds").is_dir():
            raise StoreError(f"{root} is not empty and is not a matryoshka index folder; refusing to write into it")
        self.root = root
        builds = root / "builds"
        builds.mkdir(parents=True, exist_ok=True)
        for stale in builds.glob("*.partial"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.partial = builds / f"{self.stamp}.partial"
        self.partial.mkdir()

    def full_array(self, count: int, dim: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.partial / "full.npy", mode="w+", dtype=np.float32, shape=(count, dim))

    def commit(self, full: np.ndarray, ids: Sequence[str], texts: Sequence[str], meta: IndexMeta,
               head_index: str = "flat", progress=None, head_source: np.ndarray | None = None) -> Path:
        """``head_source``: where the head prefix comes from when it is not ``full`` (an adapter's ``f(x)``)."""
        source = full if head_source is None else head_source
        if isinstance(full, np.memmap):
            full.flush()
        head = None
        if head_index == "binary":  # signs need no normalising
            np.save(self.partial / "head_codes.npy", binary_codes(source, meta.head_dim))
        else:
            head = normalize(np.asarray(source[:, : meta.head_dim]))
            np.save(self.partial / "head.npy", head)
        dims = norm_dims(full.shape[1])
        np.save(self.partial / "prefix_norms.npy", prefix_norms(full, dims) if dims else np.zeros((len(full), 0), np.float32))
        meta.extra["prefix_norm_dims"] = dims
        meta.extra["head_index"] = head_index
        if head_index == "hnsw":
            import faiss

            faiss.write_index(make_head_index(head, "hnsw"), str(self.partial / "head.hnsw"))
        (self.partial / "ids.json").write_text(json.dumps(list(ids)))
        with open(self.partial / "texts.jsonl", "w", encoding="utf-8") as handle:
            for text in texts:
                handle.write(json.dumps(text, ensure_ascii=False) + "\n")
        meta.created = time.strftime("%Y-%m-%dT%H:%M:%S")
        (self.partial / "meta.json").write_text(meta.to_json())
        final = self.partial.with_name(self.stamp)
        self.partial.rename(final)
        switch_current(self.root, final)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> None:
        """Nothing to release."""


def switch_current(root: Path, build: Path) -> None:
    """Atomically re-point ``root/current`` at ``build``, then remove the build it replaced."""
    previous = (root / "current").resolve() if (root / "current").exists() else None
    link = root / f".current.{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("builds") / build.name)
    os.replace(link, root / "current")
    if previous is not None and previous != build.resolve():
        shutil.rmtree(previous, ignore_errors=True)
