"""RSS of a writer making UPDATES single-document commits on the cached 1k index with the service's
maintenance policy, printed every UPDATES/10 commits. Run it under different allocator settings, e.g.
``MALLOC_ARENA_MAX=2 python benchmarks/diagnostics/writer_rss.py 3000``."""
import os, sys, time, random, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import psutil
import structlog, logging
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from benchmarks.common import workspace
from benchmarks.probe import StandInEmbedder
from benchmarks.query import edit_in_place, service_policy
from syncd import config as config_mod
from syncd.runtime import Runtime
from syncd.store import MaintenancePolicy

updates = int(sys.argv[1])
src = Path(__file__).resolve().parents[1] / ".cache" / "idx-s7-n1000-g1-c1"
work = Path(tempfile.mkdtemp(prefix="writer-rss-"))
config = workspace(src, work)
root = work / "docs"
docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
rt = Runtime(config_mod.load(config), embedder=StandInEmbedder())
rt.open()
policy, store = MaintenancePolicy(), rt.store
store.maintain(retention_s=600, policy=policy)


store.after_commit = service_policy(store, policy)
proc = psutil.Process()
print("env MALLOC_ARENA_MAX", os.environ.get("MALLOC_ARENA_MAX"), "TRIM", os.environ.get("TRIM"), "start rss MiB", proc.memory_info().rss >> 20, flush=True)
rng = random.Random(7)
t0 = time.monotonic()
for i in range(updates):
    d = rng.choice(docs)
    edit_in_place(root / d, i)
    rt.engine.process({"docs": {d: time.time()}})
    if os.environ.get("TRIM") and (i + 1) % 100 == 0:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if (i + 1) % max(1, updates // 10) == 0:
        print(i + 1, "rss MiB", proc.memory_info().rss >> 20, "s", round(time.monotonic() - t0, 1), flush=True)
rt.close()
