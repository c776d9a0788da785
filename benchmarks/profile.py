"""Profiles behind the report's hot spots: ``python -m benchmarks.profile {nochange,update,search} [--docs N]``.

* ``nochange``: three no-change sync passes (the stat-only fast path), pyinstrument.
* ``update``: single-document updates through the engine with the real model, pyinstrument.
* ``search``: hybrid searches through the Python API (what `/search` runs), pyinstrument.

Text profiles go to ``benchmarks/results/profiles/<name>-<docs>.txt``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from benchmarks.common import HERE, built_index, log, parse_size, workspace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("what", choices=("nochange", "update", "search"))
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

    n_docs = parse_size(args.docs)
    folder = built_index(args.seed, n_docs)
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
    path = out_dir / f"{args.what}-{args.docs}-t{args.threads}.txt"
    path.write_text(text)
    sys.stdout.write(text)
    log(f"profile written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
