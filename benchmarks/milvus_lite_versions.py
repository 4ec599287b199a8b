"""Why Milvus Lite is pinned at 2.5.1: the same head search timed under whichever Milvus Lite and
pymilvus this interpreter has. Run once per version, each from its own virtual environment:

    python benchmarks/milvus_lite_versions.py                      # the project's pins (2.5.1 / 2.5.18)
    /tmp/lite3/bin/python benchmarks/milvus_lite_versions.py       # e.g. pip install pymilvus==3.0.2 milvus-lite==3.2.2

Appends one row per run to benchmarks/results/milvus_lite_versions.json and prints it.
117,659 random unit vectors of 64 dims (the size of the WordNet head), FLAT index, inner product.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

OUT = Path(__file__).resolve().parent / "results" / "milvus_lite_versions.json"
N, DIM, QUERIES = 117_659, 64, 50


def main() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    client = MilvusClient(tempfile.mkdtemp() + "/bench.db")
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection("head", schema=schema, index_params=index)
    started = time.perf_counter()
    for start in range(0, N, 5000):
        client.insert("head", [{"row": i, "vector": vectors[i].tolist()} for i in range(start, min(N, start + 5000))])
    client.flush("head")
    client.load_collection("head")
    row = {
        "milvus_lite": version("milvus-lite"),
        "pymilvus": version("pymilvus"),
        "n": N,
        "dim": DIM,
        "insert_s": round(time.perf_counter() - started, 2),
    }
    for limit in (10, 1000):
        client.search("head", data=[vectors[0].tolist()], limit=limit, output_fields=[])
        started = time.perf_counter()
        for query in vectors[:QUERIES]:
            client.search("head", data=[query.tolist()], limit=limit, output_fields=[])
        row[f"search_limit{limit}_ms"] = round(1000 * (time.perf_counter() - started) / QUERIES, 2)
    ids = [int(i) for i in rng.choice(N, 1000, replace=False)]
    started = time.perf_counter()
    client.get("head", ids=ids, output_fields=["vector"])
    row["get_1000_by_id_ms"] = round(1000 * (time.perf_counter() - started), 2)
    rows = json.loads(OUT.read_text())["results"] if OUT.exists() else []
    rows = [r for r in rows if r["milvus_lite"] != row["milvus_lite"]] + [row]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"machine": "2 cores, 24 GiB (the project's CI-class machine)", "results": rows}, indent=2) + "\n"
    )
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
