"""The change journal and point-in-time answers, on real LanceDB (HashEmbedder): every committed change of a
document is one journal entry with its revisions and table version; a search as of a time answers from the
version live then; retention is enforced and explained."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from syncd.store import AUDIT_TAG_PREFIX, AsOfUnavailable
from syncd.testing import HashEmbedder


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
    for entry, (action, text, _) in zip(got, steps, strict=True):
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
