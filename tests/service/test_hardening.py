"""Hardening: one bad document never stalls a connector, and /status never says "idle" while work is stuck.

The service runs in this process (real watchdog events, real LanceDB, real HTTP; HashEmbedder, or a
SlowEmbedder standing in for the model on a large document)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service_inprocess import connector_status, get, idle, metric, running

from connectors.base import doc_id_from_bytes, name_candidates
from syncd.testing import HashEmbedder, SlowEmbedder

FAST_SYNC = {"delete_settle": "0.2s", "stall_after": "2s"}


def revision(content: bytes) -> str:
    """The filesystem connector's revision of a file: its content hash."""
    return hashlib.blake2b(content, digest_size=16).hexdigest()


# -- file names are bytes ---------------------------------------------------------------------------------
ODD_PARTS = st.sampled_from([
    b"\xff\xfe", b"latin-\xe9t\xe9", b"caf\xc3\xa9", b"cafe\xcc\x81", b"a%FFb", b"100% sure",
    b"ctl\x01\x02\x1b[31m", b"tab\tand\nnewline", b"quote'\"; DROP TABLE", b"x" * 200, b"\xc3\x28", b"\xed\xa0\x80",
])
RAW_PARTS = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)
# A leading "n" and the ".md" suffix keep every name indexable (not hidden, not a temp file): what varies
# is only the bytes in between.
NAMES = st.one_of(ODD_PARTS, RAW_PARTS).map(lambda b: b"n" + b + b".md")


def test_doc_ids_of_byte_names_are_valid_unicode_and_map_back_to_the_name() -> None:
    @given(st.binary(min_size=1, max_size=120).filter(lambda b: b"/" not in b and b"\0" not in b))
    def check(raw: bytes) -> None:
        doc_id = doc_id_from_bytes(raw)
        doc_id.encode("utf-8")  # storable, hashable, printable as JSON
        assert raw in name_candidates(doc_id)
        # A valid name is its own doc id, untouched.
        try:
            assert doc_id == raw.decode("utf-8")
        except UnicodeDecodeError:
            assert "%" in doc_id

    check()


def test_odd_file_names_never_stall_a_connector_and_are_indexed_cited_and_verified(tmp_path: Path, docs: Path) -> None:
    """Property: files named with arbitrary bytes (invalid UTF-8, control characters, long names, names that
    differ only by normalisation) created, edited, renamed and deleted beside ordinary files under the
    service: every ordinary file is indexed and searchable, every odd one is indexed (or skipped with a
    reason), verify is clean, and nothing stalls."""
    from syncd.verify import verify

    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    root = os.fsencode(docs)
    counter = itertools.count()
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        engine = service.runtime.engine

        def settled(expected: dict[str, bytes], absent: set[str]) -> bool:
            if not idle(service):
                return False
            index = engine.docs("docs")
            failures = service.runtime.state.connector("docs").failures
            for doc_id, content in expected.items():
                have = index.get(doc_id)
                if not ((have is not None and have.revision == revision(content)) or doc_id in failures):
                    return False
            return not any(d in index for d in absent)

        @settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(st.lists(NAMES, min_size=1, max_size=4, unique_by=doc_id_from_bytes), NAMES)
        def check(names: list[bytes], renamed_to: bytes) -> None:
            n = next(counter)
            folder = os.path.join(root, b"ex%d" % n)
            os.mkdir(folder)
            expected: dict[str, bytes] = {}
            plain = f"plainword{n}x"
            for i in range(2):
                content = f"# Plain {n} {i}\n\nordinary {plain}{i} text\n".encode()
                with open(os.path.join(folder, b"plain-%d.md" % i), "wb") as fh:
                    fh.write(content)
                expected[f"ex{n}/plain-{i}.md"] = content
            odd: dict[bytes, str] = {}
            for i, name in enumerate(names):
                content = f"odd oddword{n}y{i} text\n".encode()
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(content)
                odd[name] = f"ex{n}/" + doc_id_from_bytes(name)
                expected[odd[name]] = content
            wait_for(lambda: settled(expected, set()), timeout=60, what="files indexed")
            # Edit every odd file, rename the first, delete the last (when there are two or more).
            absent: set[str] = set()
            for i, name in enumerate(names):
                content = f"odd edited oddword{n}z{i} text\n".encode()
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(content)
                expected[odd[name]] = content
            target = f"ex{n}/" + doc_id_from_bytes(renamed_to)
            if target not in expected:
                os.rename(os.path.join(folder, names[0]), os.path.join(folder, renamed_to))
                expected[target] = expected.pop(odd[names[0]])
                absent.add(odd[names[0]])
            if len(names) > 1 and odd[names[-1]] in expected:
                os.unlink(os.path.join(folder, names[-1]))
                expected.pop(odd[names[-1]])
                absent.add(odd[names[-1]])
            wait_for(lambda: settled(expected, absent), timeout=60, what="edits, renames and deletes indexed")
            # Citations and search: every ordinary file is found by its words, odd ones by theirs.
            index = engine.docs("docs")
            for i in range(2):
                code, body = get(service, f"/search?q={plain}{i}&k=5")
                assert code == 200
                assert f"ex{n}/plain-{i}.md" in [r["doc_id"] for r in body["results"]]
            for doc_id in expected:
                if doc_id in index:
                    assert isinstance(index[doc_id].revision, str)
            assert service.stalls.since == {}
            status = connector_status(service, "docs")
            assert status["state"] in ("idle", "syncing"), status
            assert status["backlog"] == 0

        check()
        report = verify(service.runtime)
        assert report.ok, report.as_dict()
        # An odd name is cited by a path that names the file: its doc id under the root.
        code, body = get(service, "/search?q=" + quote("odd edited") + "&k=50")
        assert code == 200
        for hit in body["results"]:
            assert hit["uri"] == os.path.join(str(docs), hit["doc_id"])


def test_a_document_id_that_is_not_valid_unicode_fails_alone_and_the_rest_commits(tmp_path: Path, docs: Path,
                                                                                 make_runtime: Any) -> None:
    """A connector that hands the engine a surrogate-escaped id: that document is recorded with a reason,
    every other one in the batch is written."""
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    (docs / "good.md").write_text("good words here\n")
    rt = make_runtime(cfg)
    bad = os.fsdecode(b"bad\xff.md")
    summary = rt.engine.process({"docs": {bad: 1.0, "good.md": 1.0}})
    assert "good.md" in rt.engine.docs("docs")
    reasons = {f.doc_id: f.reason for f in summary.failures}
    assert reasons == {"bad%FF.md": "invalid-doc-id: not valid Unicode, empty, or holds NUL"}


# -- bursts of deletions -----------------------------------------------------------------------------------
def test_a_fast_rm_r_of_most_of_a_folder_deletes_nothing_until_approved(tmp_path: Path, docs: Path) -> None:
    from syncd.approvals import request_mass_delete

    (docs / "sub").mkdir()
    for i in range(4):
        (docs / f"keep-{i}.md").write_text(f"keep {i}\n")
    for i in range(120):
        (docs / "sub" / f"gone-{i:03d}.md").write_text(f"gone {i}\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        engine = service.runtime.engine
        wait_for(lambda: len(engine.docs("docs")) == 124, what="124 documents indexed")
        shutil.rmtree(docs / "sub")
        wait_for(lambda: connector_status(service, "docs")["state"] == "blocked", what="blocked")
        wait_for(lambda: idle(service), what="idle")
        # Nothing of the burst was deleted: not from the engine's view, not from the store.
        assert len(engine.docs("docs")) == 124
        assert len(service.runtime.store.indexed_docs()) == 124
        assert metric(service, "syncd_docs_synced_total", connector="docs", action="deleted") == 0
        status = connector_status(service, "docs")
        assert status["mass_delete_blocked"]["would_delete"] == 120
        assert "allow-mass-delete" in status["last_error"]
        # Approved: the whole burst goes at once.
        request_mass_delete(service.config.state_dir, "docs")
        wait_for(lambda: len(engine.docs("docs")) == 4, what="approved deletions")
        assert sorted(engine.docs("docs")) == [f"keep-{i}.md" for i in range(4)]


def test_a_poll_that_deletes_most_documents_is_judged_whole_before_any_batch(tmp_path: Path, docs: Path,
                                                                             make_runtime: Any) -> None:
    """The same class for polled changes: deletions spread over several batches are refused together."""
    for i in range(40):
        (docs / f"d-{i:02d}.md").write_text(f"doc {i}\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"max_batch_docs": 4})
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    for i in range(30):
        (docs / f"d-{i:02d}.md").unlink()
    summary = rt.engine.process({"docs": {f"d-{i:02d}.md": 1.0 for i in range(30)}})
    assert summary.docs_deleted == 0
    assert len(rt.engine.docs("docs")) == 40
    assert rt.engine.status["docs"].mass_delete_blocked is not None


# -- work in flight --------------------------------------------------------------------------------------
def big_document(paragraphs: int, tag: str) -> str:
    return "\n\n".join(f"Paragraph {i} of the {tag} document: " + " ".join(f"w{tag}{i}x{j}" for j in range(60))
                       for i in range(paragraphs)) + "\n"


@pytest.mark.parametrize("then", ["deleted", "rewritten"])
def test_a_document_deleted_or_rewritten_while_it_is_embedded_is_abandoned_and_the_next_commits(
        tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    from syncd import pipeline

    monkeypatch.setattr(pipeline, "EMBED_SLICE", 8)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    embedder = SlowEmbedder(HashEmbedder(), seconds_per_text=0.02)
    with running(cfg, embedder) as service:
        wait_for(service.ready, what="ready")
        engine = service.runtime.engine
        big = big_document(300, "big")
        chunks = len(service.runtime.chunker.chunk(__import__("syncd.extract", fromlist=["extract"]).extract(
            big.encode(), "markdown").blocks))
        assert chunks > 60
        (docs / "big.md").write_text(big)
        wait_for(lambda: len(embedder.texts) > 0, what="the big document being embedded")
        if then == "deleted":
            (docs / "big.md").unlink()
        else:
            (docs / "big.md").write_text("# Big\n\nnow a short page\n")
        (docs / "small.md").write_text("a small note\n")
        wait_for(lambda: "small.md" in engine.docs("docs"), what="the small document committed")
        wait_for(lambda: idle(service), what="idle")
        if then == "deleted":
            assert "big.md" not in engine.docs("docs")
        else:
            assert engine.docs("docs")["big.md"].chunks == 1
            assert engine.docs("docs")["big.md"].revision == revision(b"# Big\n\nnow a short page\n")
        assert metric(service, "syncd_docs_abandoned_total", connector="docs") >= 1
        # The work stopped within a slice of the delete: far fewer texts than the document has.
        big_texts = [t for t in embedder.texts if "wbig" in t]
        assert len(big_texts) < chunks / 2


def test_a_large_document_never_holds_back_small_ones_and_its_vectors_are_kept_between_cycles(
        tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd import pipeline
    from syncd.extract import extract

    monkeypatch.setattr(pipeline, "EMBED_SLICE", 8)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={**FAST_SYNC, "embed_budget": 16})
    embedder = SlowEmbedder(HashEmbedder(), seconds_per_text=0.01)
    with running(cfg, embedder) as service:
        wait_for(service.ready, what="ready")
        engine = service.runtime.engine
        big = big_document(120, "large")
        chunks = len(service.runtime.chunker.chunk(extract(big.encode(), "markdown").blocks))
        (docs / "big.md").write_text(big)
        wait_for(lambda: len(embedder.texts) > 0, what="the big document being embedded")
        (docs / "small.md").write_text("a small note\n")
        order: list[str] = []

        def small_first() -> bool:
            index = engine.docs("docs")
            for name in ("small.md", "big.md"):
                if name in index and name not in order:
                    order.append(name)
            return len(order) == 2

        wait_for(small_first, timeout=120, what="both documents committed")
        assert order == ["small.md", "big.md"]
        assert engine.docs("docs")["big.md"].chunks == chunks
        assert metric(service, "syncd_docs_deferred_total", connector="docs") >= 2
        # Nothing embedded twice: the vectors of earlier cycles were kept, not recomputed.
        big_texts = [t for t in embedder.texts if "wlarge" in t]
        assert len(big_texts) == len(set(big_texts)) == chunks


# -- /status tells the truth -----------------------------------------------------------------------------
def test_a_writer_that_makes_no_progress_shows_stalled_in_status_readyz_page_and_metrics(
        tmp_path: Path, docs: Path) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    embedder = SlowEmbedder(HashEmbedder())
    with running(cfg, embedder) as service:
        wait_for(service.ready, what="ready")
        # An unknown connector is a 400, as in the CLI; a known one answers.
        code, body = get(service, "/search?q=x&connector=nope")
        assert (code, body) == (400, {"error": "no connector named 'nope'", "option": "connector"})
        assert get(service, "/search?q=x&connector=docs")[0] == 200
        embedder.gate.clear()  # the model hangs
        (docs / "a.md").write_text("some words\n")
        wait_for(lambda: connector_status(service, "docs")["state"] == "stalled", what="stalled")
        status = connector_status(service, "docs")
        assert status["backlog"] == 1 and "not shrinking" in status["state_reason"]
        code, body = get(service, "/readyz")
        assert code == 503
        assert body["status"] == "stalled" and any("'docs' stalled" in p for p in body["problems"])
        code, page = get(service, "/")
        assert "stalled" in page
        assert metric(service, "syncd_stalls_total", connector="docs") == 1
        assert get(service, "/healthz")[0] == 200  # liveness: the process is alive
        embedder.gate.set()
        wait_for(lambda: connector_status(service, "docs")["state"] == "idle", what="idle again")
        assert get(service, "/readyz")[0] == 200


def test_a_document_failing_past_its_retry_budget_turns_the_connector_degraded(tmp_path: Path, docs: Path) -> None:
    from syncd.service import RETRY_BUDGET

    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        locked = docs / "locked.md"
        locked.write_text("x\n")
        os.chmod(locked, 0)
        # Root reads anything: make the read fail the way an unreadable file does, through the connector.
        connector = service.runtime.connectors["docs"]
        original = connector.read

        def read(doc_id: str) -> Any:
            from syncd.errors import DocumentUnavailable

            if doc_id == "locked.md":
                raise DocumentUnavailable("permission-denied", doc_id=doc_id, connector="docs",
                                          detail="no read permission")
            return original(doc_id)

        connector.read = read  # type: ignore[method-assign]
        for attempt in range(RETRY_BUDGET):
            locked.write_text(f"attempt {attempt}\n")
            wait_for(lambda a=attempt: service.runtime.engine.attempts.get("docs", {}).get("locked.md", 0) > a,
                     what="another failed attempt")
        wait_for(lambda: idle(service), what="idle")
        status = connector_status(service, "docs")
        assert status["state"] == "degraded"
        assert "locked.md" in status["state_reason"]
        assert metric(service, "syncd_failed_docs", connector="docs") == 1


def test_a_writer_cycle_that_fails_shows_failing_with_the_error(tmp_path: Path, docs: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], sync=FAST_SYNC)
    with running(cfg) as service:
        wait_for(service.ready, what="ready")
        engine = service.runtime.engine
        original = engine.process
        broken = threading.Event()
        broken.set()

        def process(*args: Any, **kwargs: Any) -> Any:
            if broken.is_set():
                raise RuntimeError("injected fault")
            return original(*args, **kwargs)

        monkeypatch.setattr(engine, "process", process)
        (docs / "a.md").write_text("words\n")
        wait_for(lambda: connector_status(service, "docs")["state"] == "failing", what="failing")
        assert "injected fault" in connector_status(service, "docs")["last_error"]
        broken.clear()
        wait_for(lambda: "a.md" in engine.docs("docs"), timeout=60, what="retried and committed")
        wait_for(lambda: connector_status(service, "docs")["state"] == "idle", what="idle")


# -- a second daemon ---------------------------------------------------------------------------------------
def test_a_refused_second_run_touches_nothing_of_the_first_daemon(tmp_path: Path, docs: Path,
                                                                  daemon_factory: Any) -> None:
    (docs / "a.md").write_text("hello\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    first = daemon_factory(cfg).start()
    state = tmp_path / "state"

    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(state)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(state.rglob("*")) if p.is_file()}

    before = snapshot()
    second = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "run"], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode != 0
    assert "another syncd process" in second.stderr
    assert snapshot() == before
    status = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["uptime_s"] > 0  # the daemon's own /status, not figures from the store
    assert first.stop() == 0
