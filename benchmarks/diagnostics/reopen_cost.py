"""What a reader's move to a new connection costs (``Store.refresh``, ``REOPEN_EVERY_COMMITS``), on the
cached 10k index: ``python benchmarks/diagnostics/reopen_cost.py``. Prints the first hybrid-style query
(vector + full-text legs) on a fresh connection and session against the warm median, and the cost of
reading ``table.version`` with read consistency 0 (it looks for a newer version on disk). Measured here:
first query ~30 ms over the warm one; a version read ~0.5 ms."""
import datetime as dt, statistics, time
from pathlib import Path

import lancedb
import numpy as np

uri = str(Path(__file__).resolve().parents[1] / ".cache" / "idx-s7-n10000-g1-c1" / "index")
rng = np.random.default_rng(1)


def fresh():
    session = lancedb.Session(index_cache_size_bytes=1024 << 20, metadata_cache_size_bytes=64 << 20)
    db = lancedb.connect(uri, read_consistency_interval=dt.timedelta(seconds=0), session=session)
    return db.open_table(db.list_tables().tables[0])


def query(t):
    v = rng.standard_normal(384).astype(np.float32)
    v /= np.linalg.norm(v)
    started = time.perf_counter()
    t.search(v.tolist(), query_type="vector").limit(10).to_list()
    t.search("runbook failover database", query_type="fts").limit(10).to_list()
    return time.perf_counter() - started


firsts, warms = [], []
for _ in range(5):
    t = fresh()
    firsts.append(query(t))
    warms.append(statistics.median(query(t) for _ in range(10)))
print(f"first query on a new connection: median {statistics.median(firsts) * 1000:.0f} ms; "
      f"warm: median {statistics.median(warms) * 1000:.0f} ms")
started = time.perf_counter()
for _ in range(200):
    t.version
print(f"table.version: {(time.perf_counter() - started) / 200 * 1000:.2f} ms")
