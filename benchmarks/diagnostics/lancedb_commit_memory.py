import lancedb, pyarrow as pa, numpy as np, psutil, shutil, sys, gc
mode = sys.argv[1]; DBP = __import__("tempfile").mkdtemp(prefix="adds-" + mode)
shutil.rmtree(DBP, ignore_errors=True)
kw = {"session": lancedb.Session(index_cache_size_bytes=256 << 20, metadata_cache_size_bytes=32 << 20)} if mode == "session" else {}
db = lancedb.connect(DBP, **kw)
rng = np.random.default_rng(0)
def batch(n=14, base=0):
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return pa.table({"id": pa.array(np.arange(base, base + n)), "text": pa.array(["x" * 900] * n), "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 384)})
t = db.create_table("t", batch(10000))
p = psutil.Process(); out = []
for i in range(1, 4001):
    t.delete(f"id >= {(i % 500) * 14} AND id < {(i % 500) * 14 + 14}")
    t.add(batch(14, (i % 500) * 14))
    if i % 200 == 0:
        ds = __import__("lance").dataset(t.to_lance().uri)
        ds.optimize.compact_files(); t.checkout_latest()
    if i % 500 == 0:
        gc.collect(); out.append((i, p.memory_info().rss >> 20)); print(mode, out[-1], flush=True)
