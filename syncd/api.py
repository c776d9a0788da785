"""The Python API for RAG applications: a read-only handle on the live index, in this process.

``syncd.open_index()`` answers through the running daemon when one serves the config's state folder
(``syncd.remote.DaemonIndex``: no model and no LanceDB in the caller's process) and opens this in-process
:class:`Index` otherwise."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from syncd import config as config_mod
from syncd import search as search_mod
from syncd.audit import changes_page, public
from syncd.config import Config
from syncd.coordination import shared_store, store_kwargs
from syncd.store import Store


class Index:
    """Searches the live table; sees every commit the daemon makes (read consistency interval 0 by default).

    A configured ``[search] reranker`` is loaded here, so a missing or broken one fails at once."""

    def __init__(self, config: Config, embedder: Any | None = None, reranker: Any | None = None) -> None:
        from syncd.embedding import QueryVectors, from_config, reranker_from_config

        self.config = config
        self.reranker = reranker if reranker is not None else reranker_from_config(config)
        self.embedder = embedder if embedder is not None else from_config(config)
        self.query_vectors = QueryVectors(self.embedder, config.embedding.query_cache)
        self.store = Store(config.store_uri, config.state_dir, base_table=config.store.table, dim=self.embedder.dim,
                           signature="", read_consistency_interval=config.store.read_consistency_interval,
                           **store_kwargs(config, shared_store(config)))
        self.store.open(create=False)
        self.observe: Callable[[dict[str, float]], None] | None = None
        """Told each search's seconds by stage (``syncd.search.STAGES``)."""

    @classmethod
    def open(cls, config_path: str | None = None) -> Index:
        return cls(config_mod.load(config_path))

    def answer(self, text: str, options: search_mod.SearchOptions) -> search_mod.Answer:
        """The search with every stage's timing (the interfaces' common path)."""
        self.store.refresh()
        cfg = self.config.search
        found = search_mod.search(self.store, lambda: self.query_vectors(text), text, options,
                                  default_min_relevance=cfg.min_relevance, reranker=self.reranker,
                                  candidates=cfg.candidates)
        if self.observe is not None:
            self.observe(found.seconds)
        return found

    def search(self, text: str, k: int = 10, connector: str | None = None, *, path: str | None = None,
               updated_since: dt.datetime | str | None = None, metadata: Mapping[str, str] | None = None,
               min_relevance: float | None = None, dedup: bool = True,
               as_of: float | str | dt.datetime | None = None,
               principals: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Hybrid (vector + full-text) search; each result carries its citation (uri, revision, lines), its
        ``relevance`` (0-1), the ``table_version`` it came from and, with ``dedup``, the other places its text
        occurs (``also_in``). Filters: ``connector``, ``path`` (a glob over doc ids), ``updated_since`` (a
        datetime or ISO 8601), ``metadata`` (source metadata key = value); ``min_relevance`` overrides
        ``[search] min_relevance``. ``as_of`` (unix time, ISO 8601 or a datetime) searches the index as it was
        then (``AsOfUnavailable`` names the oldest time available when that is not kept).

        Only documents a caller holding ``principals`` may read are searched (``["user:alice",
        "group:eng"]``; none: ``everyone`` documents only); a string that is not ``user:NAME``,
        ``group:NAME`` or ``everyone`` raises ``SearchOptionError`` (a ValueError)."""
        return self.answer(text, options(k=k, connector=connector, path=path, updated_since=updated_since,
                                         metadata=metadata, min_relevance=min_relevance, dedup=dedup,
                                         as_of=as_of, principals=principals)).results

    def query(self, text: str, k: int = 10, connector: str | None = None, **filters: Any) -> dict[str, Any]:
        """The `syncd query --json` document."""
        found = self.answer(text, options(k=k, connector=connector, **filters))
        return {"query": text, "table_version": found.table_version, "results": found.results}
    def changes(self, *, since: str | None = None, connector: str | None = None, doc_id: str | None = None,
                limit: int = 100, cursor: str | None = None, order: str = "oldest") -> dict[str, Any]:
        """A page of the change journal, as ``GET /changes`` answers it."""
        return changes_page(self.store.journal, since=since, connector=connector, doc_id=doc_id, limit=limit,
                            cursor=cursor, order=order)

    def history(self, doc_id: str, connector: str | None = None) -> list[dict[str, Any]]:
        """Every journal entry of ``doc_id`` (as the document or a rename's old id), oldest first."""
        return history(self.store, doc_id, connector=connector)


    def document(self, *, doc_id: str | None = None, uri: str | None = None, connector: str | None = None,
                 principals: Sequence[str] | None = None) -> dict[str, Any] | None:
        """A document's current indexed text by doc id or uri (see ``syncd.documents.read_document``), when a
        caller holding ``principals`` may read it (none: ``everyone`` documents only); else None."""
        from syncd.documents import read_document

        self.store.refresh()
        return read_document(self.store, doc_id=doc_id, uri=uri, connector=connector, principals=principals)

    def sources(self) -> list[dict[str, Any]]:
        """The configured connectors with what the index holds of each. Without a daemon nothing syncs, so
        the state is ``stopped`` and the lag unknown."""
        self.store.refresh()
        table = self.store.scan(["connector", "doc_id"])
        docs: dict[str, set[str]] = {}
        chunks: dict[str, int] = {}
        for connector, doc_id in zip(table.column("connector").to_pylist(), table.column("doc_id").to_pylist(),
                                     strict=True):
            docs.setdefault(connector, set()).add(doc_id)
            chunks[connector] = chunks.get(connector, 0) + 1
        return [{"name": c.name, "type": c.type, "state": "stopped", "lag_s": None, "backlog": None,
                 "docs": len(docs.get(c.name, ())), "chunks": chunks.get(c.name, 0), "last_success_at": None,
                 "last_error": None} for c in self.config.connectors]


def history(store: Store, doc_id: str, *, connector: str | None = None) -> list[dict[str, Any]]:
    """Every journal entry of ``doc_id`` in ``store``, oldest first (the `syncd history` lines)."""
    out: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        rows = store.journal.read(after=cursor, doc_id=doc_id, connector=connector, limit=1000)
        out.extend(public(r) for r in rows)
        if len(rows) < 1000:
            return out
        cursor = int(rows[-1]["seq"])


options = search_mod.options_from_kwargs
"""SearchOptions from the Python API's keyword arguments (``syncd.search.options_from_kwargs``)."""
