"""`syncd verify [--repair]`: every kind of drift is found, exit 1 on drift, `--repair` fixes exactly
those documents, and verifying never loads the embedding model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc

from syncd.store import doc_key
from syncd.testing import HashEmbedder
from syncd.verify import repair, verify
from tests.conftest import write_config


def _corpus(root: Path, n: int = 10) -> list[str]:
    ids = []
    for i in range(n):
        body = "\n\n".join(f"Paragraph {j} of document {i}: " + " ".join(f"word{i}x{j}x{k}" for k in range(60))
                           for j in range(4))
        (root / f"doc{i:02d}.md").write_text(f"# Document {i}\n\n{body}\n")
        ids.append(f"doc{i:02d}.md")
    return ids


def _rows(rt) -> dict[str, set[tuple[str, object]]]:  # type: ignore[no-untyped-def]
    data = rt.store.scan(["doc_id", "chunk_id", "updated_at"]).to_pylist()
    out: dict[str, set[tuple[str, object]]] = {}
    for row in data:
        out.setdefault(row["doc_id"], set()).add((row["chunk_id"], row["updated_at"]))
    return out


def _drift(tmp_path: Path, docs: Path, rt) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """Make one document of each drift kind behind the engine's back; returns the expected report."""
    table = rt.store.table
    # missing: a file the index never saw
    (docs / "new.md").write_text("# New\n\nA document added while nobody was syncing.\n")
    # stale: edited at the source
    with open(docs / "doc01.md", "a") as fh:
        fh.write("\nAn edit made while nobody was syncing.\n")
    # orphaned: deleted at the source
    (docs / "doc02.md").unlink()
    # duplicated: a second copy of one document's rows
    dup = table.search().where(f"doc_key = '{doc_key('docs', 'doc03.md')}'").limit(None).to_arrow()
    assert dup.num_rows >= 1
    table.add(dup)
    # torn (reported as stale): one chunk of a multi-chunk document lost
    torn = table.search().where(f"doc_key = '{doc_key('docs', 'doc04.md')}'").limit(None).to_arrow()
    assert torn.num_rows >= 2, "the torn document needs several chunks"
    first = torn.filter(pc.equal(torn["chunk_index"], 0))["chunk_id"][0].as_py()
    table.delete(f"chunk_id = '{first}'")
    return {"missing": {"new.md"}, "stale": {"doc01.md", "doc04.md"}, "orphaned": {"doc02.md"},
            "duplicated": {"doc03.md"}}


def _kinds(report: dict) -> dict[str, set[str]]:  # type: ignore[type-arg]
    return {k: {e["doc_id"] for e in report[k]} for k in ("missing", "stale", "orphaned", "duplicated")}


def test_each_drift_kind_is_found_and_repaired_exactly(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Missing, stale (edited or torn), orphaned and duplicated documents are reported; repair rewrites
    those and leaves every other document's rows untouched."""
    ids = _corpus(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       chunking={"max_tokens": 64})
    embedder = HashEmbedder()
    rt = make_runtime(cfg, embedder)
    rt.engine.reconcile("docs")
    clean = verify(rt)
    assert clean.ok and clean.checked_docs == len(ids)
    expected = _drift(tmp_path, docs, rt)
    before = _rows(rt)
    report = verify(rt)
    assert not report.ok
    assert _kinds(report.as_dict()) == expected
    assert report.checked_docs == len(ids)  # one added, one deleted
    touched = set().union(*expected.values())
    embedder.calls.clear()
    repair(rt, report)
    after = verify(rt)
    assert after.ok, after.as_dict()
    rows = _rows(rt)
    for doc_id in set(ids) - touched:
        assert rows[doc_id] == before[doc_id], f"{doc_id} was rewritten although it was in sync"
    assert "doc02.md" not in rows
    assert "new.md" in rows and "doc01.md" in rows
    # Exactly one row per position for the repaired documents.
    data = rt.store.scan(["doc_id", "chunk_index"]).to_pylist()
    for doc_id in ("doc03.md", "doc04.md"):
        positions = sorted(r["chunk_index"] for r in data if r["doc_id"] == doc_id)
        assert positions == list(range(len(positions)))
    # No text of a document that was in sync reached the model.
    embedded_texts = [t for call in embedder.calls for t in call]
    assert embedded_texts, "the new document needs embedding"
    untouched_markers = [f"word{int(d[3:5])}x" for d in set(ids) - touched]
    assert not [t for t in embedded_texts if any(m in t for m in untouched_markers)]


def test_skipped_documents_are_not_missing_even_without_state(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Files that extraction skips (binary, empty) are in sync when absent from the index, even after the
    state that recorded why is lost."""
    _corpus(docs, 3)
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (docs / "empty.md").write_bytes(b"")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    rt.close()
    shutil.rmtree(tmp_path / "state" / "connectors")
    rt2 = make_runtime(cfg)
    report = verify(rt2)
    assert report.ok, report.as_dict()
    assert report.checked_docs == 5


def test_unlistable_source_is_not_reported_in_sync(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A vanished root cannot be verified: the report says so and is not ok; nothing is called orphaned."""
    _corpus(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    docs.rename(tmp_path / "gone")
    report = verify(rt)
    assert not report.ok
    assert report.orphaned == []
    assert [e["connector"] for e in report.errors] == ["docs"]


_PROBE = """
import json, sys
from syncd.cli import main
rc = main(sys.argv[1:])
sys.stderr.write("\\nPROBE " + json.dumps({"rc": rc, "torch": "torch" in sys.modules,
    "sentence_transformers": "sentence_transformers" in sys.modules}) + "\\n")
"""


def _probe(cfg: Path, *args: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, "-c", _PROBE, "--config", str(cfg), *args], capture_output=True,
                         text=True, timeout=300)
    probe = json.loads(out.stderr.rsplit("PROBE ", 1)[1])
    return json.loads(out.stdout), probe


def test_cli_verify_exit_codes_and_model_loading(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """`syncd verify` exits 0 in sync and 1 on drift without importing torch or sentence-transformers;
    `--repair` loads the model only because it re-embeds, and leaves the index in sync."""
    _corpus(docs, 6)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       chunking={"max_tokens": 64})
    # The packaged model's id: the CLI sees matching index settings and does not rebuild.
    rt = make_runtime(cfg, HashEmbedder(model_id="all-minilm-l6-v2"))
    rt.engine.reconcile("docs")
    data, probe = _probe(cfg, "verify", "--json")
    assert probe == {"rc": 0, "torch": False, "sentence_transformers": False}
    assert data == {"ok": True, "missing": [], "stale": [], "orphaned": [], "duplicated": [], "foreign": [],
                    "checked_docs": 6}
    expected = _drift(tmp_path, docs, rt)
    rt.close()
    data, probe = _probe(cfg, "verify", "--json")
    assert probe == {"rc": 1, "torch": False, "sentence_transformers": False}
    assert data["ok"] is False
    assert _kinds(data) == expected
    for kind in ("missing", "stale", "orphaned", "duplicated"):
        assert all(e["connector"] == "docs" for e in data[kind])
    text = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "verify"], capture_output=True,
                          text=True, timeout=300)
    assert text.returncode == 1
    assert "DRIFT" in text.stdout and "orphaned: docs:doc02.md" in text.stdout
    data, probe = _probe(cfg, "verify", "--repair", "--json")
    assert probe["rc"] == 0 and probe["sentence_transformers"], "repair re-embeds with the configured model"
    assert data["ok"] is True
    assert _kinds(data["before"]) == expected
    data, probe = _probe(cfg, "verify", "--json")
    assert probe == {"rc": 0, "torch": False, "sentence_transformers": False}
    assert data["ok"] is True


def test_repair_only_deletion_does_not_load_the_model(tmp_path: Path, docs: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A repair that only removes orphans or duplicates needs no embedding, so no model."""
    _corpus(docs, 4)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg, HashEmbedder(model_id="all-minilm-l6-v2"))
    rt.engine.reconcile("docs")
    rt.close()
    (docs / "doc00.md").unlink()
    data, probe = _probe(cfg, "verify", "--repair", "--json")
    assert probe == {"rc": 0, "torch": False, "sentence_transformers": False}
    assert [e["doc_id"] for e in data["before"]["orphaned"]] == ["doc00.md"]
    assert data["ok"] is True and data["checked_docs"] == 3


def test_scheduled_verify_reports_drift_in_status_and_metrics(tmp_path: Path, docs: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """The service's anti-entropy check ([sync] verify_interval) shows drift in /status and /metrics."""
    _corpus(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "watch": "poll",
                                   "poll_interval": "3600s", "reconcile_interval": "0s"}],
                       sync={"verify_interval": "1s"})
    from tests.conftest import wait_for

    with in_process_daemon(cfg) as d:
        svc = d.service
        wait_for(lambda: (svc.status()["verify"] or {}).get("ok") is True, what="a clean scheduled verify")
        # Unnoticed by the (slow) watcher: only the anti-entropy check can see these.
        (docs / "unseen.md").write_text("# Unseen\n\nAdded behind the watcher's back.\n")
        (docs / "doc00.md").unlink()

        def drift() -> dict | None:  # type: ignore[type-arg]
            v = svc.status()["verify"]
            return v if v and not v["ok"] else None

        v = wait_for(drift, what="drift in /status")
        assert [e["doc_id"] for e in v["missing"]] == ["unseen.md"]
        assert [e["doc_id"] for e in v["orphaned"]] == ["doc00.md"]
        text = svc.metrics_text().decode()
        assert 'syncd_verify_drift{kind="missing"} 1.0' in text
        assert 'syncd_verify_drift{kind="orphaned"} 1.0' in text
        assert 'syncd_verify_drift{kind="stale"} 0.0' in text


def test_verify_repair_is_handed_to_the_running_service(tmp_path: Path, docs: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """While the service holds the writer lock, `syncd verify --repair` asks it to repair and prints its answer."""
    import subprocess
    import sys

    from syncd.store import doc_key
    from tests.conftest import wait_for, write_config

    for i in range(3):
        (docs / f"r{i}.md").write_text(f"# R {i}\n\nrepair me {i}\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with in_process_daemon(cfg) as d:
        store = d.service.runtime.store
        wait_for(lambda: len(d.service.runtime.engine.docs("docs")) == 3)
        # Drift behind the engine's back: one document's rows vanish from the store.
        store.apply(store.make_rows([]), [doc_key("docs", "r1.md")])
        assert "r1.md" not in set(store.scan(["doc_id"])["doc_id"].to_pylist())
        out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "verify", "--repair", "--json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["ok"] is True and result["missing"] == []
        assert result["before"]["missing"] == [{"connector": "docs", "doc_id": "r1.md"}]
        assert set(store.scan(["doc_id"])["doc_id"].to_pylist()) == {"r0.md", "r1.md", "r2.md"}


def test_verify_notices_a_frameworks_overwrite_and_a_reindex_rebuilds_the_table(tmp_path: Path, docs: Path,
                                                                                make_runtime) -> None:  # type: ignore[no-untyped-def]
    """LangChain's `add_texts` in its default mode ("overwrite") pointed at syncd's table replaces it: verify
    reports the foreign schema, rows and version; a writer refuses to start on it; `reindex` rebuilds it."""
    import lancedb
    import pytest
    from langchain_community.vectorstores import LanceDB

    from syncd.errors import StoreError
    from syncd.integrations.langchain import SyncdEmbeddings

    _corpus(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    assert verify(rt).ok
    db = lancedb.connect(rt.config.store_uri)
    LanceDB(connection=db, embedding=SyncdEmbeddings(embedder=HashEmbedder()), table_name="chunks").add_texts(
        ["a note written through LangChain"])
    rt.store.table.checkout_latest()
    report = verify(rt)
    assert not report.ok
    kinds = {f["kind"]: f for f in report.as_dict()["foreign"]}
    assert set(kinds) == {"schema", "rows", "version"}
    assert "chunk_id" in kinds["schema"]["columns"] and kinds["rows"]["rows"] == 1
    assert kinds["version"]["operation"] == "Overwrite"
    rt.close()
    from syncd import config as config_mod
    from syncd.runtime import Runtime

    refused = Runtime(config_mod.load(cfg), embedder=HashEmbedder())
    try:
        with pytest.raises(StoreError, match="syncd reindex"):
            refused.open()
    finally:
        refused.close()
    rt = Runtime(config_mod.load(cfg), embedder=HashEmbedder())
    try:
        rt.open(load_index=False)  # what `syncd reindex` does
        rt.engine.rebuild()
        after = verify(rt)
        assert after.ok, after.as_dict()
        assert {r["doc_id"] for r in rt.store.scan(["doc_id"]).to_pylist()} == {"doc00.md", "doc01.md", "doc02.md"}
    finally:
        rt.close()


def test_verify_notices_rows_appended_by_someone_else_and_repair_removes_them(tmp_path: Path, docs: Path,
                                                                               make_runtime) -> None:  # type: ignore[no-untyped-def]
    import lancedb
    import pytest
    from langchain_community.vectorstores import LanceDB

    from syncd.integrations.langchain import SyncdEmbeddings

    _corpus(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    before = sorted(r["chunk_id"] for r in rt.store.scan(["chunk_id"]).to_pylist())
    db = lancedb.connect(rt.config.store_uri)
    version = int(db.open_table("chunks").version)
    # LangChain's append mode cannot write into syncd's schema at all (its metadata has other fields).
    with pytest.raises(ValueError, match="does not exist"):
        LanceDB(connection=db, embedding=SyncdEmbeddings(embedder=HashEmbedder()), table_name="chunks",
                mode="append").add_texts(["a note"])
    assert int(db.open_table("chunks").version) == version
    # A script that appends rows in syncd's own schema, with ids syncd would never give them.
    template = rt.store.scan(rt.store.table.schema.names).slice(0, 1).to_pylist()[0]
    stray = {**template, "chunk_id": "hand-written", "id": "hand-written", "doc_key": "0" * 32, "chunk_index": 99,
             "text": "a hand-written row"}
    db.open_table("chunks").add(rt.store.make_rows([stray]))
    rt.store.table.checkout_latest()
    report = verify(rt)
    kinds = {f["kind"]: f for f in report.as_dict()["foreign"]}
    assert not report.ok and set(kinds) == {"rows", "version"}
    assert kinds["rows"]["rows"] == 1 and kinds["rows"]["examples"] == ["hand-written"]
    assert kinds["version"]["operation"] == "Append"
    summary = repair(rt, report)
    assert summary.chunks_deleted == 1
    after = verify(rt)
    assert after.ok, after.as_dict()
    assert sorted(r["chunk_id"] for r in rt.store.scan(["chunk_id"]).to_pylist()) == before
