"""Per-dimension evaluation end to end with the real default model on small slices of real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from matryoshka.data import read_beir, read_sts
from matryoshka.errors import MatryoshkaError
from matryoshka.evaluate import evaluate_retrieval, evaluate_sts, parse_dims
from matryoshka.vectors import halving_dims


def test_default_and_parsed_dims():
    assert halving_dims(384) == [384, 192, 96, 48, 24, 12]
    assert halving_dims(256) == [256, 128, 64, 32, 16, 8]
    assert halving_dims(100) == [100, 50, 25]
    assert parse_dims("12, 384,48,48", 384) == [384, 48, 12]
    for bad in ("0", "385", "a,b", ","):
        with pytest.raises(MatryoshkaError):
            parse_dims(bad, 384)


@pytest.mark.slow
def test_retrieval_encodes_once_and_scores_every_dim(minilm, scifact_slice):
    calls = []
    original = minilm.encode

    def counting_encode(texts, dim=None, **kwargs):
        calls.append((len(texts), dim))
        return original(texts, dim, **kwargs)

    minilm.encode = counting_encode
    try:
        data = read_beir(scifact_slice, "test")
        report = evaluate_retrieval(minilm, data, [96, 24], ["truncate", "pca"])
    finally:
        del minilm.encode
    assert calls == [(len(data.query_ids), None), (len(data.corpus), None)]  # one full-dim pass each
    assert {(r["method"], r["dim"]) for r in report.results} == {
        (m, d) for m in ("truncate", "pca") for d in (384, 96, 24)
    }
    full = report.score("truncate", 384)
    assert full > 0.6  # MiniLM on a 370-document SciFact slice
    # the PCA rotation is orthogonal: at full dimension it ranks exactly like the original vectors
    assert report.score("pca", 384) == pytest.approx(full, abs=1e-6)
    assert report.score("truncate", 24) < full
    assert report.score("pca", 24) > report.score("truncate", 24)
    for row in report.results:
        assert 0 <= row["recall@10"] <= row["recall@100"] <= 1


@pytest.mark.slow
def test_sts_spearman_on_real_slice(minilm, shared_data):
    pairs = read_sts(shared_data / "stsb", "test")
    from matryoshka.data import Pairs

    head = Pairs(pairs.first[:300], pairs.second[:300], scores=pairs.scores[:300])
    train = read_sts(shared_data / "stsb", "train")
    report = evaluate_sts(minilm, head, [48, 12], ["truncate", "pca"], fit_texts=train.first[:500] + train.second[:500])
    assert 0.75 < report.score("truncate", 384) < 0.95
    assert report.score("truncate", 12) < report.score("truncate", 48) < report.score("truncate", 384)
    assert any("500" in n or "training" in n for n in report.notes)


@pytest.mark.slow
def test_evaluate_cli_writes_the_json_contract_and_plot(scifact_slice, tmp_path):
    out, plot = tmp_path / "out.json", tmp_path / "plot.png"
    result = run_cli(
        "evaluate",
        "--model",
        "default",
        "--task",
        "retrieval",
        "--data",
        str(scifact_slice),
        "--split",
        "test",
        "--dims",
        "384,48,12",
        "--methods",
        "truncate,pca",
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    assert "ndcg@10" in result.stdout and "% full" in result.stdout
    report = json.loads(out.read_text())
    assert report["model"] == "all-MiniLM-L6-v2" and report["task"] == "retrieval"
    assert report["split"] == "test" and report["full_dim"] == 384 and report["data"] == str(scifact_slice)
    assert len(report["results"]) == 6
    for row in report["results"]:
        assert set(row) == {"method", "dim", "ndcg@10", "recall@10", "recall@100", "mrr@10"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


@pytest.mark.slow
def test_evaluate_cli_sts_json(shared_data, tmp_path):
    sts = tmp_path / "sts.csv"
    rows = read_sts(shared_data / "stsb", "dev")
    sts.write_text(
        "sentence1\tsentence2\tscore\n".replace("\t", ",")
        + "".join(
            f'"{a.replace(chr(34), chr(34) * 2)}","{b.replace(chr(34), chr(34) * 2)}",{s}\n'
            for a, b, s in zip(rows.first[:150], rows.second[:150], rows.scores[:150])
        )
    )
    out = tmp_path / "sts.json"
    result = run_cli("evaluate", "--task", "sts", "--data", str(sts), "--dims", "384,48,12", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["task"] == "sts" and {r["dim"] for r in report["results"]} == {384, 48, 12}
    assert all(set(r) == {"method", "dim", "spearman"} for r in report["results"])
    assert np.isfinite([r["spearman"] for r in report["results"]]).all()


@pytest.mark.slow
def test_evaluate_cli_errors_name_file_and_line(tmp_path, scifact_slice):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "qrels").mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (broken / name).write_text((scifact_slice / name).read_text())
    (broken / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nnot-a-query\t1\t1\n")
    result = run_cli("evaluate", "--task", "retrieval", "--data", str(broken))
    assert result.returncode == 2
    assert f"{broken / 'qrels' / 'test.tsv'}:2" in result.stderr and "not-a-query" in result.stderr
    result = run_cli("evaluate", "--task", "retrieval", "--data", str(scifact_slice), "--methods", "magic")
    assert result.returncode == 2 and "unknown method" in result.stderr
    result = run_cli("evaluate", "--task", "retrieval", "--data", str(scifact_slice), "--dims", "999")
    assert result.returncode == 2 and "outside 1..384" in result.stderr
