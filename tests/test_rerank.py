"""The reranking stage with a real sentence-transformers CrossEncoder: a tiny one built here (random weights,
saved with the library's own ``save``), since no trained cross-encoder's weights can be installed. It proves
the loading, the batching, the ordering and the failures (at start-up, never a silently unranked answer)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncd import config as config_mod
from syncd import search as search_mod
from syncd.api import Index
from syncd.errors import ConfigError
from syncd.testing import HashEmbedder
from tests.conftest import write_config
from tests.test_search import synced_index


def build_cross_encoder(folder: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """A one-layer BERT cross-encoder with random weights and the packaged model's tokenizer, saved by
    ``CrossEncoder.save``. Its classifier weights are scaled up so different passages get clearly different
    scores."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from syncd.embedding import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels, max_position_embeddings=512))
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)
    raw = folder / "raw"
    model.save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    saved = folder / "cross-encoder"
    CrossEncoder(str(raw), device="cpu").save(str(saved))
    return saved


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("ce"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("rerank")
    docs = tmp / "docs"
    docs.mkdir()
    for i, text in enumerate([
        "The replica is promoted when the primary database fails.",
        "Promote the replica with pg_ctl and reload the pooler.",
        "Replica lag must stay below ten seconds before a failover.",
        "Backups of the primary run every night; the replica is not backed up.",
        "The database replica serves read traffic during business hours.",
        "A replica that falls behind is rebuilt from a fresh base backup.",
        "Expenses for meals are reimbursed up to 60 euros per day.",
    ]):
        (docs / f"doc{i}.md").write_text(f"# Doc {i}\n\n{text}\n")
    synced_index(tmp, docs)
    return tmp, docs


def _index(tmp: Path, docs: Path, **search: Any) -> Index:
    cfg = config_mod.load(write_config(tmp, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                                       search=search))
    return Index(cfg, embedder=HashEmbedder())


def test_the_reranker_orders_the_fused_pool_by_its_scores_in_batches(tiny_model: Path, corpus: tuple[Path, Path]) -> None:
    from sentence_transformers import CrossEncoder

    tmp, docs = corpus
    query = "replica primary database"
    plain = _index(tmp, docs)
    pool = plain.search(query, k=50, min_relevance=0.0, dedup=False)
    assert len(pool) >= 6, "every replica page is a candidate"

    index = _index(tmp, docs, reranker=str(tiny_model), rerank_batch_size=3)
    assert index.reranker is not None and index.reranker.path == tiny_model
    ranked = index.search(query, k=4, min_relevance=0.0, dedup=False)

    # The expected order, computed here with the library directly, one pair per call.
    model = CrossEncoder(str(tiny_model), device="cpu", local_files_only=True)
    expected = {r["chunk_id"]: float(model.predict([(query, r["text"])])[0]) for r in pool}
    assert len(set(expected.values())) == len(expected), "the tiny model tells the passages apart"
    best = sorted(expected, key=lambda cid: -expected[cid])[:4]
    assert [r["chunk_id"] for r in ranked] == best
    for r in ranked:
        assert r["score"] == pytest.approx(expected[r["chunk_id"]], abs=1e-5)
        assert r["fusion_score"] > 0 and 0.0 <= r["relevance"] <= 1.0
    # The pool went to the model three pairs a call.
    assert index.reranker.calls == math.ceil(len(pool) / 3)
    # The order differs from the fusion's here, so the ordering is the reranker's doing.
    assert [r["chunk_id"] for r in ranked] != [r["chunk_id"] for r in pool[:4]]


def test_a_missing_or_unloadable_reranker_fails_at_start_naming_the_key(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    tmp, docs = corpus
    with pytest.raises(ConfigError, match=r"search\.reranker: no model folder at .*nowhere"):
        _index(tmp, docs, reranker=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"search\.reranker: cannot load a cross-encoder from .*broken"):
        _index(tmp, docs, reranker=str(broken))
    two_labels = build_cross_encoder(tmp_path / "two", num_labels=2)
    with pytest.raises(ConfigError, match=r"search\.reranker: .*2 labels"):
        _index(tmp, docs, reranker=str(two_labels))

    # The CLI and the service refuse to start the same way (exit 2 / ConfigError), before any search.
    cfg_path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                            store={"uri": str(tmp / "index")}, state={"dir": str(tmp / "state")},
                            search={"reranker": str(tmp_path / "nowhere")})
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg_path), "query", "replica", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "search.reranker" in out.stderr and out.stdout == ""
    from syncd.service import Service

    service = Service(config_mod.load(cfg_path), embedder=HashEmbedder())
    with pytest.raises(ConfigError, match=r"search\.reranker"):
        service.start()
    assert service.http is None


def test_a_reranker_that_fails_on_a_query_fails_the_query(corpus: tuple[Path, Path]) -> None:
    """No silent degradation: the search raises instead of answering in the fusion's order."""
    tmp, docs = corpus

    class Exploding:
        def score(self, query: str, passages: Any) -> list[float]:
            raise RuntimeError("out of memory")

    class Short:
        def score(self, query: str, passages: Any) -> list[float]:
            return [1.0]

    index = _index(tmp, docs)
    for reranker, message in ((Exploding(), "the reranker failed: out of memory"), (Short(), "returned 1 scores")):
        index.reranker = reranker
        with pytest.raises(search_mod.SearchError, match=message):
            index.search("replica primary", min_relevance=0.0)


def test_the_cli_reranks_with_the_configured_model(tmp_path: Path, tiny_model: Path, corpus: tuple[Path, Path]) -> None:
    tmp, docs = corpus
    cfg_path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                            store={"uri": str(tmp / "index")}, state={"dir": str(tmp / "state")},
                            embedding={"backend": "torch"}, search={"reranker": str(tiny_model)})
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg_path), "query", "replica primary",
                          "--json", "--min-relevance", "0", "-k", "3"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert results and all("fusion_score" in r for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_a_reload_loads_the_reranker_the_config_names_and_refuses_one_that_does_not_load(
        tmp_path: Path, tiny_model: Path, corpus: tuple[Path, Path]) -> None:
    """SIGHUP: a reranker added, changed or removed in ``[search]`` takes effect for the next query; one that
    does not load rejects the reload, and the running reranker keeps answering (never a silent switch)."""
    from syncd.search import SearchOptions
    from tests.conftest import InProcessDaemon, wait_for

    _, docs = corpus
    connectors = [{"name": "docs", "type": "filesystem", "path": str(docs)}]
    cfg = write_config(tmp_path, connectors)
    query = "replica primary database"
    options = SearchOptions(k=3, min_relevance=0.0, dedup=False)
    with InProcessDaemon(cfg) as d:
        service = d.service
        assert service.reranker is None
        assert all("fusion_score" not in r for r in service.search(query, options)["results"])

        write_config(tmp_path, connectors, search={"reranker": str(tiny_model), "rerank_batch_size": 2})
        service.reload()
        wait_for(lambda: service.reranker is not None, what="the reranker loaded by the reload")
        assert service.reranker.path == tiny_model and service.reranker.batch_size == 2
        ranked = service.search(query, options)["results"]
        assert ranked and all("fusion_score" in r for r in ranked)
        assert service.reranker.calls > 0

        loaded = service.reranker
        write_config(tmp_path, connectors, search={"reranker": str(tmp_path / "nowhere"), "min_relevance": 0.9})
        service.reload()  # rejected before anything changes: the whole reload, as a start would fail
        assert service.reranker is loaded and service.config.search.min_relevance != 0.9
        assert all("fusion_score" in r for r in service.search(query, options)["results"])

        write_config(tmp_path, connectors)
        service.reload()
        wait_for(lambda: service.reranker is None, what="the reranker dropped by the reload")
        assert all("fusion_score" not in r for r in service.search(query, options)["results"])
