"""Readers on the real shipped files and on broken ones: every error names file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jsonl
from matryoshka.data import DataError, read_beir, read_pairs, read_sts, read_texts


def _error(call, *args) -> DataError:
    with pytest.raises(DataError) as caught:
        call(*args)
    return caught.value


# ---------------------------------------------------------------- STS Benchmark


def test_real_sts_benchmark_splits(shared_data):
    for split, count in (("train", 5749), ("dev", 1500), ("test", 1379)):
        pairs = read_sts(shared_data / "stsb", split)
        assert len(pairs) == count and len(pairs.second) == count
        assert pairs.scores.min() >= 0 and pairs.scores.max() <= 5
    # rows with quote characters survive intact (a CSV reader with quoting would merge or split them)
    test = read_sts(shared_data / "stsb", "test")
    assert any('"' in s for s in test.first + test.second)


def test_sts_wrong_field_count_names_line(tmp_path):
    good = "main-news\tfile\t2012\t0001\t4.0\tA cat.\tA cat sits.\n"
    path = tmp_path / "sts-test.csv"
    path.write_text(good + good + "main-news\tfile\t2012\t3\t4.0\tonly one sentence\n")
    err = _error(read_sts, tmp_path, "test")
    assert err.line == 3 and "expected 7 or 9 tab-separated fields, found 6" in str(err) and str(path) in str(err)


def test_sts_bad_score_and_empty_file(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text("g\tf\t2012\t1\tseven\ta\tb\n")
    assert "not a number" in str(_error(read_sts, tmp_path, "dev"))
    path.write_text("g\tf\t2012\t1\t6.5\ta\tb\n")
    assert "outside 0.0..5.0" in str(_error(read_sts, tmp_path, "dev"))
    path.write_text("")
    assert "contains no records" in str(_error(read_sts, tmp_path, "dev"))
    assert "no sts-train.csv" in str(_error(read_sts, tmp_path, "train"))


# ---------------------------------------------------------------- BEIR


def test_real_beir_scifact(shared_data):
    data = read_beir(shared_data / "scifact", "test")
    assert len(data.corpus) == 5183
    assert len(data.query_ids) == 300 and sum(len(v) for v in data.qrels.values()) == 339
    # documents are title and text joined by a space
    assert all(t.strip() for t in data.corpus.texts)


def _beir(tmp_path: Path, qrels: str, corpus=None, queries=None) -> Path:
    write_jsonl(
        tmp_path / "corpus.jsonl", corpus or [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "text": "two"}]
    )
    write_jsonl(tmp_path / "queries.jsonl", queries or [{"_id": "q1", "text": "first?"}])
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return tmp_path


def test_beir_good_folder(tmp_path):
    data = read_beir(_beir(tmp_path, "q1\td1\t1\nq1\td2\t0\n"))
    assert data.corpus.texts == ["T one", "two"]
    assert data.qrels == {"q1": {"d1": 1, "d2": 0}} and data.query_texts == ["first?"]


def test_beir_missing_qrels_ids_name_the_line(tmp_path):
    err = _error(read_beir, _beir(tmp_path, "q1\td1\t1\nq9\td1\t1\n"))
    assert err.line == 3 and "query id 'q9'" in str(err) and "qrels/test.tsv" in str(err)
    err = _error(read_beir, _beir(tmp_path, "q1\td7\t1\n"))
    assert err.line == 2 and "corpus id 'd7'" in str(err)
    err = _error(read_beir, _beir(tmp_path, "q1\td1\n"))
    assert "expected 3 tab-separated fields" in str(err)


def test_beir_bad_json_and_missing_split(tmp_path):
    folder = _beir(tmp_path, "q1\td1\t1\n")
    with open(folder / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "d3", "text": "unterminated\n')
    err = _error(read_beir, folder)
    assert err.line == 3 and "invalid JSON" in str(err) and "corpus.jsonl" in str(err)
    folder = _beir(tmp_path / "other", "q1\td1\t1\n") if (tmp_path / "other").mkdir() is None else None
    assert "no qrels for split 'dev' (available: test)" in str(_error(read_beir, folder, "dev"))


def test_beir_duplicate_ids_and_empty_files(tmp_path):
    corpus = [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]
    err = _error(read_beir, _beir(tmp_path, "q1\td1\t1\n", corpus=corpus))
    assert "duplicate _id 'd1' (first seen on line 1)" in str(err) and err.line == 2
    (tmp_path / "corpus.jsonl").write_text("")
    assert "contains no records" in str(_error(read_beir, tmp_path))


def test_beir_gzip_folder(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl.gz", [{"_id": 1, "text": "x"}])
    write_jsonl(tmp_path / "queries.jsonl.gz", [{"_id": "q", "text": "y"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq\t1\t2\n")
    assert read_beir(tmp_path, "dev").qrels == {"q": {"1": 2}}


# ---------------------------------------------------------------- user files


def test_user_texts_in_every_format(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "hello"}, {"id": 2, "title": "T", "text": "body"}])
    (tmp_path / "b.csv").write_text('id,text\n1,"a, quoted ""text"""\n2,plain\n')
    (tmp_path / "c.tsv").write_text('id\ttext\n1\ta "quote" stays\n')
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as handle:
        handle.write('{"text": "zipped"}\n')
    assert read_texts(tmp_path / "a.jsonl").texts == ["hello", "T body"]
    assert read_texts(tmp_path / "a.jsonl").ids == ["x", "2"]
    assert read_texts(tmp_path / "b.csv").texts == ['a, quoted "text"', "plain"]
    assert read_texts(tmp_path / "c.tsv").texts == ['a "quote" stays']
    assert read_texts(tmp_path / "d.txt").ids == ["1", "3"]
    assert read_texts(tmp_path / "e.jsonl.gz").texts == ["zipped"]


def test_user_text_errors(tmp_path):
    write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    assert "duplicate id 'a'" in str(_error(read_texts, tmp_path / "dup.jsonl"))
    write_jsonl(tmp_path / "missing.jsonl", [{"id": "a", "body": "x"}])
    err = _error(read_texts, tmp_path / "missing.jsonl")
    assert err.line == 1 and "missing field 'text'" in str(err)
    write_jsonl(tmp_path / "type.jsonl", [{"text": 5}])
    assert "must be a string" in str(_error(read_texts, tmp_path / "type.jsonl"))
    (tmp_path / "rows.tsv").write_text("id\ttext\n1\tok\n2\ttoo\tmany\n")
    err = _error(read_texts, tmp_path / "rows.tsv")
    assert err.line == 3 and "expected 2 fields" in str(err)
    (tmp_path / "array.jsonl").write_text("[1, 2]\n")
    assert "expected a JSON object" in str(_error(read_texts, tmp_path / "array.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "contains no records" in str(_error(read_texts, tmp_path / "empty.jsonl"))
    (tmp_path / "x.parquet").write_text("")
    assert "unknown file type" in str(_error(read_texts, tmp_path / "x.parquet"))
    (tmp_path / "latin.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    assert "not valid UTF-8" in str(_error(read_texts, tmp_path / "latin.txt"))
    assert "no such file" in str(_error(read_texts, tmp_path / "nope.jsonl"))


def test_pairs_and_scored_pairs(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": "p", "negative": "n"}])
    pairs = read_pairs(tmp_path / "p.jsonl")
    assert pairs.first == ["q"] and pairs.negative == ["n"] and pairs.scores is None
    (tmp_path / "s.csv").write_text("sentence1,sentence2,score\na,b,4.5\nc,d,1\n")
    scored = read_pairs(tmp_path / "s.csv")
    np.testing.assert_allclose(scored.scores, [4.5, 1.0])
    (tmp_path / "bad.csv").write_text("sentence1,sentence2,score\na,b,high\n")
    err = _error(read_pairs, tmp_path / "bad.csv")
    assert err.line == 2 and "score 'high' is not a number" in str(err)
    write_jsonl(
        tmp_path / "mixed.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "a", "positive": "b", "score": 1}]
    )
    assert "different set of fields" in str(_error(read_pairs, tmp_path / "mixed.jsonl"))
    write_jsonl(tmp_path / "wrong.jsonl", [{"left": "a", "right": "b"}])
    assert "a pair needs one of" in str(_error(read_pairs, tmp_path / "wrong.jsonl"))


def test_a_byte_that_is_not_utf8_is_reported_on_its_own_line(tmp_path):
    """Decoding line by line: the line named is the one holding the byte, however far into the file."""
    lines = [json.dumps({"id": i, "text": f"document {i}"}).encode() + b"\n" for i in range(1500)]
    lines[20] = b'{"id": 20, "text": "bad \xff byte"}\n'
    cases = {
        "bad.jsonl": b"".join(lines),
        "bad.csv": b"id,text\n1,ok\n2,bad \xfe\n3,ok\n",
        "bad.txt": b"ok\nok\nbad \xfe\nok\n",
        "bad.tsv": b"id\ttext\n" + b"".join(b"%d\tok\n" % i for i in range(2000)) + b"x\tbad \xc3\n",
    }
    expected = {"bad.jsonl": 21, "bad.csv": 3, "bad.txt": 3, "bad.tsv": 2002}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        error = _error(read_texts, tmp_path / name)
        assert error.line == expected[name] and "not valid UTF-8" in str(error), (name, str(error))
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(gzip.compress(cases["bad.jsonl"]))
    assert _error(read_texts, gz).line == 21


def test_a_null_text_is_named_as_null_not_missing(tmp_path):
    path = tmp_path / "null.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "x", "text": null}\n')
    error = _error(read_texts, path)
    assert error.line == 2 and "field 'text' is null" in str(error)


def test_csv_numbers_keep_every_digit(tmp_path):
    """Issue 21 row 12: a zip code keeps its leading zero (and makes its column strings), 19-digit
    integers within int64 stay exact integers, an integer past int64 makes its column strings,
    and only ASCII digits are numbers."""
    rows = [
        ("02134", "9223372036854775807", "12345678901234567890", "007", "0", "٣"),
        ("2134", "-9223372036854775808", "1", "7", "-0", "3"),
        ("", "1234567890123456789", "", "", "+5", ""),
    ]
    header = "id,text,zip,big,huge,agent,small,digit"
    lines = [header] + [f"d{i},text {i}," + ",".join(row) for i, row in enumerate(rows)]
    (tmp_path / "docs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "docs.tsv").write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n", encoding="utf-8")
    for name in ("docs.csv", "docs.tsv"):
        corpus = read_texts(tmp_path / name)
        assert corpus.schema == {
            "zip": "string",
            "big": "integer",
            "huge": "string",
            "agent": "string",
            "small": "integer",
            "digit": "string",
        }
        assert [m["zip"] for m in corpus.metadata] == ["02134", "2134", None]
        assert [m["big"] for m in corpus.metadata] == [2**63 - 1, -(2**63), 1234567890123456789]
        assert [m["huge"] for m in corpus.metadata] == ["12345678901234567890", "1", None]
        assert [m["agent"] for m in corpus.metadata] == ["007", "7", None]
        assert [m["small"] for m in corpus.metadata] == [0, 0, 5]
        assert [m["digit"] for m in corpus.metadata] == ["٣", "3", None]
