"""Whether embedding a batch's new chunk texts while its later documents are still read and chunked pays off:
``python benchmarks/diagnostics/embed_overlap.py [CATCHUP_DOCS]``. Times, with the real model, the change set
of the incremental benchmark (10 edited pages, 5 new ones) and a catch-up of new pages, each two ways:
read and chunk everything, then one planned ``encode`` (what the engine does); or hand texts to an embedding
thread in growing groups (32, 64, ... 512) as pages are read. Measured here: change set 1.42 s sequential,
1.55 s overlapped; catch-up of 40 pages (795 texts) 13.7 s vs 14.8 s. The parsing competes with torch's
intra-op threads on two cores and the groups lose the global sort by length, so the engine does not overlap."""
import random, statistics, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.corpus import page
from benchmarks.incremental import _edit_paragraph
from syncd.embedding import SentenceTransformerEmbedder
from syncd.extract import extract
from syncd.chunking import Chunker
from syncd.pipeline import _embed_text

emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2"); emb.load()
chunker = Chunker(emb.token_counter(), max_tokens=256, overlap_tokens=32, model_id=emb.model_id)
def chunks(text):
    return chunker.chunk(extract(text.encode(), "markdown", size_limit=None).blocks)
tmp = Path(tempfile.mkdtemp())
rng = random.Random(7 * 31)
cs_files, old = [], set()
for n, i in enumerate(rng.sample(range(10000), 20)):
    p = page(7, i); f = tmp / f"{n}.md"; f.write_text(p.text); old |= {c.content_hash for c in chunks(p.text)}
    if n < 10: _edit_paragraph(f, rng)
    cs_files.append(f)
for j in range(5):
    f = tmp / f"add{j}.md"; f.write_text(page(7, 11000 + j).text); cs_files.append(f)
cu_files = []
for j in range(int(sys.argv[1]) if len(sys.argv) > 1 else 40):
    f = tmp / f"cu{j}.md"; f.write_text(page(7, 20000 + j).text); cu_files.append(f)
pool = ThreadPoolExecutor(1)
def sequential(files):
    texts = {}
    for f in files:
        for c in chunks(f.read_text()):
            if c.content_hash not in old: texts[c.content_hash] = _embed_text(c)
    return emb.encode(list(texts.values())).shape[0]
def overlapped(files, first=32, cap=512):
    pending, jobs, seen, group = {}, [], set(), first
    for f in files:
        for c in chunks(f.read_text()):
            if c.content_hash not in old and c.content_hash not in seen:
                seen.add(c.content_hash); pending[c.content_hash] = _embed_text(c)
        if len(pending) >= group:
            jobs.append(pool.submit(emb.encode, list(pending.values()))); pending = {}; group = min(2 * group, cap)
    if pending: jobs.append(pool.submit(emb.encode, list(pending.values())))
    return sum(j.result().shape[0] for j in jobs)
print("texts change set", sequential(cs_files), "catch-up", sequential(cu_files), flush=True)
res = {}
for rep in range(5):
    for name, fn in (("cs seq", lambda: sequential(cs_files)), ("cs overlap", lambda: overlapped(cs_files))):
        t = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t)
for rep in range(3):
    for name, fn in (("cu seq", lambda: sequential(cu_files)), ("cu overlap", lambda: overlapped(cu_files))):
        t = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t)
t = time.perf_counter()
for f in cs_files: chunks(f.read_text())
print("change set read+chunk alone %.3f" % (time.perf_counter() - t))
for k, v in res.items(): print(k, "median %.3f min %.3f" % (statistics.median(v), min(v)), ["%.3f" % x for x in v])
