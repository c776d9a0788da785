"""(1) Full reindex throughput against the model's own limit, and (5) peak RSS of `syncd reindex`.

Throughput: in this process, ``engine.rebuild()`` (what `syncd reindex` runs) with the real model loaded
beforehand, then ``SentenceTransformer.encode`` on the very same chunk texts (read back from the table,
with the heading prefix the engine adds) with the same batch size and threads. Runs alternate
(reindex, encode, reindex, encode...) so a machine whose load drifts affects both sides alike.

Memory: `syncd reindex` as a subprocess, RSS of its process tree sampled every 20 ms: with the real model
on the throughput corpus, and with the stand-in embedder on every corpus size, which isolates the
pipeline's own memory (the model adds a constant).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import log, run_syncd, summarize, workspace, write_config
from benchmarks.corpus import write_corpus


def _texts(rt: Any) -> list[str]:
    from syncd.chunking import embed_input

    data = rt.store.scan(["text", "heading_path"])
    return [embed_input(t, h or []) for t, h in zip(data["text"].to_pylist(), data["heading_path"].to_pylist(),
                                                   strict=True)]


def _raw(embedder: Any, texts: list[str]) -> float:
    """``SentenceTransformer.encode`` on ``texts`` in the model calls syncd makes (``plan_batches``: at most
    ``batch_size`` texts and ``max_batch_tokens`` padded tokens a call), so the ratio is the pipeline's cost
    on top of the model, not a difference in batching."""
    from syncd.embedding import plan_batches

    model = embedder._model
    started = time.monotonic()
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    for idx in plan_batches(lengths, max_texts=embedder.batch_size, max_tokens=embedder.max_batch_tokens):
        model.encode([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
    return time.monotonic() - started


def prepare(work: Path, *, seed: int, docs: int, batch_size: int) -> Path:
    """The throughput corpus in a fresh folder; returns its config."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_corpus(work / "docs", seed, docs)
    return write_config(work, embedding={"batch_size": batch_size})


def throughput(work: Path, *, seed: int, docs: int, repeat: int, embedder: Any) -> dict[str, Any]:
    from syncd import config as config_mod
    from syncd.runtime import Runtime

    config = prepare(work, seed=seed, docs=docs, batch_size=embedder.batch_size)
    rt = Runtime(config_mod.load(config), embedder=embedder)
    runs = []
    try:
        rt.open()
        texts: list[str] = []
        for r in range(repeat):
            # ABBA order: odd runs encode first (the texts of the previous run), so whatever the machine or
            # LanceDB's background work does right after a reindex falls on both sides alike.
            raw_first = r % 2 == 1 and bool(texts)
            raw_s = _raw(embedder, texts) if raw_first else 0.0
            started = time.monotonic()
            summary = rt.engine.rebuild()
            reindex_s = time.monotonic() - started
            texts = _texts(rt)
            if not raw_first:
                raw_s = _raw(embedder, texts)
            chunks = summary.chunks_embedded
            run = {"chunks": chunks, "texts": len(texts), "reindex_s": reindex_s, "raw_encode_s": raw_s,
                   "raw_first": raw_first, "reindex_chunks_per_s": chunks / reindex_s,
                   "raw_chunks_per_s": len(texts) / raw_s, "ratio": (chunks / reindex_s) / (len(texts) / raw_s)}
            runs.append(run)
            log(f"throughput run {r}: reindex {run['reindex_chunks_per_s']:.1f} chunks/s, raw encode "
                f"{run['raw_chunks_per_s']:.1f} chunks/s, ratio {run['ratio']:.3f}")
    finally:
        rt.close()
    return {"docs": docs, "chunks": runs[0]["chunks"], "batch_size": embedder.batch_size, "runs": runs,
            "ratio": summarize([r["ratio"] for r in runs]),
            "reindex_chunks_per_s": summarize([r["reindex_chunks_per_s"] for r in runs]),
            "raw_chunks_per_s": summarize([r["raw_chunks_per_s"] for r in runs]),
            "config": str(config)}


def memory(throughput_config: Path | None, stand_in_folders: dict[int, Path], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"stand_in": {}}
    if throughput_config is not None:
        run = run_syncd(throughput_config, "reindex")
        out["real_model"] = {"docs": None, "peak_rss": run.peak_rss, "wall_s": run.wall_s,
                             "chunks": (run.output or {}).get("chunks_embedded")}
        log(f"memory: reindex with the real model, peak RSS {run.peak_rss / 2**20:.0f} MiB")
    for n, folder in sorted(stand_in_folders.items()):
        # On a copy: a reindex leaves a fresh table without the maintained indexes the cache holds.
        config = workspace(folder, work / f"memory-{n}")
        run = run_syncd(config, "reindex", stand_in=True)
        shutil.rmtree(work / f"memory-{n}", ignore_errors=True)
        out["stand_in"][str(n)] = {"docs": n, "peak_rss": run.peak_rss, "wall_s": run.wall_s,
                                   "chunks": (run.output or {}).get("chunks_embedded"),
                                   "seconds": (run.output or {}).get("seconds")}
        log(f"memory: reindex of {n} documents (stand-in embedder), peak RSS {run.peak_rss / 2**20:.0f} MiB")
    return out
