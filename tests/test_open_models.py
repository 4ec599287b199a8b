"""Open Matryoshka models that need their own code and settings: --trust-remote-code, prompts,
a layer norm before truncation, and declared Matryoshka dims driving the index's defaults.

The model that ships code is built here: a one-layer BERT whose config.json maps AutoModel to a
modeling file beside the weights (a BertModel subclass that shifts its hidden states, so that
its code running is visible), MiniLM's tokenizer, and sentence-transformers files declaring
prompts, Matryoshka dims and a layer norm before truncation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_jsonl
from matryoshka.catalog import KNOWN_MODELS, find_known_model
from matryoshka.errors import ModelError
from matryoshka.funnel import Schedule
from matryoshka.index import Index, build_index
from matryoshka.models import SentenceTransformerEncoder, listed_models, load_model, matryoshka_dims
from matryoshka.vectors import default_head_dim, head_candidates, prefix_norm_dims, stage_dims

HIDDEN = 64
DECLARED_DIMS = [64, 32, 24, 16]
MODELING = '''
from transformers import BertConfig, BertModel


class TinyRemoteConfig(BertConfig):
    model_type = "tiny-remote"


class TinyRemoteModel(BertModel):
    """A BertModel whose hidden states are shifted by one: only this file's code does that."""

    config_class = TinyRemoteConfig

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        output.last_hidden_state = output.last_hidden_state + 1.0
        return output
'''
TEXTS = [
    "Tides are caused by the gravity of the moon and the sun.",
    "Bread rises because yeast makes carbon dioxide.",
    "The capital of France is Paris.",
    "Plants turn light into chemical energy by photosynthesis.",
    "A very large dog breed from Tibet guards livestock.",
    "Volcanoes erupt when magma rises through the crust.",
    "The stock market fell sharply on Monday.",
    "Honey bees communicate by dancing.",
    "Glaciers carve valleys over thousands of years.",
    "The violin has four strings tuned in fifths.",
    "Rain forms when droplets in clouds grow heavy.",
    "Chess is played on a board of sixty-four squares.",
]


@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from matryoshka.models import bundled_minilm_path

    folder = tmp_path_factory.mktemp("models") / "tiny-remote"
    folder.mkdir()
    minilm = bundled_minilm_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    saved = json.loads((folder / "config.json").read_text())
    saved.update(
        model_type="tiny-remote",
        architectures=["TinyRemoteModel"],
        auto_map={"AutoConfig": "modeling_tiny.TinyRemoteConfig", "AutoModel": "modeling_tiny.TinyRemoteModel"},
    )
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "modeling_tiny.py").write_text(MODELING)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    settings = {
        "prompts": {"query": "search_query: ", "document": "search_document: "},
        "default_prompt_name": None,
        "matryoshka_dims": DECLARED_DIMS,
        "pre_truncation": "layer_norm",
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def trusted(remote_code_model):
    return load_model(str(remote_code_model), trust_remote_code=True)


def _torch_reference(model, texts: list[str], dim: int) -> np.ndarray:
    """What nomic's model card does, in torch: layer norm over the full pooled vector, then the
    first ``dim`` coordinates re-normalised."""
    import torch
    import torch.nn.functional as F

    full = torch.from_numpy(model.encode(texts, convert_to_numpy=True))
    normed = F.layer_norm(full, normalized_shape=(full.shape[1],))
    return F.normalize(normed[:, :dim], p=2, dim=1).numpy()


def test_the_catalog_knows_open_and_hosted_matryoshka_models():
    nomic = find_known_model("nomic-ai/nomic-embed-text-v1.5")
    assert nomic is find_known_model("NOMIC-EMBED-TEXT-V1.5") is find_known_model("/models/nomic-embed-text-v1.5/")
    assert nomic.full_dim == 768 and nomic.matryoshka_dims == (768, 512, 256, 128, 64)
    assert nomic.trust_remote_code and nomic.pre_truncation == "layer_norm"
    assert (nomic.query_prompt, nomic.document_prompt) == ("search_query: ", "search_document: ")
    gte = find_known_model("gte-multilingual-base")
    assert gte.trust_remote_code and gte.matryoshka_dims == (768, 512, 384, 256, 128) and gte.query_prompt is None
    mxbai = find_known_model("mixedbread-ai/mxbai-embed-large-v1")
    assert not mxbai.trust_remote_code and mxbai.full_dim == 1024 and mxbai.query_prompt.startswith("Represent")
    small = find_known_model("openai:text-embedding-3-small")
    assert small is find_known_model("text-embedding-3-small") and small.remote
    assert (small.full_dim, small.matryoshka_dims) == (1536, (1536, 768, 512, 256))
    assert find_known_model("openai:text-embedding-3-large").matryoshka_dims == (3072, 1024, 256)
    assert find_known_model("no-such/model") is None and find_known_model("wordllama") is None
    for model in KNOWN_MODELS:  # largest first, ending at the full dimension
        assert model.matryoshka_dims[0] == model.full_dim
        assert list(model.matryoshka_dims) == sorted(model.matryoshka_dims, reverse=True)


def test_declared_dims_move_the_default_head_and_stages_to_trained_prefixes():
    nomic = (768, 512, 256, 128, 64)
    assert default_head_dim(768) == 24 and default_head_dim(768, nomic) == 64
    assert head_candidates(768) == [24, 48, 96, 192] and head_candidates(768, nomic) == [64, 128, 256]
    assert stage_dims(768, 64, nomic) == [64, 128, 256, 512, 768]
    assert stage_dims(3072, 256, (3072, 1024, 256)) == [256, 1024, 3072]  # no untrained 512 or 2048
    assert Schedule.binary(768, 10, 1000, trained=nomic).stages[1].dim == 512  # not the untrained 384
    assert prefix_norm_dims(768, nomic) == [64, 128, 256]
    # a model that declares nothing keeps today's halvings
    assert stage_dims(256) == [8, 16, 32, 64, 128, 256] and prefix_norm_dims(256) == [8, 16, 32, 64, 128]


def test_a_model_that_ships_code_needs_the_flag(remote_code_model, tmp_path):
    with pytest.raises(ModelError, match="runs code of its own: config.json maps .*--trust-remote-code"):
        load_model(str(remote_code_model))
    # a hub name the catalog knows to need code is refused before anything is downloaded
    with pytest.raises(ModelError, match="nomic-embed-text-v1.5 ships its modeling code.*--trust-remote-code"):
        load_model("nomic-ai/nomic-embed-text-v1.5")
    with pytest.raises(ModelError, match="is a hub model: download it where a network exists"):
        load_model("nomic-ai/nomic-embed-text-v1.5", trust_remote_code=True)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"id": "a", "text": "tides"}])
    failed = run_cli(
        "encode", "--model", str(remote_code_model), "--input", str(texts), "--output", str(tmp_path / "v.npy")
    )
    assert failed.returncode == 2 and "--trust-remote-code" in failed.stderr and "Traceback" not in failed.stderr


def test_with_the_flag_its_code_runs_with_its_prompts_dims_and_layer_norm(trusted):
    assert type(trusted.model[0].auto_model).__name__ == "TinyRemoteModel"  # the folder's own class
    assert trusted.options == {"trust_remote_code": True} and matryoshka_dims(trusted) == tuple(DECLARED_DIMS)
    assert trusted.pre_truncation == "layer_norm"
    assert (trusted.query_prompt, trusted.document_prompt) == ("search_query: ", "search_document: ")
    query = ["what causes the tides?"]
    for dim in (16, 24, 64):
        # the prompt is really prepended, and the layer norm is torch's, applied before truncating
        np.testing.assert_allclose(
            trusted.encode(query, dim, kind="query"),
            _torch_reference(trusted.model, ["search_query: " + query[0]], dim),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            trusted.encode(TEXTS[:3], dim, kind="document"),
            _torch_reference(trusted.model, ["search_document: " + t for t in TEXTS[:3]], dim),
            atol=1e-5,
        )
    # the step matters: without it the prefixes point elsewhere (the model's hidden states are
    # shifted by one, a common component that the layer norm takes out)
    plain = SentenceTransformerEncoder(trusted.model, "plain", query_prompt="search_query: ")
    assert plain.pre_truncation is None
    assert not np.allclose(plain.encode(query, 16, kind="query"), trusted.encode(query, 16, kind="query"), atol=1e-2)


@pytest.mark.slow
def test_an_index_records_the_flag_and_prompts_and_search_reloads_the_model(remote_code_model, trusted, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])
    db = tmp_path / "index"
    made = run_cli("index", "--model", str(remote_code_model), "--corpus", str(corpus), "--db", str(db))
    assert made.returncode == 2 and "--trust-remote-code" in made.stderr and not db.exists()
    made = run_cli(
        "index", "--model", str(remote_code_model), "--trust-remote-code", "--corpus", str(corpus), "--db", str(db)
    )
    assert made.returncode == 0, made.stderr
    with Index(db) as index:
        meta = index.meta
    assert meta.model_options == {"trust_remote_code": True}
    assert (meta.query_prompt, meta.document_prompt) == ("search_query: ", "search_document: ")
    # the declared dims drive the defaults: head 16 (not d/32 = 8, which was not trained), stages on trained dims
    assert meta.trained_dims == tuple(DECLARED_DIMS) and meta.head_dim == 16
    assert {stage.dim for stage in Schedule.parse(meta.schedule).stages} <= set(DECLARED_DIMS)
    query = "why does the sea rise and fall?"
    found = run_cli(
        "search", "--db", str(db), "--query", query, "--k", "3", "--exact", "--json", str(tmp_path / "a.json")
    )
    assert found.returncode == 0, found.stderr  # it loaded the model, and its code, as recorded
    hits = json.loads((tmp_path / "a.json").read_text())["results"][0]["hits"]
    documents = trusted.encode(TEXTS, kind="document")
    scores = documents @ trusted.encode([query], kind="query")[0]
    best = np.argsort(-scores)[:3]
    assert [h["id"] for h in hits] == [f"d{i}" for i in best]
    np.testing.assert_allclose([h["score"] for h in hits], scores[best], atol=1e-4)


def test_prompts_reach_documents_queries_and_added_documents_with_a_real_model(minilm, tmp_path):
    prompted = SentenceTransformerEncoder(
        minilm.model, minilm.name, query_prompt="query: ", document_prompt="passage: "
    )
    meta = build_index(tmp_path / "index", [f"d{i}" for i in range(len(TEXTS))], TEXTS, encoder=prompted, k=3)
    assert (meta.query_prompt, meta.document_prompt) == ("query: ", "passage: ")
    added = "The moon pulls the oceans into two bulges."
    query = "what causes tides?"
    with Index(tmp_path / "index") as index:  # no encoder given: loaded as the index recorded it
        assert (index.encoder.query_prompt, index.encoder.document_prompt) == ("query: ", "passage: ")
        np.testing.assert_allclose(index.encode_queries([query]), minilm.encode(["query: " + query]), atol=1e-5)
        index.add(["new"], [added])
        hits = index.search(query, k=4, exact=True)[0]
    documents = minilm.encode(["passage: " + t for t in [*TEXTS, added]])
    scores = documents @ minilm.encode(["query: " + query])[0]
    best = np.argsort(-scores)[:4]
    assert hits.ids == [f"d{i}" if i < len(TEXTS) else "new" for i in best]
    np.testing.assert_allclose(hits.scores, scores[best], atol=1e-4)
    plain = minilm.encode(TEXTS) @ minilm.encode([query])[0]
    assert not np.allclose(np.sort(plain)[::-1][:4], hits.scores[:4], atol=1e-3)  # the prompts changed the scores


def test_wordllama_exposes_its_trained_dims_and_takes_prompts(wordllama):
    assert matryoshka_dims(wordllama) == (256, 128, 64)
    prompted = load_model("wordllama", query_prompt="search_query: ")
    np.testing.assert_allclose(
        prompted.encode(["tides"], kind="query"), wordllama.encode(["search_query: tides"]), atol=1e-6
    )


def test_the_models_command_lists_bundled_and_known_models():
    rows = {row["name"]: row for row in listed_models()}
    assert rows["wordllama"]["loads_from"] == "bundled" and rows["wordllama"]["matryoshka_dims"] == (256, 128, 64)
    assert rows["openai:text-embedding-3-small"]["loads_from"] == "OpenAI-compatible endpoint"
    assert rows["nomic-ai/nomic-embed-text-v1.5"]["loads_from"] == "hub (needs a network)"
    table = run_cli("models")
    assert table.returncode == 0 and "nomic-ai/nomic-embed-text-v1.5" in table.stdout and "bundled" in table.stdout
    listed = json.loads(run_cli("models", "--json").stdout)
    by_name = {row["name"]: row for row in listed}
    assert by_name["nomic-ai/nomic-embed-text-v1.5"]["trust_remote_code"] is True
    assert by_name["openai:text-embedding-3-large"]["matryoshka_dims"] == [3072, 1024, 256]
    assert by_name["all-MiniLM-L6-v2"]["aliases"] == ["default", "minilm"]
