"""Errors decide: library errors become StoreError at the store's edge, and whether a poll's cursor may
advance is decided by the error's class, not by its message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from syncd.errors import DocumentUnavailable, StoreError


class Exploding:
    """Stands in for a LanceDB table whose every call fails with a library error of an odd class."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"lance: {name} failed")

        return fail

    @property
    def schema(self) -> Any:  # a property of the real table: it fails on access
        raise RuntimeError("lance: schema failed")


def test_every_library_error_of_the_store_comes_out_as_store_error(tmp_path: Path, docs: Path,
                                                                   make_runtime: Any) -> None:
    rt = make_runtime(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}]))
    rt.store._table = Exploding()
    calls = [lambda: rt.store.vectors_for(["abc"]), lambda: rt.store.scan(["doc_id"]), rt.store.stats,
             rt.store.indexed_docs, rt.store.count_rows, rt.store.index_names, rt.store.fragment_count,
             lambda: rt.store.apply(rt.store.make_rows([]), ["k"])]
    for call in calls:
        with pytest.raises(StoreError) as caught:
            call()
        assert "failed" in str(caught.value) and isinstance(caught.value.__cause__, RuntimeError)


def test_a_batch_the_store_refuses_holds_the_cursor_and_a_document_failing_alone_lets_it_pass(
        tmp_path: Path, docs: Path, make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (docs / "a.md").write_text("alpha words\n")
    (docs / "b.md").write_text("beta words\n")
    rt = make_runtime(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}]))
    engine = rt.engine
    connector = rt.connectors["docs"]
    original_read = connector.read

    def read(doc_id: str) -> Any:
        if doc_id == "b.md":
            raise DocumentUnavailable("permission-denied", doc_id=doc_id, connector="docs")
        return original_read(doc_id)

    monkeypatch.setattr(connector, "read", read)
    alone = engine.process({"docs": {"a.md": 1.0, "b.md": 1.0}})
    assert [f.doc_id for f in alone.failures] == ["b.md"]
    assert engine.cursor_may_advance(alone, "docs")  # b.md is retried by later polls

    (docs / "a.md").write_text("alpha edited\n")
    rt.store._table = Exploding()
    refused = engine.process({"docs": {"a.md": 2.0}})
    assert refused.failures and all("store-write-failed" in f.reason for f in refused.failures)
    assert not engine.cursor_may_advance(refused, "docs")
    # The decision is the error's class: the same message on a document's own failure lets the cursor pass.
    alone.failures[0].reason = "store-write-failed: looks alike"
    assert engine.cursor_may_advance(alone, "docs")
