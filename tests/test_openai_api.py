"""The OpenAI-compatible API (``/v1``) against real uvicorn servers on loopback, driven by the
official ``openai`` client and LangChain's ``OpenAIEmbeddings``, with the real bundled wordllama
model on both sides: every field, every refusal in OpenAI's error shape, the API key, concurrent
requests, arbitrary JSON bodies, an index with an adapter, and ``matryoshka serve --model``."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningServer, free_port, run_cli
from matryoshka.adapt import adapted, make_adapter, save_adapter, with_adapter
from matryoshka.errors import UsageError
from matryoshka.http_guards import TimedHttpProtocol, bind
from matryoshka.index import Index, build_index
from matryoshka.models import matryoshka_dims, token_counts
from matryoshka.server import KEEP_ALIVE_S, Limits, create_app
from matryoshka.vectors import stage_dims, truncate

KEY = "s3cret-key-42"
MAX_TEXT_CHARS = 500  # of one /v1 input (the server's max_input_chars)
TEXTS = [
    "The tides are caused by the moon's gravity.",
    "A very large dog slept by the fire.",
    "Bread rises because yeast makes gas.",
    "Stars are suns far away.",
    "Rivers carry water to the sea.",
    "Music can make people dance.",
    "The engine of the train was made of steel.",
    "Winter brings snow to the mountains.",
]
CORPUS = [f"{text} ({n})" for n in range(6) for text in TEXTS]
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Served:
    url: str
    app: FastAPI


@contextmanager
def serving(app: FastAPI) -> Iterator[Served]:
    """``app`` under real uvicorn, configured as ``matryoshka serve`` runs it, on a free loopback
    port, in a thread of this process (so that tests can read the app's state)."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", http=TimedHttpProtocol, timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server stopped before it started"
            thread.join(0.02)
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(wordllama, tmp_path_factory) -> Iterator[Served]:
    """A wordllama index, served with ``models={"wordllama": …}`` too: the same model, served once."""
    db = tmp_path_factory.mktemp("openai") / "index"
    build_index(db, [f"d{i}" for i in range(len(CORPUS))], CORPUS, encoder=wordllama)
    with Index(db, encoder=wordllama) as index:
        app = create_app(index, Limits(max_input_chars=MAX_TEXT_CHARS), models={"wordllama": wordllama})
        with serving(app) as served:
            yield served


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_server(wordllama) -> Iterator[Served]:
    """Models only (no index), with an API key."""
    with serving(create_app(None, api_key=KEY, models={"wordllama": wordllama})) as served:
        yield served


@pytest.fixture(scope="module")
def adapted_index(wordllama, tmp_path_factory):
    """An index built with a PCA adapter on wordllama, and that adapter."""
    folder = tmp_path_factory.mktemp("adapted")
    adapter = make_adapter("pca").fit(wordllama.encode(CORPUS))
    path = save_adapter(adapter, folder / "pca.npz")
    build_index(folder / "index", [f"d{i}" for i in range(len(CORPUS))], CORPUS, encoder=with_adapter(wordllama, path))
    with Index(folder / "index", encoder=wordllama) as index:
        yield index, adapter


def error_of(response: httpx.Response) -> dict:
    """The OpenAI error object of a refusal, checked to have exactly OpenAI's shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str)
    return body["error"]


# ------------------------------------------------------------------------------------ answers


def test_a_string_and_a_list_give_the_models_own_vectors_in_order(client, wordllama):
    one = client.embeddings.create(model="wordllama", input="a very large dog", encoding_format="float")
    assert one.object == "list" and one.model == "wordllama" and len(one.data) == 1
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    np.testing.assert_allclose(one.data[0].embedding, wordllama.encode(["a very large dog"])[0], atol=1e-5)

    texts = TEXTS[:5]
    many = client.embeddings.create(model="wordllama", input=texts, dimensions=64)  # the client asks for base64
    assert [item.index for item in many.data] == list(range(5))
    vectors = np.asarray([item.embedding for item in many.data])
    assert vectors.shape == (5, 64)
    np.testing.assert_allclose(vectors, wordllama.encode(texts, dim=64), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    tokens = sum(token_counts(wordllama, texts))
    assert many.usage.prompt_tokens == many.usage.total_tokens == tokens
    assert tokens >= sum(len(text.split()) for text in texts)  # every word is at least one token
    assert one.usage.total_tokens < tokens


def test_float_and_base64_carry_the_same_float32_vectors(http, wordllama):
    body = {"model": "wordllama", "input": TEXTS[:3], "dimensions": 32}
    floats = http.post("/v1/embeddings", json=body).json()
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    assert floats["usage"] == packed["usage"] and floats["model"] == packed["model"] == "wordllama"
    as_floats = np.asarray([item["embedding"] for item in floats["data"]], np.float32)
    as_bytes = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in packed["data"]])
    np.testing.assert_array_equal(as_floats, as_bytes)
    np.testing.assert_allclose(as_floats, wordllama.encode(TEXTS[:3], dim=32), atol=1e-5)


def test_models_are_listed_and_retrieved_with_their_dimensions(client, wordllama):
    listed = client.models.list()
    assert [model.id for model in listed.data] == ["wordllama"]  # the index's model and --model's: one
    model = listed.data[0]
    assert model.object == "model" and model.owned_by == "matryoshka" and isinstance(model.created, int)
    extra = model.model_dump()
    assert extra["dimensions"] == 256
    assert extra["matryoshka_dimensions"] == list(matryoshka_dims(wordllama))
    assert client.models.retrieve("wordllama").model_dump() == extra
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("text-embedding-3-small")
    assert missing.value.code == "model_not_found" and "wordllama" in missing.value.body["message"]


# ------------------------------------------------------------------------------------ refusals


GOOD = {"model": "wordllama", "input": "tides"}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({**GOOD, "input": ""}, 400, "input", "input: the text is empty"),
        ({**GOOD, "input": ["ok", "   "]}, 400, "input", "input[1]: the text is empty"),
        ({**GOOD, "input": []}, 400, "input", "the list is empty"),
        ({**GOOD, "input": ["a"] * 2049}, 400, "input", "2,049 texts is more than the limit of 2,048"),
        ({**GOOD, "input": ["ok", "x" * 501]}, 400, "input", "input[1]: 501 characters is more than the limit of 500"),
        ({**GOOD, "input": [101, 2023, 102]}, 400, "input", "token arrays are not supported"),
        ({**GOOD, "input": [[101, 2023], [7]]}, 400, "input", "input[0]: token arrays are not supported"),
        ({**GOOD, "input": 5}, 400, "input", "give a string or a list of strings; got a number"),
        ({**GOOD, "input": ["a", {"text": "b"}]}, 400, "input", "input[1]: expected a string; got an object"),
        ({"model": "wordllama"}, 400, "input", "got nothing"),
        ({"input": "tides"}, 400, "model", "model: give the id of a served model"),
        ({**GOOD, "model": 7}, 400, "model", "got a number"),
        ({**GOOD, "dimensions": 0}, 400, "dimensions", "dimensions: 0 is outside 1..256"),
        ({**GOOD, "dimensions": 257}, 400, "dimensions", "257 is outside 1..256"),
        ({**GOOD, "dimensions": 64.5}, 400, "dimensions", "expected an integer; got a number"),
        ({**GOOD, "dimensions": "64"}, 400, "dimensions", "expected an integer; got a string"),
        ({**GOOD, "dimensions": True}, 400, "dimensions", "expected an integer; got a boolean"),
        ({**GOOD, "encoding_format": "float16"}, 400, "encoding_format", "'float16' is not one of"),
        ({**GOOD, "temperature": 0.2}, 400, "temperature", "Unrecognized request argument supplied: temperature"),
        ({**GOOD, "model": "text-embedding-3-small"}, 404, "model", "it serves: wordllama"),
    ],
)
def test_each_bad_request_is_refused_in_openais_shape_naming_its_param(http, body, status, param, words):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert error["code"] == ("model_not_found" if status == 404 else None)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"model": "wordllama", "input": ', "could not parse the JSON body"),
        (b"", "could not parse the JSON body"),
        (b"\xff\xfe\x00", "could not parse the JSON body"),
        (b"[" * 100_000, "could not parse the JSON body"),
        (b'["tides"]', "must be a JSON object"),
        (b'{"model": "wordllama", "input": "\\ud800"}', "not valid Unicode"),
    ],
)
def test_bodies_that_are_not_a_request_are_refused_in_openais_shape(http, content, words):
    response = http.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert words in error_of(response)["message"]


def test_wrong_routes_methods_and_oversized_bodies_on_v1_answer_in_openais_shape(http):
    unknown = http.post("/v1/chat/completions", json={"model": "wordllama", "messages": []})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "unknown_url"
    assert "POST /v1/embeddings" in error_of(unknown)["message"]
    wrong = http.get("/v1/embeddings")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    huge = http.post("/v1/embeddings", json={"model": "wordllama", "input": ["tides " * 1000] * 200})
    assert huge.status_code == 413 and error_of(huge)["code"] == "request_too_large"
    # the rest of the API keeps its own shape
    assert http.post("/embed", json={"texts": []}).json() == {"error": "texts: give at least one text"}
    assert http.get("/nowhere").json() == {"detail": "Not Found"}
    assert http.get("/healthz").status_code == 200


def test_the_client_raises_its_own_exception_for_each_refusal(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="wordllama", input="tides", dimensions=300)
    assert bad.value.status_code == 400 and bad.value.param == "dimensions"
    assert bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model="wordllama", input=[[101, 2023, 102]])
    assert tokens.value.param == "input" and "send the texts themselves" in tokens.value.body["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="tides")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    assert missing.value.param == "model"


def test_an_api_key_is_needed_by_every_v1_request_when_the_server_has_one(keyed_server, wordllama):
    v1 = keyed_server.url + "/v1"
    for key in ("wrong", KEY.upper()):
        rejected = openai.OpenAI(base_url=v1, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as denied:
            rejected.embeddings.create(model="wordllama", input="tides")
        assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            rejected.models.list()
    bare = httpx.post(v1 + "/embeddings", json=GOOD, timeout=30)
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert error_of(bare)["code"] == "invalid_api_key" and "Authorization: Bearer" in error_of(bare)["message"]
    unparsable = httpx.post(v1 + "/embeddings", content=b"{", timeout=30)  # the key is checked first
    assert unparsable.status_code == 401

    allowed = openai.OpenAI(base_url=v1, api_key=KEY, max_retries=0)
    answer = allowed.embeddings.create(model="wordllama", input=["tides", "dogs"], dimensions=16)
    np.testing.assert_allclose(
        [item.embedding for item in answer.data], wordllama.encode(["tides", "dogs"], dim=16), atol=1e-5
    )
    assert [model.id for model in allowed.models.list().data] == ["wordllama"]
    # no index: its endpoints say so, and the rest of the server answers
    search = httpx.post(keyed_server.url + "/search", json={"query": "tides"}, timeout=30)
    assert search.status_code == 404 and "needs an index" in search.json()["error"]
    assert httpx.get(keyed_server.url + "/healthz", timeout=30).json() == {"status": "ok", "models": ["wordllama"]}
    assert httpx.get(keyed_server.url + "/info", timeout=30).json()["index"] is None


# ------------------------------------------------------------------------------------ load


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, wordllama):
    """32 requests at once, every fourth one bad: each good one gets its own texts' vectors at its
    own dims, each bad one its own 400, and requests that waited together were encoded together."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    batcher = server.app.state.embeddings.batcher
    before = (batcher.batches, batcher.items)
    start = threading.Barrier(32)

    def ask(n: int):
        texts = [f"{CORPUS[(n + i) % len(CORPUS)]} {n}" for i in range(150)]
        dim = [16, 64, 128, 256][n % 4]
        start.wait()
        try:
            if n % 4 == 3:
                client.embeddings.create(model="wordllama", input=texts[:2] + [""], dimensions=dim)
                return n, None, None
            answer = client.embeddings.create(model="wordllama", input=texts, dimensions=dim)
            return n, texts, np.asarray([item.embedding for item in answer.data])
        except openai.BadRequestError as exc:
            return n, exc, None

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    for n, texts, vectors in answers:
        if n % 4 == 3:
            assert isinstance(texts, openai.BadRequestError) and "input[2]: the text is empty" in str(texts)
        else:
            assert vectors.shape == (150, [16, 64, 128, 256][n % 4])
            np.testing.assert_allclose(vectors, wordllama.encode(texts, dim=vectors.shape[1]), atol=1e-5)
    batches, items = batcher.batches - before[0], batcher.items - before[1]
    assert items == 24 and batches < items  # the bad ones never reached the batcher


def test_langchain_openai_embeddings_against_the_server(server, wordllama):
    from langchain_openai import OpenAIEmbeddings

    common = dict(base_url=server.url + "/v1", api_key="unused", check_embedding_ctx_length=False, max_retries=0)
    full = OpenAIEmbeddings(model="wordllama", **common)
    texts = [f"{text} #{n}" for n in range(150) for text in TEXTS]  # 1,200: LangChain sends 1,000 at a time
    documents = np.asarray(full.embed_documents(texts))
    assert documents.shape == (1200, 256)
    np.testing.assert_allclose(documents, wordllama.encode(texts), atol=1e-5)
    np.testing.assert_allclose(
        full.embed_query("a very large dog"), wordllama.encode(["a very large dog"])[0], atol=1e-5
    )
    short = OpenAIEmbeddings(model="wordllama", dimensions=64, **common)
    np.testing.assert_allclose(short.embed_documents(TEXTS), wordllama.encode(TEXTS, dim=64), atol=1e-5)


def json_values():
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text()
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    )


def request_like():
    """Bodies near a real request, each field of any JSON type, so that the fuzzing reaches past
    the first checks."""
    texts = st.text(max_size=30) | st.sampled_from(["tides", " ", "dogs and cats"])
    return st.fixed_dictionaries(
        {
            "model": st.one_of(st.just("wordllama"), st.just("nope"), json_values()),
            "input": st.one_of(texts, st.lists(texts, max_size=5), st.lists(st.integers(0, 5000)), json_values()),
        },
        optional={
            "dimensions": st.integers(-3, 300) | json_values(),
            "encoding_format": st.sampled_from(["float", "base64", "text"]) | json_values(),
            "user": json_values(),
            "input_type": st.sampled_from(["query", "document", "passage", "search"]) | json_values(),
        },
    )


def served_requests():
    """Requests of any texts (any Unicode) that the server should answer."""
    texts = st.text(min_size=1, max_size=40).filter(str.strip)
    return st.fixed_dictionaries(
        {"model": st.just("wordllama"), "input": texts | st.lists(texts, min_size=1, max_size=5)},
        optional={"dimensions": st.integers(1, 256), "encoding_format": st.sampled_from(["float", "base64"])},
    )


def servable(body) -> bool:
    """Whether OpenAI's rules, with this server's model and limits, take ``body``."""
    if not isinstance(body, dict) or set(body) - {
        "model",
        "input",
        "dimensions",
        "encoding_format",
        "user",
        "input_type",
    }:
        return False
    if body.get("input_type") not in (None, "query", "document", "passage"):
        return False
    texts = [body.get("input")] if isinstance(body.get("input"), str) else body.get("input")
    if body.get("model") != "wordllama" or not isinstance(texts, list) or not 1 <= len(texts) <= 2048:
        return False
    if not all(isinstance(text, str) and text.strip() and len(text) <= MAX_TEXT_CHARS for text in texts):
        return False
    dim = body.get("dimensions")
    if dim is not None and (type(dim) is not int or not 1 <= dim <= 256):
        return False
    return body.get("encoding_format") in (None, "float", "base64")


@given(body=st.one_of(json_values(), request_like(), served_requests()))
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_any_json_body_gets_an_answer_or_an_openai_error_never_a_server_error(http, body):
    """Arbitrary JSON: never a 5xx; an answer exactly when OpenAI's rules take the body, with one
    vector of the asked dims per text; otherwise OpenAI's error object."""
    response = http.post("/v1/embeddings", content=json.dumps(body).encode())
    assert response.status_code < 500, (body, response.text[:300])
    assert (response.status_code == 200) == servable(body), (body, response.text[:300])
    if response.status_code == 200:
        data = response.json()["data"]
        count = 1 if isinstance(body["input"], str) else len(body["input"])
        assert [item["index"] for item in data] == list(range(count))
        first = data[0]["embedding"]
        dims = len(base64.b64decode(first)) // 4 if body.get("encoding_format") == "base64" else len(first)
        assert dims == (body.get("dimensions") or 256)
    else:
        assert response.status_code in (400, 404)
        error_of(response)


# ------------------------------------------------------------------------------------ adapters, the CLI


def test_an_adapted_index_serves_its_adapted_vectors_beside_the_plain_model(adapted_index, wordllama):
    index, adapter = adapted_index
    with serving(create_app(index, models={"plain": wordllama})) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        models = {model.id: model.model_dump() for model in client.models.list().data}
        assert list(models) == ["wordllama", "plain"]
        assert models["wordllama"]["matryoshka_dimensions"] == sorted(stage_dims(256), reverse=True)
        own = client.embeddings.create(model="wordllama", input=TEXTS, dimensions=32)
        plain = client.embeddings.create(model="plain", input=TEXTS, dimensions=32)
    own_vectors = np.asarray([item.embedding for item in own.data])
    plain_vectors = np.asarray([item.embedding for item in plain.data])
    np.testing.assert_allclose(own_vectors, truncate(adapted(adapter, wordllama.encode(TEXTS)), 32), atol=1e-5)
    np.testing.assert_allclose(plain_vectors, wordllama.encode(TEXTS, dim=32), atol=1e-5)
    assert not np.allclose(own_vectors, plain_vectors, atol=1e-2)  # the adapter moved what the prefix holds
    with pytest.raises(UsageError, match="cannot share that name"):
        create_app(index, models={"wordllama": wordllama})


def test_serve_needs_an_index_or_a_model():
    result = run_cli("serve", "--port", str(free_port()))
    assert result.returncode == 2 and "give --db" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_serve_with_only_a_model_is_an_embeddings_server(tmp_path, wordllama):
    port = free_port()
    server = RunningServer(
        ["serve", "--model", "wordllama", "--port", str(port)], tmp_path / "serve.log", f"http://127.0.0.1:{port}/"
    )
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=server.url + "v1", api_key="unused", max_retries=0)
        answer = client.embeddings.create(model="wordllama", input=["a very large dog", "tides"], dimensions=64)
        np.testing.assert_allclose(
            [item.embedding for item in answer.data], wordllama.encode(["a very large dog", "tides"], dim=64), atol=1e-5
        )
        search = httpx.post(server.url + "search", json={"query": "tides"}, timeout=30)
        assert search.status_code == 404 and "needs an index" in search.json()["error"]
        assert httpx.get(server.url, timeout=30).status_code == 404  # no page without an index
    finally:
        server.stop()
    assert "Serving wordllama" in server.log and "/v1" in server.log


def test_input_type_applies_the_models_prompts(tmp_path):
    """``input_type`` (an extension) encodes with the model's query or document prompt; without
    it texts are encoded as given."""
    from matryoshka.models import load_model

    encoder = load_model("wordllama", query_prompt="search_query: ", document_prompt="search_document: ")
    with serving(create_app(None, models={"prompted": encoder})) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        texts = ["what causes the tides?"]
        for input_type, prompt in ((None, ""), ("query", "search_query: "), ("passage", "search_document: ")):
            extra = {"extra_body": {"input_type": input_type}} if input_type else {}
            answer = client.embeddings.create(model="prompted", input=texts, encoding_format="float", **extra)
            np.testing.assert_allclose(
                answer.data[0].embedding, encoder.encode([prompt + texts[0]])[0], atol=1e-5, err_msg=str(input_type)
            )
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="prompted", input=texts, extra_body={"input_type": "search"})
        assert refused.value.body["param"] == "input_type"
