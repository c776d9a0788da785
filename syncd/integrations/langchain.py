"""LangChain: a retriever backed by syncd's hybrid search, and syncd's embedding model as LangChain
``Embeddings`` (for ``langchain_community.vectorstores.LanceDB`` opened on the live table).

``pip install 'syncd[langchain]'``::

    from syncd.integrations.langchain import SyncdRetriever
    retriever = SyncdRetriever.from_config("syncd.toml", k=5)
    for doc in retriever.invoke("how do we fail over the database"):
        print(doc.metadata["uri"], doc.metadata["start_line"], doc.page_content)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from syncd.integrations import hit_metadata, open_search_index


class SyncdRetriever(BaseRetriever):
    """Documents from syncd's hybrid search (vector + full-text, fused by rank), each with its citation
    (``uri``, ``title``, ``revision``, ``heading_path``, ``start_line``/``end_line``, ``connector``,
    ``doc_id``, ``chunk_id``) and ``score`` in ``metadata``. ``search_options`` are passed to
    ``Index.search`` as they are (``connector``, and the other options syncd's search has)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    """A ``syncd.open_index(...)`` handle (or anything with its ``search``)."""
    k: int = 10
    search_options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_config(cls, config_path: str | None = None, *, k: int = 10, **search_options: Any) -> SyncdRetriever:
        """A retriever on the index of ``config_path`` (default: ``$SYNCD_CONFIG``, else ``./syncd.toml``)."""
        return cls(index=open_search_index(config_path=config_path), k=k, search_options=search_options)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        options = {**self.search_options, **kwargs}
        k = int(options.pop("k", self.k))
        hits = self.index.search(query, k=k, **options)
        return [Document(page_content=hit["text"], metadata=hit_metadata(hit), id=hit_metadata(hit).get("chunk_id"))
                for hit in hits]


class SyncdEmbeddings(Embeddings):
    """The embedding model a syncd index was built with, as LangChain ``Embeddings``: the same model and
    backend as the index (``[embedding]`` of the config), so query vectors match the stored ones."""

    def __init__(self, config_path: str | None = None, *, embedder: Any = None) -> None:
        if embedder is None:
            from syncd import config as config_mod
            from syncd.runtime import build_embedder

            embedder = build_embedder(config_mod.load(config_path))
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, row)) for row in np.asarray(self.embedder.encode(list(texts)), dtype=np.float32)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
