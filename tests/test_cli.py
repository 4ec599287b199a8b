"""The demo and encode commands run for real, in child processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, write_jsonl


def test_demo_runs_offline_end_to_end_and_serves(demo_server):
    """``demo --serve``: quality per prefix of both models, the funnel over every WordNet gloss
    measured against exact search, then the server on the WordNet index; a plain log throughout."""
    output = demo_server.log
    demo = demo_server.output_dir
    assert "\r" not in output  # progress as plain lines, not a bar redrawn in place
    assert "SQuAD" in output and "nDCG@10 per prefix" in output and "Funnel vs exact search" in output
    assert "Serving 117,659 documents" in output and demo_server.url.replace("127.0.0.1", "localhost") in output
    report = json.loads((demo / "demo.json").read_text())
    quality = report["quality"]
    assert set(quality) == {"wordllama truncate", "MiniLM truncate", "MiniLM pca"}
    minilm = {
        (name, r["dim"]): r["ndcg@10"] for name in ("MiniLM truncate", "MiniLM pca") for r in quality[name]["results"]
    }
    assert minilm["MiniLM truncate", 384] > 0.8  # questions find their own paragraph
    assert minilm["MiniLM pca", 12] > minilm["MiniLM truncate", 12]  # not Matryoshka-trained: PCA prefixes win
    wordllama = {r["dim"]: r["ndcg@10"] for r in quality["wordllama truncate"]["results"]}
    assert sorted(wordllama) == [8, 16, 32, 64, 128, 256] and wordllama[128] > 0.9 * wordllama[256]
    assert (demo / "quality.png").stat().st_size > 20_000
    funnel = report["funnel"]
    assert funnel["documents"] == 117_659 and funnel["test_queries"] == 2000
    assert funnel["head"] == "binary" and funnel["schedule"].startswith("256b:")  # autotune's pick at this size
    assert 0.99 <= funnel["recall_at_10"] < 1  # the funnel's own, tuned on other lemma queries, with a margin
    assert funnel["batch_plan"] == "funnel" or funnel["batch_plan"].startswith("exact (faster")
    assert funnel["funnel_ram_bytes"] * 10 < funnel["exact_ram_bytes"]
    assert f"{funnel['single_speedup']:.1f}× faster" in output  # the measured figure is what is printed
    assert (demo / "wordnet-index" / "manifest.json").exists()


@pytest.mark.slow
def test_encode_writes_unit_vectors_and_ids(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"document number {i}"} for i in range(5)])
    out = tmp_path / "vectors" / "docs.npy"
    result = run_cli("encode", "--input", str(source), "--output", str(out), "--dim", "64")
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (tmp_path / "vectors" / "docs.npy.ids.txt").read_text().split() == [f"d{i}" for i in range(5)]


def test_encode_bad_input_fails_cleanly(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    out = tmp_path / "out.npy"
    result = run_cli("encode", "--input", str(tmp_path / "bad.jsonl"), "--output", str(out))
    assert result.returncode == 2
    assert f"{tmp_path / 'bad.jsonl'}:2: invalid JSON" in result.stderr
    assert not out.exists()


def test_help_teaches_with_examples():
    for command in ("evaluate", "encode", "demo", "index", "search", "serve", "train", "adapt"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "Example" in result.stdout and f"matryoshka {command}" in result.stdout
