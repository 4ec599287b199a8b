"""The connection to Milvus: opening a Lite file or a server safely, and searches whose results
come back as arrays.

``MilvusClient.search`` turns every hit into a Python dict; a funnel's head asks for thousands of
hits per query, and building those dicts cost more than the search itself. :func:`search` sends
the same request through the client's own connection and reads the ids, scores and asked-for
fields straight from the response. It uses pymilvus's request builder (``Prepare``) and its gRPC
stub; the project pins pymilvus, and the tests run every path on Milvus Lite and a server.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError

CONNECT_TIMEOUT_S = 10
SEARCH_TIMEOUT_S = 60

# Open clients per URI in this process. pymilvus shares one connection among the clients of a URI,
# and closing any of them closes it for all; so the last one out closes it (and stops a Lite file's server).
_CLIENTS: dict[str, int] = {}
_CLIENTS_LOCK = threading.Lock()


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def connect(uri: str, *, create: bool = True):
    """A MilvusClient, or a StoreError that says whether the file or the server is the problem.
    A Milvus Lite file that does not exist is created only when ``create`` (a build) asks for it,
    and a file that is not Milvus Lite's is never opened: Lite would add its tables to it."""
    from pymilvus import MilvusClient

    if is_lite(uri):
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
        what = "open the Milvus Lite file" if is_lite(uri) else "reach the Milvus server"
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
    if is_lite(uri):
        from milvus_lite.server_manager import server_manager_instance

        if key in server_manager_instance._servers:
            server_manager_instance.release_server(uri)


def _key(uri: str) -> str:
    return str(Path(uri).absolute().resolve()) if is_lite(uri) else uri


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


def server_version(client, uri: str) -> tuple[int, int]:
    """(major, minor) of the Milvus behind ``client``; Milvus Lite (which does not say) is 2.5."""
    if is_lite(uri):
        return (2, 5)
    text = client.get_server_version()
    found = re.search(r"(\d+)\.(\d+)", text or "")
    if not found:
        raise StoreError(f"{uri}: cannot read the Milvus server's version from {text!r}")
    return int(found.group(1)), int(found.group(2))


@dataclass
class Answers:
    """One search request's results, per query: rows (int64), scores (float32, Milvus's own:
    inner products, or Hamming distances), and any asked-for fields."""

    rows: list[np.ndarray]
    scores: list[np.ndarray]
    fields: dict[str, list[list]]


def search(
    client,
    collection: str,
    data: list,
    field: str,
    params: dict,
    limit: int,
    *,
    expr: str = "",
    output_fields: tuple[str, ...] = (),
    guarantee_ts: int = 0,
) -> Answers:
    """One Milvus search request, its results read as arrays. ``params`` is Milvus's search
    parameters, e.g. ``{"metric_type": "IP", "params": {"ef": 200}}``. ``guarantee_ts``: a
    Milvus timestamp the search must see every write up to (a write's own), else the
    collection's default consistency."""
    from pymilvus.client.prepare import Prepare
    from pymilvus.client.types import ConsistencyLevel
    from pymilvus.exceptions import MilvusException

    consistency = {"consistency_level": ConsistencyLevel.Customized, "guarantee_timestamp": guarantee_ts}
    request = Prepare.search_requests_with_expr(
        collection,
        data,
        field,
        params,
        limit,
        expr,
        None,
        list(output_fields),
        -1,
        **(consistency if guarantee_ts else {}),
    )
    connection = client._get_connection()
    response = connection._stub.Search(request, timeout=SEARCH_TIMEOUT_S)
    if response.status.code != 0 or response.status.error_code != 0:
        raise MilvusException(code=response.status.code or response.status.error_code, message=response.status.reason)
    results = response.results
    counts = np.asarray(results.topks, dtype=np.int64)
    if not len(counts):
        counts = np.zeros(len(data), np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    ids = np.asarray(results.ids.int_id.data, dtype=np.int64)
    scores = np.asarray(results.scores, dtype=np.float32)
    fields = {}
    for column in results.fields_data:
        values = list(column.scalars.string_data.data)
        fields[column.field_name] = [values[bounds[i] : bounds[i + 1]] for i in range(len(counts))]
    return Answers(
        [ids[bounds[i] : bounds[i + 1]] for i in range(len(counts))],
        [scores[bounds[i] : bounds[i + 1]] for i in range(len(counts))],
        fields,
    )
