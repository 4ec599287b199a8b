"""The demo and encode commands run for real, in child processes."""

from __future__ import annotations

import json

import numpy as np

from conftest import run_cli, write_jsonl


def test_demo_runs_offline_end_to_end_and_serves(demo_server):
    """``demo --serve``: the report, the plot, the funnel table, then the server on the demo index."""
    output = demo_server.log
    demo = demo_server.output_dir
    assert "SQuAD" in output and "ndcg@10" in output
    assert "Serving 414 documents" in output and demo_server.url.replace("127.0.0.1", "localhost") in output
    report = json.loads((demo / "evaluation.json").read_text())
    full = next(r for r in report["results"] if r["method"] == "truncate" and r["dim"] == 384)
    smallest = {r["method"]: r["ndcg@10"] for r in report["results"] if r["dim"] == 12}
    assert full["ndcg@10"] > 0.8  # questions find their own paragraph
    assert smallest["pca"] > smallest["truncate"]  # MiniLM is not Matryoshka-trained: PCA prefixes win
    assert (demo / "evaluation.png").stat().st_size > 20_000
    # the funnel part: a local index of the sample, searched by the funnel and exactly
    assert "Funnel vs exact search" in output
    funnel = json.loads((demo / "funnel.json").read_text())
    assert funnel["recall_vs_exact"] >= 0.95 and funnel["documents"] == 414 and funnel["queries"] == 827
    assert abs(funnel["funnel_ndcg"] - funnel["exact_ndcg"]) < 0.02
    assert abs(funnel["exact_ndcg"] - full["ndcg@10"]) < 1e-6  # exact search is the full-dim evaluation
    assert (demo / "index" / "current" / "meta.json").exists()


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
