"""Fine-tuning with MatryoshkaLoss: a tiny random transformer (built in conftest) trains for a few
steps with each base loss, saves, and loads with its dims; bad data and Ctrl-C are handled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test here trains or fits a model

from conftest import run_cli, write_jsonl
from matryoshka.data import DataError
from matryoshka.train import (
    TrainingError,
    TrainSettings,
    choose_loss,
    matryoshka_dims,
    read_eval_data,
    read_training_data,
    train,
)

WORDS = "river bank money loan water boat tree leaf green market stock price bread oven".split()


def _sentence(rng, n=6) -> str:
    return " ".join(rng.choice(WORDS, size=n))


@pytest.fixture(scope="module")
def contrastive_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = [{"anchor": _sentence(rng), "positive": _sentence(rng), "negative": _sentence(rng)} for _ in range(48)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def scored_file(tmp_path_factory):
    rng = np.random.default_rng(1)
    rows = [
        {"sentence1": _sentence(rng), "sentence2": _sentence(rng), "score": float(rng.uniform(0, 5))} for _ in range(48)
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "scored.jsonl", rows)


@pytest.mark.parametrize("loss", ["mnrl", "cached-mnrl", "cosent"])
def test_tiny_model_trains_with_each_base_loss_and_saves_its_dims(
    tmp_path, tiny_model, contrastive_file, scored_file, shared_data, loss
):
    from sentence_transformers import SentenceTransformer

    from matryoshka.models import load_model

    data = read_training_data(scored_file if loss == "cosent" else contrastive_file)
    evaluation = read_eval_data(shared_data / "stsb")
    evaluation = type(evaluation)(evaluation.first[:100], evaluation.second[:100], None, evaluation.scores[:100])
    before = load_model(str(tiny_model)).encode(["river bank"])
    result = train(
        str(tiny_model),
        data,
        tmp_path / "out",
        TrainSettings(max_steps=4, batch_size=8, lr=1e-3, loss=loss, save_steps=2),
        eval_data=evaluation,
        show_progress=False,
    )
    assert result.steps == 4 and result.loss == loss and result.dims == [32, 16, 8]
    assert result.evaluations and set(result.evaluations[-1]) >= {"spearman_32", "spearman_16", "spearman_8"}
    assert matryoshka_dims(tmp_path / "out") == [32, 16, 8]
    config = json.loads((tmp_path / "out" / "config_sentence_transformers.json").read_text())
    assert config["matryoshka_training"]["loss"] == loss and not config["matryoshka_training"]["interrupted"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Matryoshka dimensions" in card and "| 8 |" in card and "MatryoshkaLoss" in card
    reloaded = load_model(str(tmp_path / "out"))
    plain = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    vectors = reloaded.encode(["river bank"], 8)
    assert vectors.shape == (1, 8) and plain.get_embedding_dimension() == 32
    assert not np.allclose(reloaded.encode(["river bank"]), before, atol=1e-4)  # the weights moved
    assert (tmp_path / "out" / "checkpoints").is_dir()


def test_plain_training_records_no_matryoshka_dims(tmp_path, tiny_model, scored_file):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    result = train(
        str(tiny_model),
        read_training_data(scored_file),
        tmp_path / "plain",
        TrainSettings(max_steps=2, batch_size=8, matryoshka=False, rotation="none"),
        show_progress=False,
    )
    assert result.steps == 2 and matryoshka_dims(tmp_path / "plain") is None
    assert not any(isinstance(module, Dense) for module in SentenceTransformer(str(tmp_path / "plain"), device="cpu"))


def test_training_data_is_read_from_sts_and_beir_folders(shared_data):
    sts = read_training_data(shared_data / "stsb")
    assert sts.kind == "scored" and len(sts) == 5749 and max(sts.columns["score"]) <= 1.0
    beir = read_training_data(shared_data / "scifact")
    assert beir.kind == "contrastive" and len(beir) >= 809 and set(beir.columns) == {"anchor", "positive"}
    assert choose_loss("contrastive", "auto", 16) == "mnrl" and choose_loss("contrastive", "auto", 256) == "cached-mnrl"
    assert choose_loss("scored", "auto", 16) == "cosent"
    with pytest.raises(TrainingError, match="needs scored pairs"):
        choose_loss("contrastive", "cosent", 16)


def test_bad_training_data_gets_an_error_naming_the_line(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d"}\n{"anchor": "e"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3"):
        read_training_data(bad)
    result = run_cli("train", "--model", str(tiny_model), "--data", str(bad), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "bad.jsonl:3" in result.stderr
    assert not (tmp_path / "out").exists()
    scores = tmp_path / "scores.csv"
    scores.write_text("sentence1,sentence2,score\na,b,0.5\nc,d,seven\n")
    result = run_cli("train", "--model", str(tiny_model), "--data", str(scores), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "scores.csv:3" in result.stderr
    good = write_jsonl(tmp_path / "good.jsonl", [{"anchor": "a b", "positive": "c d"}] * 4)
    result = run_cli(
        "train", "--model", str(tiny_model), "--data", str(good), "--dims", "32,x", "--output", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "--dims: 'x' is not a whole number" in result.stderr
    result = run_cli(
        "train", "--model", str(tiny_model), "--data", str(good), "--dims", "64,8", "--output", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "outside 1..32" in result.stderr


def test_ctrl_c_leaves_a_usable_model(tmp_path, tiny_model, contrastive_file):
    from sentence_transformers import SentenceTransformer

    output = tmp_path / "interrupted"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "matryoshka",
            "train",
            "--model",
            str(tiny_model),
            "--data",
            str(contrastive_file),
            "--output",
            str(output),
            "--max-steps",
            "100000",
            "--batch-size",
            "8",
            "--save-steps",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    deadline = time.time() + 300
    while not list((output / "checkpoints").glob("checkpoint-*")):
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint written in 300 s"
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert "interrupted after" in out
    config = json.loads((output / "config_sentence_transformers.json").read_text())
    assert config["matryoshka_training"]["interrupted"] and config["matryoshka_dims"] == [32, 16, 8]
    model = SentenceTransformer(str(output), device="cpu")
    assert model.encode(["river bank"]).shape == (1, 32)
    checkpoint = sorted((output / "checkpoints").glob("checkpoint-*"))[-1]
    assert SentenceTransformer(str(checkpoint), device="cpu").encode(["river"]).shape == (1, 32)


def test_rotation_start_keeps_full_cosines_and_saves_as_a_plain_model(tmp_path, tiny_model, scored_file):
    """--rotation orthogonal adds a fitted rotation before Normalize: full-dimension cosines are
    unchanged (to 1e-5), prefixes differ, and the trained folder loads with SentenceTransformer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from matryoshka.metrics import cosine_rows
    from matryoshka.models import load_model
    from matryoshka.train import add_rotation
    from matryoshka.vectors import normalize

    data = read_training_data(scored_file)
    texts = ["river bank loan", "green tree leaf", "stock market price", "bread in the oven"]
    encoder = load_model(str(tiny_model))
    before = encoder.encode(texts)
    add_rotation(encoder, data, "orthogonal")
    after = encoder.encode(texts)
    assert isinstance(list(encoder.model)[-2], Dense)
    np.testing.assert_allclose(after @ after.T, before @ before.T, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(normalize(after[:, :8]), normalize(before[:, :8]), atol=1e-3)  # the prefixes were re-ordered
    assert cosine_rows(after[:1], after[1:2])[0] == pytest.approx(cosine_rows(before[:1], before[1:2])[0], abs=1e-5)

    result = run_cli(
        "train",
        "--model",
        str(tiny_model),
        "--data",
        str(scored_file),  # orthogonal is the default
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output",
        str(tmp_path / "rotated"),
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "rotated" / "config_sentence_transformers.json").read_text())
    assert config["matryoshka_training"]["settings"]["rotation"] == "orthogonal"
    plain = SentenceTransformer(str(tmp_path / "rotated"), device="cpu")
    assert any(isinstance(module, Dense) for module in plain)
    np.testing.assert_allclose(plain.encode(texts), load_model(str(tmp_path / "rotated")).encode(texts), atol=1e-5)
    result = run_cli(
        "train",
        "--model",
        str(tiny_model),
        "--data",
        str(scored_file),
        "--rotation",
        "spin",
        "--output",
        str(tmp_path / "bad"),
    )
    assert result.returncode == 2 and "unknown rotation 'spin'" in result.stderr
