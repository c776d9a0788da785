import sys, json
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from benchmarks.common import built_index
from benchmarks import freshness
phases = tuple(sys.argv[1].split(",")) if len(sys.argv) > 1 else ("idle", "load")
backend = sys.argv[2] if len(sys.argv) > 2 else "onnx-int8"
out = freshness.run(built_index(7, 10000, backend=backend), Path(sys.argv[4]), quick=False, backend=backend, phases=phases)

for ph in ("idle", "load"):
    if ph in out:
        l = out[ph]; print(ph, "p50", round(l["latency_s"]["median"], 3), "p95", round(l["latency_s"]["p95"], 3), "lost", l["lost"], "q", round(l["query_latency_s"]["median"], 3), round(l["query_latency_s"]["p95"], 3))
        for k, v in l["breakdown"].items(): print("   ", k, round(v.get("median") or 0, 3), round(v.get("p95") or 0, 3), v.get("max") and round(v["max"], 3))
