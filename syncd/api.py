"""The Python API for RAG applications: a read-only handle on the live index."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from syncd import config as config_mod
from syncd import search as search_mod
from syncd.audit import changes_page, parse_time, public
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
               as_of: float | str | dt.datetime | None = None) -> list[dict[str, Any]]:
        """Hybrid (vector + full-text) search; each result carries its citation (uri, revision, lines), its
        ``relevance`` (0-1), the ``table_version`` it came from and, with ``dedup``, the other places its text
        occurs (``also_in``). Filters: ``connector``, ``path`` (a glob over doc ids), ``updated_since`` (a
        datetime or ISO 8601), ``metadata`` (source metadata key = value); ``min_relevance`` overrides
        ``[search] min_relevance``. ``as_of`` (unix time, ISO 8601 or a datetime) searches the index as it was
        then (``AsOfUnavailable`` names the oldest time available when that is not kept)."""
        return self.answer(text, options(k=k, connector=connector, path=path, updated_since=updated_since,
                                         metadata=metadata, min_relevance=min_relevance, dedup=dedup,
                                         as_of=as_of)).results

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




def options(*, k: int = 10, connector: str | None = None, path: str | None = None,
            updated_since: dt.datetime | str | None = None, metadata: Mapping[str, str] | None = None,
            min_relevance: float | None = None, dedup: bool = True,
            as_of: float | str | dt.datetime | None = None) -> search_mod.SearchOptions:
    """SearchOptions from the Python API's keyword arguments (an ISO 8601 string is parsed)."""
    since = search_mod.parse_time(updated_since) if isinstance(updated_since, str) else updated_since
    return search_mod.check_options(search_mod.SearchOptions(
        k=k, connector=connector, path=path, updated_since=since, metadata=dict(metadata or {}),
        min_relevance=min_relevance, dedup=dedup, as_of=_when(as_of) if as_of is not None else None))
def _when(value: float | str | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, str):
        return parse_time(value, key="as_of")
    return float(value)
