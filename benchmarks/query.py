"""(4) Query latency: `/search` p50/p95 for hybrid queries, without and with the ANN index, and while a
sync is writing, with the time of each stage (embed, vector, full text, fusion, rerank, dedup, read) from the
service's ``syncd_search_seconds`` histogram; and (6) store growth under single-document updates, with and
without maintenance."""

from __future__ import annotations

import random
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Daemon, log, summarize, workspace, write_config
from benchmarks.corpus import labelled_queries


def _store(config: Path) -> Any:
    from syncd import config as config_mod
    from syncd.store import Store

    cfg = config_mod.load(config)
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=384, signature="")
    store.open(create=False)
    return store


def _maintain(config: Path, *, ann: bool) -> dict[str, Any]:
    store = _store(config)
    started = time.monotonic()
    if not ann:
        for idx in store.table.list_indices():
            if idx.columns[0] == "vector":
                store.table.drop_index(idx.name)
    store.maintain(retention_s=600, ann_min_rows=1 if ann else 10**12)
    took = time.monotonic() - started
    stats = store.stats()
    return {"seconds": took, "rows": stats["rows"], "fragments": stats["fragments"],
            "indexes": sorted(stats["indexes"])}


def _latencies(daemon: Daemon, queries: list[str]) -> list[float]:
    """``/search`` with k=10 and no relevance floor: the stand-in index's vectors are hashes, so the real
    model's query vectors have near-zero cosine with them, and a floor would leave nothing to collapse and
    cite (the work a real answer does)."""
    import urllib.parse

    out = []
    for q in queries:
        started = time.monotonic()
        code, answer = daemon.get(f"/search?q={urllib.parse.quote(q)}&k=10&min_relevance=0")
        out.append(time.monotonic() - started)
        if code != 200:
            raise RuntimeError(f"/search answered {code}: {answer}")
    return out


_STAGE_LINE = re.compile(r'^syncd_search_seconds_(bucket|sum|count)\{(?:le="([^"]+)",)?stage="([a-z]+)"\} (\S+)$', re.M)


def _stages(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """The service's ``syncd_search_seconds{stage}`` histogram now: count, sum and cumulative buckets."""
    code, text = daemon.get("/metrics")
    out: dict[str, dict[str, Any]] = {}
    for kind, le, stage, value in _STAGE_LINE.findall(text if isinstance(text, str) else ""):
        entry = out.setdefault(stage, {"count": 0.0, "sum": 0.0, "buckets": {}})
        if kind == "bucket":
            entry["buckets"][le] = float(value)
        else:
            entry[kind] = float(value)
    return out


def stage_summary(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per stage, over the searches between two snapshots: the mean, and the p95 as the upper bound of the
    histogram bucket it falls in."""
    out: dict[str, Any] = {}
    for stage, now in after.items():
        then = before.get(stage, {"count": 0.0, "sum": 0.0, "buckets": {}})
        n = now["count"] - then["count"]
        if n <= 0:
            continue
        p95 = None
        for le in sorted(now["buckets"], key=lambda b: float("inf") if b == "+Inf" else float(b)):
            if now["buckets"][le] - then["buckets"].get(le, 0.0) >= 0.95 * n:
                p95 = le
                break
        out[stage] = {"n": int(n), "mean_s": (now["sum"] - then["sum"]) / n, "p95_at_most_s": p95}
    return out


def _writer(root: Path, docs: list[str], stop: threading.Event, rate: float) -> int:
    rng = random.Random(5)
    n = 0
    while not stop.wait(1.0 / rate):
        with open(root / rng.choice(docs), "a") as fh:
            fh.write(f"\nA line written while queries run, number {n}.\n")
        n += 1
    return n


def latency(index_folder: Path, work: Path, *, seed: int, n_docs: int, queries: int) -> dict[str, Any]:
    workspace(index_folder, work)
    root = work / "docs"
    docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
    qs = [q for q, _ in labelled_queries(seed, n_docs, n=queries)]
    out: dict[str, Any] = {"docs": n_docs, "queries": len(qs)}
    for ann in (False, True):
        label = "ann" if ann else "flat"
        # Without ANN, the service must not build one during the writes either (it would past 100k rows).
        # Every query pays for its embedding: the same queries run three times (warm-up, idle, while
        # writing), and the service's query cache would answer the later rounds without the model.
        config = write_config(work, store={"ann_min_rows": 1 if ann else 10**9}, embedding={"query_cache": 0})
        m = _maintain(config, ann=ann)
        out[f"maintenance_{label}"] = m
        log(f"query[{n_docs}] {label}: {m['rows']} rows, maintenance {m['seconds']:.1f} s, indexes {m['indexes']}")
        daemon = Daemon(config).start()
        try:
            _latencies(daemon, qs[:5])  # warm-up
            before = _stages(daemon)
            out[label] = summarize(_latencies(daemon, qs))
            out[f"{label}_stages"] = stage_summary(before, _stages(daemon))
            stop = threading.Event()
            written: list[int] = []
            t = threading.Thread(target=lambda w=written, s=stop: w.append(_writer(root, docs, s, 5.0)), daemon=True)
            t.start()
            time.sleep(1.0)
            out[f"{label}_while_writing"] = summarize(_latencies(daemon, qs))
            stop.set()
            t.join()
            out[f"{label}_writes_during"] = written[0] if written else 0
        finally:
            daemon.stop()
        out["rows"] = m["rows"]
        log(f"query[{n_docs}] {label}: p50 {out[label]['median'] * 1000:.0f} ms, p95 {out[label]['p95'] * 1000:.0f} ms; "
            f"while writing p95 {out[f'{label}_while_writing']['p95'] * 1000:.0f} ms; stages (mean ms) "
            + ", ".join(f"{k} {v['mean_s'] * 1000:.1f}" for k, v in out[f"{label}_stages"].items()))
    return out


UPDATE_LINE = re.compile(r"\nUpdate \d+ to this page\.\n\Z")


def edit_in_place(path: Path, i: int) -> None:
    """A single-document update: the page's update sentence says ``i`` now (added by its first update, then
    replaced), so the corpus keeps its size and the growth figures are the store's, not more content's."""
    text = path.read_text(encoding="utf-8")
    line = f"\nUpdate {i} to this page.\n"
    path.write_text(UPDATE_LINE.sub(lambda _: line, text) if UPDATE_LINE.search(text) else text + line,
                    encoding="utf-8")


def service_policy(store: Any, policy: Any) -> Callable[[], None]:
    """The service's maintenance after each batch, in one thread (``Maintenance.after_batch`` and its folder):
    merge small fragments every N commits, bring the indexes up to date past index_every_rows rows, and past
    fold_every_rows merge the new fragments and fold every index in one commit (the folder's thread does this
    beside the writer's commits)."""
    from syncd.service.maintenance import compaction_due, fold_due, indexing_due

    def after_commit() -> None:
        if indexing_due(store, policy):
            store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
        elif (kind := compaction_due(store, policy)) is not None:
            store.compact(remap=kind)
        if fold_due(store, policy):
            store.compact(remap="quick")
            store.fold_step()
            store.adopt_folds()

    return after_commit


def after_each_batch(rt: Any, step: Callable[[], None]) -> None:
    """Run ``step`` after each engine batch, as the writer asks maintenance after each one."""
    original = rt.engine.process

    def process(*args: Any, **kwargs: Any) -> Any:
        summary = original(*args, **kwargs)
        step()
        return summary

    rt.engine.process = process


def growth(index_folder: Path, work: Path, *, updates: int, queries: int, seed: int, n_docs: int,
           bare_updates: int | None = None) -> dict[str, Any]:
    """``updates`` single-document updates (one commit each) with the service's maintenance, and
    ``bare_updates`` (default: as many) without it."""
    import numpy as np
    import psutil

    from benchmarks.probe import StandInEmbedder
    from syncd import config as config_mod
    from syncd.runtime import Runtime
    from syncd.service.maintenance import MaintenancePolicy

    qs = [q for q, _ in labelled_queries(seed, n_docs, n=queries)]
    embedder = StandInEmbedder()
    vectors = embedder.encode(qs)
    out: dict[str, Any] = {"updates": updates, "docs": n_docs,
                           "bare_updates": updates if bare_updates is None else bare_updates}

    def query_p50(store: Any) -> dict[str, Any]:
        lat = []
        for q, v in zip(qs, vectors, strict=True):
            started = time.monotonic()
            store.search(np.asarray(v), q, k=10)
            lat.append(time.monotonic() - started)
        return summarize(lat)

    def paired(baseline: Any, store: Any, rounds: int = 5) -> dict[str, Any]:
        """The starting table and the updated one queried in alternation, in the same minute: the change
        in p50 is a ratio measured under the same machine load (this machine's load drifts by ±30%
        between minutes, more than the effect being measured)."""
        base_p50, now_p50 = [], []
        query_p50(baseline)  # warm both
        query_p50(store)
        for _ in range(rounds):
            base_p50.append(query_p50(baseline)["median"])
            now_p50.append(query_p50(store)["median"])
        b, n = statistics.median(base_p50), statistics.median(now_p50)
        return {"baseline_p50_s": b, "p50_s": n, "change": n / b - 1 if b else None, "rounds": rounds}

    for maintained in (False, True):
        label = "with_maintenance" if maintained else "without_maintenance"
        config = workspace(index_folder, work)
        root = work / "docs"
        docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
        rt = Runtime(config_mod.load(config), embedder=embedder)
        baseline = None
        try:
            rt.open()
            policy = MaintenancePolicy()
            # Start both variants from a compacted table, as the service leaves it; a copy of that table
            # stays as it is, for the paired comparison at the end.
            rt.store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
            rt.store.rows_since_indexed = 0
            baseline = _store(workspace(work, work.parent / f"{work.name}-baseline"))
            before = rt.store.stats()
            base = query_p50(rt.store)
            rss_before = psutil.Process().memory_info().rss
            if maintained:
                after_each_batch(rt, service_policy(rt.store, policy))
            rng = random.Random(seed)
            started = time.monotonic()
            commit_times = []
            count = updates if maintained else out["bare_updates"]
            for i in range(count):
                d = rng.choice(docs)
                edit_in_place(root / d, i)
                t0 = time.monotonic()
                rt.engine.process({"docs": {d: time.time()}})
                commit_times.append(time.monotonic() - t0)
                if (i + 1) % max(1, count // 5) == 0:
                    log(f"growth {label}: {i + 1}/{count} updates")
            took = time.monotonic() - started
            rss_after = psutil.Process().memory_info().rss
            after = rt.store.stats()
            lat = query_p50(rt.store)
            pair = paired(baseline, rt.store)
            idle_lat = idle_pair = None
            if maintained and rt.store.rows_since_indexed > 0:
                # What the service does once its writer has been idle for index_when_idle (2 s).
                rt.store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
                idle_lat = query_p50(rt.store)
                idle_pair = paired(baseline, rt.store)
            out[label] = {"updates": count, "seconds": took, "versions_before": before["table_version"],
                          "versions_after": after["table_version"], "fragments_before": before["fragments"],
                          "fragments_after": after["fragments"], "query_before_s": base, "query_after_s": lat,
                          "query_change": lat["median"] / base["median"] - 1 if base["median"] else None,
                          "update_s": summarize(commit_times),
                          "first_100_update_s": summarize(commit_times[:100]),
                          "last_100_update_s": summarize(commit_times[-100:]),
                          "maintenance_runs": rt.store.maintenance_runs, "compactions": rt.store.compactions,
                          "rows_before": before["rows"], "rows": after["rows"],
                          "query_after_idle_maintenance_s": idle_lat,
                          "rss_before": rss_before, "rss_after": rss_after, "paired": pair,
                          "paired_after_idle": idle_pair,
                          "query_change_after_idle": (idle_lat["median"] / base["median"] - 1
                                                      if idle_lat and base["median"] else None)}
            log(f"growth {label}: fragments {before['fragments']} -> {after['fragments']}, versions "
                f"{before['table_version']} -> {after['table_version']}, query p50 {base['median'] * 1000:.0f} -> "
                f"{lat['median'] * 1000:.0f} ms")
        finally:
            rt.close()
            shutil.rmtree(work.parent / f"{work.name}-baseline", ignore_errors=True)
    return out
