"""Search results a RAG application can trust: a candidate pool independent of k, identical texts collapsed
with every other place listed, filters built from escaped values (odd file names included), relevance, and
`syncd eval`'s scores. Real LanceDB; the deterministic HashEmbedder except where the real model is named."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import config as config_mod
from syncd import search as search_mod
from syncd.api import Index
from syncd.evaluate import evaluate, read_queries, score_query
from syncd.search import SearchOptions, glob_escape, glob_regex
from syncd.testing import HashEmbedder
from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent
VOCAB = [f"w{i}" for i in range(40)]


def synced_index(tmp_path: Path, docs: Path, **sections: Any) -> Index:
    """The folder ``docs`` synced into a fresh store, opened through the Python API (HashEmbedder)."""
    from syncd.runtime import Runtime

    cfg_path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], **sections)
    cfg = config_mod.load(cfg_path)
    rt = Runtime(cfg, embedder=HashEmbedder())
    try:
        rt.open()
        summary = rt.engine.reconcile(cfg.connectors[0].name)
        assert summary.docs_failed == 0, summary.failures
        rt.store.maintain(retention_s=600)  # the full-text index, as the service builds it
    finally:
        rt.close()
    return Index(cfg, embedder=HashEmbedder())


def resync(index: Index) -> None:
    from syncd.runtime import Runtime

    rt = Runtime(index.config, embedder=HashEmbedder())
    try:
        rt.open()
        rt.engine.reconcile(index.config.connectors[0].name)
        rt.store.maintain(retention_s=600)
    finally:
        rt.close()


# -- the candidate pool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordy_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """80 pages of paragraphs drawn from a 40-word vocabulary: every query matches many chunks in both legs."""
    tmp = tmp_path_factory.mktemp("pool")
    docs = tmp / "docs"
    docs.mkdir()
    rng = random.Random(11)
    for i in range(80):
        paragraphs = [" ".join(rng.choices(VOCAB, k=rng.randint(6, 30))) for _ in range(rng.randint(1, 4))]
        (docs / f"page{i:02d}.md").write_text(f"# Page {i}\n\n" + "\n\n".join(paragraphs) + "\n")
    return synced_index(tmp, docs)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(words=st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4),
       k_small=st.integers(1, 20), extra=st.integers(0, 60))
def test_the_first_results_for_a_small_k_are_the_first_results_for_a_larger_k(
        wordy_index: Index, words: list[str], k_small: int, extra: int) -> None:
    query = " ".join(words)
    small = wordy_index.search(query, k=k_small, min_relevance=0.0)
    large = wordy_index.search(query, k=k_small + extra, min_relevance=0.0)
    assert [r["chunk_id"] for r in small] == [r["chunk_id"] for r in large][:len(small)]
    assert [r["score"] for r in small] == [r["score"] for r in large][:len(small)]
    assert len(small) == min(k_small, len(large))


def test_legs_cut_at_k_as_before_make_the_order_depend_on_k(wordy_index: Index) -> None:
    """The property above is not vacuous on this corpus: fusing legs cut at k (the former search) changes
    the first results of some query between k=3 and k=10."""
    def top(query: str, k: int) -> list[str]:
        answer = search_mod.search(wordy_index.store, HashEmbedder().encode([query])[0], query,
                                   SearchOptions(k=k, min_relevance=0.0), candidates=k)
        return [r["chunk_id"] for r in answer.results]

    differs = [q for q in (" ".join(pair) for pair in zip(VOCAB, VOCAB[1:], strict=False))
               if top(q, 3) != top(q, 10)[:3]]
    assert differs


# -- duplicates ----------------------------------------------------------------------------------------


def test_identical_texts_collapse_into_one_result_listing_every_other_place(tmp_path: Path, docs: Path) -> None:
    body = "# Failover\n\nPromote the replica with pg_ctl promote when the primary is gone.\n"
    (docs / "runbook.md").write_text(body)
    (docs / "archive").mkdir()
    (docs / "archive" / "runbook.md").write_text(body)
    (docs / "archive" / "older.md").write_text(body)
    (docs / "other.md").write_text("# Other\n\nThe replica is promoted only by the on-call engineer.\n")
    index = synced_index(tmp_path, docs)

    results = index.search("promote the replica primary", k=10, min_relevance=0.0)
    hits = [r for r in results if "pg_ctl" in r["text"]]
    assert len(hits) == 1, results
    hit = hits[0]
    places = {hit["doc_id"]} | {o["doc_id"] for o in hit["also_in"]}
    assert places == {"runbook.md", "archive/runbook.md", "archive/older.md"}
    for other in hit["also_in"]:
        assert set(other) == {"connector", "doc_id", "uri", "start_line", "end_line"}
        assert other["connector"] == "docs" and other["uri"] == str(docs / other["doc_id"])
        assert (other["start_line"], other["end_line"]) == (hit["start_line"], hit["end_line"])
    assert len(hit["content_hash"]) == 32 and len(hit["chunk_id"]) == 32
    assert isinstance(hit["table_version"], int) and hit["table_version"] == index.store.table_version()

    apart = index.search("promote the replica primary", k=10, min_relevance=0.0, dedup=False)
    copies = [r for r in apart if "pg_ctl" in r["text"]]
    assert {r["doc_id"] for r in copies} == {"runbook.md", "archive/runbook.md", "archive/older.md"}
    assert len({r["content_hash"] for r in copies}) == 1 and all(r["also_in"] == [] for r in copies)

    # A filter applies to the other places too: they are citations the caller may see.
    only_archive = index.search("promote the replica primary", k=10, min_relevance=0.0, path="archive/*")
    hit = next(r for r in only_archive if "pg_ctl" in r["text"])
    assert {hit["doc_id"]} | {o["doc_id"] for o in hit["also_in"]} == {"archive/runbook.md", "archive/older.md"}


def test_a_result_whose_text_is_held_past_the_lookup_limit_still_comes_back_whole(
        tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The legs read only what ranking needs and one lookup by content hash reads the results' rows and
    their other places; when a text is held by more rows than the lookup returns, every result is still
    read whole (by its chunk id), whichever copy it is."""
    body = "# Failover\n\nPromote the replica with pg_ctl promote when the primary is gone.\n"
    names = [f"copy{i}.md" for i in range(6)]
    for name in names:
        (docs / name).write_text(body)
    index = synced_index(tmp_path, docs)
    monkeypatch.setattr(search_mod, "ALSO_IN_LIMIT", 1)  # the lookup returns 2 rows of the 6

    hit, = index.search("promote the replica primary", k=10, min_relevance=0.0)
    assert hit["text"].endswith("when the primary is gone.") and hit["title"] == "Failover"
    assert hit["doc_id"] in names and len(hit["also_in"]) == 1
    assert hit["also_in"][0]["doc_id"] in set(names) - {hit["doc_id"]}

    every = index.search("promote the replica primary", k=10, min_relevance=0.0, dedup=False)
    full, places = index.store.complete_rows([r["chunk_id"] for r in every], [hit["content_hash"]], None)
    assert len(places) == 2  # the lookup's limit: most copies are read by their chunk id
    assert sorted(row["doc_id"] for row in full.values()) == names
    for r in every:
        assert full[r["chunk_id"]]["text"] == r["text"] and full[r["chunk_id"]]["doc_id"] == r["doc_id"]


@pytest.mark.parametrize("change", ["delete", "edit"])
def test_a_commit_during_a_search_leaves_its_answer_on_the_version_it_began_on(
        tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """A commit that lands after the legs ran and before the results' rows are read: the whole answer comes
    from the version the search began on (a page deleted meanwhile is still whole in it, an edited one has
    the text it had), never legs of one version and rows of another; the next search sees the commit."""
    (docs / "a.md").write_text("# Alpha\n\nThe replica is promoted with pg_ctl promote.\n")
    (docs / "b.md").write_text("# Beta\n\nThe replica is watched by the monitoring job.\n")
    index = synced_index(tmp_path, docs)
    before = index.store.table_version()
    real = index.store.complete_rows
    calls: list[int] = []

    def commit_then_read(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            if change == "delete":
                (docs / "a.md").unlink()
            else:
                (docs / "a.md").write_text("# Alpha\n\nThe replica is promoted by the failover script.\n")
            resync(index)
            assert index.store.table_version() > before
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index.store, "complete_rows", commit_then_read)
    answer = index.answer("replica promoted", SearchOptions(k=10, min_relevance=0.0))
    assert calls == [1]  # read once: nothing is repeated
    assert answer.table_version == before
    assert all(r["table_version"] == before for r in answer.results)
    texts = {r["doc_id"]: r["text"] for r in answer.results}
    assert set(texts) == {"a.md", "b.md"} and "pg_ctl" in texts["a.md"]
    assert all(r["title"] and r["uri"] for r in answer.results)

    after = index.answer("replica promoted", SearchOptions(k=10, min_relevance=0.0))
    assert after.table_version == index.store.table_version() > before
    texts = {r["doc_id"]: r["text"] for r in after.results}
    if change == "delete":
        assert set(texts) == {"b.md"}
    else:
        assert "failover script" in texts["a.md"] and "pg_ctl" not in texts["a.md"]


# -- filters -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True)
@given(glob=st.text(alphabet="ab*?[]!-^\\.$(){}|+#&~%_'\"é/", max_size=8),
       name=st.text(alphabet="ab-^\\.$(){}|+#&~%_'\"é/[]!*?", max_size=8))
def test_a_glob_matches_exactly_what_fnmatch_matches(glob: str, name: str) -> None:
    """The regular expression the store evaluates agrees with fnmatch (``*`` crossing folders) on any text."""
    assert (re.match(glob_regex(glob), name) is not None) == fnmatch.fnmatchcase(name, glob)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(name=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s))
def test_an_escaped_glob_matches_only_its_own_name(name: str) -> None:
    assert re.match(glob_regex(glob_escape(name)), name)
    assert not re.match(glob_regex(glob_escape(name)), name + "x")


ODD_NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12,
).filter(lambda s: not s.startswith(".") and not s.startswith("#") and not s.startswith("~$")
         and not s.endswith("~") and s not in ("4913",) and len(s.encode()) < 200)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(names=st.lists(ODD_NAME, min_size=2, max_size=4, unique_by=lambda s: s.lower()))
def test_odd_file_names_work_as_path_filter_values(tmp_path_factory: pytest.TempPathFactory, names: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("odd")
    docs = tmp / "docs"
    docs.mkdir()
    doc_ids = []
    for i, name in enumerate([*names, "it's \"odd\"; DROP %E9 [x].md"]):
        doc_id = name if name.endswith(".md") else name + ".md"
        try:
            (docs / doc_id).write_text(f"# Odd {i}\n\nshared words and marker{i}\n")
        except OSError:
            continue  # a name this file system refuses is not a file name here
        doc_ids.append(doc_id)
    index = synced_index(tmp, docs)
    for doc_id in doc_ids:
        results = index.search("shared words", k=20, min_relevance=0.0, path=glob_escape(doc_id))
        assert [r["doc_id"] for r in results] == [doc_id]


def test_filters_by_path_time_metadata_and_connector_in_the_python_api(tmp_path: Path, docs: Path) -> None:
    (docs / "runbooks").mkdir()
    (docs / "runbooks" / "db.md").write_text("# DB\n\nreplica promote steps\n")
    (docs / "runbooks" / "net.md").write_text("# Net\n\nreplica network steps\n")
    (docs / "notes.md").write_text("# Notes\n\nreplica notes\n")
    (docs / "caf%E9 50%.md").write_text("# Cafe\n\nreplica cafe\n")
    os.chmod(docs / "notes.md", 0o600)
    index = synced_index(tmp_path, docs)

    def ids(**filters: Any) -> set[str]:
        # As the files' owner: notes.md (0600) is readable by its owner only.
        return {r["doc_id"] for r in index.search("replica", k=20, min_relevance=0.0, principals=["user:root"],
                                                  **filters)}

    assert ids() == {"runbooks/db.md", "runbooks/net.md", "notes.md", "caf%E9 50%.md"}
    assert ids(path="runbooks/*") == {"runbooks/db.md", "runbooks/net.md"}
    assert ids(path="*/d?.md") == {"runbooks/db.md"}
    assert ids(path="caf%E9 50%.md") == {"caf%E9 50%.md"}
    assert ids(path="caf_E9*") == set()  # % and _ are no wildcards in a glob
    assert ids(metadata={"mode": "0o600"}) == {"notes.md"}
    assert ids(metadata={"mode": "0o600", "size": "0"}) == set()
    assert ids(connector="docs") == ids() and ids(connector="nope") == set()

    before_edit = dt.datetime.now(dt.UTC)
    (docs / "runbooks" / "net.md").write_text("# Net\n\nreplica network steps, edited\n")
    resync(index)
    assert ids(updated_since=before_edit) == {"runbooks/net.md"}
    assert ids(updated_since=before_edit.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat()) == {
        "runbooks/net.md"}
    assert ids(updated_since=before_edit - dt.timedelta(days=1)) == ids()
    with pytest.raises(search_mod.SearchOptionError, match="updated_since"):
        index.search("replica", updated_since="last tuesday")
    with pytest.raises(search_mod.SearchOptionError, match="min_relevance"):
        index.search("replica", min_relevance=2)


def test_the_cli_takes_the_same_filters(tmp_path: Path, docs: Path) -> None:
    (docs / "a").mkdir()
    (docs / "a" / "one.md").write_text("# One\n\nreplica one\n")
    (docs / "b.md").write_text("# B\n\nreplica b\n")
    index = synced_index(tmp_path, docs, embedding={"backend": "torch"})
    del index  # the CLI embeds the query with the real model: the hash vectors then mean nothing, the filters do
    env = dict(os.environ)

    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "syncd", "--config", str(tmp_path / "syncd.toml"), "query",
                               "replica", "--json", *args], capture_output=True, text=True, env=env, timeout=900)

    out = query("--path", "a/*", "--min-relevance", "0")
    assert out.returncode == 0, out.stderr
    assert {r["doc_id"] for r in json.loads(out.stdout)["results"]} == {"a/one.md"}
    out = query("--updated-since", "2999-01-01T00:00:00Z", "--min-relevance", "0")
    assert out.returncode == 0 and json.loads(out.stdout)["results"] == []
    bad = query("--min-relevance", "7")
    assert bad.returncode == 2 and "--min-relevance" in bad.stderr
    bad = query("--updated-since", "soon")
    assert bad.returncode == 2 and "--updated-since" in bad.stderr


# -- relevance -----------------------------------------------------------------------------------------

OFF_TOPIC = ["what is the capital of France", "how do I bake sourdough bread", "who won the football world cup",
             "best hiking trails in Norway", "how to train a puppy", "explain quantum entanglement"]


@pytest.fixture(scope="module")
def handbook(tmp_path_factory: pytest.TempPathFactory, real_embedder: Any) -> Index:
    """The sample handbook (examples/docs) indexed with the real packaged model."""
    import shutil

    from syncd.runtime import Runtime

    tmp = tmp_path_factory.mktemp("handbook")
    shutil.copytree(REPO / "examples" / "docs", tmp / "docs")
    cfg = config_mod.load(write_config(tmp, [{"name": "handbook", "type": "filesystem", "path": str(tmp / "docs")}],
                                       embedding={"backend": "torch"}))
    rt = Runtime(cfg, embedder=real_embedder)
    try:
        rt.open()
        assert rt.engine.reconcile("handbook").docs_failed == 0
        rt.store.maintain(retention_s=600)
    finally:
        rt.close()
    return Index(cfg, embedder=real_embedder)


def test_off_topic_questions_return_nothing_above_the_default_floor_and_on_topic_ones_do(handbook: Index) -> None:
    for question in OFF_TOPIC:
        assert handbook.search(question) == [], question
        assert handbook.search(question, min_relevance=0.0), "without a floor every question gets results"
    for item in read_queries(REPO / "examples" / "queries.jsonl"):
        results = handbook.search(item.query)
        assert results, item.query
        assert all(0.0 <= r["relevance"] <= 1.0 for r in results)
        assert all(r["relevance"] >= handbook.config.search.min_relevance for r in results)
    # The relevance is the cosine of the two embeddings, whichever leg found the row.
    top = handbook.search("how do I roll back a bad deploy", k=1)[0]
    vector = handbook.embedder.encode(["how do I roll back a bad deploy"])[0]
    row = handbook.store.scan(["chunk_id", "vector"], f"chunk_id = '{top['chunk_id']}'").to_pylist()[0]
    cos = sum(a * b for a, b in zip(vector, row["vector"], strict=True)) / math.sqrt(
        sum(a * a for a in vector) * sum(b * b for b in row["vector"]))
    assert top["relevance"] == pytest.approx(cos, abs=1e-4)


def test_duplicates_in_the_sample_handbook_collapse(handbook: Index) -> None:
    results = handbook.search("when should we fail over the database", k=10)
    places = [r["doc_id"] for r in results]
    assert len(places) == len({(r["content_hash"]) for r in results})
    first = next(r for r in results if r["doc_id"].endswith("database-failover.md"))
    assert {o["doc_id"] for o in first["also_in"]} | {first["doc_id"]} == {
        "runbooks/database-failover.md", "archive/2023/database-failover.md"}


# -- eval ----------------------------------------------------------------------------------------------


def test_eval_scores_a_hand_checked_set() -> None:
    """Hand-computed: q1 finds its label at rank 2 (nDCG 1/log2(3), RR 1/2); q2 finds two of its three labels at
    ranks 1 and 3, the second one through also_in (DCG 1 + 1/2, ideal 1 + 1/log2(3) + 1/2); q3 finds nothing."""
    results = {
        "q1": [{"doc_id": "x.md", "uri": "/d/x.md"}, {"doc_id": "a.md", "uri": "/d/a.md"},
               {"doc_id": "a.md", "uri": "/d/a.md"}],
        "q2": [{"doc_id": "b.md", "uri": "/d/b.md"}, {"doc_id": "x.md", "uri": "/d/x.md"},
               {"doc_id": "y.md", "uri": "/d/y.md", "also_in": [{"doc_id": "c.md", "uri": "/d/c.md"}]}],
        "q3": [{"doc_id": "x.md", "uri": "/d/x.md"}],
    }
    labelled = [search_mod_labelled("q1", ["a.md"]), search_mod_labelled("q2", ["/d/b.md", "c.md", "z.md"]),
                search_mod_labelled("q3", ["a.md"])]
    report = evaluate(labelled, lambda q: results[q], k=3)
    per = {q["query"]: q for q in report["per_query"]}
    assert per["q1"]["ndcg"] == pytest.approx(0.63093, abs=1e-5)
    assert per["q1"]["mrr"] == 0.5 and per["q1"]["recall"] == 1.0
    assert per["q2"]["ndcg"] == pytest.approx(1.5 / 2.13093, abs=1e-5)
    assert per["q2"]["recall"] == pytest.approx(2 / 3) and per["q2"]["mrr"] == 1.0
    assert per["q2"]["missing"] == ["z.md"]
    assert per["q3"] == {**per["q3"], "ndcg": 0.0, "recall": 0.0, "mrr": 0.0}
    assert report["ndcg"] == pytest.approx((0.63093 + 1.5 / 2.13093) / 3, abs=1e-5)
    assert report["mrr"] == pytest.approx(0.5) and report["queries"] == 3 and report["k"] == 3
    # k cuts the list: at k=1 q1 finds nothing.
    assert score_query(results["q1"], ["a.md"], 1)["ndcg"] == 0.0


def search_mod_labelled(query: str, relevant: list[str]) -> Any:
    from syncd.evaluate import Labelled

    return Labelled(query=query, relevant=tuple(relevant))


def _independent_ndcg(results: list[dict[str, Any]], relevant: set[str], k: int) -> tuple[float, float, float]:
    seen: set[str] = set()
    gains = []
    for r in results[:k]:
        places = {r["doc_id"], r["uri"]} | {o["doc_id"] for o in r["also_in"]} | {o["uri"] for o in r["also_in"]}
        new = (places & relevant) - seen
        seen |= new
        gains.append(1 if new else 0)
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    rr = next((1 / (i + 1) for i, g in enumerate(gains) if g), 0.0)
    return dcg / ideal, len(seen) / len(relevant), rr


def test_syncd_eval_on_the_sample_queries_matches_scores_computed_from_the_query_results(handbook: Index,
                                                                                           tmp_path: Path) -> None:
    from syncd import evaluate as evaluate_mod

    labelled = read_queries(REPO / "examples" / "queries.jsonl")
    report = evaluate_mod.evaluate(labelled, lambda q: handbook.search(q, k=5), k=5)
    assert report["queries"] == len(labelled) == 36
    for item, per in zip(labelled, report["per_query"], strict=True):
        ndcg, recall, rr = _independent_ndcg(handbook.search(item.query, k=5), set(item.relevant), 5)
        assert (per["ndcg"], per["recall"], per["mrr"]) == pytest.approx((ndcg, recall, rr)), item.query
    assert report["ndcg"] == pytest.approx(sum(q["ndcg"] for q in report["per_query"]) / 36)


def test_the_syncd_eval_command_prints_the_same_report(handbook: Index) -> None:
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", handbook.config.source, "eval",
                          str(REPO / "examples" / "queries.jsonl"), "-k", "5", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"k", "queries", "ndcg", "recall", "mrr", "per_query"}
    expected = evaluate(read_queries(REPO / "examples" / "queries.jsonl"), lambda q: handbook.search(q, k=5), k=5)
    assert report["k"] == 5 and report["queries"] == 36
    assert (report["ndcg"], report["recall"], report["mrr"]) == pytest.approx(
        (expected["ndcg"], expected["recall"], expected["mrr"]), abs=1e-3)


def test_eval_rejects_a_bad_line_naming_it(tmp_path: Path) -> None:
    from syncd.errors import ConfigError

    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a", "relevant": ["x.md"]}\n{"query": "b", "relevant": []}\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: relevant"):
        read_queries(path)
    path.write_text('{"query": "a", "relevant": ["x.md"]}\nnot json\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: not JSON"):
        read_queries(path)


# -- stage timings -------------------------------------------------------------------------------------


def test_search_latency_by_stage_is_a_histogram_in_metrics(tmp_path: Path, docs: Path) -> None:
    from tests.conftest import wait_for
    from tests.service.test_service_inprocess import get, running

    (docs / "a.md").write_text("# A\n\nreplica promote steps\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with running(cfg) as service:
        wait_for(lambda: get(service, "/readyz")[0] == 200, what="ready")
        code, answer = get(service, "/search?q=replica+promote&min_relevance=0")
        assert code == 200 and answer["results"][0]["doc_id"] == "a.md"
        assert answer["table_version"] == answer["results"][0]["table_version"]
        code, none = get(service, "/search?q=replica&min_relevance=0&path=zzz*")
        assert code == 200 and none["results"] == []
        code, text = get(service, "/metrics")
    assert code == 200
    for stage in ("embed", "vector", "fulltext", "fusion", "rerank", "dedup", "read", "total"):
        found = re.search(rf'^syncd_search_seconds_count{{stage="{stage}"}} (\S+)$', text, re.M)
        assert found and float(found.group(1)) == 2.0, stage
    assert re.search(r'^syncd_search_seconds_bucket{le="0.05",stage="total"} ', text, re.M)
