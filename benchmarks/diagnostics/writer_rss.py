"""RSS of a writer making UPDATES single-document commits on the cached 1k index with the service's
maintenance policy, printed every UPDATES/10 commits. Run it under different allocator settings, e.g.
``MALLOC_ARENA_MAX=2 python benchmarks/diagnostics/writer_rss.py 3000``; ``REOPEN=N`` moves the writer to a
new connection every N commits (0 = never; the store's default is ``REOPEN_EVERY_COMMITS``); ``READER=1``
adds a reader searching after every commit, as ``/search`` does beside the service's writer
(``READER_REOPEN=N`` moves it to a new connection every N commits, ``READER_INDEX_CACHE_MB`` sets its index
cache)."""
import os, sys, time, random, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import psutil
import structlog, logging
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from benchmarks.common import workspace
from benchmarks.probe import StandInEmbedder
from benchmarks.query import after_each_batch, edit_in_place, service_policy
from syncd import config as config_mod
from syncd.runtime import Runtime
from syncd.service.maintenance import MaintenancePolicy

updates = int(sys.argv[1])
if os.environ.get("REOPEN"):
    # Commits between two connections of the writer (syncd.store.REOPEN_EVERY_COMMITS; 0 = never).
    import syncd.store
    syncd.store.REOPEN_EVERY_COMMITS = int(os.environ["REOPEN"]) or 10**12
src = Path(__file__).resolve().parents[1] / ".cache" / "idx-s7-n1000-g1-c1"
work = Path(tempfile.mkdtemp(prefix="writer-rss-"))
config = workspace(src, work)
root = work / "docs"
docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
rt = Runtime(config_mod.load(config), embedder=StandInEmbedder())
rt.open()
policy, store = MaintenancePolicy(), rt.store
store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)


after_each_batch(rt, service_policy(store, policy))
reader = None
if os.environ.get("READER"):
    # A reader beside the writer, as /search is in the service: a query after every commit.
    from syncd.store import Store
    cfg = config_mod.load(config)
    limits = cfg.store.cache_limits()
    if os.environ.get("READER_INDEX_CACHE_MB"):
        limits["index_cache_mb"] = int(os.environ["READER_INDEX_CACHE_MB"])
    reader = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=rt.embedder.dim,
                   signature=rt.signature, read_consistency_interval=cfg.store.read_consistency_interval,
                   **limits)
    reader.open(create=False)
proc = psutil.Process()
print("env MALLOC_ARENA_MAX", os.environ.get("MALLOC_ARENA_MAX"), "TRIM", os.environ.get("TRIM"), "REOPEN", os.environ.get("REOPEN"), "READER", os.environ.get("READER"),
      "READER_REOPEN", os.environ.get("READER_REOPEN"), "READER_INDEX_CACHE_MB", os.environ.get("READER_INDEX_CACHE_MB"), "start rss MiB", proc.memory_info().rss >> 20, flush=True)
rng = random.Random(7)
t0 = time.monotonic()
for i in range(updates):
    d = rng.choice(docs)
    edit_in_place(root / d, i)
    rt.engine.process({"docs": {d: time.time()}})
    if reader is not None:
        reader.refresh()
        reader.search(rt.embedder.encode(["runbook"])[0], "runbook", k=10)
        if os.environ.get("READER_REOPEN") and (i + 1) % int(os.environ["READER_REOPEN"]) == 0:
            reader._db = None  # the reader on a new connection (and new caches)
            reader._table = reader._connect().open_table(reader.table_name)
    if os.environ.get("TRIM") and (i + 1) % 100 == 0:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if (i + 1) % max(1, updates // 10) == 0:
        print(i + 1, "rss MiB", proc.memory_info().rss >> 20, "s", round(time.monotonic() - t0, 1), flush=True)
rt.close()
