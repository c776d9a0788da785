"""Profiles behind the report's hot spots: ``python -m benchmarks.profile {nochange,update,search} [--docs N]``.

* ``nochange``: three no-change sync passes (the stat-only fast path), pyinstrument.
* ``update``: single-document updates through the engine with the real model, pyinstrument.
* ``changeset``: the incremental benchmark's change set (10 edits, 5 deletes, 5 renames, 5 adds) through
  ``syncd sync``'s path, with ``--backend onnx-int8`` (default) or ``torch``, pyinstrument.
* ``search``: hybrid searches through the Python API (what `/search` runs), pyinstrument.
* ``listing``: CPU seconds of the filesystem listing (the no-change pass's cost).
* ``threads``: latency of single-text ``encode`` calls and batch rate with 1 and 2 torch threads.

Text profiles go to ``benchmarks/results/profiles/<name>-<docs>.txt``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from benchmarks.common import HERE, built_index, log, parse_size, workspace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("what", choices=("nochange", "update", "changeset", "search", "listing", "threads"))
    p.add_argument("--backend", default="onnx-int8", choices=("onnx-int8", "torch"), help="for changeset")
    p.add_argument("--docs", default="1k")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n", type=int, default=30, help="updates or searches to profile")
    p.add_argument("--threads", type=int, default=0, help="[embedding] threads (0 = one per CPU)")
    args = p.parse_args(argv)
    from pyinstrument import Profiler

    from benchmarks.corpus import labelled_queries
    from benchmarks.incremental import _runtime, _sync
    from benchmarks.probe import StandInEmbedder
    from syncd.embedding import SentenceTransformerEmbedder

    if args.what == "threads":
        return _threads()
    n_docs = parse_size(args.docs)
    if args.what == "listing":
        return _listing(built_index(args.seed, n_docs))
    folder = built_index(args.seed, n_docs, backend=args.backend if args.what == "changeset" else "torch")
    out_dir = HERE / "results" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = HERE / "results" / "profiles" / "work"
    config = workspace(folder, work)
    profiler = Profiler(interval=0.001)
    if args.what == "nochange":
        rt = _runtime(config, StandInEmbedder())
        _sync(rt)
        profiler.start()
        for _ in range(3):
            _, wall = _sync(rt)
            log(f"no-change pass over {n_docs} documents: {wall:.3f} s")
        profiler.stop()
        rt.close()
    elif args.what == "update":
        emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", threads=args.threads)
        emb.load()
        emb.encode(["warm up"])
        rt = _runtime(config, emb)
        _sync(rt)
        docs = sorted(q.relative_to(work / "docs").as_posix() for q in (work / "docs").rglob("*.md"))
        rng = random.Random(3)
        profiler.start()
        for i in range(args.n):
            d = rng.choice(docs)
            with open(work / "docs" / d, "a") as fh:
                fh.write(f"\nA sentence appended for profiling, number {i}.\n")
            started = time.monotonic()
            rt.engine.process({"docs": {d: time.time()}})
            log(f"update {i}: {(time.monotonic() - started) * 1000:.0f} ms")
        profiler.stop()
        rt.close()
    elif args.what == "changeset":
        from benchmarks.common import CACHE
        from benchmarks.incremental import apply_change_set
        from syncd.embedding import OnnxEmbedder

        emb = (OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=CACHE / "models", quantize=True)
               if args.backend == "onnx-int8" else SentenceTransformerEmbedder("all-MiniLM-L6-v2"))
        emb.load()
        emb.encode(["warm up"])
        rt = _runtime(config, emb)
        _sync(rt)  # the copy changed every inode: this pass re-reads each file once
        _sync(rt)
        apply_change_set(work / "docs", args.seed, n_docs, random.Random(args.seed * 31))
        profiler.start()
        summary, wall = _sync(rt)
        profiler.stop()
        log(f"change set: {wall:.2f} s, {summary['chunks_embedded']} chunks embedded")
        rt.close()
    else:
        from syncd import config as config_mod
        from syncd.api import Index

        idx = Index(config_mod.load(config), embedder=SentenceTransformerEmbedder("all-MiniLM-L6-v2",
                                                                                   threads=args.threads))
        idx.search("warm up")
        profiler.start()
        for q, _ in labelled_queries(args.seed, n_docs, n=args.n):
            idx.search(q)
        profiler.stop()
    text = profiler.output_text(unicode=False, color=False)
    suffix = f"-{args.backend}" if args.what == "changeset" else ""
    path = out_dir / f"{args.what}-{args.docs}-t{args.threads}{suffix}.txt"
    path.write_text(text)
    sys.stdout.write(text)
    log(f"profile written to {path}")
    return 0


def _listing(folder: Path) -> int:
    from syncd import config as config_mod
    from syncd.runtime import build_connector
    from syncd.state import StateDir

    cfg = config_mod.load(folder / "syncd.toml")
    conn = build_connector(cfg, cfg.connectors[0], StateDir(folder / "state"))
    best, refs = 1e9, []
    for _ in range(3):
        started = time.process_time()
        refs = list(conn.list_documents())
        best = min(best, time.process_time() - started)
    sys.stdout.write(f"listing {len(refs)} files: {best:.3f} CPU-s (best of 3)\n")
    return 0


def _threads() -> int:
    import subprocess

    code = (
        "import statistics, sys, time\n"
        "from benchmarks.corpus import page\n"
        "from syncd.embedding import SentenceTransformerEmbedder\n"
        "e = SentenceTransformerEmbedder('all-MiniLM-L6-v2', threads=int(sys.argv[1])); e.load()\n"
        "texts = [page(3, i).text[:900] for i in range(40)]; e.encode(texts[:2])\n"
        "one = []\n"
        "for x in texts[:20]:\n"
        "    s = time.monotonic(); e.encode([x]); one.append(time.monotonic() - s)\n"
        "s = time.monotonic(); e.encode(texts); rate = 40 / (time.monotonic() - s)\n"
        "print(statistics.median(one), max(one), rate)\n"
    )
    for threads in (1, 2, 1, 2):
        out = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=True)
        med, worst, rate = (float(x) for x in out.stdout.split())
        sys.stdout.write(f"threads={threads}: single-text encode p50 {med * 1000:.0f} ms, max {worst * 1000:.0f} ms; "
                         f"batch of 40 ~900-char texts {rate:.1f}/s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
