"""Retrieval quality of `/search` on labelled questions: nDCG@10 before and after each change (the candidate
pool, title and heading context, collapsing identical texts), and where on- and off-topic questions fall on
the relevance scale (for the default `[search] min_relevance`).

    python -m benchmarks.search_quality [--backend onnx-int8] [--k 10]

The corpus is the sample handbook (`examples/docs`, 16 documents, two of them archived copies) with its
labelled questions (`examples/queries.jsonl`), indexed with the real packaged model. Variants of the
embedded text and of the full-text columns are built as copies of the synced table with the vectors
recomputed from the same rows. Prints one JSON document and a Markdown table (the README's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, REPO, log

OFF_TOPIC = [
    "what is the capital of France", "how do I bake sourdough bread", "who won the football world cup in 2014",
    "best hiking trails in Norway", "how to train a puppy", "explain quantum entanglement",
    "what is the stock price of Apple", "translate good morning into Japanese", "recipe for lasagne",
    "how far is the moon from the earth", "symptoms of the flu in children", "rules of cricket",
]


def _embed_text(row: dict[str, Any], context: str) -> str:
    from syncd.chunking import embed_input

    headings = list(row["heading_path"] or [])
    if context == "none":
        return row["text"]
    if context == "headings":
        return embed_input(row["text"], headings)
    # title + headings: the title leads unless the first heading already says it
    path = headings if headings and headings[0].strip().lower() == (row["title"] or "").strip().lower() else (
        [row["title"], *headings] if row["title"] else headings)
    return embed_input(row["text"], path)


def _variant(base: Path, work: Path, name: str, context: str, embedder: Any) -> Path:
    """A copy of the synced workspace whose vectors embed ``context`` with the text."""
    import numpy as np

    from syncd import config as config_mod
    from syncd.store import Store

    dest = work / name
    shutil.copytree(base, dest)
    cfg = config_mod.load(dest / "syncd.toml")
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=embedder.dim, signature="")
    store.open(create=False)
    if context != "headings":  # the synced table already embeds the heading path
        rows = store.table.search().limit(None).to_arrow().to_pylist()
        vectors = embedder.encode([_embed_text(r, context) for r in rows])
        for r, v in zip(rows, vectors, strict=True):
            r["vector"] = np.asarray(v, dtype=np.float32)
        table = store.make_rows(rows)
        store.table.merge_insert("chunk_id").when_matched_update_all().execute(table)
    return dest


def _index(config: Path, embedder: Any, *, fts_columns: list[str] | None) -> Any:
    from lancedb.index import FTS

    from syncd import config as config_mod
    from syncd.api import Index

    index = Index(config_mod.load(config), embedder=embedder)
    if fts_columns:
        existing = {idx.columns[0] for idx in index.store.table.list_indices()}
        for column in fts_columns:
            if column not in existing:
                index.store.table.create_index(column, config=FTS())
        index.store.fts_columns = fts_columns
    return index


def _ndcg(index: Any, labelled: list[Any], k: int, *, candidates: int, dedup: bool, floor: float) -> dict[str, Any]:
    from syncd import search as search_mod
    from syncd.evaluate import evaluate

    def run(q: str) -> list[dict[str, Any]]:
        opts = search_mod.SearchOptions(k=k, min_relevance=floor, dedup=dedup)
        return search_mod.search(index.store, lambda: index.query_vectors(q), q, opts, candidates=candidates).results

    report = evaluate(labelled, run, k=k)
    return {"ndcg": report["ndcg"], "recall": report["recall"], "mrr": report["mrr"],
            "duplicate_slots": sum(
                len(rs) - len({r["content_hash"] for r in rs}) for rs in (run(item.query) for item in labelled))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_quality")
    p.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--queries", default=str(REPO / "examples" / "queries.jsonl"))
    p.add_argument("--docs", default=str(REPO / "examples" / "docs"))
    args = p.parse_args(argv)
    os.environ.setdefault("SYNCD_MODEL_CACHE", str(CACHE / "models"))

    from syncd import config as config_mod
    from syncd import search as search_mod
    from syncd.embedding import from_config
    from syncd.evaluate import read_queries
    from syncd.runtime import Runtime

    labelled = read_queries(args.queries)
    work = Path(tempfile.mkdtemp(prefix="syncd-search-quality-"))
    out: dict[str, Any] = {"backend": args.backend, "k": args.k, "queries": len(labelled),
                           "off_topic_queries": len(OFF_TOPIC), "corpus": args.docs}
    try:
        base = work / "base"
        base.mkdir()
        shutil.copytree(args.docs, base / "docs")
        config = base / "syncd.toml"
        config.write_text(f'[store]\nuri = "./index"\n[state]\ndir = "./state"\n[logging]\nlevel = "warning"\n'
                          f'[embedding]\nbackend = "{args.backend}"\n[[connectors]]\nname = "handbook"\n'
                          f'type = "filesystem"\npath = "./docs"\n')
        cfg = config_mod.load(config)
        embedder = from_config(cfg)
        rt = Runtime(cfg, embedder=embedder)
        try:
            rt.open()
            for name in rt.connectors:
                rt.engine.reconcile(name)
            rt.store.maintain(retention_s=600)
            out["chunks"] = rt.store.count_rows()
        finally:
            rt.close()
        log(f"indexed {out['chunks']} chunks with {args.backend}")

        # (1) The changes to fusion and de-duplication, on the synced index as it is.
        index = _index(config, embedder, fts_columns=None)
        steps = [("legs cut at k (before)", args.k, False, 0.0),
                 ("candidate pool of 50", search_mod.CANDIDATES, False, 0.0),
                 ("+ identical texts collapsed", search_mod.CANDIDATES, True, 0.0),
                 (f"+ min_relevance {search_mod.DEFAULT_MIN_RELEVANCE}", search_mod.CANDIDATES, True,
                  search_mod.DEFAULT_MIN_RELEVANCE)]
        out["fusion"] = []
        for label, pool, dedup, floor in steps:
            figures = _ndcg(index, labelled, args.k, candidates=pool, dedup=dedup, floor=floor)
            out["fusion"].append({"variant": label, **figures})
            log(f"{label}: nDCG@{args.k} {figures['ndcg']:.4f}")

        # (2) Where questions fall on the relevance scale.
        def top_relevance(q: str) -> float:
            found = index.search(q, k=1, min_relevance=0.0)
            return found[0]["relevance"] if found else 0.0

        on = [top_relevance(item.query) for item in labelled]
        off = [top_relevance(q) for q in OFF_TOPIC]
        out["relevance"] = {"on_topic_top1": {"min": min(on), "median": statistics.median(on), "max": max(on)},
                            "off_topic_top1": {"min": min(off), "median": statistics.median(off), "max": max(off)},
                            "on_topic_below_default": sum(v < search_mod.DEFAULT_MIN_RELEVANCE for v in on),
                            "off_topic_at_or_above_default": sum(v >= search_mod.DEFAULT_MIN_RELEVANCE for v in off)}
        log(f"relevance of the first hit: on-topic {min(on):.3f}..{max(on):.3f}, off-topic {min(off):.3f}..{max(off):.3f}")

        # (3) Title and heading context in the embedding and in the full-text leg.
        out["context"] = []
        for context in ("none", "headings", "title+headings"):
            folder = _variant(base, work, f"ctx-{context}", context, embedder)
            for fts in (None, ["text", "title", "heading_path"]):
                idx = _index(folder / "syncd.toml", embedder, fts_columns=fts)
                started = time.perf_counter()
                figures = _ndcg(idx, labelled, args.k, candidates=search_mod.CANDIDATES, dedup=True, floor=0.0)
                figures["seconds"] = time.perf_counter() - started
                label = f"embed {context}; full text over {'text, title, headings' if fts else 'text'}"
                out["context"].append({"variant": label, "embed": context, "fts_columns": fts or ["text"], **figures})
                log(f"{label}: nDCG@{args.k} {figures['ndcg']:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n\n" + markdown(out) + "\n")
    return 0


def markdown(out: dict[str, Any]) -> str:
    k = out["k"]
    lines = [f"Sample handbook, {out['chunks']} chunks, {out['queries']} labelled questions, backend "
             f"{out['backend']}:", "", f"| variant | nDCG@{k} | recall@{k} | MRR | duplicate results |",
             "|---|---|---|---|---|"]
    for row in out["fusion"] + out["context"]:
        lines.append(f"| {row['variant']} | {row['ndcg']:.4f} | {row['recall']:.4f} | {row['mrr']:.4f} | "
                     f"{row['duplicate_slots']} |")
    rel = out["relevance"]
    lines += ["", f"Relevance of the first hit: on-topic {rel['on_topic_top1']['min']:.3f}–"
              f"{rel['on_topic_top1']['max']:.3f} (median {rel['on_topic_top1']['median']:.3f}), off-topic "
              f"({out['off_topic_queries']} questions) {rel['off_topic_top1']['min']:.3f}–"
              f"{rel['off_topic_top1']['max']:.3f} "
              f"(median {rel['off_topic_top1']['median']:.3f}); on-topic below the default floor: "
              f"{rel['on_topic_below_default']}, off-topic at or above it: {rel['off_topic_at_or_above_default']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
