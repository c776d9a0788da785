"""The mass-deletion guard: a listing that suddenly reports most documents gone deletes nothing until a
human allows it, and a vanished root is reported as unavailable rather than read as "all deleted"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.testing import HashEmbedder
from tests.conftest import wait_for, write_config

N_DOCS = 20


def _corpus(root: Path, n: int = N_DOCS) -> list[str]:
    ids = []
    for i in range(n):
        (root / f"doc{i:02d}.md").write_text(f"# Document {i}\n\nBody of document number {i} about topic {i * 7}.\n")
        ids.append(f"doc{i:02d}.md")
    return ids


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def _indexed(rt) -> set[str]:  # type: ignore[no-untyped-def]
    return set(rt.store.scan(["doc_id"])["doc_id"].to_pylist())


def test_mass_deletion_is_refused_and_shown(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Deleting more than half of the documents in one cycle deletes none and marks the connector blocked."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    assert _indexed(rt) == set(ids)
    doomed = ids[: N_DOCS * 3 // 4]
    for doc_id in doomed:
        (docs / doc_id).unlink()
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0
    assert _indexed(rt) == set(ids), "nothing may be deleted while the guard holds"
    assert any(f.reason.startswith("mass-delete-refused") for f in summary.failures)
    status = rt.engine.status["docs"]
    assert status.state == "blocked"
    assert status.mass_delete_blocked is not None
    assert status.mass_delete_blocked["would_delete"] == len(doomed)
    assert status.mass_delete_blocked["total"] == N_DOCS
    # A second cycle is still refused: the guard waits for a human.
    rt.engine.reconcile("docs")
    assert _indexed(rt) == set(ids)
    # The human allows it: exactly the deleted documents go.
    released = rt.engine.reconcile("docs", allow_mass_delete=True)
    assert released.docs_deleted == len(doomed)
    assert _indexed(rt) == set(ids) - set(doomed)
    assert rt.engine.status["docs"].mass_delete_blocked is None
    assert rt.engine.status["docs"].state == "idle"


def test_deleting_under_the_limit_is_not_blocked(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Up to max_delete_fraction of the documents may go in one cycle without a human."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    few = ids[: N_DOCS // 2]  # exactly 50%: allowed
    for doc_id in few:
        (docs / doc_id).unlink()
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == len(few)
    assert rt.engine.status["docs"].mass_delete_blocked is None


def test_the_fraction_is_configurable(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """[sync] max_delete_fraction lowers the share a cycle may delete."""
    ids = _corpus(docs, 40)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"max_delete_fraction": 0.25})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    for doc_id in ids[:12]:  # 30% > 25%, and more than the guard's minimum of 10
        (docs / doc_id).unlink()
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0
    assert rt.engine.status["docs"].mass_delete_blocked is not None
    assert _indexed(rt) == set(ids)


def test_vanished_root_is_unavailable_and_deletes_nothing(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A root folder that disappears is reported as unavailable; no document is deleted, whatever the share."""
    ids = _corpus(docs, 3)  # few documents: below the guard's minimum, so only root detection protects them
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    moved = tmp_path / "elsewhere"
    docs.rename(moved)
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0
    assert _indexed(rt) == set(ids)
    status = rt.engine.status["docs"]
    assert status.state == "unavailable"
    assert status.last_error is not None and str(docs) in status.last_error
    # Deletion hints for its files (a watcher seeing the share go) delete nothing either.
    rt.engine.process({"docs": {d: 0.0 for d in ids}})
    assert _indexed(rt) == set(ids)
    assert rt.engine.status["docs"].state == "unavailable"
    # The share comes back: the connector recovers with nothing lost.
    moved.rename(docs)
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0 and not summary.failures
    assert rt.engine.status["docs"].state == "idle"
    assert _indexed(rt) == set(ids)


def test_root_that_is_a_file_is_unavailable(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A root path replaced by a file is unavailable, not an empty folder."""
    ids = _corpus(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    shutil.rmtree(docs)
    docs.write_text("not a folder")
    summary = rt.engine.reconcile("docs")
    assert summary.docs_deleted == 0
    assert _indexed(rt) == set(ids)
    assert rt.engine.status["docs"].state == "unavailable"


def test_daemon_shows_block_and_cli_releases_it(tmp_path: Path, docs: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """The service shows a refused mass deletion in /status and `syncd status`; `syncd sync --connector NAME
    --allow-mass-delete` releases it and deletes exactly the documents that are gone."""
    ids = _corpus(docs)
    # The packaged model's id and dimension with the hash embedder: the CLI sees the same index settings and
    # does not rebuild, and deleting needs no embedding, so the CLI never loads the model.
    embedder = HashEmbedder(model_id="all-minilm-l6-v2")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "watch": "poll",
                                   "poll_interval": "3600s"}])
    doomed = ids[: N_DOCS * 3 // 4]
    with in_process_daemon(cfg, embedder=embedder) as d:
        svc = d.service
        assert svc.runtime is not None
        wait_for(lambda: len(svc.runtime.engine.docs("docs")) == N_DOCS, what="initial index")
        for doc_id in doomed:
            (docs / doc_id).unlink()
        from syncd.models import Change

        svc.queue.push(Change(connector="docs", kind="rescan", doc_id=""))
        status = wait_for(lambda: _blocked(svc.status()), what="blocked in /status")
        assert status["state"] == "blocked"
        assert status["mass_delete_blocked"]["would_delete"] == len(doomed)
        assert "allow-mass-delete" in (status["last_error"] or "")
        assert svc.http is not None
        import urllib.request

        with urllib.request.urlopen(svc.http.url + "/status", timeout=30) as resp:
            http_status = json.loads(resp.read())
        assert _blocked(http_status)["mass_delete_blocked"]["total"] == N_DOCS
        out = _cli(cfg, "status")
        assert out.returncode == 0, out.stderr
        assert "MASS DELETE BLOCKED" in out.stdout
        assert f"{len(doomed)} of {N_DOCS}" in out.stdout
        assert "--allow-mass-delete" in out.stdout
        out = _cli(cfg, "status", "--json")
        assert _blocked(json.loads(out.stdout))["mass_delete_blocked"]["would_delete"] == len(doomed)
        assert len(svc.runtime.engine.docs("docs")) == N_DOCS
        # The human releases it while the daemon runs.
        out = _cli(cfg, "sync", "--connector", "docs", "--allow-mass-delete", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        assert result["docs_deleted"] == len(doomed)
        wait_for(lambda: _blocked(svc.status()) is None, what="block released")
        assert set(svc.runtime.engine.docs("docs")) == set(ids) - set(doomed)
        assert set(svc.runtime.store.scan(["doc_id"])["doc_id"].to_pylist()) == set(ids) - set(doomed)


def test_cli_sync_releases_block_without_daemon(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Without a daemon, `syncd sync` refuses (exit 1, reason shown) and `--allow-mass-delete` deletes."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg, HashEmbedder(model_id="all-minilm-l6-v2"))
    rt.engine.reconcile("docs")
    rt.close()
    doomed = ids[: N_DOCS * 3 // 4]
    for doc_id in doomed:
        (docs / doc_id).unlink()
    out = _cli(cfg, "sync", "--json")
    assert out.returncode == 1
    refused = json.loads(out.stdout)
    assert refused["docs_deleted"] == 0
    assert any(f["reason"].startswith("mass-delete-refused") for f in refused["failures"])
    out = _cli(cfg, "sync", "--connector", "docs", "--allow-mass-delete", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["docs_deleted"] == len(doomed)
    out = _cli(cfg, "verify", "--json")
    assert out.returncode == 0, out.stdout
    assert json.loads(out.stdout)["ok"] is True


def _blocked(status: dict) -> dict | None:  # type: ignore[type-arg]
    for c in status["connectors"]:
        if c["name"] == "docs" and c.get("mass_delete_blocked"):
            return c  # type: ignore[no-any-return]
    return None


def test_renamed_folder_is_not_a_mass_deletion(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Moving the folder that holds most documents is a rename of each, not a deletion the guard blocks."""
    sub = docs / "team"
    sub.mkdir()
    ids = [f"team/{d}" for d in _corpus(sub)]
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    assert _indexed(rt) == set(ids)
    sub.rename(docs / "renamed")
    summary = rt.engine.reconcile("docs")
    assert rt.engine.status["docs"].mass_delete_blocked is None
    assert _indexed(rt) == {i.replace("team/", "renamed/") for i in ids}
    assert summary.docs_renamed + summary.docs_added == N_DOCS and summary.docs_deleted + summary.docs_renamed == N_DOCS


def test_watcher_deletions_arriving_one_by_one_add_up_against_the_guard(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A fast `rm` of most files reaches the engine as many one-document batches: the guard counts all the
    deletions of the window, so it stops at the same share as one big cycle would."""
    from tests.conftest import write_config

    total = 30
    for i in range(total):
        (docs / f"n{i:02d}.md").write_text(f"# Note {i}\n\nbody {i}\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    refused = []
    for i in range(25):
        (docs / f"n{i:02d}.md").unlink()
        summary = rt.engine.process({"docs": {f"n{i:02d}.md": 0.0}})
        if any(f.reason.startswith("mass-delete-refused") for f in summary.failures):
            refused.append(i)
    allowed = int(rt.config.sync.max_delete_fraction * total)
    assert len(rt.engine.docs("docs")) == total - allowed
    assert refused == list(range(allowed, 25))
    assert rt.engine.status["docs"].mass_delete_blocked is not None


def test_an_unmounted_share_is_unavailable_not_empty(tmp_path: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A real tmpfs is mounted on the connector root, indexed, then unmounted: the empty mount-point folder
    left behind lies on another device, so the connector reports the share unavailable and deletes nothing,
    even below the mass-deletion guard's threshold."""
    import shutil
    import subprocess

    from tests.conftest import write_config

    share = tmp_path / "share"
    share.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs: run the suite as root (CI does)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(share)], check=True)
    try:
        for i in range(3):
            (share / f"d{i}.md").write_text(f"# Doc {i}\n\nshared document {i}\n")
        cfg = write_config(tmp_path, [{"name": "share", "type": "filesystem", "path": str(share)}])
        rt = make_runtime(cfg)
        assert rt.engine.reconcile("share").docs_added == 3
    finally:
        subprocess.run(["umount", str(share)], check=True)
    assert share.is_dir() and not any(share.iterdir())
    summary = rt.engine.reconcile("share")
    assert summary.docs_deleted == 0 and len(rt.engine.docs("share")) == 3
    assert "looks unmounted" in summary.failures[0].reason
    assert rt.engine.status["share"].state == "unavailable"
