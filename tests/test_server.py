"""The HTTP API, against a real ``matryoshka serve`` process on loopback over a Milvus Lite index
of real SQuAD paragraphs, with the real MiniLM encoding on both sides."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from matryoshka.metrics import top_k
from matryoshka.vectors import truncate


@pytest.fixture(scope="module")
def client(lite_server):
    with httpx.Client(base_url=lite_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def corpus_vectors(minilm, squad_sample):
    return minilm.encode(squad_sample.corpus.texts[:150], kind="document")


def test_healthz_and_info_describe_the_index(client):
    assert client.get("/healthz").json() == {"status": "ok", "documents": 150}
    info = client.get("/info").json()
    assert info["model"] == "all-MiniLM-L6-v2" and info["store"] == "milvus"
    assert info["full_dim"] == 384 and info["corpus_size"] == 150
    assert info["marks"] == [12, 24, 48, 96, 192, 384]
    stages = info["default_schedule"]
    assert stages[0][0] == info["head_dim"] and stages[-1] == [384, 10]
    assert info["limits"]["max_k"] == 20 and info["limits"]["max_texts"] == 8


def test_embed_returns_truncated_renormalised_vectors_of_the_indexing_model(client, minilm):
    texts = ["the giant panda eats bamboo", "/etc/passwd"]  # a path is only ever a text to embed
    answer = client.post("/embed", json={"texts": texts, "dim": 48}).json()
    vectors = np.asarray(answer["vectors"], np.float32)
    assert answer["dim"] == 48 and vectors.shape == (2, 48)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, truncate(minilm.encode(texts, kind="document"), 48), atol=1e-4)
    full = np.asarray(client.post("/embed", json={"texts": texts[:1], "kind": "query"}).json()["vectors"])
    assert full.shape == (1, 384)


def test_search_funnel_matches_exact_and_reports_stages(client, minilm, squad_sample, corpus_vectors):
    question = squad_sample.query_texts[0]
    default = client.post("/search", json={"query": question, "k": 5}).json()
    tuned = [*client.get("/info").json()["default_schedule"][:-1], [384, 5]]
    funnel = client.post("/search", json={"query": question, "k": 5, "schedule": tuned}).json()
    exact = client.post("/search", json={"query": question, "k": 5, "exact": True}).json()
    assert funnel["mode"] == "funnel" and exact["mode"] == "exact"
    # 150 paragraphs: the index timed exact search faster than its funnel, so that is what a plain search runs
    assert (
        default["mode"] == "exact"
        and default["plan"] == "exact (faster than the funnel on this index when it was tuned)"
    )
    assert default["hits"] == exact["hits"]
    query = minilm.encode([question], kind="query")
    expected = [squad_sample.corpus.ids[i] for i in top_k(query @ corpus_vectors.T, 5)[0]]
    assert [h["id"] for h in exact["hits"]] == expected
    assert [h["id"] for h in funnel["hits"]] == expected
    assert funnel["hits"][0]["text"] == squad_sample.corpus.texts[squad_sample.corpus.ids.index(expected[0])]
    assert [s["dim"] for s in funnel["stages"]][-1] == 384 and funnel["stages"][-1]["keep"] == 5
    assert all(s["ms"] >= 0 for s in funnel["stages"]) and funnel["encode_ms"] > 0


def test_search_at_one_dim_is_an_exact_prefix_search(client, minilm, squad_sample, corpus_vectors):
    question = squad_sample.query_texts[3]
    answer = client.post("/search", json={"query": question, "k": 10, "dim": 24}).json()
    assert answer["mode"] == "prefix" and answer["dim"] == 24 and answer["stages"][0]["dim"] == 24
    query = truncate(minilm.encode([question], kind="query"), 24)
    scores = query @ truncate(corpus_vectors, 24).T
    assert [h["id"] for h in answer["hits"]] == [squad_sample.corpus.ids[i] for i in top_k(scores, 10)[0]]
    np.testing.assert_allclose([h["score"] for h in answer["hits"]], np.sort(scores[0])[::-1][:10], atol=1e-4)


def test_search_with_a_schedule_of_its_own(client):
    head = client.get("/info").json()["head_dim"]
    answer = client.post("/search", json={"query": "steam engine", "k": 3, "schedule": [[head, 60], [384, 3]]}).json()
    assert [(s["dim"], s["keep"]) for s in answer["stages"]] == [(head, 60), (384, 3)]
    assert len(answer["hits"]) == 3


def test_similarity_gives_each_texts_cosine_at_each_dim(client, minilm):
    texts = ["The giant panda is a bear native to China.", "Shares fell sharply on Monday."]
    answer = client.post(
        "/similarity", json={"query": "what is a panda?", "texts": texts, "dims": [12, 96, 384]}
    ).json()
    table = np.asarray(answer["similarities"])
    assert table.shape == (2, 3) and answer["dims"] == [12, 96, 384]
    query = minilm.encode(["what is a panda?"], kind="query")
    documents = minilm.encode(texts, kind="document")
    expected = np.stack([truncate(documents, d) @ truncate(query, d)[0] for d in (12, 96, 384)], axis=1)
    np.testing.assert_allclose(table, expected, atol=1e-4)
    assert table[0, 2] > table[1, 2]  # the panda sentence wins at full dim
    default = client.post("/similarity", json={"query": "panda", "texts": texts}).json()
    assert default["dims"] == [12, 24, 48, 96, 192, 384]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/search", {"query": "x" * 501}, 413, "query: 501 characters is more than the limit of 500"),
        ("/search", {"query": "   "}, 422, "query: the text is empty"),
        ("/search", {"query": "tides", "k": 21}, 422, "k: 21 is outside 1..20"),
        ("/search", {"query": "tides", "k": 0}, 422, "k: 0 is outside"),
        ("/search", {"query": "tides", "dim": 385}, 422, "dim: dimension 385 is outside 1..384"),
        ("/search", {"query": "tides", "dim": 24, "exact": True}, 422, "give one of dim, schedule or exact"),
        ("/search", {"query": "tides", "recall": 1.5}, 422, "recall: 1.5 is not in (0, 1]"),
        ("/search", {"query": "tides", "recall": 0}, 422, "recall: 0.0 is not in (0, 1]"),
        (
            "/search",
            {"query": "tides", "recall": 0.9, "exact": True},
            422,
            "give one of recall, dim, schedule or exact",
        ),
        ("/search", {"query": "tides", "recall": "high"}, 422, "recall: Input should be a valid number"),
        ("/search", {"query": "tides", "recall": True}, 422, "recall: Input should be a valid number"),
        ("/search", {"query": "tides", "schedule": [[24, 50], [192, 10]]}, 422, "must end at the full dimension 384"),
        ("/search", {"query": "tides", "schedule": [[24, 50_000], [384, 10]]}, 422, "more than the limit of 10000"),
        ("/search", {"query": "tides", "k": "ten"}, 422, "k: Input should be a valid integer"),
        ("/search", {"query": "tides", "limit": 3}, 422, "limit: Extra inputs are not permitted"),
        ("/search", {}, 422, "query: Field required"),
        ("/embed", {"texts": ["a"] * 9}, 413, "texts: 9 texts is more than the limit of 8"),
        ("/embed", {"texts": []}, 422, "texts: give at least one text"),
        ("/embed", {"texts": ["ok", "y" * 600]}, 413, "texts[1]: 600 characters"),
        ("/embed", {"texts": ["a"], "dim": 0}, 422, "dim: dimension 0 is outside 1..384"),
        (
            "/similarity",
            {"query": "a", "texts": ["b"], "dims": list(range(1, 70))},
            413,
            "dims: 69 dims is more than the limit of 64",
        ),
        ("/similarity", {"query": "a", "texts": ["b"], "dims": [12, 999]}, 422, "dims[1]: dimension 999 is outside"),
    ],
)
def test_limits_are_refused_with_a_message_naming_the_field(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_malformed_json_and_oversized_bodies_are_refused(client):
    response = client.post("/search", content=b'{"query": "tides", "k": ', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"].startswith("malformed JSON")
    response = client.post("/embed", content=b"[1, 2", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "malformed JSON" in response.json()["error"]
    huge = b'{"texts": ["' + b"a" * 1_100_000 + b'"]}'
    response = client.post("/embed", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit is 1000000" in response.json()["error"]
    assert client.get("/healthz").status_code == 200  # and the server is still answering


def test_openapi_docs_and_the_page_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/search", "/similarity", "/info", "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and 'id="dim"' in page.text and "/static/app.js" in page.text
    assert "fetch(" in client.get("/static/app.js").text
    assert client.get("/static/../server.py").status_code == 404  # no way out of the web folder


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(client, lite_server, squad_sample):
    from concurrent.futures import ThreadPoolExecutor

    questions = squad_sample.query_texts[10:34]
    alone = {q: [h["id"] for h in client.post("/search", json={"query": q, "k": 5}).json()["hits"]] for q in questions}

    def ask(question: str) -> dict:
        with httpx.Client(base_url=lite_server.url, timeout=60) as own:
            response = own.post("/search", json={"query": question, "k": 5})
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert [a["query"] for a in answers] == questions
    assert all([h["id"] for h in a["hits"]] == alone[a["query"]] for a in answers)
    assert max(a["batch_size"] for a in answers) > 1


def test_a_binary_head_index_is_served(wordllama, squad_sample, tmp_path):
    """A local index with a binary head: /info says so, a schedule's first stage is that head, and
    a float head stage is refused with a message that says what to send."""
    from conftest import RunningServer, free_port
    from matryoshka.index import build_index

    documents = wordllama.encode(squad_sample.corpus.texts[:200], kind="document")
    build_index(
        tmp_path / "index",
        squad_sample.corpus.ids[:200],
        squad_sample.corpus.texts[:200],
        encoder=wordllama,
        vectors=documents,
        head_index="binary",
    )
    port = free_port()
    server = RunningServer(
        ["serve", "--db", str(tmp_path / "index"), "--port", str(port)],
        tmp_path / "server.log",
        f"http://127.0.0.1:{port}/",
    )
    try:
        server.wait_healthy()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            info = client.get("/info").json()
            assert info["binary_head"] and info["head_dim"] == 256 and info["default_schedule_text"].startswith("256b:")
            question = squad_sample.query_texts[0]
            wide = client.post("/search", json={"query": question, "k": 5, "schedule": [[256, 200], [256, 5]]}).json()
            exact = client.post("/search", json={"query": question, "k": 5, "exact": True}).json()
            assert [h["id"] for h in wide["hits"]] == [h["id"] for h in exact["hits"]]
            assert [(s["dim"], s["keep"]) for s in wide["stages"]] == [(256, 200), (256, 5)]
            refused = client.post("/search", json={"query": question, "k": 5, "schedule": [[8, 100], [256, 5]]})
            assert refused.status_code == 422 and "start the schedule with 256b:N" in refused.text
    finally:
        server.stop()
