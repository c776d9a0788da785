"""The bad-input corpus (scripts/badinput.py): every file is indexed correctly or skipped with a
structured reason, memory stays bounded, the service keeps running, and verify is clean afterwards."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from syncd.verify import verify
from tests.conftest import REPO, write_config


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("badinput", REPO / "scripts" / "badinput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_bad_input_corpus(tmp_path: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """Binary, undecodable, empty, huge, sparse, looping, escaping, special and oddly named files, hostile
    HTML and broken PDFs: each indexed or skipped with its reason; the service stays healthy; verify is clean."""
    root = tmp_path / "docs"
    manifest = _generator().generate(root)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(root)}])
    measured = _reset_peak()
    baseline = _peak_rss_kib()
    with in_process_daemon(cfg) as d:
        svc = d.service
        rt = svc.runtime
        d.wait_idle(timeout=600)
        assert svc.healthy()
        status = svc.status()["connectors"][0]
        assert status["state"] == "idle"
        indexed = rt.engine.docs("docs")
        failures = rt.state.connector("docs").failures
        rows = rt.store.scan(["doc_id", "text"]).to_pylist()
        texts: dict[str, str] = {}
        for r in rows:
            texts[r["doc_id"]] = texts.get(r["doc_id"], "") + "\n" + r["text"]
        for doc_id, spec in manifest.items():
            expect = spec["expect"]
            if expect == "indexed":
                assert doc_id in indexed, (doc_id, failures.get(doc_id))
                assert spec["phrase"] in texts[doc_id], doc_id
                for absent in spec.get("absent", []):
                    assert absent not in texts[doc_id], (doc_id, absent)
            else:
                kind, reason = expect.split(":", 1)
                assert doc_id not in indexed, doc_id
                assert failures.get(doc_id, "").split(":", 1)[0] == reason, (doc_id, failures.get(doc_id))
        assert set(indexed) == {k for k, v in manifest.items() if v["expect"] == "indexed"}
        assert not any("escapedsecretword" in t for t in texts.values())
        # Two spellings of one name are two documents; each keeps its own text.
        assert "nfcspelling" in texts["caf\u00e9.md"] and "nfdspelling" in texts["cafe\u0301.md"]
        shown = {f["doc_id"]: f["reason"] for f in status["failures"]}
        assert shown == failures
        report = verify(rt)
        assert report.ok, report.as_dict()
        assert report.checked_docs == len(manifest)
        # A second cycle is quiet: nothing re-read as changed, nothing newly failed.
        again = rt.engine.reconcile("docs")
        assert again.docs_added == again.docs_changed == again.docs_deleted == 0
    if measured and baseline is not None:
        peak = _peak_rss_kib()
        assert peak is not None
        # The 1 GiB sparse file is never read, and a 10 MB code block is not held many times over.
        assert peak - baseline < 1024 * 1024, f"peak RSS grew by {(peak - baseline) // 1024} MiB"


def test_file_deleted_while_being_read(tmp_path: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A file listed and then gone by the time it is read is neither indexed nor failed."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "stays.md").write_text("# Stays\n\nstaying\n")
    (root / "vanishes.md").write_text("# Vanishes\n\nvanishing\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(root)}])
    rt = make_runtime(cfg)
    real = rt.engine.connectors["docs"]

    class Vanishing:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def list_documents(self, *args: object):  # type: ignore[no-untyped-def]
            refs = list(real.list_documents(*args))
            os.unlink(root / "vanishes.md")  # after the listing saw it, before it is read
            return iter(refs)

    rt.engine.connectors["docs"] = Vanishing()
    summary = rt.engine.reconcile("docs")
    assert not summary.failures
    assert set(rt.engine.docs("docs")) == {"stays.md"}
    rt.engine.connectors["docs"] = real
    assert verify(rt).ok
