"""A document's current indexed text, read back from its chunks (`/document`, the MCP tool `get_document`,
``Index.document``). The chunks are what search cites, so the text an agent fetches after a search is the
text the citation points into, at the same table version or a later one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from syncd.acl import search_filter
from syncd.errors import SyncdError
from syncd.store import Store, doc_key, sql_string

_COLUMNS = ["connector", "doc_id", "uri", "title", "revision", "chunk_index", "heading_path", "start_line",
            "end_line", "text", "updated_at"]


class AmbiguousDocument(SyncdError, ValueError):
    """A doc id or uri names documents of several connectors, and no connector was given."""


def read_document(store: Store, *, doc_id: str | None = None, uri: str | None = None,
                  connector: str | None = None, principals: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The document named by ``doc_id`` (with ``connector`` when several connectors hold that id) or by
    ``uri``, as ``{connector, doc_id, uri, title, revision, updated_at, text, chunks}``; None when the index
    holds no such document that a caller holding ``principals`` may read (none: ``everyone`` documents only;
    the same filter as search, so a document the caller may not read is answered as absent, never named).
    ``text`` is the chunks in order, each heading the chunks enter on a line of its
    own and the overlap of two windows of one long paragraph written once; ``chunks`` gives each chunk's line
    span and headings."""
    if (doc_id is None) == (uri is None):
        raise ValueError("name the document by doc_id or by uri (one of them)")
    if doc_id is not None and connector is not None:
        where = f"doc_key = {sql_string(doc_key(connector, doc_id))}"
    elif doc_id is not None:
        where = f"doc_id = {sql_string(doc_id)}"
    else:
        assert uri is not None
        where = f"uri = {sql_string(uri)}" + (f" AND connector = {sql_string(connector)}" if connector else "")
    rows = store.scan(_COLUMNS, where=f"({where}) AND {search_filter(principals)}").to_pylist()
    if not rows:
        return None
    owners = sorted({(r["connector"], r["doc_id"]) for r in rows})
    if len(owners) > 1:
        named = ", ".join(f"{c}:{d}" for c, d in owners)
        raise AmbiguousDocument(f"{'doc_id ' + repr(doc_id) if doc_id is not None else 'uri ' + repr(uri)} names "
                                f"{len(owners)} documents ({named}); give the connector")
    rows.sort(key=lambda r: r["chunk_index"])
    first = rows[0]
    updated = first.get("updated_at")
    text = ""
    headings: list[str] = []
    for row in rows:
        path = list(row["heading_path"] or [])
        same = 0
        while same < min(len(path), len(headings)) and path[same] == headings[same]:
            same += 1
        for heading in path[same:]:  # the headings a chunk enters: the chunks' texts do not hold them
            text = text + "\n\n" + heading if text else heading
        headings = path
        text = _join(text, row["text"], overlap=not path[same:])
    return {
        "connector": first["connector"], "doc_id": first["doc_id"], "uri": first["uri"], "title": first["title"],
        "revision": first["revision"],
        "updated_at": updated.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if updated else None,
        "text": text,
        "chunks": [{"chunk_index": int(r["chunk_index"]), "start_line": int(r["start_line"]),
                    "end_line": int(r["end_line"]), "heading_path": list(r["heading_path"] or [])} for r in rows],
    }


def _join(text: str, chunk: str, *, overlap: bool) -> str:
    """``text`` followed by ``chunk``; where the chunk begins with the end of ``text`` (the overlap of two
    token windows cut from one long block), that part is written once."""
    if not text:
        return chunk
    longest = min(len(text), len(chunk)) if overlap else 0
    for size in range(longest, 15, -1):  # a short coincidental match is not an overlap
        if text.endswith(chunk[:size]):
            return text + chunk[size:]
    return text + "\n\n" + chunk
