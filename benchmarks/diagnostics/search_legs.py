"""What each read of a search costs, timed alone in one process on a cached 142k-chunk index (the basis of
the legs reading only what ranking needs): ``python benchmarks/diagnostics/search_legs.py [--index DIR]
[--queries 60]``.

Each line is one LanceDB read with the service's prefilter (who may read a chunk), p50 / p95 over the
queries: the vector and the full-text leg of 50 candidates with every result column (as the search read
them before) and with the columns ranking needs (``LEG_COLUMNS``), returned as Python rows or as Arrow; the
results' read (``Store.complete_rows``) and a lookup of one content hash by equality (LanceDB's fixed cost of
a query); then the whole ``syncd.search.search`` with its stage means. Query vectors come from the stand-in
embedder the index was built with (no model time). On an index without an ANN index (e.g. the one-shot
benchmark's 5,000 documents: ``--index benchmarks/.cache/oneshot-s7-n5000-g1-c1-onnx-int8``) it also times
the vector leg and the whole search answered from vectors held in memory, as the daemon answers them."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import open_reader, percentile  # noqa: E402
from benchmarks.corpus import labelled_queries  # noqa: E402


def timed(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    for i in range(min(5, n)):
        fn(i)
    values = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        values.append(time.perf_counter() - t0)
    values.sort()
    return {"p50_ms": round(statistics.median(values) * 1000, 2), "p95_ms": round(percentile(values, 95) * 1000, 2)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--index", default=str(HERE / ".cache" / "idx-s7-n10000-g1-c1-onnx-int8"))
    p.add_argument("--queries", type=int, default=60)
    args = p.parse_args()

    from benchmarks.probe import StandInEmbedder
    from syncd import search as search_mod
    from syncd.acl import search_filter
    from syncd.store import LEG_COLUMNS, RESULT_COLUMNS, sql_string

    store = open_reader(Path(args.index))
    table = store.table
    n = args.queries
    qs = [q for q, _ in labelled_queries(7, 10_000, n=n)]
    vectors = [np.asarray(v, dtype=np.float32) for v in StandInEmbedder().encode(qs)]
    where = search_filter(())
    every = ["chunk_id", "content_hash", "vector", *RESULT_COLUMNS]

    def vector_leg(columns: list[str]) -> Any:
        return lambda i: table.search(vectors[i], query_type="vector").where(where, prefilter=True).select(columns).limit(50)

    def text_leg(columns: list[str]) -> Any:
        return lambda i: table.search(qs[i], query_type="fts").where(where, prefilter=True).select(columns).limit(50)

    opts = search_mod.SearchOptions(k=10, min_relevance=0.0)
    answers = [search_mod.search(store, vectors[i], qs[i], opts) for i in range(n)]
    kept = [[r["chunk_id"] for r in a.results] for a in answers]
    hashes = [sorted({r["content_hash"] for r in a.results}) for a in answers]
    out: dict[str, Any] = {"rows": store.count_rows(),
                           "indexes": sorted(idx.columns[0] for idx in table.list_indices()), "queries": n}
    reads: dict[str, Callable[[int], Any]] = {
        "vector leg, every column, rows": lambda i: vector_leg(every)(i).to_list(),
        "vector leg, every column, Arrow": lambda i: vector_leg(every)(i).to_arrow(),
        "vector leg, LEG_COLUMNS, Arrow": lambda i: vector_leg(LEG_COLUMNS)(i).to_arrow(),
        "vector leg, id, hash and vector, Arrow": lambda i: vector_leg(["chunk_id", "content_hash", "vector"])(i).to_arrow(),
        "full-text leg, every column, rows": lambda i: text_leg(every)(i).to_list(),
        "full-text leg, LEG_COLUMNS, Arrow": lambda i: text_leg(LEG_COLUMNS)(i).to_arrow(),
        "the results' read (complete_rows)": lambda i: store.complete_rows(kept[i], hashes[i], where),
        "one content hash by equality": lambda i: table.search().where(
            f"content_hash = {sql_string(hashes[i][0])}").select(["content_hash"]).limit(10).to_arrow(),
    }
    # The daemon's vector leg from the vectors it holds (``[search] vector_cache_mb``; a table without an
    # ANN index only: with one, LanceDB's index answers and this line is absent).
    cache = store.size_vector_cache(1024)
    assert cache is not None
    cache.warm(table)
    cache.wait()
    if cache.nearest(table, vectors[0], where, 50, LEG_COLUMNS) is not None:
        reads["vector leg, LEG_COLUMNS, held vectors (syncd/vector_cache.py)"] = (
            lambda i: cache.nearest(table, vectors[i], where, 50, LEG_COLUMNS))
    out["reads"] = {name: timed(fn, n) for name, fn in reads.items()}
    stages: dict[str, list[float]] = {}

    def whole(i: int) -> None:
        answer = search_mod.search(store, vectors[i], qs[i], opts)
        for stage, seconds in answer.seconds.items():
            stages.setdefault(stage, []).append(seconds)

    out["search, held vectors"] = timed(whole, n)
    out["search_stage_means_ms, held vectors"] = {s: round(statistics.mean(v) * 1000, 2) for s, v in stages.items()}
    stages.clear()
    store.size_vector_cache(0)
    out["search"] = timed(whole, n)
    out["search_stage_means_ms"] = {s: round(statistics.mean(v) * 1000, 2) for s, v in stages.items()}
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
