"""The service's life cycle (`syncd run`): build the parts, start them, run the main loop, reload on SIGHUP,
drain and stop on SIGTERM/SIGINT. The parts are rooms of their own (see ``syncd.service``); this class holds
what they share (config, runtime, queue, metrics, the stop event) and the read side that HTTP calls."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from syncd import search as search_mod
from syncd.config import Config
from syncd.coordination import store_kwargs
from syncd.embedding import CrossEncoderReranker, QueryVectors, reranker_from_config
from syncd.errors import ConfigError, SyncdError
from syncd.http import Endpoints, HttpServer
from syncd.metrics import Metrics
from syncd.models import Change
from syncd.notify import notify, watchdog_interval
from syncd.runtime import Runtime
from syncd.search import SearchOptions
from syncd.service import status as status_mod
from syncd.service.maintenance import Maintenance
from syncd.service.queue import WorkQueue
from syncd.service.requests import Requests
from syncd.service.writer import StoppableEmbedder, Writer
from syncd.state import read_json, write_json_atomic
from syncd.store import Store

log = structlog.get_logger("syncd.daemon")


def hook_secrets(config: Config) -> dict[str, str]:
    """Each connector's webhook secret, read now (a missing variable or file is a ConfigError naming the key)."""
    from syncd.config import PushConfig

    secrets = {}
    for connector in config.connectors:
        if isinstance(connector, PushConfig):
            secret = connector.webhook_secret(config.base_dir)
            if secret is not None:
                secrets[connector.name] = secret
    return secrets


class Service:
    """`syncd run`: catch up, then watch and poll until told to stop.

    Threads: the writer (``writer.py``), the folder (``maintenance.py``), watchdog observers and the
    APScheduler scheduler (they only push into the queue), the HTTP server (it only reads, through its own
    reader handle), and the main thread (signals, sd_notify, watcher health, operator requests, stalls).
    """

    def __init__(self, config: Config, *, embedder: Any | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.queue = WorkQueue()
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.runtime: Runtime | None = None
        self._embedder = embedder
        self.reader: Store | None = None
        self.query_embedder: Any = None
        self.query_vectors: QueryVectors | None = None
        self.reranker: CrossEncoderReranker | None = None
        self.http: HttpServer | None = None
        self.mcp: Any = None
        self.scheduler: Any = None
        self.watches: dict[str, Any] = {}
        self.last_verify: dict[str, Any] | None = None
        self.writer = Writer(self)
        self.maintenance = Maintenance(self)
        self.stalls = status_mod.Stalls(self)
        self.requests = Requests(self)
        self.hook_secrets: dict[str, str] = {}
        """Connector name -> its webhook secret (connectors without one take no hooks)."""
        self._reload_requested = threading.Event()
        self._status_line = ""
        self._wrote_daemon_json = False
        self._seen_version: int | None = None
        self._next_overwrite_check = 0.0
        self.overwrites_seen = 0
        """Overwrite commits (a reindex replacing the table's content) this daemon reconciled after."""

    # -- start -----------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        token = self._token()
        self.hook_secrets = hook_secrets(cfg)
        self.reranker = reranker_from_config(cfg)  # a missing or broken model fails the start, named
        tokens = self._tokens()
        self.runtime = Runtime(cfg, embedder=self._embedder, metrics=self.metrics)
        rt = self.runtime
        rt.engine.embedder = StoppableEmbedder(rt.engine.embedder, self.stopping, cfg.embedding.batch_size)
        needs_rebuild = rt.open()
        for name in rt.connectors:
            self.metrics.add_connector(name)
        self.update_index_gauges()
        notify("STATUS=loading the embedding model")
        self._load_models()
        self.reader = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=rt.embedder.dim,
                            signature=rt.signature, read_consistency_interval=cfg.store.read_consistency_interval,
                            **store_kwargs(cfg, rt.shared))
        self._size_vector_cache(cfg.search.vector_cache_mb)
        self.mcp = self._start_mcp()
        self.http = HttpServer(cfg.http.host, cfg.http.port, Endpoints(
            healthy=self.healthy, ready=self.ready, status=self.status, metrics=self.metrics_text,
            search=self.search, page=self.page, token=token, tokens=tokens,
            require_token=not cfg.http.is_loopback, require_principals=cfg.search.require_principals,
            problems=lambda: status_mod.health_problems(self),
            connectors=self._connector_names,
            ready_problems=lambda: status_mod.ready_problems(self), hook=self.hook,
            changes=self.changes, document=self.document, mcp=self.mcp.handle,
            count_search=lambda outcome: self.metrics.search_requests.labels(outcome=outcome).inc()))
        self.http.start()
        self.reader.warm_vectors()
        write_json_atomic(cfg.state_dir / "daemon.json", {"pid": os.getpid(), "url": self.http.url,
                                                          "started_at": self.started_at})
        self._wrote_daemon_json = True
        log.info("http.listening", url=self.http.url)
        if needs_rebuild:
            def rebuild() -> None:
                rt.engine.rebuild()

            self.queue.push_task("rebuild", rebuild)
        for name in rt.connectors:
            self.writer.initial_pending.add(name)
            self.queue.push(Change(connector=name, kind="rescan", doc_id=""))
        # Watches first: a file created while the catch-up lists its folder is then either in the listing or
        # in an event queued behind the catch-up, never in neither.
        for name, connector in rt.connectors.items():
            self._start_watch(name, connector)
        self.writer.start()
        self.maintenance.start_folder()
        self._start_scheduler()
        # Ready once the store is open and every catch-up has started (not finished: a big first sync
        # must not hit systemd's start timeout). /readyz turns 200 when they have finished.
        notify("READY=1")
        notify(f"STATUS=catching up: 0/{len(rt.connectors)} connector(s) done")

    def _token(self) -> str | None:
        """The trusted token. On loopback it is optional (a caller without one is anonymous), and needed to
        act as a principal; off loopback every caller needs a token."""
        cfg = self.config
        from syncd.config import resolve_secret

        if cfg.http.is_loopback:
            if not cfg.http.token_env and not cfg.http.token_file:
                return None
            return resolve_secret(cfg.http.token_env, key="http.token_file" if cfg.http.token_file else "http.token_env",
                                  file=cfg.http.token_file, base_dir=cfg.base_dir)

        if not cfg.http.token_env and not cfg.http.token_file:
            raise ConfigError(f"{cfg.source}: http.token_env: required (or http.token_file) when http.bind "
                              f"({cfg.http.bind}) is not a loopback address", key="http.token_env")
        return resolve_secret(cfg.http.token_env, key="http.token_file" if cfg.http.token_file else "http.token_env",
                              file=cfg.http.token_file, base_dir=cfg.base_dir)

    def _connector_names(self) -> Any:
        return self.runtime.engine.connectors if self.runtime is not None else ()

    def _start_mcp(self) -> Any:
        """The MCP tools on this service's read side, served at /mcp (``syncd.mcp_server``)."""
        from syncd.mcp_server import AsgiBridge, build_server

        bridge = AsgiBridge(build_server(_ServiceIndex(self), connectors=self._connector_names,
                                         require_principals=self.config.search.require_principals),
                            loopback=self.config.http.is_loopback)
        bridge.start()
        return bridge

    def _tokens(self) -> dict[str, tuple[str, ...]]:
        """The limited tokens ([[http.tokens]]), each with the principals it may act as."""
        from syncd.config import resolve_secret

        out: dict[str, tuple[str, ...]] = {}
        for i, t in enumerate(self.config.http.tokens):
            key = f"http.tokens[{i}].token_file" if t.token_file else f"http.tokens[{i}].token_env"
            if not t.token_env and not t.token_file:
                raise ConfigError(f"{self.config.source}: http.tokens[{i}]: token_env or token_file is required",
                                  key=f"http.tokens[{i}]")
            value = resolve_secret(t.token_env, key=key, file=t.token_file, base_dir=self.config.base_dir)
            assert value is not None
            out[value] = t.principals
        return out

    def _load_models(self) -> None:
        """The writer and /search each get their own model instance on one intra-op thread: an edit's
        embedding and a query then run side by side on two cores instead of queueing on one lock, and the
        model's thread pool does not oversubscribe the cores (``benchmarks/profile.py`` measures it)."""
        cfg = self.config
        assert self.runtime is not None
        rt = self.runtime
        self.query_embedder = rt.embedder
        if self._embedder is None:
            from syncd.runtime import build_embedder

            self.query_embedder = build_embedder(cfg)
            if cfg.embedding.threads == 0:
                for emb in (rt.embedder, self.query_embedder):
                    emb.threads = max(1, (os.cpu_count() or 1) - 1)
                if hasattr(rt.embedder, "burst_threads"):
                    rt.embedder.burst_threads = os.cpu_count() or 1
        for emb in {id(e): e for e in (rt.embedder, self.query_embedder)}.values():
            if hasattr(emb, "load"):
                emb.load()
        self.query_vectors = QueryVectors(self.query_embedder, cfg.embedding.query_cache,
                                          on_lookup=self.metrics.count_query_vector)

    def _start_watch(self, name: str, connector: Any) -> None:
        try:
            watch = connector.watch(self.queue.push)
        except SyncdError as exc:
            log.error("watch.failed", connector=name, error=str(exc))
            assert self.runtime is not None
            self.runtime.engine.status[name].last_error = str(exc)
            return
        if watch is not None:
            self.watches[name] = watch

    def _start_scheduler(self) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.schedulers.background import BackgroundScheduler

        assert self.runtime is not None
        sched = BackgroundScheduler(daemon=True)
        for name, connector in self.runtime.connectors.items():
            self._schedule_connector(sched, name, connector)
        sync_cfg = self.config.sync
        if sync_cfg.maintenance_interval:
            sched.add_job(lambda: self.queue.push_task("maintenance", self.maintenance.run), "interval",
                          seconds=sync_cfg.maintenance_interval, id="maintenance", max_instances=1, coalesce=True,
                          misfire_grace_time=int(sync_cfg.maintenance_interval))
        if sync_cfg.verify_interval:
            sched.add_job(lambda: self.queue.push_task("verify", self._verify), "interval",
                          seconds=sync_cfg.verify_interval, id="verify", max_instances=1, coalesce=True,
                          misfire_grace_time=int(sync_cfg.verify_interval))

        def skipped(event: Any) -> None:
            self.metrics.skipped_runs.labels(job=event.job_id).inc()

        for job in sched.get_jobs():
            self.metrics.add_job(job.id)
        sched.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
        sched.start()
        self.scheduler = sched

    def _schedule_connector(self, sched: Any, name: str, connector: Any) -> None:
        interval = connector.poll_interval
        if interval:
            def poll_job() -> None:
                if not self.writer.backing_off(name, f"poll:{name}"):
                    self.writer.poll_in_background(name)

            sched.add_job(poll_job, "interval", seconds=interval, id=f"poll:{name}", max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, math.ceil(interval)))
            self.metrics.add_job(f"poll:{name}")
        check = connector.check_interval if interval else None
        if check:
            def check_job() -> None:
                # Only between polls: a poll in flight or a connector backing off needs no news.
                if self.writer.polling(name) or self.writer.backing_off(name, f"check:{name}"):
                    return
                try:
                    changed = connector.has_changes()
                except Exception as exc:  # noqa: BLE001 - a failed check is a miss; the poll reports errors
                    log.debug("check.failed", connector=name, error=str(exc))
                    return
                if changed:
                    self.writer.request_poll(name, trigger="check")

            sched.add_job(check_job, "interval", seconds=check, id=f"check:{name}", max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, math.ceil(check)))
            self.metrics.add_job(f"check:{name}")
        recon = connector.reconcile_interval
        if recon:
            def reconcile_job() -> None:
                if not self.writer.backing_off(name, f"reconcile:{name}"):
                    self.queue.push(Change(connector=name, kind="rescan", doc_id=""))

            sched.add_job(reconcile_job, "interval", seconds=recon, id=f"reconcile:{name}", max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, math.ceil(recon)))
            self.metrics.add_job(f"reconcile:{name}")

    # -- the main loop ---------------------------------------------------------------------------------
    def run_forever(self) -> int:
        """Main loop: health checks and watchdog pings until SIGTERM/SIGINT."""
        ping = watchdog_interval()
        last_ping = 0.0
        while not self.stopping.wait(0.5):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self._check_watches()
            self._check_overwrites()
            self.requests.check()
            self.stalls.check()
            if ping and time.time() - last_ping >= ping and self.healthy():
                notify("WATCHDOG=1")
                last_ping = time.time()
        return self.shutdown()

    def install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            self.queue.wake_all()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())

    def status_line(self) -> None:
        """STATUS= for `systemctl status` and the per-connector index gauges (writer thread, after each batch)."""
        self._status_line = status_mod.status_line(self, self._status_line)
        self.update_index_gauges()

    def update_index_gauges(self) -> None:
        """``syncd_connector_docs`` and ``syncd_connector_chunks`` from the engine's view of the index (the
        writer's thread, or before it starts)."""
        assert self.runtime is not None
        engine = self.runtime.engine
        for name in list(engine.connectors):
            docs = engine.docs(name)
            self.metrics.connector_docs.labels(connector=name).set(len(docs))
            self.metrics.connector_chunks.labels(connector=name).set(sum(d.chunks for d in docs.values()))

    def _verify(self) -> None:
        from syncd.verify import verify

        assert self.runtime is not None
        report = verify(self.runtime)
        self.last_verify = {**report.as_dict(), "at": time.time()}
        for kind in ("missing", "stale", "orphaned", "duplicated", "foreign"):
            self.metrics.drift.labels(kind=kind).set(len(getattr(report, kind)))

    def _check_overwrites(self) -> None:
        """A store shared with other daemons: when a commit since the last look is an Overwrite (a reindex
        replaced the table's content; FACTS.md: it drops whatever others committed before it), this daemon
        reads its view of the table again and re-lists its connectors, so every document it committed
        meanwhile, or that changed during the reindex, is synced again (the index is the truth)."""
        if self.runtime is None or self.runtime.shared is None or self.reader is None:
            return
        now = time.monotonic()
        if now < self._next_overwrite_check:
            return
        self._next_overwrite_check = now + max(0.5, self.config.store.lease_ttl / 3)
        reader = self.reader
        try:
            reader.refresh()
            reader.table.checkout_latest()
            version = int(reader.table.version)
            last = self._seen_version
            self._seen_version = version
            if last is None or version <= last:
                return
            ops = reader.version_ops(last + 1, version)
        except SyncdError as exc:
            log.warning("store.version_check_failed", error=str(exc))
            return
        overwrites = [v for v, op in ops if op == "Overwrite"] + reader.replacements(last + 1, version)
        if not overwrites:
            return
        log.warning("store.overwritten", versions=overwrites,
                    action="reading the table again and re-listing this daemon's connectors")
        self._reconcile_all()

    def _reconcile_all(self) -> None:
        """Queue (for the writer) a fresh read of the live table, then a full listing of every connector."""
        assert self.runtime is not None
        rt = self.runtime
        self.overwrites_seen += 1

        def reconcile_all() -> None:
            rt.store.table.checkout_latest()
            rt.engine.load_index()
            for name in rt.connectors:
                self.queue.push(Change(connector=name, kind="rescan", doc_id=""))

        self.queue.push_task("reconcile-after-overwrite", reconcile_all)

    def _check_watches(self) -> None:
        assert self.runtime is not None
        for name, watch in list(self.watches.items()):
            if not watch.is_alive() and not self.stopping.is_set():
                log.error("watch.died", connector=name, action="restarting and rescanning")
                self.metrics.watcher_restarts.labels(connector=name).inc()
                watch.stop()
                del self.watches[name]
                connector = self.runtime.connectors.get(name)
                if connector is not None:
                    self._start_watch(name, connector)
                    self.queue.push(Change(connector=name, kind="rescan", doc_id=""))

    # -- stop ------------------------------------------------------------------------------------------
    def shutdown(self) -> int:
        notify("STOPPING=1")
        self.stopping.set()
        notify("STATUS=stopping: finishing or abandoning the batch in flight")
        for watch in self.watches.values():
            watch.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.queue.wake_all()
        self.maintenance.stop()
        self.writer.stop()
        if self.http is not None:
            self.http.stop()
        if self.mcp is not None:
            self.mcp.stop()
        # Only this daemon's own address: a process refused by the writer lock never wrote one, and the
        # file it would remove belongs to the daemon that holds the lock.
        if self._wrote_daemon_json:
            path = self.config.state_dir / "daemon.json"
            record = read_json(path)
            if isinstance(record, dict) and record.get("pid") == os.getpid():
                path.unlink(missing_ok=True)
        if self.runtime is not None:
            self.runtime.close()
        log.info("daemon.stopped")
        return 0

    # -- reload ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config; start, stop or restart connectors whose settings changed; load the
        reranker again when ``[search]`` names another one (or none); the rest of ``[search]`` applies to
        the next query."""
        from syncd import config as config_mod
        from syncd.runtime import build_connector

        assert self.runtime is not None
        reranker = self.reranker
        try:
            new = config_mod.load(self.config.source)
            secrets = hook_secrets(new)
            old_search, new_search = self.config.search, new.search
            if (new_search.reranker and new.resolve_path(new_search.reranker),
                    new_search.rerank_batch_size) != (old_search.reranker and self.config.resolve_path(
                        old_search.reranker), old_search.rerank_batch_size):
                # Loaded before anything changes: a model that does not load rejects the whole reload,
                # as it fails a start; searches never run with a reranker other than the config's.
                reranker = reranker_from_config(new)
        except ConfigError as exc:
            log.error("config.reload_rejected", error=str(exc), action="keeping the running config")
            return
        old_by_name = {c.name: c for c in self.config.connectors}
        new_by_name = {c.name: c for c in new.connectors}
        rt = self.runtime
        # Only connectors change without a restart; other sections keep their running values.
        fixed = [key for key in ("store", "embedding", "chunking", "http", "state", "limits", "logging")
                 if getattr(new, key) != getattr(self.config, key)]
        if fixed:
            log.warning("config.restart_required", sections=fixed,
                        action="these sections keep their running values until syncd is restarted")
            new = new.model_copy(update={key: getattr(self.config, key) for key in fixed})

        def apply() -> None:
            for name in old_by_name:
                if name not in new_by_name or new_by_name[name] != old_by_name[name]:
                    if name in self.watches:
                        self.watches.pop(name).stop()
                    connector = rt.connectors.pop(name, None)
                    if connector is not None:
                        connector.close()
                    if name not in new_by_name:
                        # A connector removed from the config takes its documents out of the index.
                        deleted = rt.engine.drop_connector(name)
                        rt.drop_connector_lease(name)
                        self.metrics.remove_connector(name)
                        log.info("connector.removed", connector=name, docs_deleted=deleted)
                    else:
                        rt.engine.remove_connector(name)
                    self.writer.forget(name)
                    if self.scheduler is not None:
                        for job_id in (f"poll:{name}", f"check:{name}", f"reconcile:{name}"):
                            if self.scheduler.get_job(job_id):
                                self.scheduler.remove_job(job_id)
            for name, cc in new_by_name.items():
                if name in rt.connectors:
                    continue
                try:
                    rt.add_connector_lease(name)
                except ConfigError as exc:  # another daemon owns it: this one leaves it alone
                    log.error("connector.refused", connector=name, error=str(exc))
                    continue
                connector = build_connector(new, cc, rt.state)
                rt.connectors[name] = connector
                rt.engine.add_connector(connector)
                self.metrics.add_connector(name)
                self.writer.initial_pending.add(name)
                self._start_watch(name, connector)  # before its catch-up starts (see start())
                self.queue.push(Change(connector=name, kind="rescan", doc_id=""))
                if self.scheduler is not None:
                    self._schedule_connector(self.scheduler, name, connector)
            self.config = new
            self.hook_secrets = secrets
            if reranker is not self.reranker:
                self.reranker = reranker
                log.info("search.reranker_loaded", reranker=str(reranker.path) if reranker else None)
            self.maintenance.reload(new)
            self._size_vector_cache(new.search.vector_cache_mb)
            log.info("config.reloaded", connectors=sorted(new_by_name))
            notify("STATUS=config reloaded: " + ", ".join(sorted(new_by_name)))

        self.queue.push_task("reload", apply)

    def _size_vector_cache(self, mb: int) -> None:
        """``[search] vector_cache_mb`` on the reader (at start and on reload), its figures in the metrics."""
        assert self.reader is not None
        cache = self.reader.size_vector_cache(mb)
        if cache is not None:
            cache.on_leg = lambda source: self.metrics.vector_legs.labels(source=source).inc()
            self.metrics.vector_cache_bytes.set_function(lambda: cache.nbytes)

    # -- read side (HTTP) ------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return not status_mod.health_problems(self)

    def ready(self) -> bool:
        return self.healthy() and not self.writer.initial_pending and not self.stalls.since

    def metrics_text(self) -> bytes:
        from syncd.metrics import exposition

        return exposition(self.metrics.registry)

    def search(self, q: str, options: SearchOptions) -> dict[str, Any]:
        assert self.reader is not None and self.query_vectors is not None
        self.reader.refresh()
        vectors = self.query_vectors
        cfg = self.config.search
        found = search_mod.search(self.reader, lambda: vectors(q), q, options, default_min_relevance=cfg.min_relevance,
                                  reranker=self.reranker, candidates=cfg.candidates)
        self.metrics.observe_search(found.seconds)
        return {"query": q, "table_version": found.table_version, "results": found.results}

    def hook(self, name: str, headers: Mapping[str, str], body: bytes | None) -> tuple[int, dict[str, Any]]:
        """POST /hooks/NAME: authenticate with the connector's webhook secret, then ask for its poll now.
        Nothing but a poll ever runs: the body is only read for whether the event concerns the connector."""
        from syncd import hooks

        arrived = time.time()
        secret = self.hook_secrets.get(name)
        cfg = next((c for c in self.config.connectors if c.name == name), None)
        if cfg is None or secret is None:
            self.metrics.hooks.labels(connector="", sender="", outcome="unknown").inc()
            return 404, {"error": f"no connector {name!r} takes hooks (it needs webhook_secret_env or "
                                  f"webhook_secret_file)"}
        if body is None:
            self.metrics.hooks.labels(connector=name, sender="", outcome="too_large").inc()
            return 413, {"error": "the hook's body is over the size limit"}
        target = hooks.Target(kind=cfg.type, secret=secret, branch=getattr(cfg, "branch", None))
        verdict = hooks.check(target, headers, body)
        if verdict.outcome == "unauthorized":
            self.metrics.hooks.labels(connector=name, sender=verdict.sender, outcome="unauthorized").inc()
            log.warning("hook.unauthorized", connector=name, sender=verdict.sender, reason=verdict.reason)
            return 401, {"error": verdict.reason}
        if verdict.outcome == "malformed":
            self.metrics.hooks.labels(connector=name, sender=verdict.sender, outcome="malformed").inc()
            return 400, {"error": verdict.reason}
        if verdict.outcome == "ignored":
            self.metrics.hooks.labels(connector=name, sender=verdict.sender, outcome="ignored").inc()
            log.info("hook.ignored", connector=name, sender=verdict.sender, reason=verdict.reason)
            return 204, {}
        poll = self.writer.request_poll(name, trigger="hook", pushed_at=arrived, docs=verdict.hints)
        if poll is None:
            self.metrics.hooks.labels(connector=name, sender=verdict.sender, outcome="unknown").inc()
            return 404, {"error": f"connector {name!r} is not polled: a hook has nothing to start"}
        self.metrics.hooks.labels(connector=name, sender=verdict.sender, outcome=poll).inc()
        log.info("hook.accepted", connector=name, sender=verdict.sender, poll=poll)
        return 202, {"connector": name, "poll": poll}
    def document(self, *, doc_id: str | None = None, uri: str | None = None, connector: str | None = None,
                 principals: Sequence[str] | None = None) -> dict[str, Any] | None:
        """/document: a document's current indexed text (``syncd.documents.read_document``), when a caller
        holding ``principals`` may read it (its rows' ``acl``, as search filters them); else None."""
        from syncd.documents import read_document

        assert self.reader is not None
        self.reader.refresh()
        return read_document(self.reader, doc_id=doc_id, uri=uri, connector=connector, principals=principals)

    def changes(self, *, viewer: frozenset[str] | None = None, **params: Any) -> dict[str, Any]:
        """/changes: a page of the change journal (``syncd.audit.changes_page``), read through the reader. A
        caller that is not trusted sees the doc ids of documents it may read now; the others' entries keep
        their action, counts and times only."""
        from syncd.acl import readable
        from syncd.audit import changes_page

        assert self.reader is not None and self.runtime is not None
        page = changes_page(self.reader.journal, **params)
        if viewer is None:
            return page
        engine = self.runtime.engine
        shown = []
        for entry in page.get("changes", []):
            info = engine.docs(entry.get("connector", "")).get(entry.get("doc_id", ""))
            if info is not None and readable(info.acl, viewer):
                shown.append(entry)
            else:
                shown.append({**entry, "doc_id": None, "old_doc_id": None, "restricted": True})
        return {**page, "changes": shown}

    def status(self, viewer: frozenset[str] | None = None) -> dict[str, Any]:
        assert self.runtime is not None
        # The writer mutates the engine's dictionaries while this reads them: a read that races a
        # resize is simply taken again.
        for _ in range(4):
            try:
                return status_mod.build_status(self.runtime, self, viewer)
            except RuntimeError as exc:
                if "changed size during iteration" not in str(exc):
                    raise
        return status_mod.build_status(self.runtime, self, viewer)

    def page(self, viewer: frozenset[str] | None = None) -> str:
        return status_mod.render_page(self.status(viewer))


class _ServiceIndex:
    """The service's read side as the MCP tools see an index (``syncd.api.Index``'s interface)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def query(self, text: str, k: int = 10, connector: str | None = None, **filters: Any) -> dict[str, Any]:
        return self.service.search(text, search_mod.options_from_kwargs(k=k, connector=connector, **filters))

    def document(self, **kwargs: Any) -> dict[str, Any] | None:
        return self.service.document(**kwargs)

    def sources(self) -> list[dict[str, Any]]:
        from syncd.remote import source_entry

        return [source_entry(c) for c in self.service.status(frozenset())["connectors"]]
