"""The engine on real LanceDB (HashEmbedder): incremental sync, reuse, renames, deletes, odd names, skips."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from syncd.chunking import embed_input
from syncd.extract import extract
from syncd.store import Store
from tests.conftest import write_config
from tests.corpus import markdown_doc


def rows(rt) -> list[dict]:
    return rt.store.scan(["doc_id", "chunk_index", "text", "revision", "content_hash", "start_line", "end_line",
                          "heading_path", "uri", "chunk_id"]).to_pylist()


def doc_ids(rt) -> set[str]:
    return {r["doc_id"] for r in rows(rt)}


def expected_new_texts(rt, path: Path) -> set[str]:
    """Content hashes of the file's chunks that the store does not hold yet (computed independently)."""
    chunks = rt.chunker.chunk(extract(path.read_bytes(), "markdown").blocks)
    have = {r["content_hash"] for r in rows(rt)}
    return {c.content_hash for c in chunks} - have


def sync(rt, **kw):
    return rt.engine.reconcile("docs", **kw)


def test_first_sync_indexes_every_file_with_its_content_hash_as_revision(fs_config, docs, make_runtime):
    for i in range(5):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    (docs / "sub").mkdir()
    (docs / "sub" / "notes.txt").write_text("plain text notes\n\nsecond paragraph\n")
    rt = make_runtime(fs_config)
    s = sync(rt)
    assert s.docs_added == 6 and s.docs_seen == 6 and s.docs_failed == 0
    assert doc_ids(rt) == {f"p{i}.md" for i in range(5)} | {"sub/notes.txt"}
    for r in rows(rt):
        content = (docs / r["doc_id"]).read_bytes()
        assert r["revision"] == hashlib.blake2b(content, digest_size=16).hexdigest()
        assert r["uri"] == str(docs / r["doc_id"])
    assert s.chunks_embedded == len({r["content_hash"] for r in rows(rt)})


def test_second_sync_without_changes_reads_nothing_and_writes_nothing(fs_config, docs, make_runtime):
    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    version = rt.store.table.version
    s = sync(rt)
    assert (s.docs_unchanged, s.chunks_embedded, s.docs_changed) == (3, 0, 0)
    assert rt.store.table.version == version


def test_touch_without_content_change_embeds_nothing_and_writes_nothing(fs_config, docs, make_runtime):
    path = docs / "a.md"
    path.write_text(markdown_doc(1))
    rt = make_runtime(fs_config)
    sync(rt)
    version = rt.store.table.version
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    s = sync(rt)
    assert s.docs_unchanged == 1 and s.chunks_embedded == 0 and s.docs_changed == 0
    assert rt.store.table.version == version


def test_one_paragraph_edit_embeds_only_the_new_chunk_texts(fs_config, docs, make_runtime):
    path = docs / "big.md"
    path.write_text(markdown_doc(3, sections=14, paras=6))
    rt = make_runtime(fs_config)
    sync(rt)
    before = len(rows(rt))
    assert before >= 50
    text = path.read_text()
    para = [p for p in text.split("\n\n") if p and not p.startswith(("#", "-", "`"))][20]
    path.write_text(text.replace(para, para + " The drill happens every quarter.", 1))
    expected = expected_new_texts(rt, path)
    s = sync(rt)
    assert s.docs_changed == 1
    assert s.chunks_embedded == len(expected) and 1 <= s.chunks_embedded <= 2
    assert s.chunks_reused == len(rows(rt)) - s.chunks_embedded
    assert any("drill happens every quarter" in r["text"] for r in rows(rt))


def test_new_chunks_embed_beside_the_lookup_and_vectors_gone_from_the_table_are_embedded_again(
        fs_config, docs, make_runtime):
    a, b = docs / "a.md", docs / "b.md"
    a.write_text(markdown_doc(1))
    b.write_text(markdown_doc(2))
    rt = make_runtime(fs_config)
    sync(rt)
    assert rt.store.hash_filter is not None
    assert all(r["content_hash"] in rt.store.hash_filter for r in rows(rt))
    b_text = b.read_text()
    b.unlink()
    sync(rt)
    gone = {r["content_hash"] for r in rows(rt)}
    # The filter still names b's chunks (it only grows); the table no longer holds them.
    c = docs / "c.md"
    c.write_text(a.read_text() + "\n\n" + b_text + "\n\nA closing paragraph no other page has.\n")
    expected = expected_new_texts(rt, c)
    chunks = rt.chunker.chunk(extract(c.read_bytes(), "markdown").blocks)
    # Both kinds of new chunk: ones the filter has never seen (embedded beside the lookup), and b's old
    # ones, which the filter still names but the lookup no longer finds (embedded after it).
    named = {h for h in expected if h in rt.store.hash_filter}
    assert named and expected - named and not named & gone
    s = sync(rt)
    assert s.docs_added == 1 and s.docs_failed == 0
    assert s.chunks_embedded == len(expected)
    stored = {r["content_hash"]: r for r in rt.store.scan(["content_hash", "text", "heading_path", "vector"],
                                                           "doc_id = 'c.md'").to_pylist()}
    assert set(stored) == {ch.content_hash for ch in chunks}
    for r in stored.values():
        want = rt.embedder.encode([embed_input(r["text"], r["heading_path"] or [])])[0]
        assert np.allclose(r["vector"], want, atol=1e-6)


def test_rename_and_move_embed_nothing_and_count_as_renamed(fs_config, docs, make_runtime):
    (docs / "a.md").write_text(markdown_doc(1))
    (docs / "b.md").write_text(markdown_doc(2))
    rt = make_runtime(fs_config)
    sync(rt)
    (docs / "a.md").rename(docs / "renamed.md")
    (docs / "folder").mkdir()
    (docs / "b.md").rename(docs / "folder" / "b.md")
    s = sync(rt)
    assert (s.docs_renamed, s.docs_added, s.docs_deleted, s.chunks_embedded) == (2, 0, 0, 0)
    assert doc_ids(rt) == {"renamed.md", "folder/b.md"}
    assert all(r["uri"] == str(docs / r["doc_id"]) for r in rows(rt))


def test_delete_removes_every_chunk_and_a_shorter_document_leaves_no_trailing_chunks(fs_config, docs, make_runtime):
    (docs / "long.md").write_text(markdown_doc(5, sections=8))
    (docs / "gone.md").write_text(markdown_doc(6))
    rt = make_runtime(fs_config)
    sync(rt)
    gone_chunks = sum(1 for r in rows(rt) if r["doc_id"] == "gone.md")
    (docs / "gone.md").unlink()
    (docs / "long.md").write_text(markdown_doc(5, sections=1))
    expected_chunks = len(rt.chunker.chunk(extract((docs / "long.md").read_bytes(), "markdown").blocks))
    s = sync(rt)
    assert s.docs_deleted == 1 and s.docs_changed == 1
    assert s.chunks_deleted >= gone_chunks
    left = [r for r in rows(rt) if r["doc_id"] == "long.md"]
    assert doc_ids(rt) == {"long.md"}
    assert sorted(r["chunk_index"] for r in left) == list(range(expected_chunks))


ODD_NAMES = [
    "it's \"odd\"; DROP.md",
    "naïve café ünïcode 文档.md",
    "new\nline.md",
    "-leading-dash.md",
    "back\\slash OR 1=1 --.md",
    "percent % and _underscore_.md",
]


def test_odd_file_names_index_query_edit_and_delete(tmp_path, docs, make_runtime):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "include": ["**/*.md"]}])
    for i, name in enumerate(ODD_NAMES):
        (docs / name).write_text(f"# Odd {i}\n\nThe oddname{i} document body.\n")
    (docs / "plain.md").write_text("# Plain\n\nplain body\n")
    rt = make_runtime(cfg)
    s = sync(rt)
    assert s.docs_failed == 0
    assert doc_ids(rt) == set(ODD_NAMES) | {"plain.md"}
    # Each odd document can be replaced on its own without touching any other row.
    (docs / ODD_NAMES[0]).write_text("# Odd 0\n\nrewritten body\n")
    (docs / ODD_NAMES[2]).unlink()
    s = sync(rt)
    assert (s.docs_changed, s.docs_deleted) == (1, 1)
    assert doc_ids(rt) == (set(ODD_NAMES) - {ODD_NAMES[2]}) | {"plain.md"}
    texts = {r["doc_id"]: r["text"] for r in rows(rt)}
    assert texts[ODD_NAMES[0]] == "rewritten body"
    assert texts["plain.md"] == "plain body"
    results = rt.store.search(rt.embedder.encode(["oddname1"])[0], "oddname1", k=3, connector="docs")
    assert results[0]["doc_id"] == ODD_NAMES[1]


def test_bad_inputs_are_skipped_with_a_reason_and_nothing_else_is_lost(tmp_path, docs, make_runtime):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       limits={"markdown": 10_000})
    (docs / "good.md").write_text("# Good\n\ngood content\n")
    (docs / "binary.md").write_bytes(b"\x00\x01\x02binary" * 100)
    (docs / "empty.md").write_bytes(b"")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "huge.md").write_text("x " * 20_000)
    (docs / "utf16.txt").write_text("utf sixteen text", encoding="utf-16")
    os.mkfifo(docs / "pipe.md")
    outside = tmp_path / "outside.md"
    outside.write_text("secret outside the root")
    (docs / "escape.md").symlink_to(outside)
    (docs / "loop.md").symlink_to(docs / "loop.md")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 truncated garbage")
    rt = make_runtime(cfg)
    s = sync(rt)
    reasons = {f.doc_id: f.reason.split(":")[0] for f in s.failures}
    assert reasons == {
        "binary.md": "binary", "empty.md": "empty", "latin1.txt": "undecodable", "huge.md": "too-large",
        "pipe.md": "not-a-regular-file", "escape.md": "symlink-outside-root", "loop.md": "broken-symlink",
        "broken.pdf": "corrupt",
    }
    assert doc_ids(rt) == {"good.md", "utf16.txt"}
    assert rt.state.connector("docs").failures.keys() == reasons.keys()
    # A failed document that gets fixed is picked up on the next cycle.
    (docs / "empty.md").write_text("now it has words\n")
    s = sync(rt)
    assert s.docs_added == 1 and "empty.md" in doc_ids(rt)
    assert "empty.md" not in rt.state.connector("docs").failures


def test_hidden_swap_and_excluded_files_are_ignored(tmp_path, docs, make_runtime):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs),
                                   "exclude": ["drafts/**"]}])
    (docs / "keep.md").write_text("keep me")
    (docs / ".hidden.md").write_text("hidden")
    (docs / "keep.md.swp").write_text("swap")
    (docs / "keep.md~").write_text("backup")
    (docs / ".git").mkdir()
    (docs / ".git" / "x.md").write_text("in a hidden folder")
    (docs / "drafts").mkdir()
    (docs / "drafts" / "d.md").write_text("draft")
    (docs / "image.png").write_bytes(b"\x89PNG")
    rt = make_runtime(cfg)
    sync(rt)
    assert doc_ids(rt) == {"keep.md"}


def test_a_listing_under_a_prefix_is_the_full_listing_restricted_to_it(tmp_path, docs, make_runtime):
    """Doc ids are built by concatenation while descending: a prefix listing must agree with the full one,
    a prefix that is hidden, a file or outside the root lists nothing, and one naming the root lists it all."""
    for rel in ("a/x.md", "a/b/y.md", "a/b/.h.md", "a/.git/z.md", "a/b.md", "ab/w.md", "c.md", "a/b/img.png"):
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(f"# {rel}\n\ntext\n")
    rt = make_runtime(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}]))
    connector = rt.connectors["docs"]
    full = {r.doc_id: r.fingerprint for r in connector.list_documents()}
    assert set(full) == {"a/x.md", "a/b/y.md", "a/b.md", "ab/w.md", "c.md"}
    for prefix in ("a", "a/", "a/b", "ab", "./a/../a"):
        under = {r.doc_id: r.fingerprint for r in connector.list_documents(prefix)}
        norm = os.path.normpath(prefix)
        assert under == {d: f for d, f in full.items() if d.startswith(norm + "/")}, prefix
    for prefix in ("a/.git", "../elsewhere", "missing", "c.md"):
        assert list(connector.list_documents(prefix)) == [], prefix
    for prefix in (".", "../docs"):  # the root itself
        assert {r.doc_id: r.fingerprint for r in connector.list_documents(prefix)} == full, prefix


def test_changing_the_chunking_settings_rebuilds_instead_of_mixing(tmp_path, docs, make_runtime):
    (docs / "a.md").write_text(markdown_doc(1))
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg)
    sync(rt)
    old_table = rt.store.table_name
    rt.close()
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       chunking={"max_tokens": 64})
    rt2 = make_runtime(cfg)
    assert rt2.store.stored_signature() != rt2.signature
    rt2.engine.rebuild()
    assert rt2.store.table_name == old_table == "chunks"
    assert rt2.store._table_names() == ["chunks", "chunks_changes"]  # the change journal beside it, nothing else
    assert rt2.store.stored_signature() == rt2.signature
    # Another signature: one Overwrite carrying it in the schema metadata, the indexes built again.
    dataset = rt2.store.table.to_lance()
    version = int(rt2.store.table.version)
    replaced = dataset.read_transaction(version)
    while type(replaced.operation).__name__ in ("CreateIndex", "BaseOperation"):  # the indexes built after it
        version -= 1
        replaced = dataset.read_transaction(version)
    assert type(replaced.operation).__name__ == "Overwrite"
    assert replaced.transaction_properties["syncd.operation"] == "replace_contents"
    assert {idx.columns[0] for idx in rt2.store.table.list_indices()} >= {"text", "chunk_id", "doc_key"}
    counts = rt2.chunker.counter.count([r["text"] for r in rows(rt2)])
    assert max(counts) <= rt2.chunker.budget < 64


def test_reindex_replaces_the_live_tables_content_in_place_and_an_open_reader_sees_it(fs_config, docs, make_runtime):
    """One table name for life: the reindex builds aside and replaces the content of `chunks` in one commit; a
    reader that opened the table before sees the new index at its next read without reopening, and the
    previous version stays readable (for readers mid-query and rollback)."""
    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    before = sorted((r["doc_id"], r["chunk_index"], r["text"]) for r in rows(rt))
    unique_texts = len({r["content_hash"] for r in rows(rt)})
    reader = Store(rt.config.store_uri, rt.config.state_dir, base_table="chunks", dim=rt.embedder.dim, signature="",
                   read_consistency_interval=0)
    reader.open(create=False)
    handle = reader.table
    old_version = int(handle.version)
    indexes_before = {idx.name for idx in rt.store.table.list_indices()}
    assert "text_idx" in indexes_before
    assert reader.count_rows() == len(before)
    (docs / "p0.md").write_text("# Zebra crossings\n\nstriped animals cross here\n")  # not synced: only the reindex sees it
    s = rt.engine.rebuild()
    assert s.docs_added == 3 and s.chunks_embedded > 0
    assert rt.store.table_name == "chunks"
    assert rt.store._table_names() == ["chunks", "chunks_changes"]  # no scratch, no dated table
    texts = {r["text"] for r in handle.search().select(["text"]).limit(None).to_list()}  # the handle opened before
    assert any("striped animals" in t for t in texts)
    assert reader.table is handle and reader.count_rows() == len(rows(rt))
    assert not any(t == b[2] for t in texts for b in before if b[0] == "p0.md")
    old = handle.to_lance().checkout_version(old_version).to_table(columns=["doc_id", "chunk_index", "text"]).to_pylist()
    assert sorted((r["doc_id"], r["chunk_index"], r["text"]) for r in old) == before
    # Same settings: one Update commit that keeps the indexes, so the full-text leg answers at once.
    dataset = rt.store.table.to_lance()
    tx = dataset.read_transaction(dataset.version)
    assert type(tx.operation).__name__ == "Update" and tx.transaction_properties["syncd.operation"] == "replace_contents"
    assert {idx.name for idx in rt.store.table.list_indices()} == indexes_before
    fts = rt.store.table.search("striped animals", query_type="fts").select(["doc_id"]).limit(1).to_list()
    assert fts[0]["doc_id"] == "p0.md"
    assert unique_texts > 0


def test_reindex_streams_the_listing_a_batch_at_a_time(fs_config, docs, make_runtime, monkeypatch):
    """Memory follows the batch: documents are read and written while the listing is still going, and the
    table being built is reopened through a new connection every few batches."""
    import syncd.pipeline

    for i in range(7):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    rt.engine.max_batch_docs = 2
    monkeypatch.setattr(syncd.pipeline, "REBUILD_REOPEN_EVERY", 2)
    reopened: list[str] = []
    reopen = rt.store.reopen_table
    monkeypatch.setattr(rt.store, "reopen_table", lambda name: reopened.append(name) or reopen(name))
    connector = rt.connectors["docs"]
    events: list[tuple[str, object]] = []
    listing = connector.list_documents

    def traced_listing(*args, **kwargs):
        for ref in listing(*args, **kwargs):
            events.append(("listed", ref.doc_id))
            yield ref

    connector.list_documents = traced_listing
    rebuild_batch = rt.engine._rebuild_batch

    def traced_batch(name, doc_ids, *args, **kwargs):
        events.append(("batch", list(doc_ids)))
        return rebuild_batch(name, doc_ids, *args, **kwargs)

    rt.engine._rebuild_batch = traced_batch
    s = rt.engine.rebuild()
    assert s.docs_added == 7 and doc_ids(rt) == {f"p{i}.md" for i in range(7)}
    batches = [docs_ for kind, docs_ in events if kind == "batch"]
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    first_batch = events.index(("batch", batches[0]))
    assert sum(1 for kind, _ in events[:first_batch] if kind == "listed") == 2  # not the whole listing first
    assert len(reopened) == 2 and set(reopened) == {rt.store.scratch_name}  # after batches 2 and 4


def test_the_reindex_command_never_reads_the_old_index_view(fs_config, docs, make_runtime, monkeypatch):
    """`syncd reindex` builds a new table; the view of the old one (~280 MB at 100k documents) is not read."""
    import argparse

    from syncd import cli, runtime
    from syncd import config as config_mod
    from syncd.testing import HashEmbedder

    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    rt.close()
    reads: list[str] = []
    indexed_docs = Store.indexed_docs

    def counted(self):
        reads.append(self.table_name)
        return indexed_docs(self)

    monkeypatch.setattr(Store, "indexed_docs", counted)
    monkeypatch.setattr(runtime, "build_embedder", lambda config, backend=None: HashEmbedder())
    code = cli.cmd_reindex(config_mod.load(fs_config), argparse.Namespace(connector=None, json=True))
    assert code == cli.EXIT_OK and reads == []
    after = make_runtime(fs_config)  # an ordinary open reads the view of the new table
    assert reads == [after.store.table_name] and doc_ids(after) == {"p0.md", "p1.md", "p2.md"}


def test_the_reindex_command_keeps_the_fingerprint_cache_in_a_file_not_in_memory(fs_config, docs, make_runtime):
    """A rebuild for a process that exits after it (``reload_index=False``, `syncd reindex`) writes each
    batch's fingerprints to a file beside the state file and streams them into the state file at the end:
    memory holds none of them, and the state file is the same cache an in-memory rebuild writes."""
    for i in range(7):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    (docs / "bad.md").write_bytes(b"# Bad\n\x00\x01 a NUL byte: binary\n")
    rt = make_runtime(fs_config)
    rt.engine.max_batch_docs = 2
    cstate = rt.state.connector("docs")
    in_memory: list[int] = []
    rebuild_batch = rt.engine._rebuild_batch

    def traced_batch(name, doc_ids, *args, **kwargs):
        result = rebuild_batch(name, doc_ids, *args, **kwargs)
        in_memory.append(len(cstate._fingerprints or {}))
        assert cstate.spill_path.is_file()
        return result

    rt.engine._rebuild_batch = traced_batch
    rt.engine.rebuild(reload_index=False)
    assert len(in_memory) == 4 and set(in_memory) == {0}
    assert not cstate.spill_path.exists()
    spilled = json.loads(cstate.path.read_text())

    rt.engine._rebuild_batch = rebuild_batch
    rt.engine.rebuild()  # the daemon's rebuild keeps the cache in memory
    in_mem = json.loads(cstate.path.read_text())
    assert spilled == in_mem
    assert set(spilled["fingerprints"]) == {f"p{i}.md" for i in range(7)} and set(spilled["failures"]) == {"bad.md"}
    assert cstate.fingerprints == in_mem["fingerprints"]

    rt.close()
    again = make_runtime(fs_config)  # the next sync uses the cache: no cached document re-read or embedded
    reads: list[str] = []
    read = again.connectors["docs"].read
    again.connectors["docs"].read = lambda doc_id: reads.append(doc_id) or read(doc_id)
    s = sync(again)
    assert (s.docs_added, s.docs_changed, s.chunks_embedded) == (0, 0, 0) and s.docs_unchanged == 7
    assert reads == ["bad.md"]  # the one failure is tried again


def test_a_failed_reindex_leaves_no_fingerprint_spill_behind(fs_config, docs, make_runtime):
    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    rt.state.save()
    before = rt.state.connector("docs").path.read_text()

    def failing(*args, **kwargs):
        raise RuntimeError("disk full")

    rt.engine._rebuild_batch = failing
    with pytest.raises(RuntimeError):
        rt.engine.rebuild(reload_index=False)
    cstate = rt.state.connector("docs")
    assert not cstate.spill_path.exists() and cstate.path.read_text() == before
    assert set(cstate.fingerprints) == {"p0.md", "p1.md", "p2.md"}  # read back from the untouched file


def test_a_reindex_that_fails_or_crashes_mid_build_leaves_the_live_table_untouched(fs_config, docs, make_runtime):
    """A failure mid-build drops the scratch table at once; a crash leaves it to the next writer's start."""
    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    before = sorted((r["chunk_id"], r["text"]) for r in rows(rt))
    version = int(rt.store.table.version)
    calls = []
    rebuild_batch = rt.engine._rebuild_batch

    def failing_second(name, doc_ids, *args, **kwargs):
        calls.append(doc_ids)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return rebuild_batch(name, doc_ids, *args, **kwargs)

    rt.engine.max_batch_docs = 1
    rt.engine._rebuild_batch = failing_second
    with pytest.raises(RuntimeError):
        rt.engine.rebuild()
    assert rt.store._table_names() == ["chunks", "chunks_changes"] and int(rt.store.table.version) == version
    assert sorted((r["chunk_id"], r["text"]) for r in rows(rt)) == before
    scratch = rt.store.create_scratch()  # a reindex that dies mid-build (the process is gone)
    scratch.add(rt.store.scan(rt.store.table.schema.names).slice(0, 1))
    rt.close()
    rt = make_runtime(fs_config)
    assert rt.store._table_names() == ["chunks", "chunks_changes"] and int(rt.store.table.version) == version
    assert sorted((r["chunk_id"], r["text"]) for r in rows(rt)) == before


def test_a_second_writer_is_refused_while_one_holds_the_store(fs_config, make_runtime):
    from syncd import config as config_mod
    from syncd.runtime import Runtime, WriterLocked
    from syncd.testing import HashEmbedder

    make_runtime(fs_config)
    with pytest.raises(WriterLocked):
        Runtime(config_mod.load(fs_config), embedder=HashEmbedder())


def test_a_folder_move_larger_than_a_batch_counts_every_file_once_as_renamed(tmp_path, docs, make_runtime):
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"max_batch_docs": 16})
    (docs / "a").mkdir()
    for i in range(50):
        (docs / "a" / f"n{i}.md").write_text(f"# N {i}\n\nnote {i}\n")
    (docs / "z.md").write_text("# Z\n\nunrelated\n")
    rt = make_runtime(cfg)
    sync(rt)
    (docs / "a").rename(docs / "b")
    s = sync(rt)
    assert (s.docs_renamed, s.docs_added, s.docs_deleted, s.chunks_embedded) == (50, 0, 0, 0)
    assert doc_ids(rt) == {f"b/n{i}.md" for i in range(50)} | {"z.md"}


def test_a_skipped_file_is_not_reread_or_reported_again_until_it_changes(fs_config, docs, make_runtime):
    (docs / "empty.md").write_bytes(b"")
    (docs / "ok.md").write_text("fine\n")
    rt = make_runtime(fs_config)
    first = sync(rt)
    assert [(f.doc_id, f.reason.split(":")[0]) for f in first.failures] == [("empty.md", "empty")]
    second = sync(rt)
    assert second.failures == [] and second.docs_unchanged == 2
    assert rt.state.connector("docs").failures == {"empty.md": "empty: no content"}, "still shown in status"
    (docs / "empty.md").write_text("now with words\n")
    third = sync(rt)
    assert third.docs_added == 1 and rt.state.connector("docs").failures == {}


def test_the_hash_filter_reads_an_arrow_column_like_strings_and_never_misses_a_stored_hash():
    import pyarrow as pa

    from syncd.store import HashFilter

    stored = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(3000)]
    odd = ["", "not-hex-at-all-!!", "ABCDEF0123456789abcdef"]
    column = pa.chunked_array([pa.array(stored[:1000]), pa.array(stored[1000:] + [None] + odd)]).slice(7)
    from_arrow, from_strings = HashFilter(column), HashFilter(stored[7:] + odd)
    assert len(from_arrow) == len(from_strings)
    assert all(h in from_arrow and h in from_strings for h in stored[7:] + odd)
    others = [hashlib.blake2b(b"other" + str(i).encode(), digest_size=16).hexdigest() for i in range(3000)]
    assert sum(h in from_arrow for h in others) == 0  # 64-bit keys: a false "present" is ~1e-13 here
    from_arrow.add(others[:10])
    assert all(h in from_arrow for h in others[:10]) and others[10] not in from_arrow


def test_maintenance_merges_ann_index_deltas_instead_of_letting_them_pile_up(tmp_path):
    import lance

    from syncd.store import MAX_VECTOR_DELTAS, chunk_id, doc_key

    store = Store(str(tmp_path / "index"), tmp_path, base_table="chunks", dim=16, signature="t")
    store.open()
    rng = np.random.default_rng(3)

    def write(start: int, count: int) -> None:
        records = [{"chunk_id": chunk_id("c", f"d{i}", 0), "doc_key": doc_key("c", f"d{i}"), "doc_id": f"d{i}",
                    "connector": "c", "text": f"text {i}", "vector": rng.standard_normal(16).astype(np.float32),
                    "uri": f"u{i}", "title": "", "revision": "r", "chunk_index": 0, "heading_path": [],
                    "start_line": 1, "end_line": 1, "content_hash": f"{i:032x}", "updated_at": None,
                    "doc_identity": "r", "modified_at": None, "source_metadata": "{}"} for i in range(start, start + count)]
        store.apply(store.make_rows(records), [doc_key("c", f"d{i}") for i in range(start, start + count)],
                    covers_all_rows=True)

    write(0, 600)
    store.maintain(retention_s=600, ann_min_rows=1)

    def deltas() -> int:
        dataset = lance.dataset(store.table.to_lance().uri)
        return sum(1 for idx in dataset.list_indices() if list(idx.get("fields") or []) == ["vector"])

    seen = [deltas()]
    for round_ in range(MAX_VECTOR_DELTAS + 3):  # each maintenance folds new rows in as one more delta
        write(600 + 20 * round_, 20)
        store.maintain(retention_s=600, ann_min_rows=1)
        seen.append(deltas())
    assert seen[0] == 1 and max(seen) == MAX_VECTOR_DELTAS  # without merging: one more per round
    assert any(after < before for before, after in zip(seen, seen[1:], strict=False))
    assert store.table.count_rows() == 600 + 20 * (MAX_VECTOR_DELTAS + 3)
    assert len(store.table.search(rng.standard_normal(16).astype(np.float32).tolist()).limit(5).to_list()) == 5


@pytest.mark.parametrize("metadata_mb", [1, 256])
def test_lancedb_metadata_cache_stays_within_metadata_cache_mb_over_many_commits(tmp_path, make_runtime, metadata_mb):
    """A long-lived writer must not grow with every commit: LanceDB's metadata cache (1 GB by default) is
    bounded by ``[store] metadata_cache_mb``. The 256 MB run shows the same commits fill more than 2 MB."""
    docs = tmp_path / "docs"
    docs.mkdir()
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"metadata_cache_mb": metadata_mb})
    rt = make_runtime(cfg)
    (docs / "a.md").write_text(markdown_doc(0))
    for i in range(200):
        with open(docs / "a.md", "a") as fh:
            fh.write(f"\nEdit number {i} of this page.\n")
        rt.engine.process({"docs": {"a.md": 0.0}})
    assert rt.store.table.version > 200  # one commit per edit at least
    used = rt.store.session.size_bytes
    if metadata_mb == 1:
        assert used < 1.5 * (1 << 20)
    else:
        assert used > 2 << 20


def test_a_reindex_replaces_nothing_when_the_live_table_changed_during_the_build(fs_config, docs, make_runtime):
    """The single-writer precondition of `replace_contents` is checked: a content commit that landed on the live
    table while the reindex built (here: a second handle, as another writer would) makes the reindex fail
    without replacing anything, so that commit is not dropped."""
    from syncd.errors import StoreError

    for i in range(3):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    sync(rt)
    other = Store(rt.config.store_uri, rt.config.state_dir, base_table="chunks", dim=rt.embedder.dim,
                  signature=rt.signature)
    other.open(create=False)
    rebuild_batch = rt.engine._rebuild_batch
    written = []

    def racing(name, doc_ids, *args, **kwargs):
        if not written:  # another writer commits while the reindex is under way
            stray = other.scan(other.table.schema.names).slice(0, 1).to_pylist()[0]
            other.apply(other.make_rows([{**stray, "text": "written meanwhile"}]), [stray["doc_key"]])
            written.append(stray["chunk_id"])
        return rebuild_batch(name, doc_ids, *args, **kwargs)

    rt.engine._rebuild_batch = racing
    with pytest.raises(StoreError, match="changed while it was being rebuilt"):
        rt.engine.rebuild()
    rt.store.table.checkout_latest()
    texts = {r["chunk_id"]: r["text"] for r in rows(rt)}
    assert texts[written[0]] == "written meanwhile"
    assert rt.store._table_names() == ["chunks", "chunks_changes"]  # the scratch table is gone


def test_a_reindex_of_one_connector_keeps_the_other_connectors_rows_as_they_were(tmp_path, docs, make_runtime):
    other = tmp_path / "other"
    other.mkdir()
    (docs / "a.md").write_text(markdown_doc(1))
    (other / "b.md").write_text(markdown_doc(2))
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)},
                                  {"name": "other", "type": "filesystem", "path": str(other)}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    rt.engine.reconcile("other")
    kept = rt.store.scan(["chunk_id", "text", "vector", "updated_at"], "connector = 'other'").to_pylist()
    (docs / "a.md").write_text("# Only here\n\nthe reindexed connector's new words\n")
    summary = rt.engine.rebuild(only="docs")
    assert summary.docs_added == 1
    assert rt.store.scan(["chunk_id", "text", "vector", "updated_at"], "connector = 'other'").to_pylist() == kept
    texts = [r["text"] for r in rt.store.scan(["text"], "connector = 'docs'").to_pylist()]
    assert texts and all("Only here" in t or "new words" in t for t in texts)
    assert rt.store.table_name == "chunks"
