"""The service in this process (HashEmbedder, real LanceDB, real HTTP, real scheduler): readiness,
backoff of a failing connector, maintenance policy and its health check, sd_notify, the status page in a
real headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families

from connectors.base import Connector
from syncd import config as config_mod
from syncd.config import ConnectorConfig
from syncd.errors import ConnectorError
from syncd.models import DocumentRef, SourceDocument
from syncd.notify import notify, watchdog_interval
from syncd.testing import HashEmbedder

REPO = Path(__file__).resolve().parents[2]


# -- a connector the tests steer -------------------------------------------------------------------------
@dataclass
class Control:
    """Per connector name: a gate its listing waits on, and a switch that makes its polls fail."""

    gate: threading.Event = field(default_factory=threading.Event)
    failing: threading.Event = field(default_factory=threading.Event)
    polls: int = 0


CONTROLS: dict[str, Control] = {}


def control(name: str) -> Control:
    return CONTROLS.setdefault(name, Control())


class MemoryConfig(ConnectorConfig):
    pages: int = 3
    """How many documents the source holds."""
    poll_every: float = 0.0
    """Seconds between polls; 0 = not polled."""
    gated: bool = False
    """The listing waits for the test to open the gate."""


class MemoryConnector(Connector):
    """Documents held in memory; see Control."""

    type_name = "memory"
    config_model = MemoryConfig

    @property
    def control(self) -> Control:
        return control(self.name)

    def list_documents(self) -> Iterator[DocumentRef]:
        cfg = self.config
        assert isinstance(cfg, MemoryConfig)
        if cfg.gated:
            assert self.control.gate.wait(timeout=120), "gate never opened"
        for i in range(cfg.pages):
            yield DocumentRef(doc_id=f"page-{i}", fingerprint="v1")

    def read(self, doc_id: str) -> SourceDocument:
        return SourceDocument(doc_id=doc_id, fingerprint="v1", revision="v1", uri=f"memory://{self.name}/{doc_id}",
                              title=doc_id, content=f"# {doc_id}\n\nText of {doc_id} in {self.name}.\n".encode(),
                              media_type="markdown")

    @property
    def poll_interval(self) -> float | None:
        cfg = self.config
        assert isinstance(cfg, MemoryConfig)
        return cfg.poll_every or None

    def poll(self) -> Iterator[DocumentRef] | None:  # type: ignore[override]
        self.control.polls += 1
        if self.control.failing.is_set():
            raise ConnectorError("source down (test)", connector=self.name)
        # Like the real polled connectors: no cursor yet means a full listing; then nothing ever changes.
        return iter([]) if getattr(self, "_cursor_saved", False) else None

    def commit_cursor(self) -> None:
        self._cursor_saved = True


@pytest.fixture(autouse=True)
def memory_connector_type(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the test connector the way a third-party one is: by type name in the registry."""
    from syncd import registry

    monkeypatch.setitem(registry._targets(), "memory", f"{__name__}:MemoryConnector")
    CONTROLS.clear()
    yield
    for control in CONTROLS.values():
        control.gate.set()


@contextmanager
def running(config_path: Path, embedder: Any | None = None) -> Iterator[Any]:
    """The Service started (not waited for), its main loop in a thread; stopped at exit. A gated embedder
    (``SlowEmbedder``) is let go at exit too."""
    from syncd.service import Service

    embedder = embedder if embedder is not None else HashEmbedder()
    service = Service(config_mod.load(config_path), embedder=embedder)
    service.start()
    loop = threading.Thread(target=service.run_forever, daemon=True)
    loop.start()
    try:
        yield service
    finally:
        for control in CONTROLS.values():
            control.gate.set()
        if hasattr(embedder, "gate"):
            embedder.gate.set()
        service.stopping.set()
        loop.join(timeout=60)
        assert not loop.is_alive()


def get(service: Any, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(service.http.url + path, timeout=30) as resp:
            body, code = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode()


def connector_status(service: Any, name: str) -> dict[str, Any]:
    code, status = get(service, "/status")
    assert code == 200
    return next(c for c in status["connectors"] if c["name"] == name)


def metric(service: Any, name: str, **labels: str) -> float:
    code, text = get(service, "/metrics")
    assert code == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def idle(service: Any) -> bool:
    q = service.queue
    engine = service.runtime.engine
    with q.cond:
        busy = not q.empty() or any(q.in_flight.values()) or service.writer.cycle_started_at is not None
    return not busy and not any(engine.held_deletes(n)[0] for n in engine.connectors)


def save_atomically(path: Path, text: str) -> None:
    """As editors save: a hidden temp file renamed over the original, so no reader sees it half-written."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_docs(folder: Path, count: int, start: int = 0) -> list[str]:
    names = []
    for i in range(start, start + count):
        name = f"note-{i:04d}.md"
        (folder / name).write_text(f"# Note {i}\n\nThis is note number {i} about topic {i % 7}.\n")
        names.append(name)
    return names


# -- readiness -------------------------------------------------------------------------------------------
def test_readyz_turns_200_only_when_every_initial_catch_up_finished(tmp_path: Path, docs: Path) -> None:
    write_docs(docs, 2)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)},
                                  {"name": "gated", "type": "memory", "gated": True, "pages": 3}])
    with running(cfg) as service:
        wait_for(lambda: connector_status(service, "docs")["docs"] == 2, what="docs synced")
        assert get(service, "/healthz") == (200, {"status": "ok"})
        assert get(service, "/readyz") == (503, {"status": "catching-up", "problems": ["catching up: gated"]})
        assert connector_status(service, "gated")["state"] == "catching-up"
        control("gated").gate.set()
        wait_for(lambda: get(service, "/readyz")[0] == 200, what="ready")
        assert get(service, "/readyz") == (200, {"status": "ready"})
        assert connector_status(service, "gated")["docs"] == 3


# -- backoff ---------------------------------------------------------------------------------------------
def test_a_failing_polled_connector_backs_off_exponentially_capped_and_never_stalls_others(
        tmp_path: Path, docs: Path) -> None:
    interval, cap = 0.1, 0.8
    write_docs(docs, 2)
    cfg = write_config(tmp_path, [{"name": "flaky", "type": "memory", "poll_every": interval},
                                  {"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"backoff_max": f"{cap}s"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        control("flaky").failing.set()
        status = wait_for(lambda: (s := connector_status(service, "flaky"))["consecutive_failures"] >= 5 and s,
                          what="five failures in a row")
        k = status["consecutive_failures"]
        assert status["backoff_s"] == pytest.approx(min(interval * 2 ** (k - 1), cap))
        assert status["state"] == "failing" and "source down" in status["last_error"]
        assert status["retry_at"] is not None
        # Scheduled polls that fall inside the wait are skipped and counted.
        assert metric(service, "syncd_scheduler_skipped_runs_total", job="poll:flaky") > 0
        assert metric(service, "syncd_connector_consecutive_failures", connector="flaky") >= 5
        # Meanwhile the other connector keeps syncing.
        write_docs(docs, 1, start=2)
        wait_for(lambda: connector_status(service, "docs")["docs"] == 3, what="docs keeps syncing")
        control("flaky").failing.clear()
        healed = wait_for(lambda: (s := connector_status(service, "flaky"))["consecutive_failures"] == 0 and s,
                          what="recovery")
        assert healed["backoff_s"] == 0 and healed["retry_at"] is None


# -- maintenance -----------------------------------------------------------------------------------------
def test_maintenance_that_stops_running_makes_healthz_fail(tmp_path: Path, docs: Path) -> None:
    write_docs(docs, 2)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"maintenance_interval": "1s"})
    with running(cfg) as service:
        wait_for(lambda: get(service, "/status")[1]["store"]["maintenance_runs"] >= 1, what="maintenance ran")
        assert get(service, "/healthz")[0] == 200
        service.scheduler.pause_job("maintenance")  # maintenance silently stops
        code, body = wait_for(lambda: (r := get(service, "/healthz"))[0] == 503 and r, what="health failure")
        assert any("maintenance" in p for p in body["problems"])
        assert get(service, "/status")[1]["store"]["maintenance_overdue"] is True
        service.scheduler.resume_job("maintenance")
        wait_for(lambda: get(service, "/healthz")[0] == 200, what="healthy again")


def _indexes(path: Path, table_name: str) -> dict[str, str]:
    import lancedb

    table = lancedb.connect(str(path)).open_table(table_name)
    return {idx.columns[0]: str(idx.index_type) for idx in table.list_indices()}


def _edit_one_by_one(service: Any, docs: Path, count: int) -> None:
    for i in range(count):  # one commit each
        save_atomically(docs / f"note-{i:04d}.md", f"# Note {i}\n\nEdited note {i}.\n")
        wait_for(lambda i=i: any(r["doc_id"] == f"note-{i:04d}.md" and r["action"] == "changed"
                                 for r in connector_status(service, "docs")["recent"]), what=f"edit {i} committed")


def _compaction_only_config(tmp_path: Path, docs: Path, *, every: int, batch: int) -> Path:
    """A config whose only maintenance is a compaction every ``every`` commits (no folds, no idle or
    scheduled maintenance, no verify)."""
    return write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store={"uri": "./index", "compact_every_commits": every, "index_every_rows": 10**9,
                               "index_when_idle": "0s", "fold_every_rows": 10**9},
                        sync={"max_batch_docs": batch, "maintenance_interval": "1h", "verify_interval": "0s"})


def test_small_fragments_are_compacted_every_n_commits_without_touching_the_indexes(
        tmp_path: Path, docs: Path) -> None:
    every, batch, initial, singles = 4, 50, 300, 10
    write_docs(docs, initial)
    cfg = _compaction_only_config(tmp_path, docs, every=every, batch=batch)
    threads: list[str] = []
    with running(cfg) as service:
        compact = service.runtime.store.compact

        def on_which_thread(**kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return compact(**kwargs)

        service.runtime.store.compact = on_which_thread
        wait_for(service.ready, what="ready")
        _edit_one_by_one(service, docs, singles)
        wait_for(lambda: idle(service), what="idle")
        commits = math.ceil(initial / batch) + singles
        assert metric(service, "syncd_store_commits_total") == commits
        store = get(service, "/status")[1]["store"]
        # The folder compacts beside the writer: the commits made while it runs count towards the next one,
        # so there are at most commits // every, and never none.
        assert 1 <= store["compactions"] <= commits // every and store["maintenance_runs"] == 0
        assert store["compactions"] == metric(service, "syncd_store_compactions_total")
        assert store["compaction_conflicts"] == metric(service, "syncd_store_compaction_conflicts_total") == 0
        assert set(threads) == {"syncd-folder"}, threads  # never the writer's thread
        assert store["fragments"] <= 2 * every
        assert store["docs"] == initial and store["rows"] == store["chunks"]
        assert store["rows_since_indexed"] == store["rows"] + singles  # the catch-up, then one row per edit
        # Compaction builds no index (the table is created with its full-text index only).
        assert _indexes(tmp_path / "index", store["table"]) == {"text": "FTS"}


@pytest.mark.parametrize("small", [30, 150])
def test_the_writers_compaction_merges_small_fragments_and_never_rewrites_a_large_one(
        tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, small: int) -> None:
    """The compaction between batches costs what the small fragments hold, whatever the table's size: a
    fragment of ``SMALL_FRAGMENT_ROWS`` rows or more keeps its id (not rewritten), the small ones are merged
    into fragments of less than twice that size, and every row stays searchable. (With Lance's default target every
    fragment of a table under a million rows is small, and each compaction rewrote the whole table.)"""
    from syncd import store as store_mod
    from syncd.runtime import Runtime

    monkeypatch.setattr(store_mod, "SMALL_FRAGMENT_ROWS", small)
    write_docs(docs, 200)
    cfg = config_mod.load(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                                      sync={"max_batch_docs": 40}))
    rt = Runtime(cfg, embedder=HashEmbedder())
    rt.open()
    try:
        assert rt.engine.reconcile("docs").docs_failed == 0  # batches of 40 documents: 5 fragments of 40 rows
        for i in range(12):  # then one document a commit: one small fragment each
            (docs / f"note-{i:04d}.md").write_text(f"# Note {i}\n\nEdited note {i}, commit {i}.\n")
            assert rt.engine.reconcile("docs").docs_changed == 1

        def fragments() -> dict[int, int]:
            return {f.fragment_id: f.metadata.physical_rows for f in rt.store._dataset().get_fragments()}

        before = fragments()
        assert len(before) == 5 + 12
        rt.store.compact()
        after = fragments()
        large = {fid for fid, rows in before.items() if rows >= small}
        assert large <= set(after), "a large fragment was rewritten"
        new = set(after) - set(before)
        # Lance fills a merged fragment until it reaches the target: less than twice the target, so a
        # compaction rewrites fewer than 2 * SMALL_FRAGMENT_ROWS rows.
        assert new and all(after[fid] < 2 * small for fid in new)
        assert sum(before[fid] for fid in set(before) - set(after)) < 2 * small * len(new)
        assert len(after) < len(before)
        assert rt.store.count_rows() == 200
        found = rt.store.search(HashEmbedder().encode(["Edited note 3, commit 3."])[0], "Edited note 3", k=3)
        assert found and found[0]["doc_id"] == "note-0003.md"
    finally:
        rt.close()


def test_a_compaction_beside_the_writer_gives_way_to_a_commit_that_touched_its_fragments(
        tmp_path: Path, docs: Path) -> None:
    """The folder's compaction plans on the version it read; when a commit of the writer deleted rows of the
    fragments it merges in the meantime, Lance refuses the rewrite (a real conflict, made here in that
    order). The compaction is then left for later, counted, and never fails the writer or the data: the
    deletion stands, and the next compaction merges the fragments."""
    from syncd.runtime import Runtime

    write_docs(docs, 50)
    cfg = config_mod.load(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}]))
    rt = Runtime(cfg, embedder=HashEmbedder())
    rt.open()
    try:
        rt.engine.reconcile("docs")
        for i in range(5):  # five small fragments of one document each
            (docs / f"note-{i:04d}.md").write_text(f"# Note {i}\n\nEdited note {i}.\n")
            rt.engine.reconcile("docs")
        store = rt.store
        stale = store._dataset()  # what the folder read before the writer's next commit
        (docs / "note-0002.md").unlink()  # its rows are in one of the small fragments
        assert rt.engine.reconcile("docs").docs_deleted == 1
        fresh_dataset = store._dataset
        store._dataset = lambda *a, **k: stale  # type: ignore[method-assign]
        try:
            assert store.compact(beside_writer=True) is None
        finally:
            store._dataset = fresh_dataset  # type: ignore[method-assign]
        assert store.compaction_conflicts == 1 and store.compactions == 0
        assert store.count_rows() == 49 and "note-0002.md" not in {r["doc_id"] for r in store.scan(["doc_id"]).to_pylist()}
        merged = store.compact(beside_writer=True)
        assert merged is not None and merged["fragments_removed"] > merged["fragments_added"]
        assert store.compactions == 1 and store.count_rows() == 49
        assert store.adopt_folds()  # the writer's handle moves to the compaction's version
    finally:
        rt.close()


def test_compactions_that_keep_giving_way_are_taken_by_the_writer_between_batches(
        tmp_path: Path, docs: Path) -> None:
    """Edits that keep touching the newest fragments make every compaction beside the writer give way. After
    ``MAX_DEFERRALS`` in a row the writer compacts between two batches, where no commit can overtake it, so
    fragments never pile up (they did: attempts back to back on the folder, each longer and surer to fail).
    The folder's attempts give way through a stand-in here; the real Lance conflict is made in the test
    above."""
    from syncd.service.maintenance import MAX_DEFERRALS

    every, batch, initial, singles = 2, 50, 100, 16
    write_docs(docs, initial)
    cfg = _compaction_only_config(tmp_path, docs, every=every, batch=batch)
    calls: list[tuple[str, str]] = []
    with running(cfg) as service:
        store = service.runtime.store
        compact = store.compact

        def contested(**kwargs: Any) -> Any:
            thread = threading.current_thread().name
            if kwargs.get("beside_writer"):
                store.compaction_conflicts += 1  # as Store.compact counts a commit that overtook it
                calls.append((thread, "gave way"))
                return None
            result = compact(**kwargs)
            calls.append((thread, "merged" if result is not None else "skipped"))
            return result

        store.compact = contested  # type: ignore[method-assign]
        wait_for(service.ready, what="ready")
        _edit_one_by_one(service, docs, singles)
        wait_for(lambda: idle(service), what="idle")
        gave_way = [c for c in calls if c[1] == "gave way"]
        merged = [c for c in calls if c[1] == "merged"]
        assert gave_way and {t for t, _ in gave_way} == {"syncd-folder"}, calls
        assert merged and {t for t, _ in merged} == {"syncd-writer"}, calls
        in_a_row = 0
        for _, outcome in calls:
            in_a_row = in_a_row + 1 if outcome == "gave way" else 0
            assert in_a_row <= MAX_DEFERRALS, calls  # the folder does not try again once the writer takes over
        # Each merge on the writer's thread came right after MAX_DEFERRALS attempts that gave way.
        for i, call in enumerate(calls):
            if call[1] == "merged":
                assert [c[1] for c in calls[i - MAX_DEFERRALS:i]] == ["gave way"] * MAX_DEFERRALS, calls
        status = get(service, "/status")[1]["store"]
        assert status["compaction_conflicts"] == len(gave_way) == metric(
            service, "syncd_store_compaction_conflicts_total")
        assert status["compactions"] == len(merged)
        assert status["fragments"] <= 2 * every * (MAX_DEFERRALS + 1)
        assert status["docs"] == initial and status["rows"] == status["chunks"]


def test_indexes_are_brought_up_to_date_past_a_row_count_and_ann_past_the_row_threshold(
        tmp_path: Path, docs: Path) -> None:
    batch, initial, singles, ann_rows, every_rows = 50, 300, 10, 300, 5
    write_docs(docs, initial)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": "./index", "compact_every_commits": 1000, "ann_min_rows": ann_rows,
                              "index_every_rows": every_rows, "index_when_idle": "0s", "fold_every_rows": 10**9},
                       sync={"max_batch_docs": batch, "maintenance_interval": "1h", "verify_interval": "0s"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        _edit_one_by_one(service, docs, singles)
        wait_for(lambda: idle(service), what="idle")
        store = get(service, "/status")[1]["store"]
        # Every catch-up batch writes more than every_rows rows; single edits add one row each.
        assert store["maintenance_runs"] == math.ceil(initial / batch) + singles // every_rows
        assert store["rows_since_indexed"] == singles % every_rows
        indexes = _indexes(tmp_path / "index", store["table"])
        for column in ("doc_key", "doc_id", "chunk_id", "content_hash"):
            assert indexes.get(column) == "BTree", indexes
        assert indexes.get("text") == "FTS"
        assert indexes.get("acl") == "LabelList", indexes  # every search prefilters on it
        assert "vector" in indexes, indexes  # rows >= ann_min_rows at the last maintenance
        # Folded one at a time between batches: the BTree indexes first, the full-text rewrite last.
        names = service.runtime.store.index_names()
        assert names[-1] == "text_idx" and set(names[:4]) == {f"{c}_idx" for c in
                                                               ("doc_key", "doc_id", "chunk_id", "content_hash")}

        # A fresh document, not yet in any index, is found at once (no index-only search).
        save_atomically(docs / "fresh.md", "# Fresh\n\nzanzibarquokka arrives today.\n")
        wait_for(lambda: connector_status(service, "docs")["docs"] == initial + 1, what="fresh doc")
        assert get(service, "/status")[1]["store"]["unindexed_rows"] > 0
        code, found = get(service, f"/search?q={quote('zanzibarquokka')}&k=3")
        assert code == 200 and found["results"][0]["doc_id"] == "fresh.md"


def test_search_embeds_a_repeated_query_once_and_counts_where_vectors_came_from(tmp_path: Path, docs: Path) -> None:
    write_docs(docs, 5)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": "./index"}, embedding={"query_cache": 4})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        model = service.query_embedder
        asked = lambda text: sum(call == [text] for call in model.calls)  # noqa: E731
        first = get(service, f"/search?q={quote('note number 3')}&k=3")
        second = get(service, f"/search?q={quote('note number 3')}&k=3")
        assert first == second and first[0] == 200 and first[1]["results"][0]["doc_id"] == "note-0003.md"
        assert asked("note number 3") == 1
        assert (metric(service, "syncd_query_vectors_total", source="model"),
                metric(service, "syncd_query_vectors_total", source="cache")) == (1, 1)
        # An edit changes what a kept query finds: the vector is the query's, the rows are today's.
        save_atomically(docs / "note-0001.md", "# Note 1\n\nThis is note number 3 now, twice: note number 3.\n")
        wait_for(lambda: get(service, f"/search?q={quote('note number 3')}&k=3")[1]["results"][0]["doc_id"]
                 == "note-0001.md", what="the edit found by the kept query")
        assert asked("note number 3") == 1


def test_unindexed_rows_are_folded_by_the_folder_past_fold_every_rows(tmp_path: Path, docs: Path) -> None:
    write_docs(docs, 20)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": "./index", "index_every_rows": 10**9, "index_when_idle": "0s",
                              "fold_every_rows": 5},
                       sync={"maintenance_interval": "1h", "verify_interval": "0s"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        # The catch-up wrote 20+ rows; the table has its full-text index from creation.
        store = wait_for(lambda: (s := get(service, "/status")[1]["store"])["rows_since_indexed"] == 0
                         and s["unindexed_rows"] == 0 and s, what="rows folded")
        assert store["index_folds"] == 1 and store["maintenance_runs"] == 0
        _edit_one_by_one(service, docs, 4)  # 4 rows: below fold_every_rows, nothing folds
        wait_for(lambda: idle(service), what="idle")
        store = get(service, "/status")[1]["store"]
        assert (store["index_folds"], store["rows_since_indexed"]) == (1, 4) and store["unindexed_rows"] > 0
        save_atomically(docs / "note-0010.md", "# Note\n\nzanzibarquokka edited.\n")  # the fifth row
        store = wait_for(lambda: (s := get(service, "/status")[1]["store"])["index_folds"] == 2 and s,
                         what="second fold")
        assert metric(service, "syncd_index_folds_total") == 2
        code, found = get(service, f"/search?q={quote('zanzibarquokka')}&k=3")
        assert code == 200 and found["results"][0]["doc_id"] == "note-0010.md"


def _fold_runtime(tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any, **store: Any) -> tuple[Any, Any]:
    """A Service wired to a runtime (its maintenance, its folder) with no writer thread; every index brought
    up to date first, and folds unspaced. ``process`` runs a batch and asks maintenance, as the writer does."""
    from syncd.service import Service, maintenance

    monkeypatch.setattr(maintenance, "FOLD_SPACING", 0.0)
    write_docs(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": "./index", "index_every_rows": 10**9, "index_when_idle": "0s",
                              "compact_every_commits": 10**4, **store})
    service = Service(config_mod.load(cfg))
    rt = make_runtime(cfg)
    service.runtime = rt
    original = rt.engine.process

    def process(*args: Any, **kwargs: Any) -> Any:
        summary = original(*args, **kwargs)
        service.maintenance.after_batch()
        return summary

    monkeypatch.setattr(rt.engine, "process", process)
    rt.engine.reconcile("docs")
    rt.store.maintain(retention_s=600)
    assert len(rt.store.index_names()) >= 5 and rt.store.rows_since_indexed == 0
    return service, rt


def test_an_edit_never_waits_for_a_fold_the_folder_folds_every_index_in_one_commit(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """However far past ``fold_every_rows`` the rows pile up, a commit never folds an index in the writer's
    path: the folder does, every index in one commit, so every fragment is covered by every index or by
    none (Lance's compaction never merges fragments that different indexes cover)."""
    service, rt = _fold_runtime(tmp_path, docs, make_runtime, monkeypatch, fold_every_rows=4)
    indexes = rt.store.index_names()
    for i in range(4 * 4):
        save_atomically(docs / "note-0000.md", f"# Note\n\nEdit {i} of the note.\n")
        rt.engine.process({"docs": {"note-0000.md": time.time()}})
    assert rt.store.index_folds == 0 and rt.store.rows_since_indexed == 16  # no commit folded
    assert service.maintenance.fold_wake.is_set()  # each batch wakes the folder
    versions: list[int] = []
    fold_step = rt.store.fold_step

    def counted() -> list[str]:
        versions.append(rt.store._dataset().version)
        names = fold_step()
        versions.append(rt.store._dataset().version)
        return names

    monkeypatch.setattr(rt.store, "fold_step", counted)
    assert service.maintenance.fold_if_due() == indexes
    assert versions[1] == versions[0] + 1  # one commit
    covered = {ids for _, ids in _lance_indexes(rt).values()}
    assert covered == {frozenset(_fragment_ids(rt))}
    assert rt.store.rows_since_indexed == 0 and rt.store.index_folds == len(indexes)
    assert service.metrics.index_folds._value.get() == len(indexes)
    assert service.maintenance.fold_if_due() is None  # nothing due
    assert rt.store.stats()["unindexed_rows"] > 0  # the writer's handle: still the version of its last commit
    assert rt.store.adopt_folds() and not rt.store.adopt_folds()
    assert rt.store.stats()["unindexed_rows"] == 0


def test_folds_beside_back_to_back_commits_lose_nothing(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """The folder's thread folding without pause while the writer commits edit after edit: no commit and no
    fold fails, every edit is in the table once, and the indexes serve them."""
    service, rt = _fold_runtime(tmp_path, docs, make_runtime, monkeypatch, fold_every_rows=1)
    folder = threading.Thread(target=service.maintenance.run_folder)
    folder.start()
    try:
        for i in range(40):
            name = f"note-000{i % 3}.md"
            save_atomically(docs / name, f"# Note\n\nEdit {i} says quokka{i}.\n\nSecond paragraph {i}.\n")
            rt.engine.process({"docs": {name: time.time()}})
            assert rt.engine.status["docs"].last_error is None
    finally:
        service.stopping.set()
        service.maintenance.fold_wake.set()
        folder.join(timeout=60)
    assert service.maintenance.auto_after == 0.0  # no fold step failed (a failure holds folds back)
    assert rt.store.index_folds >= 2 * len(rt.store.index_names())  # folds ran while the edits committed
    rows = rt.store.scan(["chunk_id", "doc_id", "text"]).to_pylist()
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    latest = {r["doc_id"]: r["text"] for r in rows if "quokka" in r["text"]}
    assert {d: t.split("quokka")[1].split(".")[0] for d, t in latest.items()} == {
        f"note-000{i % 3}.md": str(i) for i in range(37, 40)}
    for i in range(37, 40):
        found = rt.store.search(HashEmbedder().encode([f"quokka{i}"])[0], f"quokka{i}", k=3)
        assert found[0]["doc_id"] == f"note-000{i % 3}.md"


def _lance_indexes(rt: Any) -> dict[str, tuple[str, frozenset[int]]]:
    """Each index of the live table: its uuid (a remap writes a new one) and the fragments it covers."""
    return {idx["name"]: (idx["uuid"], frozenset(int(f) for f in idx["fragment_ids"]))
            for idx in rt.store._dataset().list_indices()}


def _recording_compactions(rt: Any, monkeypatch: Any, events: list[Any],
                           after_compact: Callable[[str], None] | None = None) -> None:
    """``rt.store.compact`` and ``fold_step`` record what they did, in order, into ``events``: ``("compact",
    remap, result, the indexes after it)`` and ``("fold", index)``. ``after_compact(remap)`` runs after each
    compaction (a commit the writer would make meanwhile)."""
    compact, fold_step = rt.store.compact, rt.store.fold_step

    def recorded_compact(**kwargs: Any) -> Any:
        result = compact(**kwargs)
        remap = kwargs.get("remap", "all")
        events.append(("compact", remap, result, _lance_indexes(rt)))
        if after_compact is not None:
            after_compact(remap)
        return result

    def recorded_fold() -> Any:
        names = fold_step()
        events.append(("fold", names))
        return names

    monkeypatch.setattr(rt.store, "compact", recorded_compact)
    monkeypatch.setattr(rt.store, "fold_step", recorded_fold)


def _add_one_by_one(rt: Any, docs: Path, start: int, count: int) -> None:
    for i in range(start, start + count):  # one new document a commit: one small fragment each
        save_atomically(docs / f"new-{i:04d}.md", f"# New {i}\n\nAdded page {i} says wombat{i}.\n")
        rt.engine.process({"docs": {f"new-{i:04d}.md": time.time()}})


def _fragment_ids(rt: Any) -> set[int]:
    return {f.fragment_id for f in rt.store._dataset().get_fragments()}


def _finds(rt: Any, i: int) -> bool:
    found = rt.store.search(HashEmbedder().encode([f"wombat{i}"])[0], f"wombat{i}", k=3)
    return bool(found) and found[0]["doc_id"] == f"new-{i:04d}.md"


def test_the_routine_compaction_leaves_what_the_full_text_index_covers_until_fragments_pile_up(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """Every ``compact_every_commits`` commits the compaction merges only the fragments written since the
    full-text index was last folded: Lance rewrites that index whole to remap the rows it moves (most of a
    compaction's time), so the small fragments it covers and the index itself are left as they are. Past
    ``max_fragments`` the compaction merges every small fragment, remapping the full-text index too."""
    import dataclasses

    from syncd.service.maintenance import FRAGMENT_CHECK_EVERY

    every = 2 + FRAGMENT_CHECK_EVERY
    service, rt = _fold_runtime(tmp_path, docs, make_runtime, monkeypatch, fold_every_rows=10**9,
                                compact_every_commits=every, max_fragments=1000)
    events: list[Any] = []
    _recording_compactions(rt, monkeypatch, events)
    _add_one_by_one(rt, docs, 0, 2)
    assert rt.store.fold_step() == rt.store.index_names()
    before = _lance_indexes(rt)
    covered = before["text_idx"][1]
    assert len(covered) == 3 and {ids for _, ids in before.values()} == {covered}  # three small fragments
    _add_one_by_one(rt, docs, 2, FRAGMENT_CHECK_EVERY)  # due: the routine compaction (on this thread)
    assert [e[:3] for e in events[1:]] == [
        ("compact", "quick", {"fragments_removed": FRAGMENT_CHECK_EVERY, "fragments_added": 1, "remap": "quick"})]
    assert events[1][3] == before  # no index remapped
    fragments = _fragment_ids(rt)
    assert covered <= fragments and len(fragments) == len(covered) + 1
    assert _finds(rt, 0) and _finds(rt, 3)

    # Fragments piling up (more than max_fragments): every small one is merged, the indexes remapped. (Lance
    # merges fragments only with others that the same indexes cover: those the indexes cover, apart.)
    service.maintenance.policy = dataclasses.replace(service.maintenance.policy, max_fragments=1)
    _add_one_by_one(rt, docs, 10, FRAGMENT_CHECK_EVERY)
    assert [e[:2] for e in events[2:]] == [("compact", "all")]
    assert events[2][2] == {"fragments_removed": 3 + 1 + FRAGMENT_CHECK_EVERY, "fragments_added": 2,
                            "remap": "all"}
    remapped = events[2][3]
    assert remapped["text_idx"][0] != before["text_idx"][0] and not covered & remapped["text_idx"][1]
    assert rt.store.count_rows() == 3 + 2 + 2 * FRAGMENT_CHECK_EVERY
    assert all(_finds(rt, i) for i in (0, 1, 2, 10 + FRAGMENT_CHECK_EVERY - 1))


def test_the_folder_merges_the_new_fragments_just_before_it_folds(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """A fold covers every fragment written since the last one; merged first (nothing to remap: no index
    covers them yet), they leave one small fragment a fold in the full-text index instead of one a commit,
    which only a compaction remapping that index could merge. A commit made while the merge runs is
    folded with it."""
    service, rt = _fold_runtime(tmp_path, docs, make_runtime, monkeypatch, fold_every_rows=4)
    events: list[Any] = []
    meanwhile = [True]

    def commit_meanwhile(remap: str) -> None:
        if meanwhile.pop() if meanwhile else False:
            _add_one_by_one(rt, docs, 100, 1)

    _recording_compactions(rt, monkeypatch, events, after_compact=commit_meanwhile)
    base, before = _fragment_ids(rt), _lance_indexes(rt)
    indexes = rt.store.index_names()
    for fold in (1, 2):
        _add_one_by_one(rt, docs, 10 * fold, 6)
        assert service.maintenance.fold_if_due() == indexes
        assert [e[:3] for e in events[-2:]] == [
            ("compact", "quick", {"fragments_removed": 6, "fragments_added": 1, "remap": "quick"}),
            ("fold", indexes)]
        fragments = _fragment_ids(rt)
        assert base <= fragments and len(fragments) == len(base) + fold + 1  # and the commit made meanwhile
        assert {ids for _, ids in _lance_indexes(rt).values()} == {frozenset(fragments)}
    assert events[0][3] == before  # the merge remapped no index
    assert rt.store.compactions == 2 and rt.store.rows_since_indexed == 0
    assert all(_finds(rt, i) for i in (10, 15, 20, 25, 100))


@contextmanager
def fold_in_progress(store: Any) -> Iterator[None]:
    """Another thread holds the store's maintenance lock (as the folder does during a fold) for the block."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.maintenance_lock:
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(timeout=30)
        yield
    finally:
        release.set()
        holder.join(timeout=30)


def test_a_compaction_waits_its_turn_while_a_fold_holds_the_table(
        tmp_path: Path, docs: Path, make_runtime: Any) -> None:
    write_docs(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], store={"uri": "./index"})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    with fold_in_progress(rt.store):
        commits = rt.store.commits_since_maintenance
        assert rt.store.compact() is None  # skipped, not waited for
        assert rt.store.compactions == 0 and rt.store.commits_since_maintenance == commits > 0
    assert rt.store.compact() is not None and rt.store.compactions == 1
    assert rt.store.commits_since_maintenance == 0


def test_the_writer_moves_to_a_new_connection_every_so_many_commits_but_not_under_a_fold(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """A LanceDB connection keeps state for every commit made through it, so the writer's grows without
    end unless the live table is opened on a new one now and then; never while a fold works on it."""
    import syncd.store

    monkeypatch.setattr(syncd.store, "REOPEN_EVERY_COMMITS", 3)
    write_docs(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], store={"uri": "./index"})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")  # commit 1

    def edit(i: int) -> Any:
        save_atomically(docs / "note-0001.md", f"# Note\n\nEdit {i} zanzibar{i}.\n")
        rt.engine.process({"docs": {"note-0001.md": time.time()}})
        return rt.store._db

    first = rt.store._db
    assert edit(2) is first and edit(3) is not first  # the third commit moved to a new connection
    second = rt.store._db
    with fold_in_progress(rt.store):
        assert [edit(i) is second for i in (4, 5, 6, 7)] == [True] * 4  # due at 6, the fold holds the table
    assert edit(8) is not second  # the first commit after the fold
    # Nothing was lost on the way: every document once, the last edit live, through the new handle and
    # through a reader of its own.
    view = rt.store.scan(["doc_id", "text"])
    assert sorted(set(view["doc_id"].to_pylist())) == ["note-0000.md", "note-0001.md", "note-0002.md"]
    assert view.num_rows == 3 and any("zanzibar8" in t for t in view["text"].to_pylist())
    from syncd.api import Index

    found = Index(config_mod.load(cfg), embedder=HashEmbedder()).search("zanzibar8", k=1)
    assert found[0]["doc_id"] == "note-0001.md"


def test_a_reader_moves_to_a_new_connection_once_the_table_moved_on_and_keeps_answering(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    """/search's reader reads every version the writer makes; its connection is renewed too."""
    import syncd.store
    from syncd.api import Index

    monkeypatch.setattr(syncd.store, "REOPEN_EVERY_COMMITS", 3)
    monkeypatch.setattr(syncd.store, "VERSION_CHECK_EVERY", 1)
    write_docs(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], store={"uri": "./index"})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    index = Index(config_mod.load(cfg), embedder=HashEmbedder())
    index.search("note")
    first, opened = index.store._db, int(rt.store.table.version)
    seen = []
    for i in range(5):
        save_atomically(docs / "note-0001.md", f"# Note\n\nEdit {i} zanzibar{i}.\n")
        rt.engine.process({"docs": {"note-0001.md": time.time()}})
        assert index.search(f"zanzibar{i}", k=1)[0]["doc_id"] == "note-0001.md"  # the edit, whatever the handle
        seen.append((int(rt.store.table.version) - opened, index.store._db is not first))
    # Renewed at the first search that saw the table three versions on, not before.
    assert [renewed for _, renewed in seen] == [moved >= 3 for moved, _ in seen], seen
    assert seen[-1][1]


def test_a_new_connection_that_cannot_be_opened_keeps_the_writer_on_its_old_one(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: Any) -> None:
    import syncd.store
    from syncd.errors import StoreError

    monkeypatch.setattr(syncd.store, "REOPEN_EVERY_COMMITS", 2)
    write_docs(docs, 2)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], store={"uri": "./index"})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    handle, connect = rt.store.table, rt.store._connect

    def refused() -> Any:
        raise StoreError("cannot open store: injected")

    monkeypatch.setattr(rt.store, "_connect", refused)
    for i in range(2):  # due at the second commit: refused, and every edit still lands
        save_atomically(docs / "note-0001.md", f"# Note\n\nEdit {i} zanzibar{i}.\n")
        summary = rt.engine.process({"docs": {"note-0001.md": time.time()}})
        assert summary.docs_changed == 1 and not summary.failures
    assert rt.store.table is handle
    monkeypatch.setattr(rt.store, "_connect", connect)
    save_atomically(docs / "note-0001.md", "# Note\n\nEdit 2 zanzibar2.\n")
    rt.engine.process({"docs": {"note-0001.md": time.time()}})  # the retry, two commits after the refusal
    assert rt.store.table is not handle
    texts = rt.store.scan(["doc_id", "text"], "doc_id = 'note-0001.md'")["text"].to_pylist()
    assert len(texts) == 1 and "zanzibar2" in texts[0]


def test_an_idle_writer_brings_the_indexes_up_to_date(tmp_path: Path, docs: Path) -> None:
    """A new table gets its indexes from the full maintenance once the writer is idle; after that, rows
    written and then left idle are folded into every index by the folder, beside the writer, and an edit
    arriving meanwhile is committed at once (the writer never runs the full maintenance for them)."""
    write_docs(docs, 20)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": "./index", "index_every_rows": 10**9, "index_when_idle": "1s"},
                       sync={"maintenance_interval": "1h", "verify_interval": "0s"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        store = wait_for(lambda: (s := get(service, "/status")[1]["store"])["maintenance_runs"] >= 1 and s,
                         what="maintenance once idle")
        assert store["rows_since_indexed"] == 0 and store["unindexed_rows"] == 0
        assert {"doc_key", "text"} <= set(_indexes(tmp_path / "index", store["table"]))
        runs = store["maintenance_runs"]
        time.sleep(2.5)  # idle with nothing new: no more runs
        assert get(service, "/status")[1]["store"]["maintenance_runs"] == runs
        folds = store["index_folds"]
        indexes = len(_indexes(tmp_path / "index", store["table"]))
        # The folder, not the writer, folds: a gate holds the fold while a second edit arrives, and that edit
        # is committed and searchable all the same.
        entered, release = threading.Event(), threading.Event()
        fold_step = service.runtime.store.fold_step

        def gated() -> list[str]:
            assert threading.current_thread().name == "syncd-folder"
            entered.set()
            release.wait(30)
            return fold_step()

        service.runtime.store.fold_step = gated  # type: ignore[method-assign]
        save_atomically(docs / "note-0000.md", "# Note\n\nzanzibarquokka edited.\n")
        assert entered.wait(30), "no fold once idle"
        save_atomically(docs / "note-0001.md", "# Note\n\nheliotrope sextant edited.\n")
        wait_for(lambda: "note-0001.md" in [r["doc_id"] for r in get(
            service, "/search?q=heliotrope+sextant&k=3")[1]["results"]], what="the edit during the fold")
        release.set()
        store = wait_for(lambda: (s := get(service, "/status")[1]["store"])["unindexed_rows"] == 0
                         and s["rows_since_indexed"] == 0 and s, what="every index up to date once idle")
        assert store["maintenance_runs"] == runs and store["index_folds"] >= folds + indexes


def test_no_ann_index_below_the_row_threshold(tmp_path: Path, docs: Path) -> None:
    import lancedb

    write_docs(docs, 5)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    assert config_mod.load(cfg).store.ann_min_rows == 100_000
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        service.queue.push_task("maintenance", service.maintenance.run)
        wait_for(lambda: get(service, "/status")[1]["store"]["maintenance_runs"] == 1, what="maintenance")
        table = lancedb.connect(str(tmp_path / "index")).open_table(service.runtime.store.table_name)
        columns = {idx.columns[0] for idx in table.list_indices()}
        assert {"doc_key", "doc_id", "chunk_id", "text"} <= columns and "vector" not in columns
        store = get(service, "/status")[1]["store"]
        assert store["unindexed_rows"] == 0 and store["last_maintenance_at"] and store["last_reconcile_at"]
        assert store["bytes"] > 0 and store["fragments"] >= 1 and store["table_version"] == table.version


# -- sd_notify -------------------------------------------------------------------------------------------
@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # AF_UNIX paths must stay short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(folder, "notify"))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(folder, "notify"))
    yield sock
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_notify_sends_datagrams_to_the_socket(notify_socket: socket.socket) -> None:
    assert notify("STATUS=hello") is True
    assert notify_socket.recv(4096) == b"STATUS=hello"


def test_notify_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"syncd-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


# -- the status page in a real browser -------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no headless browser: install Debian's `chromium` package (apt-get install chromium)")


def _browse(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_status_page_renders_in_headless_chromium(tmp_path: Path, docs: Path) -> None:
    names = write_docs(docs, 4)
    cfg = write_config(tmp_path, [{"name": "handbook", "type": "filesystem", "path": str(docs)},
                                  {"name": "wiki", "type": "memory", "pages": 6, "poll_every": 30.0}],
                       sync={"backoff_max": "10m"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        save_atomically(docs / names[0], "# Note 0\n\nEdited: the handbook now covers onboarding.\n")
        (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
        wait_for(lambda: connector_status(service, "handbook")["failed_docs"] == 1, what="failure recorded")
        control("wiki").failing.set()
        service.queue.push_task("poll:wiki", lambda: service.writer.poll("wiki"))
        wait_for(lambda: connector_status(service, "wiki")["consecutive_failures"] == 1, what="wiki failing")
        wait_for(lambda: idle(service), what="idle")

        dom = _browse(service.http.url + "/", tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert '<meta http-equiv="refresh"' in page  # auto-refreshing
        for expected in ("handbook", "wiki", "filesystem", "memory", "failing", "idle", "changed", names[0],
                         "broken.pdf", "source down (test)", "failed 1× in a row", "<table>"):
            assert expected in page, expected
        # The counts the page shows are the ones synced: 4 good notes, 6 wiki pages (documents, then chunks).
        for name, count in (("handbook", 4), ("wiki", 6)):
            row = re.search(rf"<tr><td>{name}</td>.*?</tr>", page, re.S)
            assert row and re.search(rf'<td class="num">{count}</td><td class="num">\d+</td>', row.group(0)), name

        shot = tmp_path / "status-page.png"
        proc = _browse(service.http.url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1280,720",
                       "--hide-scrollbars")
        assert proc.returncode == 0, proc.stderr[-2000:]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        if os.environ.get("SYNCD_UPDATE_SCREENSHOT"):
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "status-page.png")


def test_each_watch_is_active_before_its_catch_up_lists_the_folder(tmp_path: Path, docs: Path,
                                                                   monkeypatch: Any) -> None:
    """A file created while the catch-up lists its folder must be in the listing or in an event: the watch
    starts first (here it is slowed down, so a catch-up started before it would list first)."""
    from connectors.filesystem import FilesystemConnector
    from syncd.service import Service

    write_docs(docs, 3)
    events: list[str] = []
    start_watch = Service._start_watch

    def slow_watch(self: Any, name: str, connector: Any) -> None:
        time.sleep(0.3)
        start_watch(self, name, connector)
        events.append("watch")

    listing = FilesystemConnector.list_documents

    def traced_listing(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("listing")
        return listing(self, *args, **kwargs)

    monkeypatch.setattr(Service, "_start_watch", slow_watch)
    monkeypatch.setattr(FilesystemConnector, "list_documents", traced_listing)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"verify_interval": "0s"})
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        assert events[0] == "watch" and "listing" in events
        assert connector_status(service, "docs")["docs"] == 3
