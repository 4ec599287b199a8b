"""A recall level per query: the index tunes a schedule for each level, a search picks the cheapest
that promises the level asked for, and a level above all of them is answered by exact search.
Checked against a brute-force oracle on every path that searches: fresh queries, filters, live
writes and compaction, Milvus Lite, the CLI and the server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from conftest import RunningServer, free_port, run_cli, write_jsonl
from matryoshka.errors import StoreError, UsageError
from matryoshka.funnel import Schedule, parse_recall_levels, per_query_recall
from matryoshka.index import Index, build_index
from matryoshka.stores.base import IndexMeta

LEVELS = (0.8, 0.9, 0.95)
K = 10


def matryoshka_like(count: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors whose leading coordinates carry most of the variance, as a
    Matryoshka model's do: prefixes rank roughly as the whole vector does, but not exactly."""
    scale = np.linspace(1.0, 0.2, dim, dtype=np.float32)
    centres = np.random.default_rng(0).standard_normal((40, dim)).astype(np.float32) * scale  # one corpus' topics
    rng = np.random.default_rng(seed + 1)
    rows = centres[rng.integers(0, 40, count)] + 0.9 * rng.standard_normal((count, dim)).astype(np.float32) * scale
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def oracle(corpus: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ corpus.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def data():
    corpus = matryoshka_like(4_000, 64, 0)
    tuning = matryoshka_like(300, 64, 1)
    fresh = matryoshka_like(300, 64, 2)
    return corpus, tuning, fresh


def _build(db, corpus, tuning, head_index="flat", levels=LEVELS, metadata=None, **extra):
    ids = [f"döc-{i}" for i in range(len(corpus))]
    return build_index(
        db,
        ids,
        [f"text {i}" for i in range(len(corpus))],
        vectors=corpus,
        tune_queries=tuning,
        head_index=head_index,
        recall_levels=levels,
        metadata=metadata,
        **extra,
    )


@pytest.mark.parametrize("head_index", ["flat", "binary"])
def test_each_level_reaches_its_recall_on_fresh_queries_and_costs_no_more_than_the_next(tmp_path, data, head_index):
    corpus, tuning, fresh = data
    meta = _build(str(tmp_path / "index"), corpus, tuning, head_index=head_index)
    levels = meta.schedules_by_recall()
    assert sorted(levels) == [*LEVELS, 0.99] and set(meta.recall_schedules) == {"0.8", "0.9", "0.95"}
    truth = oracle(corpus, fresh, K)
    shortlists = []
    with Index(str(tmp_path / "index")) as index:
        for level, schedule in levels.items():
            # the level's own schedule (on a corpus this small a search would take exact search, see below)
            result = index.search_vectors(fresh, K, schedule=index.schedule_for(K, recall=level))
            assert result.plan == "funnel"
            assert result.stage_keeps == [s.keep for s in Schedule.parse(schedule).stages]
            # tuned with a 95% bound on other queries: fresh ones may fall a little short, not far
            assert np.mean(per_query_recall(result.rows, truth)) >= level - 0.03, level
            shortlists.append(Schedule.parse(schedule).shortlist)
        assert shortlists == sorted(shortlists) and shortlists[0] < shortlists[-1]
        # a level between two tuned ones takes the higher one's schedule, the cheapest that promises it
        assert index.schedule_for(K, recall=0.92) == Schedule.parse(levels[0.95])
        assert index.schedule_for(K, recall=0.1) == Schedule.parse(levels[0.8])
        # above every tuned level only exact search promises it
        for above in (0.999, 1.0):
            result = index.search_vectors(fresh, K, recall=above)
            assert result.plan.startswith("exact (recall") and index.schedule_for(K, recall=above) is None
            np.testing.assert_array_equal(result.rows, truth)
        # the default is still the target recall's schedule
        assert index.schedule_for(K) == Schedule.parse(meta.schedule)


def test_bad_levels_and_bad_combinations_are_refused(tmp_path, data):
    corpus, tuning, _ = data
    for bad in ("1.5", "0", "nan", "x", "0.9,,-1"):
        with pytest.raises(UsageError, match="not a number in|must be a number in"):
            parse_recall_levels(bad)
    assert parse_recall_levels("0.99, 0.9,,0.9") == (0.9, 0.99) and parse_recall_levels("") == ()
    with pytest.raises(UsageError, match="a recall level must be a number in"):
        _build(str(tmp_path / "never"), corpus[:100], tuning, levels=(0.9, 2.0))
    assert not (tmp_path / "never").exists()
    _build(str(tmp_path / "index"), corpus[:500], tuning[:50], levels=(0.9,))
    with Index(str(tmp_path / "index")) as index:
        for bad in (0, -0.5, 1.01, float("nan"), True):
            with pytest.raises(UsageError, match="recall must be a number in"):
                index.search_vectors(tuning[:1], K, recall=bad)
        with pytest.raises(UsageError, match="not two of them"):
            index.search_vectors(tuning[:1], K, recall=0.9, exact=True)
        with pytest.raises(UsageError, match="not two of them"):
            index.search_vectors(tuning[:1], K, recall=0.9, schedule=Schedule.parse("8:100,64:10"))


def test_stored_levels_are_checked_when_an_index_opens():
    base = {"model": None, "full_dim": 8, "head_dim": 8, "count": 1, "format_version": 2}
    assert IndexMeta.from_dict({**base, "recall_schedules": {"0.9": "8:10"}}, "x").recall_schedules == {"0.9": "8:10"}
    for bad in ({"high": "8:10"}, {"1.5": "8:10"}, {"0.9": 3}):
        with pytest.raises(StoreError, match="recall_schedules maps a recall level"):
            IndexMeta.from_dict({**base, "recall_schedules": bad}, "x")


def test_levels_follow_filters_writes_and_compaction(tmp_path, data):
    corpus, tuning, fresh = data
    rng = np.random.default_rng(5)
    colours = rng.choice(["red", "green", "blue"], len(corpus))
    db = str(tmp_path / "index")
    _build(db, corpus, tuning, metadata=[{"colour": c} for c in colours])
    with Index(db) as index:
        # a filtered search at a level: every hit passes, and above the levels it is the filtered oracle
        allowed = colours == "red"
        truth = oracle(corpus, fresh[:50], K, allowed)
        cheap = index.search_vectors(
            fresh[:50], K, schedule=index.schedule_for(K, recall=0.8), filter={"colour": "red"}
        )
        assert allowed[cheap.rows[cheap.rows >= 0]].all()
        exact = index.search_vectors(fresh[:50], K, recall=1.0, filter={"colour": "red"})
        np.testing.assert_array_equal(exact.rows, truth)
        # a trickle of single writes with any Unicode id: each is found by an exact-level search at once
        added = matryoshka_like(20, 64, 9)
        added_ids = []
        for i, vector in enumerate(added):
            doc_id = ["𝔡oc", "日本", "a\u0301", "x" * 200, "-9223372036854775808"][i % 5] + f"/{i}"
            index.add([doc_id], [f"added {i}"], vectors=vector[None, :])
            added_ids.append(doc_id)
            assert index.hits(index.search_vectors(vector[None, :], 1, recall=1.0))[0].ids == [doc_id]
        index.delete(["döc-0", "döc-1"])
        everything = np.concatenate([corpus[2:], added])
        names = np.array([f"döc-{i}" for i in range(2, len(corpus))] + added_ids, dtype=object)

        def found_ids(result) -> list[list[str]]:
            return [hits.ids for hits in index.hits(result)]

        truth = names[oracle(everything, fresh, K)].tolist()
        assert found_ids(index.search_vectors(fresh, K, recall=1.0)) == truth
        meta = index.compact()
        assert set(meta.recall_schedules) == {"0.8", "0.9", "0.95"} and "re-tuned" in meta.autotune.queries
        for level in meta.schedules_by_recall():
            got = found_ids(index.search_vectors(fresh, K, schedule=index.schedule_for(K, recall=level)))
            assert np.mean([len(set(a) & set(b)) / K for a, b in zip(got, truth)]) >= level - 0.05, level


@pytest.mark.slow
def test_levels_on_milvus_lite(tmp_path, data):
    corpus, tuning, fresh = data
    db = str(tmp_path / "index.db")
    meta = _build(db, corpus[:2_000], tuning, levels=(0.9,))
    assert set(meta.recall_schedules) == {"0.9"}
    truth = oracle(corpus[:2_000], fresh[:40], K)
    with Index(db) as index:
        cheap = index.search_vectors(fresh[:40], K, schedule=index.schedule_for(K, recall=0.9))
        assert cheap.plan.startswith("funnel in Milvus")
        assert np.mean(per_query_recall(cheap.rows, truth)) >= 0.85
        exact = index.search_vectors(fresh[:40], K, recall=0.9999)
        np.testing.assert_array_equal(exact.rows, truth)


def test_cli_and_server_with_a_real_model(tmp_path, squad_sample):
    """wordllama on real SQuAD paragraphs: 'index --recall-levels', 'search --recall', and
    /search's recall, each level's answer checked against exact search."""
    corpus = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": i, "text": t} for i, t in zip(squad_sample.corpus.ids[:400], squad_sample.corpus.texts[:400])],
    )
    db = tmp_path / "index"
    bad = run_cli(
        "index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(db), "--recall-levels", "0.9,1.2"
    )
    assert bad.returncode != 0 and "--recall-levels must be a number in (0, 1], got 1.2" in bad.stderr + bad.stdout
    assert not db.exists()
    made = run_cli("index", "--model", "wordllama", "--corpus", str(corpus), "--db", str(db), "--recall-levels", "0.9")
    assert made.returncode == 0, made.stderr
    assert "Recall levels for --recall: 0.9 → " in made.stdout and "0.99 → " in made.stdout
    question = squad_sample.query_texts[0]
    out = tmp_path / "answers.json"
    # 400 paragraphs: exact search is faster than the funnel, so a level that it promises is exact
    cheap = run_cli("search", "--db", str(db), "--query", question, "--recall", "0.9", "--json", str(out))
    assert cheap.returncode == 0, cheap.stderr
    assert "exact (faster than the funnel on this index when it was tuned) (for recall ≥ 0.9)" in cheap.stdout
    assert json.loads(out.read_text())["results"][0]["mode"] == "exact"
    strict = run_cli("search", "--db", str(db), "--query", question, "--recall", "0.9999")
    assert "exact (recall 0.9999 is above every level this index tuned)" in strict.stdout
    both = run_cli("search", "--db", str(db), "--query", question, "--recall", "0.9", "--exact")
    assert both.returncode != 0 and "give --recall, or --schedule, --exact or --dim" in both.stderr + both.stdout
    port = free_port()
    log = tmp_path / "serve.log"
    server = RunningServer(["serve", "--db", str(db), "--port", str(port)], log, f"http://127.0.0.1:{port}/")
    try:
        server.wait_healthy()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            info = client.get("/info").json()
            assert set(info["recall_levels"]) == {"0.9", "0.99"} and info["default_plan"] == "exact"
            exact = client.post("/search", json={"query": question, "exact": True}).json()
            for recall, why in ((0.9999, "above every level"), (0.9, "faster than the funnel")):
                answer = client.post("/search", json={"query": question, "recall": recall}).json()
                assert answer["mode"] == "exact" and why in answer["plan"], answer
                assert [h["id"] for h in answer["hits"]] == [h["id"] for h in exact["hits"]]
            level = info["recall_levels"]["0.9"]
            stages = [[int(part.split(":")[0]), int(part.split(":")[1])] for part in level.split(",")]
            cheap = client.post("/search", json={"query": question, "schedule": stages}).json()
            assert (
                cheap["mode"] == "funnel"
                and len({h["id"] for h in cheap["hits"]} & {h["id"] for h in exact["hits"]}) >= 7
            )
    finally:
        server.stop()


def test_exact_search_answers_where_the_index_timed_it_faster(tmp_path, data):
    """A small corpus: exact search is faster than any funnel, the index records it, and a search
    that names no schedule is exact (and says why); figures saying the opposite bring the funnel
    back, for single queries and batches on their own."""
    corpus, tuning, fresh = data
    db = str(tmp_path / "index")
    meta = _build(db, corpus[:1_000], tuning)
    assert set(meta.plan_seconds) == {"exact", "0.8", "0.9", "0.95", "0.99"}
    assert all(len(v) == 3 and min(v) > 0 for v in meta.plan_seconds.values())  # quick: a large batch timed too
    exact = meta.plan_seconds["exact"]
    assert exact[0] < meta.plan_seconds["0.99"][0]  # a thousand rows: one product beats any funnel
    truth = oracle(corpus[:1_000], fresh, K)
    with Index(db) as index:
        result = index.search_vectors(fresh, K)
        assert result.plan == "exact (faster than the funnel on this index when it was tuned)"
        np.testing.assert_array_equal(result.rows, truth)
        assert index.plan_for(K) is None and index.schedule_for(K) == Schedule.parse(meta.schedule)
    # the same index timed the other way round: the funnel for single queries, exact for batches
    from matryoshka.stores import open_writer

    slow = {**meta.plan_seconds, "exact": [1.0, 1e-9]}
    with open_writer(db, None) as writer:
        writer.save_meta(replace_meta(meta, plan_seconds=slow))
    with Index(db) as index:
        assert index.plan_for(K, batch=1) == Schedule.parse(meta.schedule)
        assert index.plan_for(K, batch=64) is None
        assert index.search_vectors(fresh[:1], K).plan == "funnel"
        assert index.search_vectors(fresh, K).plan.startswith("exact (faster")
        np.testing.assert_array_equal(index.search_vectors(fresh, K, recall=0.8).rows, truth)
    # exact search faster only in a large batch (its matrix products pay off most there)
    large = {level: [*seconds[:2], 1.0] for level, seconds in meta.plan_seconds.items()}
    large["exact"] = [1.0, 1.0, 1e-9]
    with open_writer(db, None) as writer:
        writer.save_meta(replace_meta(meta, plan_seconds=large))
    with Index(db) as index:
        assert index.plan_for(K, batch=1) == index.plan_for(K, batch=1023) == Schedule.parse(meta.schedule)
        assert index.plan_for(K, batch=1024) is None
        many = np.resize(fresh, (1500, fresh.shape[1]))
        assert index.search_vectors(many, K).plan.startswith("exact (faster")
        np.testing.assert_array_equal(index.search_vectors(many, K).rows, np.resize(truth, (1500, K)))


def replace_meta(meta, **changes):
    from dataclasses import replace

    return replace(meta, **changes)
