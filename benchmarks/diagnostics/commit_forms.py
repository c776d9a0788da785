"""The three ways to write a batch that drops rows, timed on a copy of the cached 10k index (142k rows):
``python benchmarks/diagnostics/commit_forms.py``. 25 documents a batch, 30 of their rows gone, 5 rounds.

* ``merge_delete``: the engine's one atomic commit, ``merge_insert(...).when_not_matched_by_source_delete``
  filtered on ``doc_key`` (what ``Store.apply`` does when a document shrinks or goes);
* ``merge_delete_chunk``: the same filtered on ``chunk_id``;
* ``upsert``: the merge without the delete (``covers_all_rows``);
* ``upsert_then_delete``: the upsert and a separate delete, two commits (not atomic: not used).

Measured here: 118, 113, 37 and 37 ms (medians). The engine keeps the single atomic commit."""
import shutil, statistics, sys, tempfile, time, random
from pathlib import Path

import lancedb

src = Path(__file__).resolve().parents[1] / ".cache" / "idx-s7-n10000-g1-c1" / "index"
work = Path(tempfile.mkdtemp(prefix="commit-forms-"))
shutil.copytree(src, work / "index")
db = lancedb.connect(str(work / "index"))
t = db.open_table(db.list_tables().tables[0])
keys = t.search().select(["doc_key"]).limit(None).to_arrow()["doc_key"].unique().to_pylist()
rng = random.Random(1)


def sql(s):
    return "'" + s.replace("'", "''") + "'"


res = {}
for rep in range(5):
    for form in ("merge_delete", "merge_delete_chunk", "upsert", "upsert_then_delete"):
        where = "doc_key IN (" + ", ".join(sql(k) for k in rng.sample(keys, 25)) + ")"
        rows = t.search().where(where).limit(None).to_arrow()
        rows = rows.drop_columns([c for c in rows.column_names if c.startswith("_")])
        keep = rows.slice(0, max(1, rows.num_rows - 30))
        gone = set(rows["chunk_id"].to_pylist()) - set(keep["chunk_id"].to_pylist())
        by_chunk = "chunk_id IN (" + ", ".join(sql(k) for k in gone) + ")"
        merge = t.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
        start = time.perf_counter()
        if form == "merge_delete":
            merge.when_not_matched_by_source_delete(where).execute(keep)
        elif form == "merge_delete_chunk":
            merge.when_not_matched_by_source_delete(by_chunk).execute(keep)
        elif form == "upsert":
            merge.execute(keep)
        else:
            merge.execute(keep)
            t.delete(by_chunk)
        res.setdefault(form, []).append(time.perf_counter() - start)
        t.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(rows)  # put back
for k, v in res.items():
    print(f"{k}: median {statistics.median(v) * 1000:.0f} ms", [f"{x * 1000:.0f}" for x in v])
shutil.rmtree(work)
