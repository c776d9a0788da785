"""The ONNX int8 backend against PyTorch: embedding rate on the very same chunk texts, and retrieval quality.

Run: ``python -m benchmarks.onnx_backend [--docs 150] [--queries 100] [--repeat 2]``. Writes
``results.json`` and ``report.md`` into ``benchmarks/results/onnx-<timestamp>/`` and prints the report.

- Rate: the chunk texts (heading prefix included, as syncd embeds them) of ``--docs`` seeded pages, encoded
  by ``SentenceTransformerEmbedder`` and by ``OnnxEmbedder(quantize=True)`` with the same batch size and
  threads, alternating ``--repeat`` times; the figure is the ratio of the medians.
- Quality: the corpus's labelled queries (each page states one fact; its query's answer is that page),
  pages ranked by their best chunk's cosine, nDCG@10 with one relevant page per query, for both backends.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import labelled_queries, page

ROOT = Path(__file__).resolve().parent


def _chunks(docs: int, seed: int) -> tuple[list[str], list[str]]:
    from syncd.chunking import Chunker, HFTokenCounter, embed_input
    from syncd.embedding import resolve_model_path
    from syncd.extract import extract

    chunker = Chunker(HFTokenCounter(str(resolve_model_path("all-MiniLM-L6-v2") / "tokenizer.json")),
                      max_tokens=256, overlap_tokens=32, model_id="bench")
    texts, owners = [], []
    for i in range(docs):
        p = page(seed, i)
        for c in chunker.chunk(extract(p.text.encode(), "markdown").blocks):
            texts.append(embed_input(c.text, c.heading_path))
            owners.append(p.rel_path)
    return texts, owners


def _ndcg_at_10(queries: list[tuple[str, str]], q_vecs: np.ndarray, vecs: np.ndarray, owners: list[str]) -> float:
    docs = sorted(set(owners))
    index = {d: i for i, d in enumerate(docs)}
    owner_idx = np.array([index[o] for o in owners])
    gains = []
    for (_, answer), q in zip(queries, q_vecs, strict=True):
        sims = vecs @ q
        best = np.full(len(docs), -np.inf)
        np.maximum.at(best, owner_idx, sims)
        rank = int((best > best[index[answer]]).sum()) + 1
        gains.append(1.0 / math.log2(rank + 1) if rank <= 10 else 0.0)
    return float(np.mean(gains))


def run(*, docs: int, queries: int, repeat: int, seed: int, out: Path) -> dict[str, Any]:
    from syncd.embedding import OnnxEmbedder, SentenceTransformerEmbedder

    threads = os.cpu_count() or 1
    texts, owners = _chunks(docs, seed)
    torch_emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", threads=threads)
    torch_emb.load()
    started = time.monotonic()
    onnx_emb = OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=ROOT / ".cache" / "models", quantize=True, threads=threads)
    onnx_emb.load()
    export_s = time.monotonic() - started
    t_times, o_times = [], []
    t_vecs = o_vecs = np.zeros((0, 384), dtype=np.float32)
    for _ in range(repeat):
        t0 = time.monotonic()
        t_vecs = torch_emb.encode(texts)
        t_times.append(time.monotonic() - t0)
        t0 = time.monotonic()
        o_vecs = onnx_emb.encode(texts)
        o_times.append(time.monotonic() - t0)
    labelled = labelled_queries(seed, docs, n=queries)
    q_texts = [q for q, _ in labelled]
    ndcg_t = _ndcg_at_10(labelled, torch_emb.encode(q_texts), t_vecs, owners)
    ndcg_o = _ndcg_at_10(labelled, onnx_emb.encode(q_texts), o_vecs, owners)
    cos = (t_vecs * o_vecs).sum(axis=1)
    result = {
        "docs": docs, "chunks": len(texts), "queries": len(labelled), "threads": threads, "repeat": repeat,
        "torch_chunks_per_s": len(texts) / statistics.median(t_times),
        "onnx_int8_chunks_per_s": len(texts) / statistics.median(o_times),
        "ratio": statistics.median(t_times) / statistics.median(o_times),
        "torch_s": t_times, "onnx_s": o_times, "export_or_load_s": export_s,
        "ndcg10_torch": ndcg_t, "ndcg10_onnx_int8": ndcg_o, "ndcg10_points_lost": 100 * (ndcg_t - ndcg_o),
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
        "load_average": os.getloadavg(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    verdict_rate = "holds" if r["ratio"] >= 1.8 else "misses"
    verdict_q = "holds" if r["ndcg10_points_lost"] <= 1.0 else "misses"
    return "\n".join([
        f"ONNX int8 vs PyTorch on {r['chunks']} chunk texts of {r['docs']} pages, {r['threads']} threads, "
        f"{r['repeat']} alternating runs; load average {', '.join(f'{x:.1f}' for x in r['load_average'])}.",
        "",
        "| figure | target | measured | verdict |",
        "|---|---|---|---|",
        f"| embedding rate, onnx-int8 ÷ torch | ≥ 1.8× | {r['ratio']:.2f}× ({r['onnx_int8_chunks_per_s']:.1f} vs "
        f"{r['torch_chunks_per_s']:.1f} chunks/s) | **{verdict_rate}** |",
        f"| nDCG@10 lost ({r['queries']} labelled queries) | ≤ 1 point | {r['ndcg10_points_lost']:.2f} points "
        f"({r['ndcg10_torch']:.4f} → {r['ndcg10_onnx_int8']:.4f}) | **{verdict_q}** |",
        f"| cosine to fp32 vectors | (for scale) | mean {r['cosine_mean']:.4f}, min {r['cosine_min']:.4f} | — |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_backend", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "results" / f"onnx-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run(docs=args.docs, queries=args.queries, repeat=args.repeat, seed=args.seed, out=out)
    print(report(result))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
