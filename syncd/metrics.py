"""Prometheus metrics (names per INTERFACE.md). Each engine gets its own registry so tests and
several engines in one process never collide.

Written for alerting: every labelled family has its samples from the start (each connector's are made when
the connector is added, with zeros), so ``rate()`` and ``absent()`` work before the first event; the
exposition leaves out the ``_created`` series (``exposition``); the histograms of work done for one
connector (freshness, embedding, commit) carry its name."""

from __future__ import annotations

import math
import platform
import threading
import time
from collections import deque
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import Metric

from syncd import __version__

SEARCH_OUTCOMES = ("ok", "bad_request", "error")
"""``syncd_search_requests_total{outcome}``: answered, refused as malformed (400), failed (500)."""
SYNC_ACTIONS = ("added", "changed", "deleted", "renamed")
POLL_TRIGGERS = ("schedule", "catch-up", "hook", "check")
DRIFT_KINDS = ("missing", "stale", "orphaned", "duplicated")
MAINTENANCE_OUTCOMES = ("ok", "failed")
QUERY_VECTOR_SOURCES = ("model", "cache")

RECENT_FRESHNESS_S = 900.0
"""The window of the status page's freshness p50/p95 (the histogram itself counts since start)."""
_RECENT_MAX = 2048


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.chunks_embedded = Counter("syncd_chunks_embedded", "Chunks sent to the embedding model.", registry=r)
        self.chunks_reused = Counter("syncd_chunks_reused", "Chunks of changed documents whose vectors were kept.",
                                     registry=r)
        self.docs_synced = Counter("syncd_docs_synced", "Documents written, by action.", ["connector", "action"],
                                   registry=r)
        self.sync_errors = Counter("syncd_sync_errors", "Documents or cycles that failed.", ["connector"], registry=r)
        self.freshness = Histogram(
            "syncd_freshness_seconds", "Source change -> committed and queryable, per connector: from the change "
            "first seen (a watcher's event), a push hook's arrival, or for a poll the change's own time (a "
            "commit's, a wiki edit's).", ["connector"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.polls = Counter("syncd_polls", "Polls of remote connectors started, by what asked for them (schedule, "
                             "catch-up, hook, check).", ["connector", "trigger"], registry=r)
        self.hooks = Counter("syncd_hooks", "Push hooks received (POST /hooks/NAME), by sender and outcome "
                             "(started, queued, ignored, unauthorized, malformed, too_large, unknown).",
                             ["connector", "sender", "outcome"], registry=r)
        self.last_success = Gauge("syncd_connector_last_success_timestamp_seconds",
                                  "Unix time of the connector's last successful cycle.", ["connector"], registry=r)
        self.backlog = Gauge("syncd_backlog", "Changes seen but not yet committed.", ["connector"], registry=r)
        self.commits = Counter("syncd_store_commits", "LanceDB commits made.", registry=r)
        self.commit_seconds = Histogram("syncd_commit_seconds", "Time of one LanceDB commit, by connector.",
                                        ["connector"], registry=r)
        self.embed_seconds = Histogram("syncd_embed_seconds", "Time of one embedding call, by connector.",
                                       ["connector"], registry=r)
        self.commit_retries = Counter("syncd_commit_retries", "Commits replayed because another writer of the store "
                                      "committed first.", registry=r)
        self.drift = Gauge("syncd_verify_drift", "Entries found out of sync by the last verify, by kind.", ["kind"],
                           registry=r)
        self.skipped_runs = Counter("syncd_scheduler_skipped_runs", "Scheduled runs skipped (still running).",
                                    ["job"], registry=r)
        self.watcher_restarts = Counter("syncd_watcher_restarts", "Watchers found dead and restarted.",
                                        ["connector"], registry=r)
        self.consecutive_failures = Gauge("syncd_connector_consecutive_failures",
                                          "Failed cycles in a row (the connector backs off while > 0).",
                                          ["connector"], registry=r)
        self.maintenance_runs = Counter("syncd_maintenance_runs", "Store maintenance runs, by outcome.", ["outcome"],
                                        registry=r)
        self.last_maintenance = Gauge("syncd_last_maintenance_timestamp_seconds",
                                      "Unix time of the last successful store maintenance.", registry=r)
        self.compactions = Counter("syncd_store_compactions", "Merges of small fragments between full maintenances.",
                                   registry=r)
        self.compaction_conflicts = Counter(
            "syncd_store_compaction_conflicts", "Compactions beside the writer left for later because a commit "
            "touched their fragments first.", registry=r)
        self.index_folds = Counter("syncd_index_folds", "Single indexes brought up to date by the folder thread.",
                                   registry=r)
        self.query_vectors = Counter("syncd_query_vectors", "Query vectors for /search, by source (model, cache).",
                                     ["source"], registry=r)
        self.fragments = Gauge("syncd_store_fragments", "Fragments in the live table after the last maintenance.",
                               registry=r)
        self.docs_deferred = Counter("syncd_docs_deferred", "Documents whose embedding went past a cycle's budget "
                                     "and was finished in a later cycle.", ["connector"], registry=r)
        self.docs_abandoned = Counter("syncd_docs_abandoned", "Documents whose work in flight was dropped because "
                                      "they changed or were deleted again meanwhile.", ["connector"], registry=r)
        self.stalls = Counter("syncd_stalls", "Times a connector's backlog stopped shrinking (state stalled).",
                              ["connector"], registry=r)
        self.failed_docs = Gauge("syncd_failed_docs", "Documents whose last attempt failed for a reason that may "
                                 "pass (retried every cycle; skips not counted).", ["connector"], registry=r)
        self.held_deletes = Gauge("syncd_held_deletes", "Watcher-reported deletions held until their burst is "
                                  "over and judged as a whole by the mass-deletion guard.", ["connector"], registry=r)

        self.search_seconds = Histogram(
            "syncd_search_seconds", "Time of one /search by stage: embed (the query vector), vector and fulltext "
            "(the two legs, which run side by side), fusion, rerank, dedup (collapsing identical texts and "
            "finding where else they occur), total.", ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.model_load_seconds = Gauge(
            "syncd_model_load_seconds", "Seconds the writer's embedding model took to load at this start (imports "
            "and weights, or the ONNX Runtime session): the fixed start cost, apart from the work.", registry=r)
        self.model_export_seconds = Gauge(
            "syncd_model_export_seconds", "Seconds this start spent exporting the model to ONNX (a one-time step; "
            "0 when the export was found in the cache or the backend needs none).", registry=r)
        self.embedding_backend = Gauge(
            "syncd_embedding_backend", "1 for the embedding backend in use (torch, onnx, onnx-int8), with the "
            "config's setting (auto or the backend it names).", ["backend", "configured"], registry=r)

        self.vector_legs = Counter(
            "syncd_search_vector_legs", "Vector legs of /search by what answered: memory (the vectors held by "
            "[search] vector_cache_mb, while the table has no ANN index) or lance (LanceDB's own search).",
            ["source"], registry=r)
        self.vector_cache_bytes = Gauge(
            "syncd_search_vector_cache_bytes", "Bytes of vectors the daemon holds for the vector leg "
            "([search] vector_cache_mb).", registry=r)
        self.search_requests = Counter("syncd_search_requests", "/search requests, by outcome (ok, bad_request: "
                                       "answered 400, error: answered 500).", ["outcome"], registry=r)
        self.connector_docs = Gauge("syncd_connector_docs", "Documents of the connector in the index.",
                                    ["connector"], registry=r)
        self.connector_chunks = Gauge("syncd_connector_chunks", "Chunks of the connector in the index.",
                                      ["connector"], registry=r)
        self.build_info = Info("syncd_build", "The running syncd: its version and those of Python and LanceDB.",
                               registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version(),
                              "lancedb": _version_of("lancedb")})
        for family, labels in ((self.search_requests, SEARCH_OUTCOMES), (self.drift, DRIFT_KINDS),
                               (self.maintenance_runs, MAINTENANCE_OUTCOMES),
                               (self.query_vectors, QUERY_VECTOR_SOURCES), (self.vector_legs, ("memory", "lance"))):
            for value in labels:
                family.labels(value)
        from syncd.search import STAGES

        for stage in STAGES:
            self.search_seconds.labels(stage=stage)
        # Hooks are counted by sender at their first arrival; the series of unknown targets exists from the start.
        self.hooks.labels(connector="", sender="", outcome="unknown")
        self._recent: dict[str, deque[tuple[float, float]]] = {}
        self._recent_lock = threading.Lock()

    def _per_connector(self) -> list[Any]:
        return [self.docs_synced, self.sync_errors, self.freshness, self.last_success, self.backlog,
                self.commit_seconds, self.embed_seconds, self.watcher_restarts, self.consecutive_failures,
                self.docs_deferred, self.docs_abandoned, self.stalls, self.failed_docs, self.held_deletes,
                self.connector_docs, self.connector_chunks, self.polls]

    def add_connector(self, name: str) -> None:
        """Every per-connector sample of ``name``, at zero (a last-success time of 0 means never)."""
        for family in self._per_connector():
            if family is self.docs_synced:
                for action in SYNC_ACTIONS:
                    family.labels(connector=name, action=action)
            elif family is self.polls:
                for trigger in POLL_TRIGGERS:
                    family.labels(connector=name, trigger=trigger)
            else:
                family.labels(connector=name)

    def remove_connector(self, name: str) -> None:
        """A connector removed from the config takes its samples with it."""
        for family in self._per_connector():
            if family is self.docs_synced:
                for action in SYNC_ACTIONS:
                    _remove(family, name, action)
            elif family is self.polls:
                for trigger in POLL_TRIGGERS:
                    _remove(family, name, trigger)
            else:
                _remove(family, name)
        with self._recent_lock:
            self._recent.pop(name, None)

    def add_job(self, job: str) -> None:
        self.skipped_runs.labels(job=job)
    def observe_search(self, seconds: dict[str, float]) -> None:
        """One search's seconds by stage (``syncd.search.STAGES``)."""
        for stage, value in seconds.items():
            self.search_seconds.labels(stage=stage).observe(value)

    def count_query_vector(self, hit: bool) -> None:
        self.query_vectors.labels(source="cache" if hit else "model").inc()

    def observe_freshness(self, connector: str, seconds: float) -> None:
        self.freshness.labels(connector=connector).observe(seconds)
        with self._recent_lock:
            self._recent.setdefault(connector, deque(maxlen=_RECENT_MAX)).append((time.time(), seconds))

    def recent_freshness(self, connector: str | None = None, window_s: float = RECENT_FRESHNESS_S) -> dict[str, Any]:
        """p50/p95 of the freshness of the commits in the last ``window_s`` seconds (of one connector, or all);
        None where nothing was committed in the window."""
        since = time.time() - window_s
        with self._recent_lock:
            series = [self._recent.get(connector, ())] if connector is not None else list(self._recent.values())
            values = sorted(s for d in series for at, s in d if at >= since)
        return {"window_s": window_s, "count": len(values), "p50_s": _quantile(values, 0.5),
                "p95_s": _quantile(values, 0.95)}


def _quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(len(values) * q))
    return round(values[rank - 1], 4)


def _remove(family: Any, *labels: str) -> None:
    try:
        family.remove(*labels)
    except KeyError:
        pass


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class _WithoutCreated:
    """A registry's metrics without their ``_created`` samples (a timestamp per series that no alert uses)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            kept = [s for s in family.samples if not s.name.endswith("_created")]
            if len(kept) != len(family.samples):
                family.samples = kept
            yield family


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of ``registry``, without ``_created`` series."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(_WithoutCreated(registry)))

