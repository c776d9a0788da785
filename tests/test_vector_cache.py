"""The vector leg from vectors held in memory (``syncd/vector_cache.py``) answers exactly what LanceDB's own
flat search answers on the same version: through edits, deletions, additions and compactions, with the
permission prefilter and other filters, on the version a search pinned while later commits land; and it
steps aside (LanceDB answers) when it cannot. Real LanceDB, written by the real engine; random dense query
vectors, so no two rows tie on distance and the order is exactly defined."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import config as config_mod
from syncd import vector_cache as vector_cache_mod
from syncd.acl import search_filter
from syncd.runtime import Runtime
from syncd.store import LEG_COLUMNS, Store
from syncd.testing import HashEmbedder
from tests.conftest import write_config

WORDS = [f"t{i}" for i in range(300)]
FILTERS = [
    search_filter(()),  # what a caller without principals may read: the "everyone" connector
    search_filter(("group:team",)),  # both connectors
    search_filter(("group:team",)) + " AND doc_id LIKE 'p1%'",  # with a path filter
    None,
]


def _page(rng: random.Random, i: int) -> str:
    paragraphs = [" ".join(rng.choices(WORDS, k=rng.randint(8, 40))) for _ in range(rng.randint(1, 5))]
    return f"# Page {i}\n\n" + "\n\n".join(paragraphs) + "\n"


class Corpus:
    """Two connectors (readable by everyone, by ``group:team``) synced by the engine, and a reader opened as
    the service opens it, with a vector cache."""

    def __init__(self, tmp_path: Path, pages: int = 30, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.roots = {"open": tmp_path / "open", "team": tmp_path / "team"}
        for root in self.roots.values():
            root.mkdir()
        for i in range(pages):
            name = "open" if i % 2 else "team"
            (self.roots[name] / f"p{i}.md").write_text(_page(self.rng, i))
        cfg_path = write_config(tmp_path, [
            {"name": "open", "type": "filesystem", "path": str(self.roots["open"]), "acl": ["everyone"]},
            {"name": "team", "type": "filesystem", "path": str(self.roots["team"]), "acl": ["group:team"]}])
        self.config = config_mod.load(cfg_path)
        self.runtime = Runtime(self.config, embedder=HashEmbedder())
        self.runtime.open()
        self.sync()
        self.reader = Store(self.config.store_uri, self.config.state_dir, base_table=self.config.store.table,
                            dim=self.runtime.embedder.dim, signature="", read_consistency_interval=0.0)
        self.reader.open(create=False)
        cache = self.reader.size_vector_cache(64)
        assert cache is not None
        self.cache = cache
        self.next_page = pages

    def sync(self) -> None:
        for name in self.roots:
            summary = self.runtime.engine.reconcile(name)
            assert summary.docs_failed == 0, summary.failures

    def close(self) -> None:
        self.runtime.close()

    def step(self, op: str) -> None:
        """One change to the sources, synced: each is at least one commit."""
        pages = sorted(p for root in self.roots.values() for p in root.glob("*.md"))
        if op == "edit" and pages:
            self.rng.choice(pages).write_text(_page(self.rng, self.rng.randrange(1000)))
        elif op == "delete" and len(pages) > 4:
            self.rng.choice(pages).unlink()
        elif op == "add":
            root = self.roots[self.rng.choice(list(self.roots))]
            (root / f"p{self.next_page}.md").write_text(_page(self.rng, self.next_page))
            self.next_page += 1
        elif op == "compact":
            self.runtime.store.compact()
            return
        self.sync()

    def version(self) -> int:
        return self.reader.table_version()


def lance_leg(table: Any, query: np.ndarray, where: str | None, limit: int) -> Any:
    search = table.search(query.tolist(), query_type="vector")
    if where:
        search = search.where(where, prefilter=True)
    return search.select(LEG_COLUMNS).limit(limit).to_arrow()


def assert_same_leg(cache: vector_cache_mod.VectorCache, table: Any, query: np.ndarray, where: str | None,
                    limit: int) -> None:
    held = cache.nearest(table, query, where, limit, LEG_COLUMNS)
    assert held is not None, cache.figures()
    lance = lance_leg(table, query, where, limit)
    assert held.column("chunk_id").to_pylist() == lance.column("chunk_id").to_pylist()
    assert held.schema.names == lance.schema.names
    for column in LEG_COLUMNS:
        if column != "vector":
            assert held.column(column).to_pylist() == lance.column(column).to_pylist(), column
    assert np.allclose(np.asarray(held.column("vector").to_pylist()), np.asarray(lance.column("vector").to_pylist()))
    assert np.allclose(held.column("_distance").to_numpy(), lance.column("_distance").to_numpy(), rtol=1e-4,
                       atol=1e-4)


def queries(seed: int, n: int, dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [v / np.linalg.norm(v) for v in rng.standard_normal((n, dim)).astype(np.float32)]


@pytest.fixture
def corpus(tmp_path: Path) -> Any:
    made = Corpus(tmp_path)
    yield made
    made.close()


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.sampled_from(["edit", "delete", "add", "compact"]), min_size=1, max_size=6),
       limit=st.sampled_from([1, 7, 50, 400]), seed=st.integers(0, 2**16))
def test_the_held_vectors_answer_what_lancedb_answers_on_every_version_through_any_changes(
        tmp_path_factory: pytest.TempPathFactory, ops: list[str], limit: int, seed: int) -> None:
    corpus = Corpus(tmp_path_factory.mktemp("vc"), pages=12, seed=seed)
    try:
        pinned: list[tuple[int, Any]] = []
        for op in [None, *ops]:
            if op is not None:
                corpus.step(op)
            version = corpus.version()
            table = corpus.reader.table_at(version)
            pinned.append((version, table))
            for i, query in enumerate(queries(seed, 3, corpus.runtime.embedder.dim)):
                assert_same_leg(corpus.cache, table, query, FILTERS[(i + len(pinned)) % len(FILTERS)], limit)
        # Versions pinned before the later commits still answer as they held (rows deleted since included,
        # rows added since left out).
        for version, table in pinned[-3:]:
            for where in FILTERS:
                assert_same_leg(corpus.cache, table, queries(seed + version, 1, corpus.runtime.embedder.dim)[0],
                                where, limit)
        assert corpus.cache.served > 0
    finally:
        corpus.close()


def test_a_search_pinned_before_an_edit_sees_the_old_text_and_the_next_one_the_new(corpus: Corpus) -> None:
    dim = corpus.runtime.embedder.dim
    page = corpus.roots["open"] / "p1.md"
    page.write_text("# Page 1\n\norchid " * 3)
    corpus.sync()
    before = corpus.reader.table_at(corpus.version())
    target = np.asarray(HashEmbedder(dim=dim).encode(["# Page 1\n\norchid orchid orchid"])[0], dtype=np.float32)
    first = corpus.cache.nearest(before, target, search_filter(()), 1, LEG_COLUMNS)
    assert first is not None and first.column("doc_id").to_pylist() == ["p1.md"]
    page.unlink()
    corpus.sync()
    after = corpus.reader.table_at(corpus.version())
    gone = corpus.cache.nearest(after, target, search_filter(()), 5, LEG_COLUMNS)
    assert gone is not None and "p1.md" not in gone.column("doc_id").to_pylist()
    # The version pinned before the deletion still holds the page.
    again = corpus.cache.nearest(before, target, search_filter(()), 1, LEG_COLUMNS)
    assert again is not None and again.column("doc_id").to_pylist() == ["p1.md"]


def test_a_filter_no_row_meets_gives_an_empty_leg_with_lancedbs_columns(corpus: Corpus) -> None:
    table = corpus.reader.table_at(corpus.version())
    query = queries(1, 1, corpus.runtime.embedder.dim)[0]
    where = search_filter(()) + " AND doc_id = 'no-such-page.md'"
    held = corpus.cache.nearest(table, query, where, 10, LEG_COLUMNS)
    assert held is not None and held.num_rows == 0
    assert held.schema.names == lance_leg(table, query, where, 10).schema.names


def test_a_large_fragment_is_read_in_the_background_while_lancedb_answers(
        corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus.reader.size_vector_cache(0)
    corpus.reader.size_vector_cache(64)  # nothing held
    monkeypatch.setattr(vector_cache_mod, "INLINE_READ_ROWS", 0)
    table = corpus.reader.table_at(corpus.version())
    query = queries(2, 1, corpus.runtime.embedder.dim)[0]
    assert corpus.cache.nearest(table, query, None, 5, LEG_COLUMNS) is None  # not held yet: LanceDB's turn
    assert corpus.cache.passed == 1
    corpus.cache.wait()
    assert corpus.cache.rows == corpus.reader.count_rows()
    assert_same_leg(corpus.cache, table, query, None, 5)


def test_the_cache_steps_aside_past_its_budget_and_once_an_ann_index_exists(tmp_path: Path) -> None:
    corpus = Corpus(tmp_path, pages=120)
    try:
        query = queries(3, 1, corpus.runtime.embedder.dim)[0]
        table = corpus.reader.table_at(corpus.version())
        assert_same_leg(corpus.cache, table, query, None, 5)
        assert corpus.cache.rows > 0
        # A budget below what the table's vectors take: LanceDB answers and nothing stays held.
        corpus.cache.resize(1024)
        assert corpus.cache.nearest(table, query, None, 5, LEG_COLUMNS) is None
        assert corpus.cache.over_budget and corpus.cache.rows == 0
        corpus.cache.resize(64 << 20)
        assert_same_leg(corpus.cache, table, query, None, 5)
        # An ANN index on the vectors (the table passed [store] ann_min_rows): LanceDB's index answers.
        rows = corpus.runtime.store.count_rows()
        assert rows >= 256, rows  # IVF_PQ trains on at least 256 rows
        corpus.runtime.store.maintain(retention_s=600, ann_min_rows=1)
        indexed = corpus.reader.table_at(corpus.version())
        assert any("vector" in idx.columns for idx in indexed.list_indices())
        assert corpus.cache.nearest(indexed, query, None, 5, LEG_COLUMNS) is None
        assert corpus.cache.rows == 0
    finally:
        corpus.close()


def test_the_search_uses_the_held_vectors_and_answers_as_without_them(corpus: Corpus) -> None:
    """``syncd.search.search`` on the service's reader: the same results with the cache as without it, and
    the vector leg counted as answered from memory."""
    from syncd import search as search_mod

    embedder = HashEmbedder(dim=corpus.runtime.embedder.dim)
    text = " ".join(WORDS[:6])
    vector = np.asarray(embedder.encode([text])[0], dtype=np.float32)
    options = search_mod.SearchOptions(k=10, min_relevance=0.0, principals=("group:team",))
    legs: list[str] = []
    corpus.cache.on_leg = legs.append
    with_cache = search_mod.search(corpus.reader, vector, text, options)
    corpus.reader.size_vector_cache(0)
    without = search_mod.search(corpus.reader, vector, text, options)
    assert legs == ["memory", "lance"]
    assert [r["chunk_id"] for r in with_cache.results] == [r["chunk_id"] for r in without.results]
    assert with_cache.results


def _get(url: str) -> Any:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.startswith(b"{") else raw.decode()


def _legs(url: str, source: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(_get(url + "/metrics")) for s in family.samples
               if s.name == "syncd_search_vector_legs_total" and s.labels.get("source") == source)


def test_the_daemon_answers_from_held_vectors_shows_them_and_a_reload_can_turn_them_off(
        tmp_path: Path, in_process_daemon: Any) -> None:
    from urllib.parse import quote

    from tests.conftest import wait_for

    docs = tmp_path / "docs"
    docs.mkdir()
    rng = random.Random(5)
    for i in range(20):
        (docs / f"p{i}.md").write_text(_page(rng, i))
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "acl": ["everyone"]}])
    with in_process_daemon(cfg) as d:
        url = d.service.http.url
        d.wait_idle()

        def found(q: str) -> list[str]:
            return [r["doc_id"] for r in _get(url + f"/search?q={quote(q)}&k=3&min_relevance=0")["results"]]

        (docs / "p3.md").write_text("# Page 3\n\nmarigold quasar nebula\n")
        wait_for(lambda: found("marigold quasar nebula")[:1] == ["p3.md"], what="the edit searchable")
        held = _get(url + "/status")["store"]["vector_cache"]
        # Held: every live row, and the rows an edit deleted from a fragment read before it (until the
        # fragment is compacted away).
        assert held["served"] >= 1 and held["rows"] >= d.service.reader.count_rows() and held["bytes"] > 0
        assert _legs(url, "memory") == held["served"] and _legs(url, "lance") == held["passed"]
        # [search] vector_cache_mb = 0 on reload: LanceDB answers every vector leg, nothing stays held.
        text = cfg.read_text()
        cfg.write_text(text + "\n[search]\nvector_cache_mb = 0\n")
        d.service.reload()
        wait_for(lambda: d.service.config.search.vector_cache_mb == 0, what="reload applied")
        lance_before = _legs(url, "lance")
        assert found("marigold quasar nebula")[:1] == ["p3.md"]
        assert _legs(url, "lance") == lance_before + 1
        assert _get(url + "/status")["store"]["vector_cache"]["rows"] == 0


def test_after_a_compaction_rewrites_the_table_the_budget_holds_the_newest_version_only(corpus: Corpus) -> None:
    query = queries(4, 1, corpus.runtime.embedder.dim)[0]
    before = corpus.reader.table_at(corpus.version())
    assert_same_leg(corpus.cache, before, query, None, 5)
    one_copy = corpus.cache.nbytes
    corpus.cache.resize(one_copy * 3 // 2)
    assert_same_leg(corpus.cache, before, query, None, 5)  # still held, within the budget
    corpus.runtime.store.maintain(retention_s=600)  # the full maintenance merges every fragment into new ones
    after = corpus.reader.table_at(corpus.version())
    old_files = {f.path for fragment in before.to_lance().get_fragments() for f in fragment.metadata.files}
    new_files = {f.path for fragment in after.to_lance().get_fragments() for f in fragment.metadata.files}
    assert not old_files & new_files
    assert_same_leg(corpus.cache, after, query, None, 5)
    # Both copies would pass the budget: the version searched a moment ago gave its vectors up.
    assert corpus.cache.nbytes <= one_copy * 3 // 2
