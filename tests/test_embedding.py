"""How texts are grouped into model calls (syncd/embedding.py ``plan_batches``), with the real model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from syncd.embedding import QueryVectors, SentenceTransformerEmbedder, plan_batches
from tests.corpus import paragraph


def test_calls_hold_texts_of_similar_length_within_both_limits() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(5, 256) for _ in range(300)]
    batches = plan_batches(lengths, max_texts=64, max_tokens=2048)
    assert sorted(i for b in batches for i in b) == list(range(300))  # every text exactly once
    for b in batches:
        assert len(b) <= 64 and len(b) * max(lengths[i] for i in b) <= 2048
    widths = [[lengths[i] for i in b] for b in batches]
    assert all(w == sorted(w) for w in widths) and all(a[-1] <= b[0] for a, b in zip(widths, widths[1:], strict=False))
    # Each call is as large as the limits allow: the next text would break one of them.
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert len(b) == 64 or (len(b) + 1) * lengths[nxt[0]] > 2048
    assert len(batches[0]) > 2048 // max(lengths) >= len(batches[-1])  # short texts share a call with more
    assert len(plan_batches([7] * 300, max_texts=64, max_tokens=2048)[0]) == 64


def test_a_text_longer_than_the_budget_goes_alone_and_nothing_is_dropped() -> None:
    assert plan_batches([3000, 10, 10, 0], max_texts=8, max_tokens=100) == [[3, 1, 2], [0]]
    assert plan_batches([], max_texts=8, max_tokens=100) == []


@pytest.mark.e2e
def test_planned_calls_give_the_vectors_one_plain_call_gives(real_embedder: SentenceTransformerEmbedder) -> None:
    texts = ["hello", "How do I fail over the database?"] + [
        " ".join(paragraph(random.Random(i)) for _ in range(1 + i % 4)) for i in range(20)]
    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", threads=1, max_batch_tokens=512)
    emb._model = real_embedder._model  # the loaded model, other batching
    calls: list[int] = []
    encode = emb._model.encode

    def counted(batch, **kwargs):
        calls.append(len(batch))
        return encode(batch, **kwargs)

    emb._model.encode = counted
    try:
        got = emb.encode(texts)
    finally:
        del emb._model.encode
    want = real_embedder._model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    assert len(calls) > 2 and sum(calls) == len(texts)  # cut by the token budget, not by batch_size
    assert float((got * want).sum(axis=1).min()) > 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


class _Counted:
    """The real model, with the texts of each call recorded."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.mark.e2e
def test_a_repeated_query_costs_no_model_call_and_gets_the_models_vector(
        real_embedder: SentenceTransformerEmbedder) -> None:
    model = _Counted(real_embedder)
    lookups: list[bool] = []
    vectors = QueryVectors(model, 2, on_lookup=lookups.append)
    first = vectors("how do I fail over the database?")
    again = vectors("how do I fail over the database?")
    assert model.calls == [["how do I fail over the database?"]] and lookups == [False, True]
    want = real_embedder.encode(["how do I fail over the database?"])[0]
    assert np.array_equal(first, want) and np.array_equal(again, want)
    with pytest.raises(ValueError):
        again[0] = 1.0  # one array handed to every caller: nobody may change it

    # The two most recently used are kept: "b" pushed out the query "a" was younger than.
    vectors("a")
    vectors("how do I fail over the database?")  # used again: now younger than "a"
    vectors("b")
    assert len(vectors) == 2
    calls = len(model.calls)
    vectors("how do I fail over the database?")
    assert len(model.calls) == calls  # kept
    vectors("a")
    assert model.calls[-1] == ["a"]  # pushed out, embedded again


@pytest.mark.e2e
def test_a_query_cache_of_size_zero_embeds_every_query(real_embedder: SentenceTransformerEmbedder) -> None:
    model = _Counted(real_embedder)
    vectors = QueryVectors(model, 0)
    vectors("runbook")
    vectors("runbook")
    assert model.calls == [["runbook"], ["runbook"]] and len(vectors) == 0
