"""The Python API for RAG applications: a read-only handle on the live index."""

from __future__ import annotations

from typing import Any

from syncd import config as config_mod
from syncd.config import Config
from syncd.coordination import shared_store, store_kwargs
from syncd.store import Store


class Index:
    """Searches the live table; sees every commit the daemon makes (read consistency interval 0 by default)."""

    def __init__(self, config: Config, embedder: Any | None = None) -> None:
        from syncd.embedding import QueryVectors, from_config

        self.config = config
        self.embedder = embedder if embedder is not None else from_config(config)
        self.query_vectors = QueryVectors(self.embedder, config.embedding.query_cache)
        self.store = Store(config.store_uri, config.state_dir, base_table=config.store.table, dim=self.embedder.dim,
                           signature="", read_consistency_interval=config.store.read_consistency_interval,
                           **store_kwargs(config, shared_store(config)))
        self.store.open(create=False)

    @classmethod
    def open(cls, config_path: str | None = None) -> Index:
        return cls(config_mod.load(config_path))

    def search(self, text: str, k: int = 10, connector: str | None = None) -> list[dict[str, Any]]:
        """Hybrid (vector + full-text) search; each result carries its citation (uri, revision, lines)."""
        self.store.refresh()
        return self.store.search(lambda: self.query_vectors(text), text, k=k, connector=connector)

    def query(self, text: str, k: int = 10, connector: str | None = None) -> dict[str, Any]:
        """The `syncd query --json` document."""
        return {"query": text, "results": self.search(text, k=k, connector=connector)}
