"""`python -m benchmarks.audit [--docs 2000] [--edits 60] [--entries 10000]`: what the change journal and
point-in-time answers cost.

1. **Hot path, same run.** The service (in this process, real HTTP, real LanceDB, a real watcher) on a
   folder of ``--docs`` Markdown files; ``--edits`` single-file edits, alternating journal on and off
   (``Engine.journal_enabled``), each written aside and renamed into place, timed from the rename to the
   first ``/search`` answer that holds the edit's new word. The store commit (``Store.apply``) and the
   journal append (``Journal.append``) are timed around the real calls. The embedder is
   ``syncd.testing.HashEmbedder``: the model's time is the same with or without the journal, and leaving it
   out keeps the difference visible on a shared 2-CPU machine.
2. **Growth.** ``--entries`` journal entries appended 10 at a time to a fresh store's journal (real
   ``Journal.append``, entries of the engine's shape): bytes on disk before and after the journal's own
   maintenance (compaction and the clean-up of its versions).
3. **As-of latency.** On the store of (1): the same queries live, as of a version before the edits
   (pinned handle reused), and with the as-of time resolved for every query (``version_as_of``).

Prints one JSON document; ``benchmarks/README.md`` → "Audit trail" quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def _q(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"n": len(ordered), "p50": round(statistics.median(ordered) * 1000, 2),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2)}


def _doc(i: int, word: str) -> str:
    body = " ".join(f"term{(i * 7 + j) % 997}" for j in range(60))
    return f"# Page {i}\n\nIntroduction of page {i}. {body}\n\n## Details\n\nThe marker word is {word}.\n"


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def hot_path(root: Path, docs: int, edits: int) -> dict[str, Any]:
    import tomli_w

    from syncd import config as config_mod
    from syncd.logs import configure
    from syncd.service import Service
    from syncd.store import Journal, Store
    from syncd.testing import HashEmbedder

    folder = root / "docs"
    folder.mkdir()
    for i in range(docs):
        (folder / f"p{i:05d}.md").write_text(_doc(i, "initial"))
    cfg_path = root / "syncd.toml"
    cfg_path.write_text(tomli_w.dumps({
        "store": {"uri": str(root / "index")}, "state": {"dir": str(root / "state")}, "http": {"bind": "127.0.0.1:0"},
        "logging": {"level": "warning", "format": "json"},
        "connectors": [{"name": "docs", "type": "filesystem", "path": str(folder)}]}))
    configure("warning", "json")
    service = Service(config_mod.load(cfg_path), embedder=HashEmbedder())
    timings: dict[str, list[float]] = {"apply": [], "append": []}
    real_apply, real_append = Store.apply, Journal.append

    def timed_apply(self: Store, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_apply(self, *args, **kwargs)
        finally:
            timings["apply"].append(time.perf_counter() - started)

    def timed_append(self: Journal, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_append(self, *args, **kwargs)
        finally:
            timings["append"].append(time.perf_counter() - started)

    Store.apply = timed_apply  # type: ignore[method-assign]
    Journal.append = timed_append  # type: ignore[method-assign]
    service.start()
    runner = threading.Thread(target=service.run_forever, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 600
        while not service.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.2)
        assert service.http is not None and service.runtime is not None
        url = service.http.url
        engine = service.runtime.engine
        before_edits = time.time()
        time.sleep(0.05)
        per_mode: dict[str, dict[str, list[float]]] = {m: {"fresh": [], "apply": [], "append": []}
                                                       for m in ("journal", "no_journal")}
        for n in range(edits):
            mode = "journal" if n % 2 == 0 else "no_journal"
            engine.journal_enabled = mode == "journal"
            word = f"zz{n:04d}marker"
            target = folder / f"p{(n * 37) % docs:05d}.md"
            tmp = folder / f".edit{n}.tmp"
            tmp.write_text(_doc(n, word))
            applies, appends = len(timings["apply"]), len(timings["append"])
            started = time.perf_counter()
            tmp.rename(target)
            while True:
                query = f"{url}/search?q={urllib.parse.quote(word)}&k=5&min_relevance=0"
                with urllib.request.urlopen(query, timeout=30) as r:
                    hits = json.loads(r.read())["results"]
                if any(word in h["text"] for h in hits):
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"edit {n} never became searchable")
                time.sleep(0.002)
            per_mode[mode]["fresh"].append(time.perf_counter() - started)
            time.sleep(0.3)  # the append (after the commit) and maintenance settle before the next edit
            per_mode[mode]["apply"].extend(timings["apply"][applies:])
            per_mode[mode]["append"].extend(timings["append"][appends:])
        engine.journal_enabled = True
        result: dict[str, Any] = {"docs": docs, "edits": edits}
        for mode, values in per_mode.items():
            result[mode] = {"freshness_ms": _q(values["fresh"]), "commit_ms": _q(values["apply"]),
                            "journal_append_ms": _q(values["append"])}
        result["as_of"] = as_of_latency(service.reader, before_edits)
        return result
    finally:
        service.stopping.set()
        runner.join(timeout=120)
        Store.apply = real_apply  # type: ignore[method-assign]
        Journal.append = real_append  # type: ignore[method-assign]


def as_of_latency(store: Any, when: float, queries: int = 60) -> dict[str, Any]:
    from syncd.testing import HashEmbedder

    emb = HashEmbedder()
    texts = [f"term{(i * 13) % 997} page details" for i in range(queries)]
    vectors = emb.encode(texts)
    version = store.version_as_of(when)
    out: dict[str, Any] = {"version_as_of": version, "live_version": int(store.table.version)}
    started = time.perf_counter()
    store.search(vectors[0], texts[0], k=10, version=version)
    out["first_as_of_ms"] = round((time.perf_counter() - started) * 1000, 2)
    legs: dict[str, list[float]] = {"live": [], "as_of_pinned": [], "as_of_resolved": []}
    for i, text in enumerate(texts):  # interleaved, so machine noise falls on all three alike
        for leg in legs:
            started = time.perf_counter()
            if leg == "live":
                store.search(vectors[i], text, k=10)
            elif leg == "as_of_pinned":
                store.search(vectors[i], text, k=10, version=version)
            else:
                store.search(vectors[i], text, k=10, version=store.version_as_of(when))
            legs[leg].append(time.perf_counter() - started)
    for leg, values in legs.items():
        out[leg + "_ms"] = _q(values)
    return out


def growth(root: Path, entries: int) -> dict[str, Any]:
    import datetime as dt

    from syncd.store import Store

    store = Store(str(root / "growth"), root / "growth-state", base_table="chunks", dim=8, signature="bench")
    store.open()
    journal = store.journal
    journal.catch_up()
    now = time.time()
    batch = 10
    for start in range(0, entries, batch):
        rows = []
        for i in range(start, min(entries, start + batch)):
            rev = f"{i:032x}"
            rows.append({"connector": "docs", "doc_id": f"folder/sub/page-{i % 5000:05d}.md", "action": "changed",
                         "revision": rev, "previous_revision": f"{i + 1:032x}", "identity": rev,
                         "previous_identity": f"{i + 1:032x}", "chunks_embedded": 1, "chunks_reused": 7,
                         "chunks_deleted": 0, "chunks": 8, "live_table": "chunks", "table_version": 3 + i // batch,
                         "seen_at": now + i, "committed_at": now + i + 0.1})
        journal.append(rows)
    folder = Path(journal.table.to_lance().uri)
    raw = _du(folder)
    journal.table.optimize(cleanup_older_than=dt.timedelta(seconds=0))
    compacted = _du(folder)
    stats = journal.stats()
    return {"entries": entries, "appends": -(-entries // batch), "bytes_before_maintenance": raw,
            "bytes_after_maintenance": compacted, "bytes_per_entry": round(compacted / max(1, entries), 1),
            "table_bytes": stats["bytes"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.audit")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--edits", type=int, default=60)
    p.add_argument("--entries", type=int, default=10_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="syncd-audit-bench-") as tmp:
        root = Path(tmp)
        out = {"hot_path": hot_path(root, args.docs, args.edits), "growth": growth(root, args.entries)}
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
