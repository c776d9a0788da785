"""What a compaction of small fragments costs, and how much of it is Lance remapping the indexes: on a copy
of an index folder (default: the one-shot benchmark's default folder of a results run), 32 appends of 20
rows each (one small fragment each), the indexes brought up to date (as the folder thread keeps them), then
``compact_files`` as ``Store.compact`` calls it, with and without ``defer_index_remap``, twice each:
``python benchmarks/diagnostics/compaction_remap.py FOLDER``. Prints the seconds of each compaction."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import open_reader  # noqa: E402


def main() -> int:
    import pyarrow as pa

    from syncd.store import SMALL_FRAGMENT_ROWS

    source = Path(sys.argv[1])
    out = []
    for variant in ("remap", "deferred", "remap", "deferred"):
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
            store._dataset().optimize.optimize_indices()
            dataset = store._dataset()
            fragments = len(dataset.get_fragments())
            started = time.perf_counter()
            metrics = dataset.optimize.compact_files(target_rows_per_fragment=SMALL_FRAGMENT_ROWS,
                                                     materialize_deletions=False,
                                                     defer_index_remap=variant == "deferred")
            out.append({"variant": variant, "seconds": round(time.perf_counter() - started, 3),
                        "fragments_before": fragments, "removed": metrics.fragments_removed,
                        "added": metrics.fragments_added, "indexes": len(dataset.list_indices())})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
