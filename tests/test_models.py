"""Truncation + re-normalisation, and the real bundled models loading offline."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka.errors import ModelError
from matryoshka.models import load_model
from matryoshka.vectors import check_dim, normalize, truncate


def test_truncate_gives_unit_rows_at_any_dim():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 96)).astype(np.float64)
    for dim in (1, 7, 13, 48, 95, 96):
        prefix = truncate(vectors, dim)
        assert prefix.shape == (50, dim)
        assert prefix.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(prefix, axis=1), 1.0, atol=1e-5)
        expected = vectors[:, :dim] / np.linalg.norm(vectors[:, :dim], axis=1, keepdims=True)
        np.testing.assert_allclose(prefix, expected, atol=1e-6)


def test_truncate_none_is_full_dim_and_zero_rows_stay_zero():
    vectors = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    out = truncate(vectors, None)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0.0], atol=1e-7)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(truncate(np.array([[0.0, 0.0, 5.0]]), 2), [[0.0, 0.0]])


@pytest.mark.parametrize("dim", [0, -1, 97, 2.5, "8", True])
def test_bad_dims_are_clear_errors(dim):
    with pytest.raises(ModelError, match="dimension"):
        truncate(np.ones((2, 96)), dim)


def test_truncate_rejects_non_matrix():
    with pytest.raises(ModelError, match="2-D"):
        truncate(np.ones(8), 4)


def test_check_dim_accepts_numpy_ints():
    assert check_dim(np.int64(5), 8) == 5
    assert normalize(np.array([[2.0, 0.0]])).tolist() == [[1.0, 0.0]]


def test_real_minilm_encodes_any_prefix(minilm):
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    full = minilm.encode(texts)
    assert minilm.full_dim == 384 and full.shape == (3, 384) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    for dim in (17, 100, 384):
        prefix = minilm.encode(texts, dim)
        np.testing.assert_allclose(prefix, truncate(full, dim), atol=1e-5)
    # the model knows meaning at full dimension: the paraphrase is closer than the unrelated sentence
    assert full[0] @ full[1] > full[0] @ full[2] + 0.2
    with pytest.raises(ModelError, match="outside 1..384"):
        minilm.encode(texts, 385)
    with pytest.raises(ModelError, match="list of texts"):
        minilm.encode("just one string")


def test_prompts_are_applied_to_queries_and_documents(minilm):
    from matryoshka.models import SentenceTransformerEncoder

    text = ["what causes tides"]
    prompted = SentenceTransformerEncoder(minilm.model, "p", query_prompt="query: ", document_prompt="passage: ")
    plain = minilm.encode(text)
    assert not np.allclose(prompted.encode(text, kind="query"), plain, atol=1e-4)
    np.testing.assert_allclose(
        prompted.encode(text, kind="query"), minilm.encode(["query: what causes tides"]), atol=1e-5
    )
    np.testing.assert_allclose(
        prompted.encode(text, kind="document"), minilm.encode(["passage: what causes tides"]), atol=1e-5
    )
    # the bundled model has empty prompts: query/document encoding equals plain encoding
    np.testing.assert_allclose(minilm.encode(text, kind="query"), plain, atol=1e-5)


def test_local_sentence_transformers_folder_loads(tmp_path, minilm):
    minilm.model.save(str(tmp_path / "copy"))
    reloaded = load_model(str(tmp_path / "copy"))
    np.testing.assert_allclose(reloaded.encode(["hello"], 32), minilm.encode(["hello"], 32), atol=1e-5)


def test_wordllama_loads_offline_and_is_matryoshka(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("WordLlama tried to download a file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    encoder = load_model("wordllama")
    assert encoder.full_dim == 256
    texts = ["the cat sat on the mat", "a kitten rested on a rug", "interest rates rose sharply"]
    vectors = encoder.encode(texts, 64)
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_unknown_model_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unknown model"):
        load_model("no-such/model-name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a sentence-transformers model folder"):
        load_model(str(tmp_path / "empty"))
