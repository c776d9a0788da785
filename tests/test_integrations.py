"""RAG frameworks on syncd's index, with the real packages and the real packaged model: LangChain's `LanceDB` and
LlamaIndex's `LanceDBVectorStore` read the live table as it is and return citations; a reader that opened the
table before a reindex sees the new index after it; syncd's own retrievers return its hybrid results."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import lancedb
import pytest

from syncd.api import Index
from syncd.store import chunk_id
from tests.conftest import write_config

pytestmark = pytest.mark.e2e

FAILOVER = ("# Failover\n\n## Steps\n\nPromote the replica with pg_ctl promote, then repoint the pooler.\n\n"
            "## Afterwards\n\nWrite the post-incident review within two days.\n")
QUESTION = "how do I promote the database replica"


@pytest.fixture
def kb(tmp_path: Path, docs: Path, make_runtime, real_embedder):
    (docs / "runbooks").mkdir()
    (docs / "runbooks" / "failover.md").write_text(FAILOVER)
    (docs / "expenses.txt").write_text("Meals are reimbursed up to sixty euros per day while travelling.\n")
    (docs / "security.html").write_text("<h1>Laptops</h1><p>Full-disk encryption is mandatory on laptops.</p>")
    cfg = write_config(tmp_path, [{"name": "kb", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(cfg, embedder=real_embedder)
    assert rt.engine.reconcile("kb").docs_added == 3
    return rt


def reader_connection(rt) -> lancedb.DBConnection:
    """How an application connects: the store's URI, a read consistency interval so it sees new commits."""
    return lancedb.connect(rt.config.store_uri, read_consistency_interval=dt.timedelta(0))


def expected_citation(docs: Path) -> dict:
    path = docs / "runbooks" / "failover.md"
    return {"connector": "kb", "doc_id": "runbooks/failover.md", "uri": str(path), "title": "Failover",
            "revision": hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()}


def assert_cites_the_failover_steps(meta: dict, text: str, docs: Path) -> None:
    assert {k: meta[k] for k in ("connector", "doc_id", "uri", "title", "revision")} == expected_citation(docs)
    assert list(meta["heading_path"]) == ["Failover", "Steps"]
    lines = FAILOVER.splitlines()[meta["start_line"] - 1:meta["end_line"]]
    assert text in "\n".join(lines) and "pg_ctl promote" in text
    assert meta["chunk_id"] == chunk_id("kb", "runbooks/failover.md", meta["chunk_index"])


def test_langchain_lancedb_store_reads_the_live_table_and_returns_citations(kb, docs, real_embedder):
    from langchain_community.vectorstores import LanceDB

    from syncd.integrations.langchain import SyncdEmbeddings

    db = reader_connection(kb)
    version = int(db.open_table("chunks").version)
    store = LanceDB(connection=db, embedding=SyncdEmbeddings(embedder=real_embedder), table_name="chunks")
    found = store.similarity_search(QUESTION, k=2)
    assert_cites_the_failover_steps(found[0].metadata, found[0].page_content, docs)
    with_scores = store.similarity_search_with_score(QUESTION, k=3, filter={"connector": "kb"})
    assert with_scores[0][0].metadata["doc_id"] == "runbooks/failover.md" and len(with_scores) == 3
    assert int(db.open_table("chunks").version) == version  # reading wrote nothing


def test_llamaindex_lancedb_store_reads_the_live_table_and_returns_citations(kb, docs, real_embedder):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from syncd.integrations.llamaindex import SyncdEmbedding

    db = reader_connection(kb)
    version = int(db.open_table("chunks").version)
    vector_store = LanceDBVectorStore(connection=db, table_name="chunks")
    index = VectorStoreIndex.from_vector_store(vector_store, embed_model=SyncdEmbedding(embedder=real_embedder))
    nodes = index.as_retriever(similarity_top_k=2).retrieve(QUESTION)
    top = nodes[0].node
    assert_cites_the_failover_steps(top.metadata, top.get_content(), docs)
    assert top.node_id == top.metadata["chunk_id"] and top.ref_doc_id == "runbooks/failover.md"
    only_kb = MetadataFilters(filters=[ExactMatchFilter(key="doc_id", value="expenses.txt")])
    filtered = index.as_retriever(similarity_top_k=3, filters=only_kb).retrieve(QUESTION)
    assert [n.node.metadata["doc_id"] for n in filtered] == ["expenses.txt"]
    assert int(db.open_table("chunks").version) == version


def test_framework_readers_opened_before_a_reindex_see_the_new_index_without_reopening(kb, docs, real_embedder):
    from langchain_community.vectorstores import LanceDB
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from syncd.integrations.langchain import SyncdEmbeddings
    from syncd.integrations.llamaindex import SyncdEmbedding

    db = reader_connection(kb)
    lc = LanceDB(connection=db, embedding=SyncdEmbeddings(embedder=real_embedder), table_name="chunks")
    li = VectorStoreIndex.from_vector_store(LanceDBVectorStore(connection=db, table_name="chunks"),
                                            embed_model=SyncdEmbedding(embedder=real_embedder)).as_retriever(
                                                similarity_top_k=1)
    query = "which animals have black and white stripes"
    assert "zebra" not in lc.similarity_search(query, k=1)[0].page_content.lower()
    # An edit the reindex picks up (no sync in between): only the rebuilt index holds it.
    (docs / "expenses.txt").write_text("Zebras have black and white stripes; each zebra's pattern is unique.\n")
    kb.engine.rebuild()
    hit = lc.similarity_search(query, k=1)[0]
    assert "Zebras have black and white stripes" in hit.page_content and hit.metadata["doc_id"] == "expenses.txt"
    node = li.retrieve(query)[0].node
    assert "Zebras have black and white stripes" in node.get_content() and node.metadata["doc_id"] == "expenses.txt"
    assert kb.store._table_names() == ["chunks", "chunks_changes"]


def test_the_langchain_retriever_returns_syncds_hybrid_results_with_citations(kb, docs, real_embedder):
    from langchain_core.retrievers import BaseRetriever

    from syncd.integrations.langchain import SyncdRetriever

    index = Index(kb.config, embedder=real_embedder)
    retriever = SyncdRetriever(index=index, k=3)
    assert isinstance(retriever, BaseRetriever)
    documents = retriever.invoke(QUESTION)
    hits = index.search(QUESTION, k=3)
    assert [(d.page_content, d.metadata["score"], d.metadata["uri"]) for d in documents] == [
        (h["text"], h["score"], h["uri"]) for h in hits]
    assert_cites_the_failover_steps(documents[0].metadata, documents[0].page_content, docs)
    assert documents[0].id == documents[0].metadata["chunk_id"]
    # A word only the full-text leg can match exactly (a command name) still ranks its chunk first.
    assert retriever.invoke("pg_ctl")[0].metadata["doc_id"] == "runbooks/failover.md"
    # Search options pass through to syncd's search.
    assert SyncdRetriever(index=index, k=3, search_options={"connector": "elsewhere"}).invoke(QUESTION) == []
    only = SyncdRetriever(index=index, k=3, search_options={"path": "*.txt"}).invoke("meal allowance per day")
    assert [d.metadata["doc_id"] for d in only] == ["expenses.txt"]


def test_the_llamaindex_retriever_returns_syncds_hybrid_results_with_citations(kb, docs, real_embedder):
    from llama_index.core.retrievers import BaseRetriever

    from syncd.integrations.llamaindex import SyncdRetriever

    index = Index(kb.config, embedder=real_embedder)
    retriever = SyncdRetriever(index, k=3)
    assert isinstance(retriever, BaseRetriever)
    nodes = retriever.retrieve(QUESTION)
    hits = index.search(QUESTION, k=3)
    assert [(n.node.get_content(), n.score, n.node.metadata["uri"]) for n in nodes] == [
        (h["text"], h["score"], h["uri"]) for h in hits]
    top = nodes[0].node
    assert_cites_the_failover_steps(top.metadata, top.get_content(), docs)
    assert top.ref_doc_id == "runbooks/failover.md"
    assert SyncdRetriever(index, k=3, connector="elsewhere").retrieve(QUESTION) == []
    only = SyncdRetriever(index, k=3, path="runbooks/*").retrieve(QUESTION)
    assert {n.node.metadata["doc_id"] for n in only} == {"runbooks/failover.md"}


def test_the_retrievers_open_the_index_from_a_config_file(kb, docs):
    """`from_config` is the README's example: the index's own model and backend, opened from the config."""
    from syncd.integrations.langchain import SyncdRetriever as LangChainRetriever
    from syncd.integrations.llamaindex import SyncdRetriever as LlamaIndexRetriever

    cfg = str(kb.config.path) if getattr(kb.config, "path", None) else str(Path(kb.config.base_dir) / "syncd.toml")
    lc = LangChainRetriever.from_config(cfg, k=2)
    assert lc.invoke(QUESTION)[0].metadata["doc_id"] == "runbooks/failover.md"
    li = LlamaIndexRetriever.from_config(cfg, k=2)
    assert li.retrieve(QUESTION)[0].node.metadata["doc_id"] == "runbooks/failover.md"


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    """The README's LangChain, LlamaIndex and retriever examples, run as they are in a folder holding a
    `syncd.toml` like config.example.toml's (index in `.syncd/index`, a connector named `handbook`)."""
    import os
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("## Using the index from LangChain and LlamaIndex")
    section = readme[start:readme.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    handbook = tmp_path / "handbook"
    (handbook / "runbooks").mkdir(parents=True)
    (handbook / "runbooks" / "failover.md").write_text(
        "# Database failover\n\n## Steps\n\nPromote the replica, then repoint the pooler at it.\n")
    (handbook / "expenses.txt").write_text("Meals are reimbursed up to sixty euros per day.\n")
    (tmp_path / "syncd.toml").write_text(
        '[store]\nuri = "./.syncd/index"\n\n[state]\ndir = "./.syncd/state"\n\n[http]\nbind = "127.0.0.1:0"\n\n'
        '[[connectors]]\nname = "handbook"\ntype = "filesystem"\npath = "./handbook"\n')
    env = {**os.environ, "SYNCD_CONFIG": str(tmp_path / "syncd.toml")}
    out = subprocess.run([sys.executable, "-m", "syncd", "sync", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for block in blocks:
        run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr
        if "print(" in block:
            assert "runbooks/failover.md" in run.stdout or str(handbook / "runbooks" / "failover.md") in run.stdout


def test_the_retrievers_answer_for_the_principals_they_are_given(tmp_path: Path, make_runtime, real_embedder):
    """A restricted page reaches a framework only through a retriever made for a principal who may read it:
    without principals the retrievers return `everyone`'s documents only, as `/search` does."""
    from syncd.integrations.langchain import SyncdRetriever as LangChainRetriever
    from syncd.integrations.llamaindex import SyncdRetriever as LlamaIndexRetriever

    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "salaries.md").write_text("# Salary bands\n\nThe salary bands are reviewed every April.\n")
    (tmp_path / "handbook").mkdir()
    (tmp_path / "handbook" / "holidays.md").write_text("# Holidays\n\nThe office closes between the holidays.\n")
    cfg = write_config(tmp_path, [
        {"name": "hr", "type": "filesystem", "path": str(tmp_path / "hr"), "acl": ["group:hr"]},
        {"name": "handbook", "type": "filesystem", "path": str(tmp_path / "handbook"), "acl": ["everyone"]}])
    rt = make_runtime(cfg, embedder=real_embedder)
    assert rt.engine.reconcile("hr").docs_added == 1 and rt.engine.reconcile("handbook").docs_added == 1
    index = Index(rt.config, embedder=real_embedder)
    question = "when are the salary bands reviewed"

    def lc(**options: object) -> set[str]:
        return {d.metadata["doc_id"] for d in
                LangChainRetriever(index=index, k=5, search_options={"min_relevance": 0, **options}).invoke(question)}

    def li(**options: object) -> set[str]:
        return {n.node.metadata["doc_id"] for n in
                LlamaIndexRetriever(index, k=5, min_relevance=0, **options).retrieve(question)}

    for retrieve in (lc, li):
        assert retrieve() == {"holidays.md"}
        assert retrieve(principals=["group:sales"]) == {"holidays.md"}
        assert retrieve(principals=["group:hr"]) == {"salaries.md", "holidays.md"}
        assert retrieve(principals=["user:alice", "group:hr"]) == {"salaries.md", "holidays.md"}
