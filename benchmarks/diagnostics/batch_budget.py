"""Model time of the incremental change set's new chunk texts (three change sets, 63-81 texts) under different
``batch_size`` / ``max_batch_tokens`` plans, PyTorch, 4 rounds: ``python benchmarks/diagnostics/batch_budget.py``.
Measured here: 1.22-1.27 s median for the default (64, 2048); 1,024 or 1,536 tokens within 4% of it."""
import random, statistics, sys, tempfile, time
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
    return {c.content_hash: _embed_text(c) for c in chunker.chunk(extract(text.encode(), "markdown", size_limit=None).blocks)}
sets = []
for r in range(3):
    rng = random.Random(7 * 31 + r)
    ids = rng.sample(range(10000), 10)
    tmp = Path(tempfile.mkdtemp())
    texts = {}
    for i in ids:
        p = page(7, i); f = tmp / "x.md"; f.write_text(p.text)
        before = chunks(p.text); _edit_paragraph(f, rng); after = chunks(f.read_text())
        texts.update({h: t for h, t in after.items() if h not in before})
    for j in range(5):
        texts.update(chunks(page(7, 11000 + j + r * 10).text))
    sets.append(list(texts.values()))
print("texts per set", [len(s) for s in sets])
emb.encode(["warm up"] * 8)
res = {}
configs = [(64, 2048), (64, 1024), (64, 1536), (64, 3072), (16, 2048), (8, 4096)]
for rep in range(4):
    for bs, tok in configs:
        emb.batch_size, emb.max_batch_tokens = bs, tok
        for s in sets:
            t = time.perf_counter(); emb.encode(s); res.setdefault((bs, tok), []).append(time.perf_counter() - t)
for k, v in res.items():
    print(k, "median %.3f min %.3f" % (statistics.median(v), min(v)))
