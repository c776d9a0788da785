"""Retrievers for RAG frameworks, backed by syncd's own hybrid search (optional extras).

- ``syncd.integrations.langchain``: ``pip install 'syncd[langchain]'``
- ``syncd.integrations.llamaindex``: ``pip install 'syncd[llamaindex]'``

Each also offers the embedding model of a syncd index in the framework's own interface, for the framework's
LanceDB vector store opened read-only on the live table (README: "Using the index from LangChain and
LlamaIndex").
"""

from __future__ import annotations

from typing import Any

CITATION_KEYS = ("connector", "doc_id", "chunk_id", "uri", "title", "revision", "chunk_index", "heading_path",
                 "start_line", "end_line", "updated_at")
"""The fields of a search result handed on as a document's metadata (``text`` becomes its content)."""


def hit_metadata(hit: dict[str, Any]) -> dict[str, Any]:
    """A search result's metadata for a framework document: the citation, the score, and whatever else the
    result carries (``relevance``, ``also_in``, ``table_version``...), without the text."""
    from syncd.store import chunk_id

    meta = {key: value for key, value in hit.items() if key != "text"}
    if not meta.get("chunk_id") and "connector" in hit and "doc_id" in hit and "chunk_index" in hit:
        meta["chunk_id"] = chunk_id(hit["connector"], hit["doc_id"], int(hit["chunk_index"]))
    return meta


def open_search_index(index: Any = None, config_path: str | None = None) -> Any:
    """``index`` as given (anything with syncd's ``search(text, k=..., **options)``), else ``open_index``."""
    if index is not None:
        return index
    import syncd

    return syncd.open_index(config_path)
