"""What a compaction of small fragments costs, by which indexes cover the rows it moves (Lance remaps each
of them): on a copy of an index folder (default: the one-shot benchmark's default folder of a results run),
32 appends of 20 rows each (one small fragment each), then the indexes brought up to date over them as the
variant says, then ``Store.compact`` (every small fragment merged): ``python
benchmarks/diagnostics/compaction_remap.py FOLDER [--repeat N]``. Variants: ``none`` (no index covers the new
fragments: what the folder merges just before a fold), ``scalar`` (the BTree and label-list indexes cover
them, the full-text index does not), ``all`` (every index covers them), and ``all-deferred`` (the same with
Lance's ``defer_index_remap``, for reference: the indexes then read through Lance's fragment reuse index,
which pylance cannot prune). Prints the median seconds of each."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import open_reader  # noqa: E402

VARIANTS = ("none", "scalar", "all", "all-deferred")


def one(source: Path, variant: str) -> dict[str, object]:
    import pyarrow as pa

    from syncd.store import QUICK_TO_REMAP, SMALL_FRAGMENT_ROWS

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "copy"
        shutil.copytree(source, folder)
        store = open_reader(folder)
        table = store.table
        sample = table.search().limit(20 * 32).to_arrow()
        for i in range(32):
            part = sample.slice(i * 20, 20)
            ids = pa.array([uuid.uuid4().hex for _ in range(part.num_rows)])
            table.add(part.set_column(part.schema.get_field_index("chunk_id"), "chunk_id", ids))
        dataset = store._dataset()
        indexes = dataset.list_indices()
        fold = {"none": [], "scalar": [i["name"] for i in indexes if i["type"] in QUICK_TO_REMAP]}.get(
            variant, [i["name"] for i in indexes])
        if fold:
            dataset.optimize.optimize_indices(index_names=fold)
        dataset = store._dataset()
        started = time.perf_counter()
        metrics = dataset.optimize.compact_files(target_rows_per_fragment=SMALL_FRAGMENT_ROWS,
                                                 materialize_deletions=False,
                                                 defer_index_remap=variant == "all-deferred")
        return {"seconds": time.perf_counter() - started, "removed": metrics.fragments_removed,
                "added": metrics.fragments_added, "indexes_covering": len(fold)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    runs: dict[str, list[dict[str, object]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeat):
        for variant in VARIANTS:  # interleaved, so a noisy moment spreads over every variant
            runs[variant].append(one(Path(args.folder), variant))
    out = {v: {"median_s": round(statistics.median(float(r["seconds"]) for r in rs), 3),  # type: ignore[arg-type]
               "seconds": [round(float(r["seconds"]), 3) for r in rs],  # type: ignore[arg-type]
               "removed": rs[0]["removed"], "added": rs[0]["added"], "indexes_covering": rs[0]["indexes_covering"]}
           for v, rs in runs.items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
