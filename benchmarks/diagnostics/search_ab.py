"""What the trustworthy search costs over the former one, on the cached 10k index (142k chunks), in one
process and in alternation, so the machine's load hits both sides alike:
``python benchmarks/diagnostics/search_ab.py [--queries 60] [--rounds 3]``.

before: the two legs cut at k=10 (no vectors fetched) fused by RRF, as ``Store.search`` did;
after:  ``syncd.search.search`` (legs of 50 candidates with their vectors, relevance, duplicates collapsed
        and the other places looked up by content hash), no relevance floor.
Query vectors come from the stand-in embedder the index was built with (no model time on either side).
Prints p50/p95 of each and their ratio, and whether the table has an ANN index."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import open_reader, percentile  # noqa: E402
from benchmarks.corpus import labelled_queries  # noqa: E402


def before(table: Any, vector: np.ndarray, text: str, k: int = 10) -> list[dict[str, Any]]:
    """The former ``Store.search`` (legs cut at k, RRF K = 60), kept here for the comparison."""
    from syncd.store import RESULT_COLUMNS, _query_pool

    columns = ["chunk_id", *RESULT_COLUMNS]
    fts_future = _query_pool().submit(lambda: table.search(text, query_type="fts").select(columns).limit(k).to_list())
    vector_rows = table.search(vector.tolist(), query_type="vector").select(columns).limit(k).to_list()
    fts_rows = fts_future.result()
    scores: dict[str, float] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for ranked in (vector_rows, fts_rows):
        for rank, row in enumerate(ranked, 1):
            scores[row["chunk_id"]] = scores.get(row["chunk_id"], 0.0) + 1.0 / (rank + 60)
            by_id.setdefault(row["chunk_id"], row)
    return [by_id[c] for c in sorted(scores, key=lambda c: -scores[c])[:k]]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--index", default=str(HERE / ".cache" / "idx-s7-n10000-g1-c1"))
    p.add_argument("--queries", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    from benchmarks.probe import StandInEmbedder
    from syncd import search as search_mod

    store = open_reader(Path(args.index))
    indexes = sorted(idx.columns[0] for idx in store.table.list_indices())
    qs = [q for q, _ in labelled_queries(7, 10_000, n=args.queries)]
    vectors = StandInEmbedder().encode(qs)
    opts = search_mod.SearchOptions(k=10, min_relevance=0.0)
    for q, v in zip(qs[:5], vectors[:5], strict=True):  # warm both
        before(store.table, np.asarray(v), q)
        search_mod.search(store, np.asarray(v), q, opts)
    times: dict[str, list[float]] = {"before": [], "after": []}
    stages: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for q, v in zip(qs, vectors, strict=True):
            vec = np.asarray(v, dtype=np.float32)
            t0 = time.perf_counter()
            before(store.table, vec, q)
            times["before"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            answer = search_mod.search(store, vec, q, opts)
            times["after"].append(time.perf_counter() - t0)
            for stage, seconds in answer.seconds.items():
                stages.setdefault(stage, []).append(seconds)
    out: dict[str, Any] = {"rows": store.count_rows(), "indexes": indexes, "queries": len(qs), "rounds": args.rounds}
    for side, values in times.items():
        vals = sorted(values)
        out[side] = {"p50_ms": statistics.median(vals) * 1000, "p95_ms": percentile(vals, 95) * 1000}
    out["ratio_p50"] = out["after"]["p50_ms"] / out["before"]["p50_ms"]
    out["ratio_p95"] = out["after"]["p95_ms"] / out["before"]["p95_ms"]
    out["after_stages_p50_ms"] = {s: statistics.median(v) * 1000 for s, v in stages.items()}
    out["after_stages_p95_ms"] = {s: percentile(sorted(v), 95) * 1000 for s, v in stages.items()}
    import os

    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
