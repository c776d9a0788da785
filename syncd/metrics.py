"""Prometheus metrics (names per INTERFACE.md). Each engine gets its own registry so tests and
several engines in one process never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.commit_seconds = Histogram("syncd_commit_seconds", "Time of one LanceDB commit.", registry=r)
        self.commit_retries = Counter("syncd_commit_retries", "Commits replayed because another writer of the store "
                                      "committed first.", registry=r)
        self.embed_seconds = Histogram("syncd_embed_seconds", "Time of one embedding call.", registry=r)
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

    def observe_search(self, seconds: dict[str, float]) -> None:
        """One search's seconds by stage (``syncd.search.STAGES``)."""
        for stage, value in seconds.items():
            self.search_seconds.labels(stage=stage).observe(value)

    def count_query_vector(self, hit: bool) -> None:
        self.query_vectors.labels(source="cache" if hit else "model").inc()
