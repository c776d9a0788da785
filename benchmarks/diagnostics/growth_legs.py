import sys, time, random, statistics, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np, lance
from benchmarks.common import workspace
from benchmarks.corpus import labelled_queries
from benchmarks.probe import StandInEmbedder
from syncd import config as config_mod
from syncd.runtime import Runtime
from benchmarks.query import after_each_batch, service_policy
from syncd.service.maintenance import MaintenancePolicy

updates = int(sys.argv[1]); src = Path(__file__).resolve().parents[1] / ".cache" / "idx-s7-n1000-g1-c1"; work = Path(__import__("tempfile").mkdtemp(prefix="growth-"))
qs = [q for q, _ in labelled_queries(7, 1000, n=50)]
emb = StandInEmbedder(); vecs = emb.encode(qs)
config = workspace(src, work); root = work / "docs"
docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
rt = Runtime(config_mod.load(config), embedder=emb); rt.open()
policy = MaintenancePolicy(); store = rt.store
store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows); store.rows_since_indexed = 0

def legs():
    t = store.table; full=[]; f=[]; v=[]
    for q, vec in zip(qs, vecs): store.search(np.asarray(vec), q, k=10)  # warm-up
    for _ in range(3):
      for q, vec in zip(qs, vecs):
        a = time.monotonic(); t.search(q, query_type="fts").select(["chunk_id"]).limit(10).to_list(); b = time.monotonic()
        t.search(np.asarray(vec, dtype=np.float32).tolist(), query_type="vector").select(["chunk_id"]).limit(10).to_list(); c = time.monotonic()
        store.search(np.asarray(vec), q, k=10); d = time.monotonic()
        f.append(b-a); v.append(c-b); full.append(d-c)
    return {"fts": round(statistics.median(f)*1000,1), "vec": round(statistics.median(v)*1000,1), "full": round(statistics.median(full)*1000,1)}

def shape(tag):
    ds = lance.dataset(store.table.to_lance().uri)
    frags = ds.get_fragments()
    dels = sum(1 for fr in frags if fr.metadata.deletion_file is not None)
    physical = sum(fr.metadata.physical_rows for fr in frags)
    idx = {}
    for i in ds.list_indices():
        key = ",".join(i["fields"]); idx[key] = idx.get(key, 0) + 1
    print(tag, "rows", ds.count_rows(), "physical", physical, "frags", len(frags), "with_deletions", dels, "indices", idx, legs(), flush=True)

shape("before")
after_each_batch(rt, service_policy(store, policy))
rng = random.Random(7)
for i in range(updates):
    d = rng.choice(docs)
    with open(root / d, "a") as fh: fh.write(f"\nUpdate {i} to this page.\n")
    rt.engine.process({"docs": {d: time.time()}})
shape("after-updates")
store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
shape("after-maintain")
import psutil; print("rss", psutil.Process().memory_info().rss >> 20, "versions", len(store.table.list_versions()))
store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
shape("after-maintain2")
ds = lance.dataset(store.table.to_lance().uri)
ds.optimize.compact_files(materialize_deletions=True, materialize_deletions_threshold=0.0)
store.table.checkout_latest()
shape("after-materialize")
print("rss", psutil.Process().memory_info().rss >> 20)
store._table = store.reopen_table(store.table_name)
import gc; gc.collect()
shape("after-reconnect")
print("rss", psutil.Process().memory_info().rss >> 20)
store.table.cleanup_old_versions(older_than=__import__("datetime").timedelta(seconds=0))
shape("after-cleanup")
print("rss", psutil.Process().memory_info().rss >> 20)
rt.close()
