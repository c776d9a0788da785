"""Readers in other processes, during heavy syncing, never error and never see a half-replaced document:
LanceDB readers check every document's chunks for one version and contiguous positions, and HTTP /search
clients check their answers, while the service rewrites documents with changing chunk counts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import wait_for, write_config

N_DOCS = 12
ROUNDS = 25

_READER = r"""
import json, re, sys, time
from pathlib import Path
import lancedb
state, index, stop, out = map(Path, sys.argv[1:5])
reads, errors, bad, seen_versions = 0, [], [], 0
db = None
while not stop.exists():
    try:
        if db is None:
            import datetime as dt
            db = lancedb.connect(str(index), read_consistency_interval=dt.timedelta(seconds=0))
        table = db.open_table("chunks")  # one name for life
        rows = table.search().select(["doc_id", "revision", "chunk_index", "text"]).limit(None).to_arrow().to_pylist()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        continue
    reads += 1
    docs = {}
    for r in rows:
        docs.setdefault(r["doc_id"], []).append(r)
    for doc_id, chunks in docs.items():
        versions = {m for c in chunks for m in re.findall(r"version(\d+)of(\d+)", c["text"])}
        revisions = {c["revision"] for c in chunks}
        positions = sorted(c["chunk_index"] for c in chunks)
        paras = {m for c in chunks for m in re.findall(r"para(\d+)x", c["text"])}
        ok = len(versions) == 1 and len(revisions) == 1 and positions == list(range(len(chunks)))
        if ok:
            (_, n), = versions
            ok = paras == {str(i) for i in range(int(n))}
        if not ok:
            bad.append({"doc": doc_id, "versions": sorted(versions), "revisions": len(revisions),
                        "positions": positions[:20]})
        seen_versions += 1
out.write_text(json.dumps({"reads": reads, "errors": errors[:20], "bad": bad[:20], "docs_checked": seen_versions}))
"""

_SEARCHER = r"""
import json, sys, urllib.request, urllib.parse
from pathlib import Path
url, stop, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
reads, errors, bad = 0, [], []
words = ["alpha", "bravo", "version3of", "para0x", "charlie"]
while not stop.exists():
    q = words[reads % len(words)]
    try:
        with urllib.request.urlopen(f"{url}/search?q={urllib.parse.quote(q)}&k=5", timeout=30) as resp:
            data = json.loads(resp.read())
        assert resp.status == 200 and isinstance(data["results"], list)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        continue
    reads += 1
out.write_text(json.dumps({"reads": reads, "errors": errors[:20]}))
"""


def _write_doc(root: Path, i: int, version: int, rng: random.Random) -> None:
    n = rng.randint(1, 9)
    paras = [f"para{j}x version{version}of{n} " + " ".join(rng.choice(["alpha", "bravo", "charlie", "delta"])
                                                            for _ in range(40)) for j in range(n)]
    tmp = root / f".doc{i}.md.tmp"
    tmp.write_text(f"# Doc {i}\n\n" + "\n\n".join(paras) + "\n")
    os.replace(tmp, root / f"doc{i}.md")  # atomic at the source: every version read is a whole one


def test_readers_never_see_half_replaced_documents(tmp_path: Path, docs: Path, in_process_daemon) -> None:  # type: ignore[no-untyped-def]
    """Two LanceDB readers and an HTTP searcher in other processes run through 25 rounds of rewrites,
    renames and deletes without one error or one document mixing versions."""
    rng = random.Random(4)
    for i in range(N_DOCS):
        _write_doc(docs, i, 0, rng)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       chunking={"max_tokens": 48, "overlap_tokens": 0}, sync={"max_batch_docs": 4})
    stop = tmp_path / "stop"
    with in_process_daemon(cfg) as d:
        svc = d.service
        wait_for(lambda: len(svc.runtime.engine.docs("docs")) == N_DOCS, what="initial index")
        outs = [tmp_path / f"reader{i}.json" for i in range(2)]
        procs = [subprocess.Popen([sys.executable, "-c", _READER, str(tmp_path / "state"), str(tmp_path / "index"),
                                   str(stop), str(o)]) for o in outs]
        search_out = tmp_path / "search.json"
        procs.append(subprocess.Popen([sys.executable, "-c", _SEARCHER, svc.http.url, str(stop), str(search_out)]))

        def churn() -> None:
            for version in range(1, ROUNDS + 1):
                for i in rng.sample(range(N_DOCS), N_DOCS // 2):
                    _write_doc(docs, i, version, rng)
                if version % 5 == 0:
                    victim = rng.randrange(N_DOCS)
                    if (docs / f"doc{victim}.md").exists():
                        os.replace(docs / f"doc{victim}.md", docs / f"moved{version}.md")
                if version % 7 == 0:
                    for p in sorted(docs.glob("moved*.md"))[:1]:
                        p.unlink()
                wait_for(lambda: d.idle(), timeout=120, what="batch committed")

        writer = threading.Thread(target=churn)
        writer.start()
        writer.join(timeout=600)
        d.wait_idle()
        # Readers keep reading the settled index until each has completed reads of it.
        stop.write_text("")
        for p in procs:
            assert p.wait(timeout=120) == 0
        results = [json.loads(o.read_text()) for o in outs]
        search = json.loads(search_out.read_text())
        on_disk = {p.name for p in docs.glob("*.md")}
        assert set(svc.runtime.engine.docs("docs")) == on_disk
    for r in results:
        assert r["errors"] == []
        assert r["bad"] == []
        assert r["reads"] > 0 and r["docs_checked"] > 0
    assert search["errors"] == [] and search["reads"] > 0
