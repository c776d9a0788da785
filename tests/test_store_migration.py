"""An index written by an earlier version (a dated table named by `<state>/store.json`, `metadata` as a JSON
string, no `id`) is migrated at the first writer's start: one table name, the schema frameworks read, the
same rows and vectors, nothing embedded again."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pyarrow as pa

from syncd.store import SIGNATURE_KEY, schema
from tests.corpus import markdown_doc

OLD_COLUMNS = ["chunk_id", "doc_key", "doc_id", "connector", "text", "vector", "uri", "title", "revision", "chunk_index",
               "heading_path", "start_line", "end_line", "content_hash", "updated_at", "doc_identity", "modified_at"]


def old_schema(dim: int) -> pa.Schema:
    """The schema before version 2 (store.py as it was): `metadata` a JSON string, no `id`."""
    new = schema(dim)
    return pa.schema([new.field(name) for name in OLD_COLUMNS] + [pa.field("metadata", pa.string())])


class CountingEmbedder:
    """The test suite's HashEmbedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        from syncd.testing import HashEmbedder

        self.inner = HashEmbedder()
        self.texts = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.inner.encode(texts, *args, **kwargs)


def test_an_install_with_a_pointer_and_a_dated_old_schema_table_migrates_on_first_start(
        tmp_path, fs_config, docs, make_runtime):
    for i in range(4):
        (docs / f"p{i}.md").write_text(markdown_doc(i))
    rt = make_runtime(fs_config)
    rt.engine.reconcile("docs")
    current = rt.store.scan(rt.store.table.schema.names).sort_by("chunk_id")
    sig = rt.signature
    rt.close()
    # Rewrite the store as the earlier version left it after a reindex: the live rows in a dated table named by
    # store.json, the table under the base name a retired one holding stale rows.
    db = lancedb.connect(str(tmp_path / "index"))
    old = pa.Table.from_arrays([current[c] for c in OLD_COLUMNS] + [current["source_metadata"]],
                               schema=old_schema(rt.embedder.dim))
    dated = "chunks_20261130121539_419"
    db.create_table(dated, data=old)
    db.drop_table("chunks")
    db.create_table("chunks", data=old.slice(0, 2))
    pointer = {"state_version": 1, "table": dated, "signature": sig, "dim": rt.embedder.dim, "switched_at": 0,
               "retired": [{"table": "chunks", "drop_after": 1e12}]}
    (tmp_path / "state" / "store.json").write_text(json.dumps(pointer))

    embedder = CountingEmbedder()
    rt = make_runtime(fs_config, embedder=embedder)
    assert rt.store._table_names() == ["chunks", "chunks_changes"]
    assert not (tmp_path / "state" / "store.json").exists()
    table = lancedb.connect(str(tmp_path / "index")).open_table("chunks")
    sch = table.schema
    assert pa.types.is_struct(sch.field("metadata").type) and sch.field("source_metadata").type == pa.string()
    assert sch.metadata[SIGNATURE_KEY].decode() == sig and rt.store.stored_signature() == sig
    after = table.to_arrow().sort_by("chunk_id")
    assert after.num_rows == current.num_rows
    for column in [*OLD_COLUMNS, "source_metadata"]:
        assert after[column].to_pylist() == current[column].to_pylist(), column
    assert np.array_equal(after["vector"].combine_chunks().flatten().to_numpy(),
                          current["vector"].combine_chunks().flatten().to_numpy())
    assert after["id"].to_pylist() == after["chunk_id"].to_pylist()
    first = after.to_pylist()[0]
    assert first["metadata"] == {k: first[k] for k in ("connector", "doc_id", "chunk_id", "uri", "title", "revision",
                                                         "chunk_index", "heading_path", "start_line", "end_line")}
    assert json.loads(first["source_metadata"])["mode"]  # the filesystem's source metadata is still there
    # Nothing embedded: the migration copied vectors, and a sync finds every document as it was.
    s = rt.engine.reconcile("docs")
    # Rows from before permissions carry no acl: it is computed and written, nothing is embedded.
    assert embedder.texts == 0 and s.chunks_embedded == 0 and (s.docs_unchanged, s.docs_permissions) == (0, 4)
    assert {idx.columns[0] for idx in table.list_indices()} >= {"text", "chunk_id", "doc_key"}
    # Migrated once: the next start changes nothing.
    table.checkout_latest()
    version = int(table.version)
    rt.close()
    make_runtime(fs_config, embedder=embedder)
    table.checkout_latest()
    assert int(table.version) == version


def test_a_table_of_the_old_schema_under_the_base_name_migrates_in_place(tmp_path, fs_config, docs, make_runtime):
    """A store never reindexed: `chunks` itself has the old schema; it keeps its name and gains the new one."""
    (docs / "a.md").write_text(markdown_doc(1))
    rt = make_runtime(fs_config)
    rt.engine.reconcile("docs")
    current = rt.store.scan(rt.store.table.schema.names).sort_by("chunk_id")
    sig = rt.signature
    rt.close()
    db = lancedb.connect(str(tmp_path / "index"))
    db.drop_table("chunks")
    db.create_table("chunks", data=pa.Table.from_arrays([current[c] for c in OLD_COLUMNS] + [current["source_metadata"]],
                                                        schema=old_schema(rt.embedder.dim)))
    (tmp_path / "state" / "store.json").write_text(json.dumps({"state_version": 1, "table": "chunks", "signature": sig}))
    rt = make_runtime(fs_config)
    table = lancedb.connect(str(tmp_path / "index")).open_table("chunks")
    assert "id" in table.schema.names and table.count_rows() == current.num_rows
    assert table.schema.metadata[SIGNATURE_KEY].decode() == sig
    assert rt.engine.reconcile("docs").chunks_embedded == 0
