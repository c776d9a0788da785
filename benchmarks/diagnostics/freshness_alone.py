"""The daemon's freshness phases (``benchmarks/freshness.py``: idle, then 20 writes a second) alone, on the
default config, on a copy of an index folder (default: the one-shot benchmark's default folder of a results
run), with the processes of another install if given: ``python benchmarks/diagnostics/freshness_alone.py
FOLDER WORK [--python PATH]``. What ``oneshot.py --resume`` runs, without its retrieval-quality phase, to try
one change at a time; the daemon's log and the probe's trace stay in WORK. Prints the latencies, the
breakdown of the load phase (median, p95) and its searches by stage; WORK/freshness.json has every figure,
each write's latency by when it was written included. ``--debug``: the daemon's log has each compaction and
index fold with its seconds."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parent))

import benchmarks.common  # noqa: E402
from benchmarks import freshness  # noqa: E402
from benchmarks.common import CACHE  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("work")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--debug", action="store_true",
                   help="the daemon logs at debug level: each compaction and index fold with its seconds")
    args = p.parse_args()
    if args.debug:
        write_config = freshness.write_config

        def debug_config(folder: Path, **sections: dict[str, object]) -> Path:
            sections.setdefault("logging", {})["level"] = "debug"
            return write_config(folder, **sections)

        freshness.write_config = debug_config  # type: ignore[assignment]
    os.environ.setdefault("SYNCD_MODEL_CACHE", str(CACHE / "models"))  # the export the benchmarks share
    benchmarks.common.PY = args.python
    out = freshness.run(Path(args.folder), Path(args.work), quick=False, backend="auto")
    load = out["load"]
    (Path(args.work) / "freshness.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"latency_s": {k: out[k]["latency_s"] for k in ("idle", "load")},
                      "load_breakdown": {k: (v["median"], v["p95"]) for k, v in load["breakdown"].items()},
                      "vector_legs": {k: out[k].get("vector_legs") for k in ("idle", "load")},
                      "load_search_stages_ms": {k: round(1000 * v["mean_s"], 1)
                                                for k, v in load.get("search_stages", {}).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
