"""The change journal and point-in-time answers, on real LanceDB (HashEmbedder): every committed change of a
document is one journal entry with its revisions and table version; a search as of a time answers from the
version live then; retention is enforced and explained."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from syncd.store import AUDIT_TAG_PREFIX, AsOfUnavailable
from syncd.testing import HashEmbedder
from tests.conftest import wait_for, write_config


def content_rev(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def sync(rt):  # type: ignore[no-untyped-def]
    return rt.engine.reconcile("docs")


def entries(rt, **kw):  # type: ignore[no-untyped-def]
    return rt.store.journal.read(limit=1000, **kw)


def search_texts(rt, query: str, version: int | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    emb = HashEmbedder()
    hits = rt.store.search(emb.encode([query])[0], query, k=10, version=version)
    return [h["text"] for h in hits]


def doc_text(word: str) -> str:
    return f"# Policy\n\nThe retention policy says {word} {word} {word}.\n"


def test_three_edits_a_delete_and_a_restore_are_five_entries_and_as_of_answers_each_step(fs_config, docs,
                                                                                        make_runtime):
    rt = make_runtime(fs_config)
    path = docs / "policy.md"
    steps = []  # (action, text, revision)
    for word in ("alpha", "bravo", "charlie"):
        text = doc_text(word)
        path.write_text(text)
        sync(rt)
        steps.append(("added" if word == "alpha" else "changed", text, content_rev(text)))
        time.sleep(0.01)
    path.unlink()
    sync(rt)
    steps.append(("deleted", None, None))
    time.sleep(0.01)
    path.write_text(doc_text("delta"))
    sync(rt)
    steps.append(("added", doc_text("delta"), content_rev(doc_text("delta"))))

    got = entries(rt, doc_id="policy.md")
    assert [e["action"] for e in got] == [s[0] for s in steps]
    assert [e["revision"] for e in got] == [s[2] for s in steps]
    previous = [None] + [s[2] for s in steps[:-1]]
    assert [e["previous_revision"] for e in got] == previous
    versions = [e["table_version"] for e in got]
    assert versions == sorted(versions) and len(set(versions)) == 5
    # Each entry's version is the table version its commit made, and the table held that text then.
    for entry, (_action, text, _) in zip(got, steps, strict=True):
        assert entry["connector"] == "docs" and entry["old_doc_id"] is None
        assert entry["committed_at"] >= entry["seen_at"] > 0
        held = rt.store.table_at(entry["table_version"]).search().select(["text"]).limit(None).to_arrow()
        assert held["text"].to_pylist() == ([] if text is None else [text.split("\n\n", 1)[1].strip()])
    assert got[0]["chunks_embedded"] == 1 and got[0]["chunks_reused"] == 0
    assert got[3]["chunks_deleted"] == 1 and got[3]["chunks_embedded"] == 0
    assert "text" not in got[0]

    # As of each step's commit time: that step's text, and none of the others.
    words = ["alpha", "bravo", "charlie", None, "delta"]
    for entry, word in zip(got, words, strict=True):
        version = rt.store.version_as_of(entry["committed_at"])
        found = " ".join(search_texts(rt, "retention policy says", version=version))
        for other in {"alpha", "bravo", "charlie", "delta"} - {word}:
            assert other not in found
        if word is not None:
            assert word in found
        else:
            assert found == ""


def test_a_rename_is_one_entry_with_both_ids_and_a_touch_is_no_entry(fs_config, docs, make_runtime):
    rt = make_runtime(fs_config)
    (docs / "a.md").write_text(doc_text("echo"))
    (docs / "other.md").write_text(doc_text("foxtrot"))
    sync(rt)
    before = len(entries(rt))
    st = (docs / "other.md").stat()
    os.utime(docs / "other.md", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    sync(rt)
    assert len(entries(rt)) == before  # a touch changes nothing

    (docs / "a.md").rename(docs / "b.md")
    summary = sync(rt)
    assert summary.docs_renamed == 1
    new = entries(rt)[before:]
    assert len(new) == 1
    entry = new[0]
    assert (entry["action"], entry["doc_id"], entry["old_doc_id"]) == ("renamed", "b.md", "a.md")
    assert entry["revision"] == entry["previous_revision"] == content_rev(doc_text("echo"))
    assert entry["chunks_embedded"] == 0 and entry["chunks_reused"] == entry["chunks_deleted"] == 1
    # Found from either name.
    assert [e["action"] for e in entries(rt, doc_id="a.md")] == ["added", "renamed"]
    assert [e["action"] for e in entries(rt, doc_id="b.md", connector="docs")] == ["renamed"]


def test_a_commit_whose_entries_never_reached_the_journal_is_repaired_from_the_versions_once(
        fs_config, docs, make_runtime):
    rt = make_runtime(fs_config)
    (docs / "keep.md").write_text(doc_text("golf"))
    (docs / "edit.md").write_text(doc_text("hotel"))
    (docs / "gone.md").write_text(doc_text("india"))
    (docs / "old.md").write_text(doc_text("juliet"))
    sync(rt)
    known = len(entries(rt))
    (docs / "edit.md").write_text(doc_text("kilo"))
    (docs / "gone.md").unlink()
    (docs / "old.md").rename(docs / "new.md")
    (docs / "fresh.md").write_text(doc_text("lima"))
    rt.engine.journal_enabled = False  # the commit lands, its journal entries do not (as a crash there)
    sync(rt)
    version = rt.store.table.version
    assert len(entries(rt)) == known
    repaired = rt.store.journal.catch_up()
    got = {e["doc_id"]: e for e in entries(rt)[known:]}
    assert {d: e["action"] for d, e in got.items()} == {"edit.md": "changed", "gone.md": "deleted",
                                                         "new.md": "renamed", "fresh.md": "added"}
    assert len(repaired) == 4 and all(e["repaired"] and e["table_version"] == version for e in got.values())
    assert got["new.md"]["old_doc_id"] == "old.md"
    assert got["edit.md"]["previous_revision"] == content_rev(doc_text("hotel"))
    assert got["edit.md"]["revision"] == content_rev(doc_text("kilo"))
    assert rt.store.journal.catch_up() == []  # once
    assert len(entries(rt)) == known + 4


def test_as_of_before_the_oldest_kept_version_names_the_oldest_time(fs_config, docs, make_runtime):
    rt = make_runtime(fs_config)
    (docs / "a.md").write_text(doc_text("mike"))
    sync(rt)
    oldest, _ = rt.store.history_window()
    assert oldest is not None
    with pytest.raises(AsOfUnavailable) as err:
        rt.store.version_as_of(oldest - 3600)
    assert err.value.oldest == oldest
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(oldest))
    assert stamp in str(err.value) and "oldest time available" in str(err.value)


def test_maintenance_tags_each_days_last_version_and_drops_tags_past_retention(fs_config, docs, make_runtime):
    rt = make_runtime(fs_config)
    (docs / "a.md").write_text(doc_text("november"))
    sync(rt)
    store = rt.store
    last = store.versions()[-1]
    day = time.strftime("%Y-%m-%d", time.gmtime(last[1]))
    # Tomorrow, that day is over: its last version is tagged and kept.
    tomorrow = last[1] + 86400
    made = store.tag_daily_versions(90 * 86400, now=tomorrow)
    assert made["created"] == [AUDIT_TAG_PREFIX + day]
    assert store.table.tags.list()[AUDIT_TAG_PREFIX + day]["version"] == last[0]
    assert store.tag_daily_versions(90 * 86400, now=tomorrow)["created"] == []  # once
    # 91 days on, retention no longer covers it: the tag goes.
    made = store.tag_daily_versions(90 * 86400, now=last[1] + 91 * 86400)
    assert made["removed"] == [AUDIT_TAG_PREFIX + day]
    assert AUDIT_TAG_PREFIX + day not in store.table.tags.list()


def run_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.e2e
def test_kill_9_between_a_commit_and_its_journal_entry_is_repaired_at_restart_once(fs_config, docs):
    """`syncd sync` killed (SIGKILL, from the crash point) after its commit and before the journal append: the
    next start finds the commit in the table's versions and journals it, once; `syncd history` prints it."""
    (docs / "policy.md").write_text(doc_text("oscar"))
    first = run_cli(fs_config, "sync", "--json")
    assert first.returncode == 0, first.stderr
    (docs / "policy.md").write_text(doc_text("papa"))
    crashed = run_cli(fs_config, "sync", "--json", env={"SYNCD_TEST_CRASH_AT": "journal-append"})
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr[-2000:])
    history = run_cli(fs_config, "history", "policy.md", "--json")
    assert [json.loads(line)["action"] for line in history.stdout.splitlines()] == ["added"]  # lost so far

    again = run_cli(fs_config, "sync", "--json")  # the restart
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["docs_changed"] == 0  # the commit had landed
    lines = [json.loads(line) for line in run_cli(fs_config, "history", "policy.md", "--json").stdout.splitlines()]
    assert [e["action"] for e in lines] == ["added", "changed"]
    repaired = lines[1]
    assert repaired["repaired"] is True and repaired["seen_at"] is None
    assert repaired["previous_revision"] == content_rev(doc_text("oscar"))
    assert repaired["revision"] == content_rev(doc_text("papa"))
    assert repaired["table_version"] > lines[0]["table_version"]
    assert run_cli(fs_config, "sync", "--json").returncode == 0  # another start: still once
    text = run_cli(fs_config, "history", "policy.md").stdout
    assert text.count(" changed ") == 1 and text.count(" added ") == 1 and "(repaired)" in text
    # `syncd query --as-of`: the first step's text at its time; before the history, an error naming the oldest.
    then = run_cli(fs_config, "query", "retention policy says", "--as-of", lines[0]["committed_at"], "--json")
    assert then.returncode == 0, then.stderr
    answer = json.loads(then.stdout)
    assert "oscar" in answer["results"][0]["text"] and "papa" not in then.stdout
    assert answer["results"][0]["table_version"] < repaired["table_version"]
    too_old = run_cli(fs_config, "query", "retention policy says", "--as-of", "2001-01-01T00:00:00Z")
    assert too_old.returncode == 1 and "oldest time available" in too_old.stderr


def http_get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_changes_paging_returns_every_entry_exactly_once_while_writes_continue(tmp_path, docs, in_process_daemon):
    config = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with in_process_daemon(config) as daemon:
        url = daemon.service.http.url
        stop = threading.Event()
        written: set[str] = set()

        def writer() -> None:
            i = 0
            while not stop.is_set() and i < 60:
                name = f"d{i % 12}.md"
                (docs / name).write_text(doc_text(f"word{i}"))
                written.add(name)
                i += 1
                time.sleep(0.05)

        thread = threading.Thread(target=writer)
        thread.start()
        seen: list[dict] = []  # type: ignore[type-arg]
        cursor = None
        pages = 0
        try:
            while thread.is_alive() or pages < 3:
                query = "/changes?limit=3" + (f"&cursor={cursor}" if cursor else "")
                code, page = http_get(url + query)
                assert code == 200, page
                seen.extend(page["changes"])
                cursor = page["next_cursor"]
                pages += 1
                time.sleep(0.02)
        finally:
            stop.set()
            thread.join()
        daemon.wait_idle()
        while True:
            code, page = http_get(url + f"/changes?limit=3&cursor={cursor}")
            assert code == 200
            if not page["changes"]:
                break
            seen.extend(page["changes"])
            cursor = page["next_cursor"]
        everything = daemon.service.reader.journal.read(limit=100_000)
        assert pages > 3
        assert [(e["doc_id"], e["table_version"], e["action"]) for e in seen] == [
            (e["doc_id"], e["table_version"], e["action"]) for e in everything]
        assert {e["doc_id"] for e in seen} == written
        # Newest first pages back through the same entries.
        back, cursor = [], None
        while True:
            code, page = http_get(url + "/changes?order=newest&limit=7" + (f"&cursor={cursor}" if cursor else ""))
            back.extend(page["changes"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert back == list(reversed(seen))
        # Filters and since.
        one = "d3.md"
        code, page = http_get(url + f"/changes?doc_id={one}&connector=docs&limit=1000")
        assert [e["doc_id"] for e in page["changes"]] == [one] * len([e for e in seen if e["doc_id"] == one])
        middle = seen[len(seen) // 2]
        code, page = http_get(url + f"/changes?since={middle['table_version']}&limit=1000")
        assert page["changes"] == [e for e in seen if e["table_version"] > middle["table_version"]]
        code, page = http_get(url + f"/changes?since={middle['committed_at']}&limit=1000")
        assert page["changes"] == [e for e in seen if e["committed_at"] >= middle["committed_at"]]
        for bad in ("since=yesterday", "limit=0", "cursor=abc", "order=sideways"):
            code, page = http_get(url + "/changes?" + bad)
            assert code == 400 and bad.split("=")[0] in page["error"]


def test_search_as_of_and_status_over_http(tmp_path, docs, in_process_daemon):
    config = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    (docs / "policy.md").write_text(doc_text("quebec"))
    with in_process_daemon(config) as daemon:
        url = daemon.service.http.url
        wait_for(lambda: http_get(url + "/changes")[1]["changes"], what="the first entry")
        # Written aside and renamed over it: a watcher never sees the file empty (that would be a deletion).
        (docs / ".policy.tmp").write_text(doc_text("romeo"))
        (docs / ".policy.tmp").rename(docs / "policy.md")
        daemon.wait_idle()
        got = wait_for(lambda: len(c := http_get(url + "/changes")[1]["changes"]) == 2 and c, what="the edit")
        q = "retention+policy+says"
        code, live = http_get(url + f"/search?q={q}")
        assert code == 200 and "romeo" in live["results"][0]["text"]
        assert live["results"][0]["table_version"] >= got[1]["table_version"]
        code, then = http_get(url + f"/search?q={q}&as_of={got[0]['committed_at']}")
        assert code == 200, then
        assert "quebec" in then["results"][0]["text"] and "romeo" not in json.dumps(then)
        assert then["results"][0]["table_version"] < got[1]["table_version"]
        code, too_old = http_get(url + f"/search?q={q}&as_of=2001-01-01T00:00:00Z")
        assert code == 400 and too_old["oldest_available_at"][:19] in too_old["error"]
        code, err = http_get(url + f"/search?q={q}&as_of=last+tuesday")
        assert code == 400 and "as_of" in err["error"]
        code, status = http_get(url + "/status")
        audit = status["audit"]
        assert "error" not in audit, audit
        assert audit["keep_versions_for"] == "90d"
        assert audit["oldest_available_at"] == too_old["oldest_available_at"]
        assert audit["journal"]["entries"] == 2 and audit["journal"]["bytes"] > 0
        assert audit["versions_bytes"] > 0


def test_verify_finds_a_journal_that_contradicts_the_index_and_repair_corrects_the_journal(fs_config, docs,
                                                                                           make_runtime):
    from syncd.verify import repair, verify

    rt = make_runtime(fs_config)
    (docs / "a.md").write_text(doc_text("sierra"))
    (docs / "b.md").write_text(doc_text("tango"))
    sync(rt)
    assert verify(rt).ok
    # A journal that lost track: it says a.md was deleted and b.md holds other content.
    rt.store.journal.append([
        {"connector": "docs", "doc_id": "a.md", "action": "deleted", "live_table": rt.store.table_name,
         "table_version": rt.store.table.version, "committed_at": time.time()},
        {"connector": "docs", "doc_id": "b.md", "action": "changed", "identity": "not-this",
         "revision": "not-this", "live_table": rt.store.table_name, "table_version": rt.store.table.version,
         "committed_at": time.time()}])
    report = verify(rt)
    assert not report.ok and report.missing == report.stale == report.orphaned == []
    assert {(e["doc_id"], e["reason"].split(",")[0]) for e in report.journal} == {
        ("a.md", "indexed"), ("b.md", "indexed with another content than the journal's last entry")}
    assert report.as_dict()["journal"] == report.journal
    repair(rt, report)
    assert verify(rt).ok
    fixed = entries(rt)[-2:]
    assert all(e["repaired"] for e in fixed)
    assert {e["doc_id"]: e["action"] for e in fixed} == {"a.md": "added", "b.md": "changed"}


def test_version_clean_up_keeps_tagged_days_and_drops_them_once_retention_passes(fs_config, docs, make_runtime):
    import datetime as dt

    rt = make_runtime(fs_config)
    store = rt.store
    for word in ("uniform", "victor"):
        (docs / "a.md").write_text(doc_text(word))
        sync(rt)
    tagged_version, tagged_at = store.versions()[-1]
    # Seen from tomorrow, today is over: its last version so far is tagged.
    made = store.tag_daily_versions(90 * 86400, now=tagged_at + 86400)
    assert store.table.tags.list()[made["created"][0]]["version"] == tagged_version
    for word in ("whiskey", "xray"):
        (docs / "a.md").write_text(doc_text(word))
        sync(rt)
    # The full maintenance runs with tags present (LanceDB's own clean-up would refuse to).
    store.maintain(retention_s=600, keep_versions_for=90 * 86400)
    # A clean-up with nothing left in the recent window: the tagged version stays, the others go.
    store._optimize(store.table, dt.timedelta(seconds=0))
    kept = [v for v, _ in store.versions()]
    assert kept == [tagged_version, store.table.version]
    # As of just after the tagged version: answered from it, without the later edits.
    version = store.version_as_of(tagged_at + 0.001)
    assert version == tagged_version
    found = " ".join(search_texts(rt, "retention policy says", version=version))
    assert "victor" in found and "whiskey" not in found and "xray" not in found
    # After the next edit, before the latest kept version: that moment is not kept, and the error says so.
    whiskey = [e for e in entries(rt) if e["revision"] == content_rev(doc_text("whiskey"))][0]
    with pytest.raises(AsOfUnavailable) as err:
        store.version_as_of(whiskey["committed_at"] + 0.0001)
    assert "not kept" in str(err.value)
    # Retention passes: the tag goes, and the next clean-up removes the version.
    assert store.tag_daily_versions(90 * 86400, now=tagged_at + 92 * 86400)["removed"] == made["created"]
    store._optimize(store.table, dt.timedelta(seconds=0))
    assert tagged_version not in [v for v, _ in store.versions()]


def test_a_reindex_journals_only_documents_whose_content_differs_and_history_survives(fs_config, docs,
                                                                                       make_runtime):
    from syncd.verify import verify

    rt = make_runtime(fs_config)
    (docs / "same.md").write_text(doc_text("xray"))
    (docs / "edited.md").write_text(doc_text("yankee"))
    sync(rt)
    before = entries(rt)
    # Changed behind the engine's back (as if the watcher missed it), then a full rebuild.
    (docs / "edited.md").write_text(doc_text("zulu"))
    rt.engine.rebuild()
    after = entries(rt)
    assert after[:len(before)] == before  # the journal outlives the table it described
    new = after[len(before):]
    assert [(e["doc_id"], e["action"]) for e in new] == [("edited.md", "changed")]
    assert new[0]["previous_revision"] == content_rev(doc_text("yankee"))
    assert new[0]["revision"] == content_rev(doc_text("zulu"))
    assert new[0]["table_version"] == rt.store.table.version
    assert new[0]["repaired"] is False  # a reindex's own record, not a crash repair
    assert verify(rt).ok


def test_a_journal_made_before_seq_was_its_key_is_marked_at_the_writers_first_open(fs_config, docs, make_runtime):
    """The migration: the earlier journal schema (``seq`` without the primary-key mark) gets the mark in one
    metadata commit when a writer opens it; its rows stay and appends go on numbering after them."""
    import pyarrow as pa

    from syncd.store import journal_schema

    rt = make_runtime(fs_config)
    (docs / "a.md").write_text(doc_text("mike"))
    sync(rt)
    journal = rt.store.journal
    old_rows = journal.table.to_arrow()
    earlier = pa.schema([f.remove_metadata() if f.name == "seq" else f for f in journal_schema()])
    db = rt.store._connect()
    db.drop_table(journal.name)
    db.create_table(journal.name, data=old_rows.cast(earlier), schema=earlier)
    journal.reopen()
    assert not (journal.table.schema.field("seq").metadata or {})
    journal.open()  # as a writer
    assert journal.table.schema.field("seq").metadata == {b"lance-schema:unenforced-primary-key": b"true"}
    assert journal.table.count_rows() == old_rows.num_rows
    (docs / "a.md").write_text(doc_text("november"))
    sync(rt)
    seqs = sorted(journal.table.to_arrow()["seq"].to_pylist())
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > old_rows.num_rows


def test_the_repair_of_own_connectors_finds_their_lost_commit_among_another_connectors_and_journals_only_it(
        tmp_path, docs, make_runtime):
    """What a daemon on a shared store does at start-up (``Journal.own``): a commit of its connector whose
    entries were lost, followed by commits of a connector another daemon owns (journaled by that daemon),
    is repaired from the version history as its own connector's entries only, once."""
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)},
                                     {"name": "other", "type": "filesystem", "path": str(other)}])
    rt = make_runtime(config)
    (docs / "mine.md").write_text(doc_text("oscar"))
    (other / "theirs.md").write_text(doc_text("papa"))
    rt.engine.reconcile("docs")
    rt.engine.reconcile("other")
    known = len(entries(rt))
    (docs / "mine.md").write_text(doc_text("quebec"))
    rt.engine.journal_enabled = False  # this daemon's commit lands, its entry does not (a crash there)
    rt.engine.reconcile("docs")
    lost = rt.store.table.version
    rt.engine.journal_enabled = True
    (other / "theirs.md").write_text(doc_text("romeo"))
    (other / "more.md").write_text(doc_text("sierra"))
    rt.engine.reconcile("other")  # the other daemon's commits, journaled by it
    assert len(entries(rt)) == known + 2
    rt.store.journal.own = frozenset({"docs"})
    repaired = rt.store.journal.catch_up()
    assert [(e["connector"], e["doc_id"], e["action"], e["table_version"]) for e in repaired] == [
        ("docs", "mine.md", "changed", lost)]
    new = entries(rt)[known:]
    assert sorted((e["connector"], e["doc_id"]) for e in new) == [("docs", "mine.md"), ("other", "more.md"),
                                                                   ("other", "theirs.md")]
    assert [e["repaired"] for e in new if e["connector"] == "docs"] == [True]
    assert rt.store.journal.catch_up() == []  # once
    assert len(entries(rt)) == known + 3



def test_the_version_history_is_read_past_a_commit_pylance_cannot_describe(tmp_path):
    """A compaction after an index update, compacting rows that index already remapped once, is a
    transaction pylance cannot turn into Python objects (TypeError from its RewrittenIndex). Every reader of
    the version history (the journal's repair, the overwrite check) goes through ``read_transaction``, which
    names such a version instead of raising: a daemon found one at start-up after maintenance and exited."""
    import datetime as dt

    import lancedb
    import numpy as np
    import pyarrow as pa

    from syncd.store import UNREADABLE_OP, read_transaction

    def rows(n: int, first: int) -> pa.Table:
        vectors = np.random.default_rng(first).standard_normal((n, 16)).astype("float32")
        return pa.table({"id": pa.array(range(first, first + n)), "text": [f"t{i}" for i in range(first, first + n)],
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16)})

    table = lancedb.connect(tmp_path / "db").create_table("t", rows(600, 0))
    table.create_index(metric="cosine", vector_column_name="vector", num_partitions=2, num_sub_vectors=2)
    table.add(rows(50, 1000))
    table.add(rows(50, 2000))
    table.optimize(cleanup_older_than=dt.timedelta(days=1))
    table.add(rows(50, 3000))
    table.optimize()
    dataset = table.to_lance()
    unreadable = []
    for version in (int(v["version"]) for v in dataset.versions()):
        try:
            dataset.read_transaction(version)
        except TypeError:
            unreadable.append(version)
    assert unreadable, "the scenario no longer makes a transaction pylance cannot describe"
    for version in (int(v["version"]) for v in dataset.versions()):
        described = read_transaction(dataset, version)
        assert described is not None
        assert (described[0] == UNREADABLE_OP) == (version in unreadable)
