"""(3) Freshness: time from a write's return until `/search` returns the document with the new text.

`syncd run` (through ``benchmarks.probe``, which adds timing probes) watches a copy of a cached index. A
writer appends a sentence holding a unique marker word to a random page; a poller thread queries `/search`
back to back with the markers not yet found (one query covers every pending write) and stamps each write
the moment a result from its page carries its marker. Probe records split each write's latency into:
event (write → watcher hint), queue (hint → the writer takes the batch), read+chunk, lookup (reusable
vectors), embed, commit, and query (commit → a `/search` answer that shows it).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, Daemon, log, summarize, workspace, write_config


@dataclass
class Write:
    index: int
    doc_id: str
    marker: str
    written_at: float = 0.0
    found_at: float | None = None


class Poller:
    """Queries /search back to back for every pending marker; records each query's latency."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pending: list[Write] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.query_latencies: list[float] = []
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, w: Write) -> None:
        with self.lock:
            self.pending.append(w)

    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                batch = self.pending[:24]
            if not batch:
                time.sleep(0.002)
                continue
            q = " ".join(w.marker for w in batch)
            started = time.monotonic()
            try:
                # Any relevance: the question is when the text is visible, and a query of random markers is
                # far from every chunk in meaning (the default floor would hide the page that holds them).
                results = self.daemon.search(q, k=max(10, 3 * len(batch)), min_relevance=0.0)
            except RuntimeError:
                self.errors += 1
                time.sleep(0.05)
                continue
            now = time.time()
            self.query_latencies.append(time.monotonic() - started)
            found = {(r["doc_id"], m) for r in results for m in (w.marker for w in batch) if m in r["text"]}
            with self.lock:
                for w in batch:
                    if (w.doc_id, w.marker) in found:
                        w.found_at = now
                self.pending = [w for w in self.pending if w.found_at is None]


def _append(root: Path, w: Write) -> None:
    with open(root / w.doc_id, "a") as fh:
        fh.write(f"\nFreshness check {w.marker} was appended to this page by the benchmark.\n")
    w.written_at = time.time()


def query_vectors(daemon: Daemon) -> dict[str, float]:
    """``syncd_query_vectors_total`` by source: query vectors the model made and ones the cache gave."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = daemon.get("/metrics")
    out = {"model": 0.0, "cache": 0.0}
    if code == 200 and isinstance(text, str):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "syncd_query_vectors_total":
                    out[sample.labels["source"]] = sample.value
    return out


def run_phase(daemon: Daemon, root: Path, doc_ids: list[str], *, writes: int, interval: float, seed: int,
              settle_timeout: float = 60.0) -> dict[str, Any]:
    rng = random.Random(seed)
    vectors_before = query_vectors(daemon)
    poller = Poller(daemon)
    poller.thread.start()
    done: list[Write] = []
    start = time.monotonic()
    for i in range(writes):
        due = start + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        w = Write(index=i, doc_id=rng.choice(doc_ids), marker=f"zq{seed % 100:02d}{i:05d}x{rng.randrange(16**6):06x}")
        _append(root, w)
        poller.add(w)
        done.append(w)
    write_seconds = time.monotonic() - start
    deadline = time.monotonic() + settle_timeout
    while poller.outstanding() and time.monotonic() < deadline:
        time.sleep(0.05)
    poller.stop.set()
    poller.thread.join(timeout=30)
    vectors_after = query_vectors(daemon)
    latencies = [w.found_at - w.written_at for w in done if w.found_at is not None]
    first = done[0].written_at if done else 0.0
    # Each write's latency by when it was written (whether the tail clusters, e.g. after a maintenance).
    timeline = [(round(w.written_at - first, 3), round(w.found_at - w.written_at, 4))
                for w in done if w.found_at is not None]
    lost = [w.doc_id for w in done if w.found_at is None]
    return {"writes": writes, "interval_s": interval, "write_seconds": write_seconds,
            "achieved_rate": writes / write_seconds if write_seconds else None,
            "latency_s": summarize(latencies), "timeline": timeline, "lost": len(lost), "lost_docs": lost[:20],
            "query_latency_s": summarize(poller.query_latencies), "query_errors": poller.errors,
            "query_vectors": {k: int(vectors_after[k] - vectors_before[k]) for k in vectors_after},
            "_writes": done}


def breakdown(trace: Path, writes: list[Write]) -> dict[str, Any]:
    """Per-stage medians and p95 for the writes, from the probe's trace lines."""
    pushes: dict[str, list[float]] = {}
    batches: list[dict[str, Any]] = []
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        if rec["ev"] == "push":
            for d in (rec.get("doc"), rec.get("dest")):
                if d:
                    pushes.setdefault(d, []).append(rec["t"])
        elif rec["ev"] == "batch":
            batches.append(rec)
    stages: dict[str, list[float]] = {k: [] for k in ("event", "queue", "read_chunk", "lookup", "embed", "commit",
                                                      "maintain", "query", "batch_docs")}
    for w in writes:
        if w.found_at is None:
            continue
        # The "modified" event fires inside write(), just before the write call returns.
        push = next((t for t in pushes.get(w.doc_id, []) if t >= w.written_at - 0.05), None)
        if push is None:
            continue
        batch = next((b for b in batches if b["t0"] >= push - 0.001 and b["t1"] <= w.found_at + 0.001
                      and w.doc_id in b["docs"]), None)
        if batch is None:
            continue
        embed, commit, lookup = batch.get("embed_s", 0.0), batch.get("commit_s", 0.0), batch.get("lookup_s", 0.0)
        stages["event"].append(max(0.0, push - w.written_at))
        stages["queue"].append(max(0.0, batch["t0"] - max(push, w.written_at)))
        stages["lookup"].append(lookup)
        stages["embed"].append(embed)
        # Maintenance the writer ran within the batch's trace; count that apart.
        maintain = batch.get("maintain_s", 0.0)
        stages["commit"].append(max(0.0, commit - maintain))
        stages["maintain"].append(maintain)
        stages["read_chunk"].append(max(0.0, batch["t1"] - batch["t0"] - embed - commit - lookup))
        stages["query"].append(w.found_at - batch["t1"])
        stages["batch_docs"].append(float(len(batch["docs"])))
    return {k: summarize(v) for k, v in stages.items()}


def _stages(daemon: Daemon) -> dict[str, Any]:
    from benchmarks.query import _stages as stages

    return stages(daemon)


def stage_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.query import stage_summary as summary

    return summary(before, after)


def _vector_cache(daemon: Daemon) -> dict[str, Any]:
    """``store.vector_cache`` of /status (empty when the daemon has none)."""
    code, status = daemon.get("/status")
    return dict((status.get("store") or {}).get("vector_cache") or {}) if code == 200 else {}


def vector_legs(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The phase's vector legs answered from held vectors and by LanceDB, and what was held at its end."""
    return {"served": after.get("served", 0) - before.get("served", 0),
            "passed": after.get("passed", 0) - before.get("passed", 0),
            "rows_held": after.get("rows"), "bytes_held": after.get("bytes")}


def run(index_folder: Path, work: Path, *, quick: bool, seed: int = 11, threads: int = 0,
        phases: tuple[str, ...] = ("idle", "load"), backend: str = "torch") -> dict[str, Any]:
    """Both phases on one daemon; ``threads`` is ``[embedding] threads`` (0 = one per CPU, the default);
    ``backend`` is ``[embedding] backend`` (the index must have been built for it: ``built_index``)."""
    workspace(index_folder, work)
    config = write_config(work, embedding={"threads": threads, "backend": backend})
    exported = CACHE / "models"
    if backend != "torch" and exported.is_dir():
        # The ONNX export is made once per machine (onnx_backend.py caches it there), not per run.
        shutil.copytree(exported, work / "state" / "models", dirs_exist_ok=True)
    root = work / "docs"
    doc_ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
    trace = work / "trace.jsonl"
    log(f"freshness: starting `syncd run` on {len(doc_ids)} documents")
    t0 = time.monotonic()
    daemon = Daemon(config, trace=trace).start()
    startup = time.monotonic() - t0
    out: dict[str, Any] = {"docs": len(doc_ids), "startup_s": startup, "embedding_threads": threads,
                           "backend": backend}
    try:
        daemon.search("warm up the query path")
        idle_n, load_s = (20, 10) if quick else (100, 60)
        log(f"freshness: idle, {idle_n} writes every 300 ms (embedding threads {threads or 'auto'})")
        before, held = _stages(daemon), _vector_cache(daemon)
        idle = run_phase(daemon, root, doc_ids, writes=idle_n, interval=0.3, seed=seed, settle_timeout=600)
        idle["breakdown"] = breakdown(trace, idle.pop("_writes"))
        idle["search_stages"] = stage_summary(before, _stages(daemon))  # the poller's searches, by stage
        idle["vector_legs"] = vector_legs(held, _vector_cache(daemon))
        out["idle"] = idle
        log(f"freshness idle: p50 {idle['latency_s']['median']}, p95 {idle['latency_s']['p95']}, lost {idle['lost']}")
        if "load" not in phases:
            return out
        time.sleep(2)
        log(f"freshness: under load, 20 writes/s for {load_s} s")
        before, held = _stages(daemon), _vector_cache(daemon)
        load = run_phase(daemon, root, doc_ids, writes=20 * load_s, interval=0.05, seed=seed + 1, settle_timeout=600)
        load["breakdown"] = breakdown(trace, load.pop("_writes"))
        load["search_stages"] = stage_summary(before, _stages(daemon))
        load["vector_legs"] = vector_legs(held, _vector_cache(daemon))
        out["load"] = load
        log(f"freshness load: p50 {load['latency_s']['median']}, p95 {load['latency_s']['p95']}, lost {load['lost']}")
        code, status = daemon.get("/status")
        if code == 200:
            out["store_after"] = {k: status["store"].get(k) for k in ("table_version", "fragments", "rows", "chunks")}
    finally:
        daemon.stop()
    return out
