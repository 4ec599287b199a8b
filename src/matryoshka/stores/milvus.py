"""Milvus as the scale-out store: a Milvus Lite file (``*.db``) or a server/cluster URI.

One index is a generation of two collections, because Milvus 2.3 allows one vector field per
collection: ``<name>_<gen>_head`` (row id + head vector, searched by Milvus; for a binary head a
``BINARY_VECTOR`` of sign bits searched by Hamming distance) and
``<name>_<gen>_full`` (row id, document id, text, full vector; fetched by id for re-ranking).
A small pointer collection ``<name>_meta`` holds the current generation and the IndexMeta. A
build writes a new generation and then upserts the pointer, so a build that fails or is killed
leaves the previous generation answering; old generations are dropped after the switch.
Aliases and renames would be the natural tools, but Milvus Lite does not implement them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..metrics import top_k
from ..rescore import rerank
from ..vectors import binary_codes, hamming_similarity, normalize
from .base import IndexMeta, check_head_kind

DEFAULT_COLLECTION = "matryoshka"
INSERT_BATCH = 1000
GET_BATCH = 2000
MAX_TEXT_BYTES = 60_000
MAX_TOPK = 16_384
CONNECT_TIMEOUT_S = 10


# Open clients per URI in this process. pymilvus shares one connection among the clients of a URI,
# and closing any of them closes it for all; so the last one out closes it (and stops a Lite file's server).
_CLIENTS: dict[str, int] = {}
_CLIENTS_LOCK = threading.Lock()


def connect(uri: str, *, create: bool = True):
    """A MilvusClient, or a StoreError that says whether the file or the server is the problem.
    A Milvus Lite file that does not exist is created only when ``create`` (a build) asks for it,
    and a file that is not Milvus Lite's is never opened: Lite would add its tables to it."""
    from pymilvus import MilvusClient

    if uri.endswith(".db"):
        path = Path(uri)
        if not path.parent.exists():
            raise StoreError(f"{uri}: folder {path.parent} does not exist")
        if path.exists():
            check_lite_file(path)
        elif not create:
            raise StoreError(f"{uri}: no such Milvus Lite file; build an index there with 'matryoshka index' first")
    try:
        client = MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # pymilvus raises several unrelated types here
        what = "open the Milvus Lite file" if uri.endswith(".db") else "reach the Milvus server"
        raise StoreError(f"could not {what} at {uri}: {exc}") from exc
    with _CLIENTS_LOCK:
        _CLIENTS[_key(uri)] = _CLIENTS.get(_key(uri), 0) + 1
    return client


def disconnect(client, uri: str) -> None:
    """Once no other client of this process uses the URI, close the connection and, for Milvus
    Lite, stop the file's server so another process may open it."""
    key = _key(uri)
    with _CLIENTS_LOCK:
        _CLIENTS[key] = _CLIENTS.get(key, 1) - 1
        if _CLIENTS[key] > 0:
            return
        del _CLIENTS[key]
    client.close()
    if uri.endswith(".db"):
        from milvus_lite.server_manager import server_manager_instance

        if key in server_manager_instance._servers:
            server_manager_instance.release_server(uri)


def _key(uri: str) -> str:
    return str(Path(uri).absolute().resolve()) if uri.endswith(".db") else uri


def check_lite_file(path: Path) -> None:
    """Milvus Lite keeps its data in an SQLite file with a ``collection_meta`` table; anything else
    (an empty file aside) is someone else's file and is refused, read-only."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder; a Milvus Lite index is a file ending in .db")
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise StoreError(f"{path} exists but is not a Milvus Lite file")
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
            tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is an SQLite file that cannot be read ({exc})") from None
    if "collection_meta" not in tables:
        raise StoreError(
            f"{path} is an SQLite database but not a Milvus Lite file (its tables: "
            f"{', '.join(sorted(tables)) or 'none'}); refusing to write into it"
        )


def _meta_name(collection: str) -> str:
    return f"{collection}_meta"


def _names(collection: str, generation: str) -> tuple[str, str]:
    return f"{collection}_{generation}_head", f"{collection}_{generation}_full"


def _read_pointer(client, collection: str) -> tuple[str, IndexMeta] | None:
    name = _meta_name(collection)
    if not client.has_collection(name):
        return None
    client.load_collection(name)
    rows = client.get(name, ids=["current"], output_fields=["value"])
    if not rows:
        return None
    value = json.loads(rows[0]["value"])
    return value["generation"], IndexMeta.from_dict(value["meta"], f"index {collection!r}")


def _write_pointer(client, collection: str, generation: str, meta: IndexMeta) -> None:
    from pymilvus import DataType, MilvusClient

    name = _meta_name(collection)
    if not client.has_collection(name):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("value", DataType.VARCHAR, max_length=65_535)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 needs one vector field
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        client.create_collection(name, schema=schema, index_params=index)
    value = json.dumps({"generation": generation, "meta": meta.to_dict()})
    client.upsert(name, [{"key": "current", "value": value, "vector": [0.0, 0.0]}])
    client.flush(name)


class MilvusStore:
    """An index in Milvus opened for search; follows the funnel protocol."""

    kind = "milvus"

    def __init__(self, uri: str, *, collection: str = DEFAULT_COLLECTION, head_index: str | None = None) -> None:
        self.uri, self.collection = uri, collection
        self.client = connect(uri, create=False)
        try:
            self._open(head_index)
        except BaseException:
            disconnect(self.client, uri)
            raise
        self._cache: dict[int, np.ndarray] = {}

    def _open(self, head_index: str | None) -> None:
        pointer = _read_pointer(self.client, self.collection)
        if pointer is None:
            raise StoreError(
                f"no matryoshka index {self.collection!r} at {self.uri}; run 'matryoshka index --db {self.uri}' first"
            )
        self.generation, self.meta = pointer
        self.full_dim, self.head_dim = self.meta.full_dim, self.meta.head_dim
        self.binary_head = self.meta.binary_head
        check_head_kind(self.meta.head_index, head_index, f"index {self.collection!r} at {self.uri}")
        self.head_name, self.full_name = _names(self.collection, self.generation)
        for name in (self.head_name, self.full_name):
            self.client.load_collection(name)

    def __len__(self) -> int:
        return self.meta.count

    def head_search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > MAX_TOPK:
            raise StoreError(f"Milvus returns at most {MAX_TOPK} results per search; shortlist {n} is too long")
        self._cache = {}
        if queries.shape[1] != self.head_dim:
            raise StoreError(
                f"this Milvus index searches a {self.head_dim}-dim head; the schedule's first stage "
                f"must use {self.head_dim} dims, not {queries.shape[1]}"
            )
        if self.binary_head:
            distances, rows = self._search(
                self.head_name, [bytes(c) for c in binary_codes(queries, self.head_dim)], n, "HAMMING"
            )
            return hamming_similarity(distances, self.head_dim), rows
        return self._search(self.head_name, np.asarray(queries, np.float32).tolist(), n)

    def _search(self, name: str, data: list, n: int, metric: str = "IP") -> tuple[np.ndarray, np.ndarray]:
        answers = self.client.search(name, data=data, limit=n, output_fields=[], search_params={"metric_type": metric})
        width = max((len(a) for a in answers), default=0)
        scores = np.full((len(answers), width), -np.inf, np.float32)
        rows = np.zeros((len(answers), width), np.int64)
        for i, answer in enumerate(answers):
            rows[i, : len(answer)] = [hit["id"] for hit in answer]
            scores[i, : len(answer)] = [hit["distance"] for hit in answer]
            rows[i, len(answer) :] = rows[i, 0] if len(answer) else 0
        return scores, rows

    def gather(self, rows: np.ndarray, dim: int) -> np.ndarray:
        """Full vectors fetched by id in one call per 2,000 ids (only the vector field), cached for
        the later stages of the same batch, which re-rank subsets of the same shortlist."""
        missing = [int(r) for r in np.unique(rows) if int(r) not in self._cache]
        for row, hit in self._fetch(missing, ["vector"]).items():
            self._cache[row] = np.asarray(hit["vector"], dtype=np.float32)
        flat = np.stack([self._cache[int(r)][:dim] for r in rows.ravel()])
        return flat.reshape(*rows.shape, dim)

    def rescore(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Prefix cosines of each query with its candidates, from the fetched vectors."""
        return rerank(self.gather(rows, queries.shape[1]), queries)

    def scores_in_place(self, dim: int) -> bool:
        return False

    def exact_search(self, queries: np.ndarray, k: int, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact search by Milvus over the full vectors, or over re-normalised ``dim`` prefixes.

        Milvus cannot re-normalise a prefix, so a prefix search reads every vector (in blocks of
        ``GET_BATCH`` ids) and scores it here: O(corpus), meant for looking at one dimension's
        results (the web page's slider), not for serving large corpora.
        """
        if dim is None or dim == self.full_dim:
            return self._search(self.full_name, np.asarray(queries, np.float32).tolist(), k)
        queries = np.asarray(queries, np.float32)
        scores = np.empty((len(queries), len(self)), np.float32)
        for start in range(0, len(self), GET_BATCH):
            stop = min(start + GET_BATCH, len(self))
            block = np.zeros((stop - start, dim), np.float32)
            for row, hit in self._fetch(range(start, stop), ["vector"]).items():
                block[row - start] = np.asarray(hit["vector"][:dim], np.float32)
            scores[:, start:stop] = queries @ normalize(block).T
        rows = top_k(scores, k)
        return np.take_along_axis(scores, rows, axis=1), rows

    def _fetch(self, rows, fields: list[str]) -> dict[int, dict]:
        """Rows of the full collection by id, one ``get`` per ``GET_BATCH`` ids, only ``fields``."""
        wanted = [int(r) for r in rows]
        found: dict[int, dict] = {}
        for start in range(0, len(wanted), GET_BATCH):
            for hit in self.client.get(self.full_name, ids=wanted[start : start + GET_BATCH], output_fields=fields):
                found[int(hit["row"])] = hit
        return found

    def _documents(self, rows: np.ndarray) -> dict[int, dict]:
        return self._fetch(np.unique(rows), ["doc_id", "text"])

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        documents = self._documents(rows)
        return np.vectorize(lambda r: documents[int(r)]["doc_id"], otypes=[object])(rows)

    def texts_of(self, rows: np.ndarray) -> list[list[str]]:
        rows = np.atleast_2d(rows)
        documents = self._documents(rows)
        return [[documents[int(r)]["text"] for r in row] for row in rows]

    def memory_bytes(self) -> int:
        return 0  # held by the Milvus process, not ours

    def is_current(self) -> bool:
        pointer = _read_pointer(self.client, self.collection)
        return pointer is not None and pointer[0] == self.generation

    def close(self) -> None:
        """Release the connection (a Milvus Lite file admits one process at a time)."""
        disconnect(self.client, self.uri)


class MilvusBuilder:
    """Stages vectors in a temporary memory map, then writes a new generation and switches to it."""

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION) -> None:
        self.uri, self.collection = uri, collection
        self.client = connect(uri)
        self.generation = "g" + time.strftime("%Y%m%d%H%M%S") + f"{int(time.time() * 1000) % 1000:03d}"
        self.staging = Path(tempfile.mkdtemp(prefix="matryoshka-milvus-"))
        self.created: list[str] = []

    def full_array(self, count: int, dim: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.staging / "full.npy", mode="w+", dtype=np.float32, shape=(count, dim))

    def commit(
        self,
        full: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str],
        meta: IndexMeta,
        progress=None,
        head_source: np.ndarray | None = None,
    ) -> IndexMeta:
        """Write a new generation and switch the pointer to it; returns the metadata as stored.
        ``head_source``: where the head prefix comes from when it is not ``full`` (an adapter's ``f(x)``)."""
        from pymilvus import DataType, MilvusClient

        head_index = meta.head_index
        head_name, full_name = _names(self.collection, self.generation)
        head_schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        head_schema.add_field("row", DataType.INT64, is_primary=True)
        binary = head_index == "binary"
        head_schema.add_field("vector", DataType.BINARY_VECTOR if binary else DataType.FLOAT_VECTOR, dim=meta.head_dim)
        full_schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        full_schema.add_field("row", DataType.INT64, is_primary=True)
        full_schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        full_schema.add_field("text", DataType.VARCHAR, max_length=65_535)
        full_schema.add_field("vector", DataType.FLOAT_VECTOR, dim=meta.full_dim)
        for name, schema, kind in ((head_name, head_schema, head_index), (full_name, full_schema, "flat")):
            index = self.client.prepare_index_params()
            if kind == "binary":
                index.add_index(field_name="vector", index_type="BIN_FLAT", metric_type="HAMMING")
            elif kind == "hnsw" and not self.uri.endswith(".db"):
                index.add_index(
                    field_name="vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 80}
                )
            else:
                index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            self.client.create_collection(name, schema=schema, index_params=index)
            self.created.append(name)
        for start in range(0, len(ids), INSERT_BATCH):
            stop = min(start + INSERT_BATCH, len(ids))
            block = np.asarray(full[start:stop])
            source = block if head_source is None else np.asarray(head_source[start:stop])
            if binary:
                heads = [bytes(code) for code in binary_codes(source, meta.head_dim)]
            else:
                heads = normalize(source[:, : meta.head_dim]).tolist()
            self.client.insert(head_name, [{"row": r, "vector": heads[r - start]} for r in range(start, stop)])
            self.client.insert(
                full_name,
                [
                    {
                        "row": r,
                        "doc_id": str(ids[r])[:1024],
                        "text": _clip(texts[r]),
                        "vector": block[r - start].tolist(),
                    }
                    for r in range(start, stop)
                ],
            )
            if progress:
                progress(stop - start)
        for name in (head_name, full_name):
            self.client.flush(name)
            self.client.load_collection(name)
        meta = replace(meta, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_pointer(self.client, self.collection, self.generation, meta)
        self.created = []
        self._drop_other_generations(keep=self.generation)
        shutil.rmtree(self.staging, ignore_errors=True)
        return meta

    def _drop_other_generations(self, keep: str) -> None:
        prefix = f"{self.collection}_g"
        for name in self.client.list_collections():
            if name.startswith(prefix) and not name.startswith(f"{self.collection}_{keep}_"):
                self.client.drop_collection(name)

    def close(self) -> None:
        disconnect(self.client, self.uri)

    def abort(self) -> None:
        for name in self.created:
            try:
                self.client.drop_collection(name)
            except Exception:
                pass
        shutil.rmtree(self.staging, ignore_errors=True)


def _clip(text: str) -> str:
    """Milvus VARCHAR holds at most 65,535 bytes; keep whole characters under that."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_TEXT_BYTES else data[:MAX_TEXT_BYTES].decode("utf-8", "ignore")
