"""LlamaIndex: a retriever backed by syncd's hybrid search, and syncd's embedding model as a LlamaIndex
embedding (for ``LanceDBVectorStore`` opened on the live table).

``pip install 'syncd[llamaindex]'``::

    from syncd.integrations.llamaindex import SyncdRetriever
    retriever = SyncdRetriever.from_config("syncd.toml", k=5)
    for hit in retriever.retrieve("how do we fail over the database"):
        print(hit.score, hit.node.metadata["uri"], hit.node.metadata["start_line"], hit.node.get_content())
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
from pydantic import PrivateAttr

from syncd.integrations import hit_metadata, open_search_index


class SyncdRetriever(BaseRetriever):
    """Nodes from syncd's hybrid search (vector + full-text, fused by rank), scored by syncd, each with its
    citation (``uri``, ``title``, ``revision``, ``heading_path``, ``start_line``/``end_line``,
    ``connector``, ``doc_id``) in ``metadata``; the node id is the chunk id and its source the document id.
    ``search_options`` are passed to ``Index.search`` as they are."""

    def __init__(self, index: Any, *, k: int = 10, **search_options: Any) -> None:
        super().__init__()
        self.index = index
        self.k = k
        self.search_options = search_options

    @classmethod
    def from_config(cls, config_path: str | None = None, *, k: int = 10, **search_options: Any) -> SyncdRetriever:
        """A retriever on the index of ``config_path`` (default: ``$SYNCD_CONFIG``, else ``./syncd.toml``)."""
        return cls(open_search_index(config_path=config_path), k=k, **search_options)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(query_bundle.query_str, k=self.k, **self.search_options)
        out = []
        for hit in hits:
            meta = hit_metadata(hit)
            node = TextNode(text=hit["text"], id_=meta.get("chunk_id"), metadata=meta,
                            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=str(hit["doc_id"]))})
            out.append(NodeWithScore(node=node, score=float(hit["score"])))
        return out


class SyncdEmbedding(BaseEmbedding):
    """The embedding model a syncd index was built with, as a LlamaIndex embedding: the same model and backend
    as the index (``[embedding]`` of the config), so query vectors match the stored ones."""

    _embedder: Any = PrivateAttr()

    def __init__(self, config_path: str | None = None, *, embedder: Any = None, **kwargs: Any) -> None:
        super().__init__(model_name="syncd", **kwargs)
        if embedder is None:
            from syncd import config as config_mod
            from syncd.runtime import build_embedder

            embedder = build_embedder(config_mod.load(config_path))
        self._embedder = embedder

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, row)) for row in np.asarray(self._embedder.encode(list(texts)), dtype=np.float32)]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vectors([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vectors([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._vectors(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
