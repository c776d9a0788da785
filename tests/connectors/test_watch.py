"""Event-driven sync with real watchdog events (in-process daemon, HashEmbedder, real LanceDB)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tests.conftest import InProcessDaemon, wait_for, write_config


def indexed(d: InProcessDaemon) -> dict[str, set[str]]:
    data = d.service.runtime.store.scan(["doc_id", "text"]).to_pylist()
    out: dict[str, set[str]] = {}
    for r in data:
        out.setdefault(r["doc_id"], set()).add(r["text"])
    return out


def has_text(d: InProcessDaemon, doc_id: str, needle: str) -> bool:
    return any(needle in t for t in indexed(d).get(doc_id, ()))


def test_create_edit_delete_rename_and_move_follow_watch_events(fs_config: Path, docs: Path):
    with InProcessDaemon(fs_config) as d:
        (docs / "a.md").write_text("# A\n\nalpha first version\n")
        wait_for(lambda: has_text(d, "a.md", "alpha first"), what="create")
        (docs / "a.md").write_text("# A\n\nalpha second version\n")
        wait_for(lambda: has_text(d, "a.md", "alpha second") and not has_text(d, "a.md", "alpha first"), what="edit")
        embedded_before = d.service.runtime.embedder.embedded
        (docs / "a.md").rename(docs / "b.md")
        wait_for(lambda: set(indexed(d)) == {"b.md"}, what="rename")
        (docs / "sub").mkdir()
        (docs / "b.md").rename(docs / "sub" / "b.md")
        wait_for(lambda: set(indexed(d)) == {"sub/b.md"}, what="move")
        assert d.service.runtime.embedder.embedded == embedded_before, "renames and moves embed nothing"
        (docs / "sub").rename(docs / "moved-folder")
        wait_for(lambda: set(indexed(d)) == {"moved-folder/b.md"}, what="folder move")
        assert d.service.runtime.embedder.embedded == embedded_before, "a folder move embeds nothing"
        (docs / "moved-folder" / "b.md").unlink()
        wait_for(lambda: not indexed(d), what="delete")


def test_editor_atomic_save_updates_the_document_and_indexes_no_temp_file(fs_config: Path, docs: Path):
    (docs / "note.md").write_text("# Note\n\nbefore the save\n")
    with InProcessDaemon(fs_config) as d:
        wait_for(lambda: has_text(d, "note.md", "before the save"))
        tmp = docs / ".note.md.swp"
        tmp.write_text("# Note\n\nafter the atomic save\n")
        os.replace(tmp, docs / "note.md")
        wait_for(lambda: has_text(d, "note.md", "after the atomic save"), what="atomic save")
        d.wait_idle()
        assert set(indexed(d)) == {"note.md"}


def test_burst_of_1000_writes_converges_in_few_commits(fs_config: Path, docs: Path):
    with InProcessDaemon(fs_config) as d:
        version = d.service.runtime.store.table.version
        for i in range(1000):
            (docs / f"f{i:04d}.md").write_text(f"# File {i}\n\nburst document number {i} body\n")
        wait_for(lambda: len(indexed(d)) == 1000, timeout=180, what="1000 documents indexed")
        d.wait_idle()
        got = indexed(d)
        assert all(got[f"f{i:04d}.md"] == {f"burst document number {i} body"} for i in range(1000))
        commits = d.service.runtime.store.table.version - version
        assert commits < 200, f"a burst must batch itself, not commit per event ({commits} commits)"


def test_changes_made_while_the_daemon_was_down_are_caught_up_at_start(fs_config: Path, docs: Path):
    (docs / "keep.md").write_text("keep\n")
    (docs / "edit.md").write_text("old text\n")
    (docs / "delete.md").write_text("to be deleted\n")
    with InProcessDaemon(fs_config) as d:
        wait_for(lambda: len(indexed(d)) == 3)
    (docs / "edit.md").write_text("new text\n")
    (docs / "delete.md").unlink()
    (docs / "added.md").write_text("added while down\n")
    with InProcessDaemon(fs_config) as d:
        assert indexed(d) == {"keep.md": {"keep"}, "edit.md": {"new text"}, "added.md": {"added while down"}}


def test_a_dead_observer_is_restarted_and_the_folder_rescanned(fs_config: Path, docs: Path):
    with InProcessDaemon(fs_config) as d:
        watch = d.service.watches["docs"]
        watch._observer.stop()
        watch._observer.join()
        (docs / "while-dead.md").write_text("written while the observer was dead\n")
        wait_for(lambda: "while-dead.md" in indexed(d), what="rescan after restart")
        assert d.service.watches["docs"] is not watch and d.service.watches["docs"].is_alive()
        restarts = d.service.metrics.watcher_restarts.labels(connector="docs")._value.get()
        assert restarts == 1


def test_inotify_queue_overflow_triggers_a_rescan(fs_config: Path, docs: Path):
    with InProcessDaemon(fs_config) as d:
        # Written where no event can reach the engine: straight past the observer, then the overflow warning
        # that watchdog logs when the kernel drops events.
        d.service.watches["docs"]._observer.unschedule_all()
        (docs / "missed.md").write_text("an event the kernel dropped\n")
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
        wait_for(lambda: "missed.md" in indexed(d), what="rescan after overflow")


def test_poll_mode_picks_up_changes_without_inotify(tmp_path: Path, docs: Path):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "watch": "poll",
                                   "poll_interval": "200ms"}])
    with InProcessDaemon(cfg) as d:
        assert d.service.watches["docs"].mode == "poll"
        (docs / "polled.md").write_text("found by polling\n")
        wait_for(lambda: has_text(d, "polled.md", "found by polling"), what="poll")


def test_watch_limit_reached_falls_back_to_polling_and_says_so(fs_config: Path, docs: Path, monkeypatch):
    """Stands in for the kernel's inotify watch limit (a global sysctl that a test cannot lower for itself
    alone): the inotify observer's start raises ENOSPC exactly as watchdog does past the limit."""
    import errno

    from watchdog.observers.inotify import InotifyObserver

    def full(self):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "start", full)
    with InProcessDaemon(fs_config) as d:
        watch = d.service.watches["docs"]
        assert watch.mode == "poll" and "inotify limit" in watch.fallback_reason
        status = d.service.status()["connectors"][0]
        assert status["watch"]["mode"] == "poll" and status["watch"]["fallback"]
        (docs / "after-fallback.md").write_text("still found\n")
        wait_for(lambda: "after-fallback.md" in indexed(d), timeout=30, what="polling after the fallback")


def test_auto_mode_polls_network_filesystems_and_watches_local_ones(tmp_path: Path, docs: Path, monkeypatch):
    """No NFS or SMB share can be mounted here: the mount table lookup stands in for one reporting nfs4."""
    import connectors.filesystem as fsmod
    from syncd import config as config_mod
    from syncd.runtime import build_connector
    from syncd.state import StateDir

    cfg = config_mod.load(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}]))
    connector = build_connector(cfg, cfg.connectors[0], StateDir(tmp_path / "state"))
    assert fsmod.filesystem_type(docs) not in fsmod.NETWORK_FS
    assert connector.watch_mode() == "events"
    monkeypatch.setattr(fsmod, "filesystem_type", lambda path: "nfs4")
    assert connector.watch_mode() == "poll"


def test_moving_a_folder_larger_than_one_batch_embeds_nothing(tmp_path: Path, docs: Path):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"max_batch_docs": 50})
    (docs / "big").mkdir()
    for i in range(120):
        (docs / "big" / f"n{i}.md").write_text(f"# Note {i}\n\nbody of note {i}\n")
    with InProcessDaemon(cfg) as d:
        embedded = d.service.runtime.embedder.embedded
        (docs / "big").rename(docs / "archive")
        wait_for(lambda: set(indexed(d)) == {f"archive/n{i}.md" for i in range(120)}, what="folder moved")
        d.wait_idle()
        assert d.service.runtime.embedder.embedded == embedded
