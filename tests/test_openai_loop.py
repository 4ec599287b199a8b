"""The whole loop through the OpenAI embeddings API: serve a model, index a corpus through that
endpoint with ``--model openai:…``, search it, serve that index; every answer equals the same
model's loaded locally."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from conftest import RunningServer, free_port, run_cli
from matryoshka.demo import lemma_queries, read_glosses
from matryoshka.index import Index

pytestmark = pytest.mark.slow
DOCUMENTS = 600


def start(args: list[str], log) -> RunningServer:
    port = free_port()
    server = RunningServer([*args, "--port", str(port)], log, f"http://127.0.0.1:{port}/")
    server.wait_healthy()
    return server


def test_index_search_and_serve_through_our_own_endpoint_equal_the_local_model(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loop")
    glosses = read_glosses()
    corpus = tmp_path / "glosses.jsonl"
    with corpus.open("w") as out:
        for doc_id, text in zip(glosses.ids[:DOCUMENTS], glosses.texts[:DOCUMENTS]):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        for n in range(5):  # documents longer than a /search query may be: /v1 takes them, and the model cuts them
            long_text = " ".join(glosses.texts[DOCUMENTS + 60 * n : DOCUMENTS + 60 * (n + 1)])
            assert len(long_text) > 2_500
            out.write(json.dumps({"id": f"long-{n}", "text": long_text}) + "\n")
    queries = lemma_queries(glosses, 20, seed=11)
    endpoint = start(["serve", "--model", "wordllama"], tmp_path / "endpoint.log")
    index_server = None
    try:
        api = endpoint.url + "v1"
        for name, model in (("remote", "openai:wordllama"), ("local", "wordllama")):
            extra = ["--api-base", api] if name == "remote" else []
            args = ["index", "--model", model, *extra, "--corpus", str(corpus), "--db", str(tmp_path / name)]
            built = run_cli(*args, "--head-index", "binary")
            assert built.returncode == 0, built.stderr
        with Index(tmp_path / "remote") as remote, Index(tmp_path / "local") as local:
            assert remote.meta.model == "openai:wordllama" and remote.meta.model_options == {"api_base": api}
            assert remote.encoder.matryoshka_dims == local.encoder.matryoshka_dims  # stated by /v1/models
            np.testing.assert_allclose(remote.encoder.encode(queries), local.encoder.encode(queries), atol=1e-6)
            assert remote.meta.schedule == local.meta.schedule
            for options in ({}, {"exact": True}, {"dim": 64}):
                by_remote, by_local = remote.search(queries, k=10, **options), local.search(queries, k=10, **options)
                assert [h.ids for h in by_remote] == [h.ids for h in by_local]
                np.testing.assert_allclose([h.scores for h in by_remote], [h.scores for h in by_local], atol=1e-5)
            expected = local.search(queries[:5], k=5)

        searched = run_cli("search", "--db", str(tmp_path / "remote"), "--query", queries[0], "--k", "5")
        assert searched.returncode == 0 and expected[0].ids[0][:20] in searched.stdout

        index_server = start(["serve", "--db", str(tmp_path / "remote")], tmp_path / "index.log")
        for query, hits in zip(queries[:5], expected):
            answer = httpx.post(index_server.url + "search", json={"query": query, "k": 5}, timeout=60).json()
            assert [hit["id"] for hit in answer["hits"]] == hits.ids
        listed = httpx.get(index_server.url + "v1/models", timeout=60).json()
        assert [entry["id"] for entry in listed["data"]] == ["openai:wordllama"]
    finally:
        endpoint.stop()
        if index_server is not None:
            index_server.stop()
