"""Faults: a bad embedding batch, a failing store write, a connector that fails mid-listing, an unreadable
file. Only the affected documents fail, with a reason shown in status; they are retried on later cycles;
nothing advances past an unfinished document; other documents and connectors keep syncing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from syncd.errors import ConnectorError, DocumentUnavailable
from syncd.models import Change
from syncd.testing import FaultyConnector, FaultyEmbedder, HashEmbedder
from syncd.verify import verify
from tests.conftest import wait_for, write_config


def _corpus(root: Path, n: int = 6) -> list[str]:
    ids = []
    for i in range(n):
        (root / f"doc{i}.md").write_text(f"# Doc {i}\n\nPlain text of document {i}.\n")
        ids.append(f"doc{i}.md")
    return ids


def _indexed(rt) -> dict[str, str]:  # type: ignore[no-untyped-def]
    data = rt.store.scan(["doc_id", "revision"]).to_pylist()
    return {r["doc_id"]: r["revision"] for r in data}


def _failures(rt, name: str = "docs") -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(rt.state.connector(name).failures)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_bad_embedding_batch_fails_only_its_document(tmp_path: Path, docs: Path, make_runtime, mode: str) -> None:  # type: ignore[no-untyped-def]
    """The model raising (or returning NaN) for one document's text fails that document alone; once the
    model behaves, the next cycle indexes it without any edit."""
    ids = _corpus(docs)
    (docs / "poison.md").write_text("# Poison\n\nThis text carries the POISONMARK token.\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    embedder = FaultyEmbedder(HashEmbedder(), **{f"{mode}_marker": "POISONMARK"})  # type: ignore[arg-type]
    rt = make_runtime(cfg, embedder)
    summary = rt.engine.reconcile("docs")
    assert set(_indexed(rt)) == set(ids)
    assert [f.doc_id for f in summary.failures] == ["poison.md"]
    assert summary.failures[0].reason.startswith("embedding-failed")
    assert set(_failures(rt)) == {"poison.md"}
    assert "poison.md" not in rt.state.connector("docs").fingerprints, "a failed document must not be cached"
    # Still failing: retried every cycle, still reported, nothing else touched.
    again = rt.engine.reconcile("docs")
    assert [f.doc_id for f in again.failures] == ["poison.md"]
    assert again.docs_unchanged == len(ids)
    # The model recovers: the next cycle retries and indexes it.
    setattr(embedder, f"{mode}_marker", None)
    healed = rt.engine.reconcile("docs")
    assert healed.docs_added == 1 and not healed.failures
    assert set(_indexed(rt)) == set(ids) | {"poison.md"}
    assert _failures(rt) == {}
    assert verify(rt).ok


class _FailingTable:
    """The live LanceDB table with its writes failing as a full disk does (stands in where no tmpfs can be
    mounted); reads go to the real table."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def merge_insert(self, *_: object) -> object:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_store_write_failure_marks_batch_failed_and_retries(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A failed commit leaves the index and the fingerprint cache as they were, records the reason for
    each document of the batch, and the next cycle after the disk recovers commits them."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    before = _indexed(rt)
    (docs / "doc0.md").write_text("# Doc 0\n\nEdited while the disk is full.\n")
    (docs / "added.md").write_text("# Added\n\nNew while the disk is full.\n")
    (docs / "doc1.md").unlink()
    fingerprints = dict(rt.state.connector("docs").fingerprints)
    real = rt.store._table
    rt.store._table = _FailingTable(real)
    summary = rt.engine.reconcile("docs")
    rt.store._table = real
    assert {f.doc_id for f in summary.failures} == {"doc0.md", "added.md", "doc1.md"}
    assert all("store-write-failed" in f.reason and "No space left" in f.reason for f in summary.failures)
    assert _indexed(rt) == before
    assert {k: v for k, v in rt.state.connector("docs").fingerprints.items() if k != "doc1.md"} == \
        {k: v for k, v in fingerprints.items() if k != "doc1.md"}
    from syncd.service import build_status

    shown = {f["doc_id"]: f["reason"] for f in build_status(rt)["connectors"][0]["failures"]}
    assert set(shown) == {"doc0.md", "added.md", "doc1.md"}
    assert all(r.startswith("store-write-failed") for r in shown.values())
    healed = rt.engine.reconcile("docs")
    assert not healed.failures
    assert set(_indexed(rt)) == (set(ids) - {"doc1.md"}) | {"added.md"}
    assert _failures(rt) == {}
    assert verify(rt).ok


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_real_full_disk_fails_the_batch_and_recovers(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """On a real tiny tmpfs, ENOSPC fails the batch, LanceDB still opens and answers, and once space is
    back the next cycle commits everything."""
    store = tmp_path / "small"
    if not _mount_tmpfs(store, "600k"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: a tmpfs must be mountable for the real full-disk test")
        pytest.skip("mounting a tmpfs needs root; test_store_write_failure_marks_batch_failed_and_retries "
                    "covers the same path with an injected ENOSPC")
    try:
        ids = _corpus(docs, 3)
        cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                           store={"uri": str(store / "index")})
        rt = make_runtime(cfg)
        rt.engine.reconcile("docs")
        assert set(_indexed(rt)) == set(ids)
        big = "\n\n".join(f"Paragraph {i}: " + " ".join(f"w{i}_{j}" for j in range(150)) for i in range(400))
        (docs / "big.md").write_text(f"# Big\n\n{big}\n")
        summary = rt.engine.reconcile("docs")
        assert [f.doc_id for f in summary.failures] == ["big.md"]
        assert "store-write-failed" in summary.failures[0].reason
        assert set(_indexed(rt)) == set(ids)
        assert rt.store.table.search([0.1] * 384).limit(3).to_list()
        subprocess.run(["mount", "-o", "remount,size=256m", str(store)], check=True)
        healed = rt.engine.reconcile("docs")
        assert not healed.failures
        assert set(_indexed(rt)) == set(ids) | {"big.md"}
        assert verify(rt).ok
        rt.close()
    finally:
        subprocess.run(["umount", "-l", str(store)], capture_output=True)


@pytest.mark.parametrize("error", [ConnectorError("injected: listing timed out", connector="docs"),
                                   OSError(errno.EIO, "injected I/O error")], ids=["connector-error", "os-error"])
def test_listing_failing_midway_deletes_nothing_and_others_sync(tmp_path: Path, make_runtime, error: Exception) -> None:  # type: ignore[no-untyped-def]
    """A connector whose listing fails halfway deletes nothing and shows the error; another connector in
    the same cycle keeps syncing; the next good listing recovers."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ids_a, ids_b = _corpus(a, 20), _corpus(b, 2)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(a)},
                                  {"name": "other", "type": "filesystem", "path": str(b)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    rt.engine.reconcile("other")
    real = rt.engine.connectors["docs"]
    rt.engine.connectors["docs"] = FaultyConnector(real, fail_listing_after=5, listing_error=error)
    (b / "new.md").write_text("# New\n\nArrived while the other connector fails.\n")
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0
    assert sum(1 for d in _indexed(rt) if d in ids_a) == len(ids_a)
    assert rt.engine.status["docs"].state == "failing"
    assert "injected" in (rt.engine.status["docs"].last_error or "")
    other = rt.engine.reconcile("other")
    assert other.docs_added == 1 and not other.failures
    assert set(ids_b) | {"new.md"} <= set(_indexed(rt))
    rt.engine.connectors["docs"] = real
    healed = rt.engine.reconcile("docs")
    assert not healed.failures and healed.docs_deleted == 0
    assert rt.engine.status["docs"].state == "idle"


def test_unreadable_file_keeps_old_copy_and_is_retried(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A file that cannot be read now (permission denied) keeps its indexed copy, is reported with its
    reason, and is re-read on the next cycle. Root ignores file modes, so the connector double raises what
    FilesystemConnector.read raises for EACCES."""
    _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    before = _indexed(rt)
    (docs / "doc2.md").write_text("# Doc 2\n\nChanged, but now unreadable.\n")
    real = rt.engine.connectors["docs"]
    denied = DocumentUnavailable("permission-denied", doc_id="doc2.md", connector="docs", detail="no read permission")
    rt.engine.connectors["docs"] = FaultyConnector(real, fail_read={"doc2.md": denied})
    summary = rt.engine.reconcile("docs")
    assert [(f.doc_id, f.reason) for f in summary.failures] == [("doc2.md", "permission-denied: no read permission")]
    assert _indexed(rt) == before
    assert _failures(rt) == {"doc2.md": "permission-denied: no read permission"}
    rt.engine.connectors["docs"] = real
    healed = rt.engine.reconcile("docs")
    assert not healed.failures and healed.docs_changed == 1
    assert _indexed(rt)["doc2.md"] != before["doc2.md"]


def test_real_permission_denied_is_reported_as_such(tmp_path: Path) -> None:
    """A real mode-000 file read by an unprivileged user is permission-denied, and its readable neighbour
    is read. As root (CI), the reads run with the effective user switched to nobody for their duration."""
    import shutil
    import tempfile

    from connectors.base import ConnectorContext
    from connectors.filesystem import FilesystemConfig, FilesystemConnector
    from syncd.config import LimitsConfig
    from syncd.errors import DocumentError

    base = Path(tempfile.mkdtemp(prefix="syncd-perm-"))  # under /tmp, so nobody can traverse it
    try:
        base.chmod(0o755)
        (base / "open.md").write_text("# Open\n\nreadable\n")
        (base / "open.md").chmod(0o644)
        (base / "secret.md").write_text("# Secret\n\nhidden\n")
        (base / "secret.md").chmod(0)
        conn = FilesystemConnector(FilesystemConfig(name="docs", type="filesystem", path=str(base)),
                                   ConnectorContext(state_dir=tmp_path, base_dir=tmp_path, limits=LimitsConfig()))
        out: dict[str, str] = {}
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)
        try:
            for doc in ("open.md", "secret.md"):
                try:
                    out[doc] = "read:" + conn.read(doc).content.decode()
                except DocumentError as exc:
                    out[doc] = f"{type(exc).__name__}:{exc.describe()}"
        finally:
            if as_root:
                os.seteuid(0)
        assert out == {"open.md": "read:# Open\n\nreadable\n",
                       "secret.md": "DocumentUnavailable:permission-denied: no read permission"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_daemon_keeps_running_and_shows_document_failures(tmp_path: Path, docs: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """In the service, a document the model fails on is shown in /status with its reason; the service stays
    healthy and keeps syncing other changes; when the fault clears, the next reconcile indexes it."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    embedder = FaultyEmbedder(HashEmbedder(), raise_marker="POISONMARK")
    with in_process_daemon(cfg, embedder=embedder) as d:
        svc = d.service
        (docs / "poison.md").write_text("# Poison\n\nPOISONMARK here.\n")

        def failure_shown() -> dict | None:  # type: ignore[type-arg]
            c = svc.status()["connectors"][0]
            # The file may first be seen empty (created, then written): wait for the model's failure.
            reasons = [f["reason"] for f in c["failures"] if f["doc_id"] == "poison.md"]
            return c if reasons and reasons[0].startswith("embedding-failed") else None

        conn = wait_for(failure_shown, what="failure in /status")
        assert conn["failures"][0]["doc_id"] == "poison.md"
        assert conn["failures"][0]["reason"].startswith("embedding-failed")
        (docs / "later.md").write_text("# Later\n\nA healthy document after the failure.\n")
        wait_for(lambda: "later.md" in svc.runtime.engine.docs("docs"), what="later.md indexed")
        assert svc.healthy()
        embedder.raise_marker = None
        svc.queue.push(Change(connector="docs", kind="rescan", doc_id=""))
        wait_for(lambda: "poison.md" in svc.runtime.engine.docs("docs"), what="poison.md retried")
        wait_for(lambda: svc.status()["connectors"][0]["failed_docs"] == 0, what="failure cleared")
        assert set(svc.runtime.engine.docs("docs")) == set(ids) | {"poison.md", "later.md"}
