"""The long-running service (`syncd run`).

Threads:

* the writer: the only thread that touches the engine and the store's write path. It takes everything
  pending at once and commits it as one batch, so an isolated save is processed at once (no quiet
  period) and a burst batches itself while the previous batch is being embedded and committed;
* watchdog observers, which only push hints into the work queue;
* an APScheduler background scheduler, whose jobs (reconcile, poll, maintenance, verify) only enqueue;
* the HTTP server, which only reads (through its own reader handle on the store);
* the main thread: signals, sd_notify and the watcher health check.
"""

from __future__ import annotations

import html
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd import __version__
from syncd.config import Config
from syncd.embedding import QueryVectors
from syncd.errors import ConfigError, SyncdError
from syncd.http import Endpoints, HttpServer
from syncd.metrics import Metrics
from syncd.models import Change
from syncd.notify import notify, watchdog_interval
from syncd.runtime import Runtime
from syncd.state import write_json_atomic
from syncd.store import MaintenancePolicy, Store

log = structlog.get_logger("syncd.daemon")

_BACKOFF_BASE_S = 60.0
"""First wait after a failure of a connector that has neither a poll nor a reconcile interval."""
_MAINTENANCE_GRACE = 3.0
"""Maintenance is overdue (a health failure) after this many maintenance intervals without a success."""
_MAINTENANCE_RETRY_S = 60.0
"""After a failed compaction or maintenance, commits and idle moments leave it alone this long."""


class StopRequested(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised in the writer between embedding slices once SIGTERM/SIGINT arrived: the batch in flight is
    abandoned before its commit, so no document is ever half-written and the state never runs ahead.
    A BaseException so the engine's per-document error handling lets it through."""


class _StoppableEmbedder:
    """Wraps the embedder: embeds in slices and gives up between them once the service is stopping."""

    def __init__(self, inner: Any, stopping: threading.Event, slice_size: int) -> None:
        self._inner = inner
        self._stopping = stopping
        self._slice = max(1, slice_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: Any) -> Any:
        import numpy as np

        texts = list(texts)
        parts = []
        for start in range(0, max(len(texts), 1), self._slice):
            if self._stopping.is_set():
                raise StopRequested
            parts.append(self._inner.encode(texts[start:start + self._slice]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class Backoff:
    """A connector that keeps failing waits interval * 2^(failures-1) between attempts, capped."""

    failures: int = 0
    retry_at: float = 0.0
    delay_s: float = 0.0

    def failed(self, base_s: float, cap_s: float, now: float) -> None:
        self.failures += 1
        self.delay_s = min(cap_s, base_s * 2 ** (self.failures - 1))
        self.retry_at = now + self.delay_s

    def succeeded(self) -> None:
        self.failures, self.retry_at, self.delay_s = 0, 0.0, 0.0


@dataclass
class WorkQueue:
    """Pending work, de-duplicated: hints per (connector, doc id) keep the time first seen."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    hints: dict[str, dict[str, float]] = field(default_factory=dict)
    rescans: dict[str, set[str]] = field(default_factory=dict)
    tasks: deque[tuple[str, Callable[[], None]]] = field(default_factory=deque)
    in_flight: dict[str, dict[str, float]] = field(default_factory=dict)

    def push(self, change: Change) -> None:
        seen = change.seen_at or time.time()
        with self.cond:
            if change.kind == "rescan":
                self.rescans.setdefault(change.connector, set()).add(change.doc_id)
            else:
                docs = self.hints.setdefault(change.connector, {})
                for doc_id in (change.doc_id, change.dest_id):
                    if doc_id:
                        docs[doc_id] = min(docs.get(doc_id, seen), seen)
            self.cond.notify()

    def push_task(self, name: str, fn: Callable[[], None]) -> None:
        with self.cond:
            if all(n != name for n, _ in self.tasks):
                self.tasks.append((name, fn))
            self.cond.notify()

    def backlog(self, connector: str) -> tuple[int, float | None]:
        """(changes seen but not committed, first-seen time of the oldest)."""
        with self.cond:
            pending = dict(self.in_flight.get(connector, {}))
            for doc_id, seen in self.hints.get(connector, {}).items():
                pending[doc_id] = min(seen, pending.get(doc_id, seen))
        times = pending.values()
        return len(pending), (min(times) if times else None)

    def empty(self) -> bool:
        with self.cond:
            return not any(self.hints.values()) and not any(self.rescans.values()) and not self.tasks


FOLD_SPACING = 9.0
"""After a fold step the folder waits this many times its duration before the next one, so folding takes at
most a tenth of one core: a writer that is already behind (a slow model under load) keeps the rest."""


class Service:
    """`syncd run`: catch up, then watch and poll until told to stop."""

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
        self.http: HttpServer | None = None
        self.scheduler: Any = None
        self.watches: dict[str, Any] = {}
        self._poll_locks: dict[str, threading.Lock] = {}
        self.initial_pending: set[str] = set()
        self.writer_thread: threading.Thread | None = None
        self.writer_alive_at = time.time()
        self.writer_error: str | None = None
        self.last_reconcile_at: float | None = None
        self.last_verify: dict[str, Any] | None = None
        self._reload_requested = threading.Event()
        self._requests_queued: set[str] = set()
        self.policy = _policy(config)
        self.backoff: dict[str, Backoff] = {}
        self.poll_ok_at: dict[str, float] = {}
        self.maintenance_error: str | None = None
        self.last_maintenance_attempt_at: float | None = None
        self._auto_maintenance_after = 0.0
        self._fold_after = 0.0
        self._fold_wake = threading.Event()
        self.folder_thread: threading.Thread | None = None
        self._last_status_line = ""
        self.cycle_started_at: float | None = None
        self.progress_at: dict[str, float] = {}
        """When a writer cycle last finished work of each connector (committed, skipped, failed or deferred)."""
        self.stalled: dict[str, float] = {}
        """Connectors whose backlog has not shrunk for ``[sync] stall_after``, with the time it began."""
        self._wrote_daemon_json = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        token = None
        if not cfg.http.is_loopback:
            from syncd.config import resolve_secret

            if not cfg.http.token_env and not cfg.http.token_file:
                raise ConfigError(f"{cfg.source}: http.token_env: required (or http.token_file) when http.bind "
                                  f"({cfg.http.bind}) is not a loopback address", key="http.token_env")
            token = resolve_secret(cfg.http.token_env, key="http.token_file" if cfg.http.token_file else "http.token_env",
                                   file=cfg.http.token_file, base_dir=cfg.base_dir)
        self.runtime = Runtime(cfg, embedder=self._embedder, metrics=self.metrics)
        rt = self.runtime
        rt.engine.embedder = _StoppableEmbedder(rt.engine.embedder, self.stopping, cfg.embedding.batch_size)
        rt.engine.embed_budget = cfg.sync.embed_budget
        rt.engine.superseded = self._superseded
        rt.store.after_commit = self._after_commit
        needs_rebuild = rt.open()
        notify("STATUS=loading the embedding model")
        self.query_embedder = rt.embedder
        if self._embedder is None:
            from syncd.runtime import build_embedder

            # The writer and /search each get their own model instance on one intra-op thread: an edit's
            # embedding and a query then run side by side on two cores instead of queueing on one lock, and
            # torch does not oversubscribe the cores (one text: ~0.16 s on 1 thread vs ~1.2 s on 2 when
            # both are busy; measured in benchmarks/profile.py).
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
        self.reader = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=rt.embedder.dim,
                            signature=rt.signature, read_consistency_interval=cfg.store.read_consistency_interval,
                            **cfg.store.cache_limits())
        self.http = HttpServer(cfg.http.host, cfg.http.port, Endpoints(
            healthy=self.healthy, ready=self.ready, status=self.status, metrics=self.metrics_text,
            search=self.search, page=self.page, token=token, problems=self.health_problems,
            connectors=lambda: self.runtime.engine.connectors if self.runtime is not None else (),
            ready_problems=self.ready_problems))
        self.http.start()
        write_json_atomic(cfg.state_dir / "daemon.json", {"pid": os.getpid(), "url": self.http.url,
                                                          "started_at": self.started_at})
        self._wrote_daemon_json = True
        log.info("http.listening", url=self.http.url)
        if needs_rebuild:
            self.queue.push_task("rebuild", lambda: rt.engine.rebuild())
        for name in rt.connectors:
            self.initial_pending.add(name)
            self.queue.push(Change(connector=name, kind="rescan", doc_id=""))
        # Watches first: a file created while the catch-up lists its folder is then either in the listing or
        # in an event queued behind the catch-up, never in neither.
        for name, connector in rt.connectors.items():
            self._start_watch(name, connector)
        self.writer_thread = threading.Thread(target=self._writer, name="syncd-writer", daemon=True)
        self.writer_thread.start()
        self.folder_thread = threading.Thread(target=self._folder, name="syncd-folder", daemon=True)
        self.folder_thread.start()
        self._start_scheduler()
        # Ready once the store is open and every catch-up has started (not finished: a big first sync
        # must not hit systemd's start timeout). /readyz turns 200 when they have finished.
        notify("READY=1")
        notify(f"STATUS=catching up: 0/{len(rt.connectors)} connector(s) done")

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
            sched.add_job(lambda: self.queue.push_task("maintenance", self._maintain), "interval",
                          seconds=sync_cfg.maintenance_interval, id="maintenance", max_instances=1, coalesce=True,
                          misfire_grace_time=int(sync_cfg.maintenance_interval))
        if sync_cfg.verify_interval:
            sched.add_job(lambda: self.queue.push_task("verify", self._verify), "interval",
                          seconds=sync_cfg.verify_interval, id="verify", max_instances=1, coalesce=True,
                          misfire_grace_time=int(sync_cfg.verify_interval))

        def skipped(event: Any) -> None:
            self.metrics.skipped_runs.labels(job=event.job_id).inc()

        sched.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
        sched.start()
        self.scheduler = sched

    def _schedule_connector(self, sched: Any, name: str, connector: Any) -> None:
        interval = connector.poll_interval
        if interval:
            def poll_job() -> None:
                if self._backing_off(name, f"poll:{name}"):
                    return
                self._poll_in_background(name)

            sched.add_job(poll_job, "interval", seconds=interval, id=f"poll:{name}", max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, math.ceil(interval)))
        recon = connector.reconcile_interval
        if recon:
            def reconcile_job() -> None:
                if self._backing_off(name, f"reconcile:{name}"):
                    return
                self.queue.push(Change(connector=name, kind="rescan", doc_id=""))

            sched.add_job(reconcile_job, "interval", seconds=recon, id=f"reconcile:{name}", max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, math.ceil(recon)))

    def _backing_off(self, name: str, job: str) -> bool:
        """True (and the skip counted) while a failing connector waits for its next attempt."""
        backoff = self.backoff.get(name)
        if backoff is not None and time.time() < backoff.retry_at:
            self.metrics.skipped_runs.labels(job=job).inc()
            return True
        return False

    def _outcome(self, name: str, ok: bool) -> None:
        """Record a cycle's outcome for the connector's backoff."""
        assert self.runtime is not None
        backoff = self.backoff.setdefault(name, Backoff())
        if ok:
            backoff.succeeded()
        else:
            connector = self.runtime.connectors.get(name)
            base = (connector.poll_interval or connector.reconcile_interval or _BACKOFF_BASE_S) if connector else 1.0
            base = max(base, 0.001)
            backoff.failed(base, self.config.sync.backoff_max, time.time())
            log.warning("connector.backing_off", connector=name, failures=backoff.failures,
                        retry_in_s=round(backoff.delay_s, 3))
        self.metrics.consecutive_failures.labels(connector=name).set(backoff.failures)

    def run_forever(self) -> int:
        """Main loop: health checks and watchdog pings until SIGTERM/SIGINT."""
        ping = watchdog_interval()
        last_ping = 0.0
        while not self.stopping.wait(0.5):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self._check_watches()
            self._check_requests()
            self._check_stalls()
            if ping and time.time() - last_ping >= ping and self.healthy():
                notify("WATCHDOG=1")
                last_ping = time.time()
        return self.shutdown()

    def install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            with self.queue.cond:
                self.queue.cond.notify_all()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())

    def shutdown(self) -> int:
        notify("STOPPING=1")
        self.stopping.set()
        notify("STATUS=stopping: finishing or abandoning the batch in flight")
        for watch in self.watches.values():
            watch.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        with self.queue.cond:
            self.queue.cond.notify_all()
        self._fold_wake.set()
        if self.folder_thread is not None:
            self.folder_thread.join(timeout=60)  # an index update is one atomic commit; at most one is running
        if self.writer_thread is not None:
            # The writer stops between embedding slices (StopRequested) or after its commit: merge_insert is
            # one atomic commit and the state only advances after it, so nothing is ever half-written.
            self.writer_thread.join(timeout=60)
            if self.writer_thread.is_alive():
                log.error("daemon.writer_still_busy", action="exiting; the uncommitted batch is redone on restart")
        if self.http is not None:
            self.http.stop()
        # Only this daemon's own address: a process refused by the writer lock never wrote one, and the
        # file it would remove belongs to the daemon that holds the lock.
        if self._wrote_daemon_json:
            try:
                from syncd.state import read_json

                record = read_json(self.config.state_dir / "daemon.json")
                if isinstance(record, dict) and record.get("pid") == os.getpid():
                    (self.config.state_dir / "daemon.json").unlink()
            except FileNotFoundError:
                pass
        if self.runtime is not None:
            self.runtime.close()
        log.info("daemon.stopped")
        return 0

    # -- the writer ------------------------------------------------------------------------------------
    def _writer(self) -> None:
        assert self.runtime is not None
        engine = self.runtime.engine
        q = self.queue
        last_state_save = time.time()
        failed_cycles = 0
        while not self.stopping.is_set():
            idle_work = adopt = False
            flush: list[str] = []
            with q.cond:
                while q.empty() and not self.stopping.is_set():
                    self.writer_alive_at = time.time()
                    flush = self._deletes_due()
                    if flush:
                        break
                    if self.runtime.store.folds_to_adopt:
                        adopt = True  # the folder committed an index update: show it in /status at once
                        break
                    if (time.monotonic() >= self._auto_maintenance_after
                            and self.runtime.store.indexing_due(self.policy, idle=True)):
                        idle_work = True
                        break
                    held = any(engine.held_deletes(n)[0] for n in engine.connectors)
                    q.cond.wait(timeout=min(0.2 if held else 1.0, self.policy.index_when_idle or 1.0))
                if self.stopping.is_set():
                    break
            if flush:
                self._flush_deletes(flush)
                continue
            if adopt:
                self._small_step("index.adopt", self.runtime.store.adopt_folds)
                continue
            if idle_work:
                # Nothing to do: bring the indexes up to date now rather than in the path of a later edit.
                self._maintain()
                continue
            with q.cond:
                if q.empty():
                    continue
                rescans, q.rescans = q.rescans, {}
                rescans_taken = set(rescans)
                tasks = list(q.tasks)
                q.tasks.clear()
                hints = {}
                if not any(rescans.values()):
                    hints, q.hints = q.hints, {}
                    q.in_flight = {c: dict(d) for c, d in hints.items()}
            self.writer_alive_at = self.cycle_started_at = time.time()
            try:
                while tasks:
                    name, fn = tasks[0]
                    if name == "rebuild":
                        notify("STATUS=rebuilding the index (settings changed)")
                    fn()
                    tasks.pop(0)
                for name, prefixes in list(rescans.items()):
                    if name not in engine.connectors:
                        rescans.pop(name)
                        continue
                    # Folders rescanned together: a folder move reuses every vector (see Engine.reconcile).
                    targets: list[Any] = [""] if "" in prefixes else [sorted(prefixes)]
                    if targets == [""] and engine.connectors[name].poll_interval:
                        # A polled source catches up through its own poll (so its cursor is saved with the
                        # catch-up), fetched off the writer thread like every later poll.
                        rescans.pop(name)
                        threading.Thread(target=self._poll_in_background, args=(name,), name=f"syncd-poll-{name}",
                                         daemon=True).start()
                        continue
                    for prefix in targets:
                        summary = engine.reconcile(name, prefix=prefix)
                        self.last_reconcile_at = time.time()
                        if not prefix:
                            self._outcome(name, not any(f.connector == name and not f.doc_id
                                                        for f in summary.failures))
                        if summary.docs_changed or summary.docs_added or summary.docs_deleted or summary.docs_renamed:
                            log.info("sync.finished", connector=name, kind="reconcile", **_counts(summary))
                    rescans.pop(name)
                    self._catch_up_done(name)
                if hints:
                    engine.process(hints, hold_deletes=True)
                self.writer_error = None
                failed_cycles = 0
                done = time.time()
                for name in {*hints, *rescans_taken}:
                    self.progress_at[name] = done
            except StopRequested:
                log.info("writer.batch_abandoned", reason="stopping", action="redone by the catch-up on restart")
                break
            except Exception as exc:  # noqa: BLE001 - the writer must survive anything one cycle throws
                self.writer_error = f"{type(exc).__name__}: {exc}"
                log.exception("writer.cycle_failed")
                # The connectors whose work failed show it, whatever failed (status never says idle then).
                for name in {*hints, *rescans_taken}:
                    st = engine.status.get(name)
                    if st is not None:
                        st.state, st.last_error = "failing", f"writer cycle failed: {self.writer_error}"
                # Give back everything not done, so nothing is lost; the next cycle retries it.
                for conn, docs in hints.items():
                    for doc_id, seen in docs.items():
                        q.push(Change(connector=conn, kind="upsert", doc_id=doc_id, seen_at=seen))
                for conn, prefixes in rescans.items():
                    for prefix in prefixes:
                        q.push(Change(connector=conn, kind="rescan", doc_id=prefix))
                for name, fn in tasks:
                    q.push_task(name, fn)
                failed_cycles += 1
                self.stopping.wait(min(60.0, 2.0 ** (failed_cycles - 1)))
            finally:
                self.cycle_started_at = None
                with q.cond:
                    q.in_flight = {}
                self._requeue_deferred()
            try:
                for name in engine.connectors:
                    count, _ = self.backlog(name)
                    self.metrics.backlog.labels(connector=name).set(count)
                    self.metrics.failed_docs.labels(connector=name).set(len(engine.attempts.get(name, {})))
                self._after_commit()
                self._status_line()
                if time.time() - last_state_save > 5:
                    self.runtime.state.save()
                    last_state_save = time.time()
            except Exception as exc:  # noqa: BLE001 - a full disk for the state file must not end the writer
                self.writer_error = f"{type(exc).__name__}: {exc}"
                log.exception("writer.housekeeping_failed")

    def _superseded(self, connector: str, doc_id: str) -> bool:
        """A newer hint for the document arrived while its batch was in flight (it changed again or went)."""
        return doc_id in self.queue.hints.get(connector, ())

    def _requeue_deferred(self) -> None:
        """Documents the engine deferred past its embedding budget go back in the queue, first-seen time kept."""
        assert self.runtime is not None
        deferred, self.runtime.engine.deferred = self.runtime.engine.deferred, {}
        for name, docs in deferred.items():
            for doc_id, seen in docs.items():
                self.queue.push(Change(connector=name, kind="upsert", doc_id=doc_id, seen_at=seen))

    def _deletes_due(self) -> list[str]:
        """Connectors whose held deletions have settled: none for ``[sync] delete_settle`` and the watcher's
        hints drained (or held ten times that long while edits keep coming)."""
        assert self.runtime is not None
        engine = self.runtime.engine
        settle = self.config.sync.delete_settle
        now = time.monotonic()
        due = []
        for name in engine.connectors:
            count, at = engine.held_deletes(name)
            if not count or at is None or now - at < settle:
                continue
            if not self.queue.hints.get(name) or now - at >= 10 * settle:
                due.append(name)
        return due

    def _flush_deletes(self, names: list[str]) -> None:
        assert self.runtime is not None
        self.writer_alive_at = self.cycle_started_at = time.time()
        try:
            for name in names:
                summary = self.runtime.engine.flush_deletes(name)
                self.progress_at[name] = time.time()
                if summary.docs_deleted or summary.failures:
                    log.info("sync.finished", connector=name, kind="deletions", **_counts(summary))
        except StopRequested:
            raise
        except Exception as exc:  # noqa: BLE001 - the writer must survive anything one cycle throws
            self.writer_error = f"{type(exc).__name__}: {exc}"
            log.exception("writer.cycle_failed")
        finally:
            self.cycle_started_at = None
            self._requeue_deferred()

    def backlog(self, name: str) -> tuple[int, float | None]:
        """(changes seen but not committed, first-seen time of the oldest): the queue, the batch in flight,
        deletions held for the guard and documents deferred past the embedding budget."""
        assert self.runtime is not None
        count, oldest = self.queue.backlog(name)
        held = self.runtime.engine.held_since(name)
        if held:
            count += held[0]
            oldest = held[1] if oldest is None else min(oldest, held[1])
        return count, oldest

    def _check_stalls(self) -> None:
        """A backlog that has not shrunk for ``[sync] stall_after`` (nothing of the connector finished in that
        time) is a stall: shown in /status, /readyz and counted."""
        assert self.runtime is not None
        now = time.time()
        limit = self.config.sync.stall_after
        for name in list(self.runtime.engine.connectors):
            count, oldest = self.backlog(name)
            last = max(self.progress_at.get(name, self.started_at), oldest or now)
            stalled = bool(count) and now - last >= limit
            if stalled and name not in self.stalled:
                self.stalled[name] = last
                self.metrics.stalls.labels(connector=name).inc()
                log.error("connector.stalled", connector=name, backlog=count, since_s=round(now - last, 1),
                          writer_error=self.writer_error)
            elif not stalled and name in self.stalled:
                del self.stalled[name]
                log.info("connector.unstalled", connector=name)

    def _poll(self, name: str) -> None:
        """Poll and apply in the calling thread (the writer)."""
        changes, started, error = self._fetch(name)
        self._apply_poll(name, changes, started, error)

    def _poll_in_background(self, name: str) -> None:
        """Fetch a polled connector's changes in this thread (a scheduler worker), then hand them to the
        writer: a slow or hung remote holds up only its own connector, never the writer.

        A per-connector lock keeps one poll in flight: it is taken for the fetch and released by the writer
        once the changes are applied, so the connector never fetches while the writer reads from it.
        """
        lock = self._poll_locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            self.metrics.skipped_runs.labels(job=f"poll:{name}").inc()
            return
        handed = False
        try:
            changes, started, error = self._fetch(name)

            def apply() -> None:
                try:
                    self._apply_poll(name, changes, started, error)
                finally:
                    lock.release()
                    self._catch_up_done(name)

            self.queue.push_task(f"poll:{name}", apply)
            handed = True
        finally:
            if not handed:
                lock.release()

    def _fetch(self, name: str) -> tuple[list[Change] | None, float, SyncdError | None]:
        """The connector's changes since its cursor (None: a full listing is needed), or the error."""
        assert self.runtime is not None
        started = time.time()
        connector = self.runtime.engine.connectors.get(name)
        if connector is None:
            return [], started, None
        try:
            changes = connector.poll()
            return (None if changes is None else list(changes)), started, None
        except SyncdError as exc:
            return None, started, exc

    def _apply_poll(self, name: str, changes: list[Change] | None, started: float, error: SyncdError | None) -> None:
        """Writer side of a poll: apply the fetched changes, then move the connector's cursor."""
        assert self.runtime is not None
        engine = self.runtime.engine
        connector = engine.connectors.get(name)
        if connector is None:
            return
        if error is not None:
            engine.status[name].last_error = str(error)
            engine.status[name].state = "failing"
            self.metrics.sync_errors.labels(connector=name).inc()
            log.error("poll.failed", connector=name, error=str(error))
            self._poll_done(name, started, False)
            return
        if changes is None:
            summary = engine.reconcile(name)
            ok = not any(f.connector == name and not f.doc_id for f in summary.failures)
            self._poll_done(name, started, ok)
            return
        seen: dict[str, float] = {}
        now = time.time()
        rescan = False
        for change in changes:
            if change.kind == "rescan":
                rescan = True
            for doc_id in (change.doc_id, change.dest_id):
                if doc_id:
                    seen.setdefault(doc_id, change.seen_at or now)
        # Documents that failed in the engine (the model, the store) since the cursor moved past them.
        for doc_id in engine.retry_candidates(name):
            seen.setdefault(doc_id, now)
        summary = engine.reconcile(name) if rescan else engine.process({name: seen})
        ok = not any(f.connector == name and (not f.doc_id or "store-write-failed" in f.reason)
                     for f in summary.failures)
        if ok:
            connector.commit_cursor()
        self._poll_done(name, started, ok)

    def _catch_up_done(self, name: str) -> None:
        if name in self.initial_pending:
            self.initial_pending.discard(name)
            assert self.runtime is not None
            total = len(self.runtime.engine.connectors)
            notify(f"STATUS=catching up: {total - len(self.initial_pending)}/{total} connector(s) done")
            if not self.initial_pending:
                log.info("daemon.ready")

    def _poll_done(self, name: str, started: float, ok: bool) -> None:
        if ok:
            # The index now reflects the source as of this poll's start: lag is measured from there.
            self.poll_ok_at[name] = started
        self._outcome(name, ok)

    def _after_commit(self) -> None:
        """After each commit on the live table (writer thread): merge small fragments once they pile up
        (tens of ms), bring the indexes up to date once enough rows are not in them (the full maintenance),
        and wake the folder, which folds rows into the indexes one index at a time off the writer's path."""
        assert self.runtime is not None
        store = self.runtime.store
        self._fold_wake.set()
        if time.monotonic() < self._auto_maintenance_after:
            return
        if store.indexing_due(self.policy):
            self._maintain()
        elif store.maintenance_due(self.policy):
            self._compact()

    # -- the folder ------------------------------------------------------------------------------------
    def _folder(self) -> None:
        """Past ``fold_every_rows`` unindexed rows, bring the indexes up to date one at a time, on this
        thread: an edit never waits behind a fold (an index update and a data commit rebase onto each other
        in Lance; compaction and maintenance take turns with it through ``Store.maintenance_lock``). Steps
        are spaced by ``FOLD_SPACING`` times their duration."""
        while not self.stopping.is_set():
            wait = max(0.0, self._fold_after - time.monotonic()) or 1.0
            self._fold_wake.wait(timeout=wait)
            self._fold_wake.clear()
            if self.stopping.is_set():
                break
            self.fold_if_due()

    def fold_if_due(self) -> str | None:
        """One fold step if one is due and allowed now (the folder's loop body). Returns the index folded."""
        runtime = self.runtime
        now = time.monotonic()
        if runtime is None or now < max(self._auto_maintenance_after, self._fold_after):
            return None
        if not runtime.store.fold_due(self.policy):
            return None
        name = self._small_step("index.fold", runtime.store.fold_step)
        if name is not None:
            self.metrics.index_folds.inc()
            with self.queue.cond:
                self.queue.cond.notify_all()  # an idle writer moves its handle to the new version
        self._fold_after = time.monotonic() + FOLD_SPACING * (time.monotonic() - now)
        return name

    def _compact(self) -> None:
        """Small fragments merged; if it fails, the full maintenance compacts too (queries meanwhile visit
        more fragments)."""
        assert self.runtime is not None
        if self._small_step("compaction", self.runtime.store.compact) is not None:
            self.metrics.compactions.inc()

    def _small_step(self, event: str, step: Callable[[], Any]) -> Any:
        """A maintenance step taken between batches (or by the folder); a failure is logged and holds automatic
        maintenance back for ``_MAINTENANCE_RETRY_S`` (the schedule still runs)."""
        started = time.monotonic()
        try:
            result = step()
        except SyncdError as exc:
            log.warning(f"{event}_failed", error=str(exc))
            self._auto_maintenance_after = time.monotonic() + _MAINTENANCE_RETRY_S
            return None
        log.debug(f"{event}_finished", result=result, seconds=round(time.monotonic() - started, 3))
        return result

    def _maintain(self) -> None:
        assert self.runtime is not None
        store = self.runtime.store
        self.last_maintenance_attempt_at = time.time()
        started = time.monotonic()
        try:
            result = store.maintain(retention_s=self.config.sync.version_retention, policy=self.policy)
        except SyncdError as exc:
            self.maintenance_error = str(exc)
            self.metrics.maintenance_runs.labels(outcome="failed").inc()
            log.error("maintenance.failed", error=str(exc))
            # Commits and idle moments do not retry it at once; the schedule still does.
            self._auto_maintenance_after = time.monotonic() + _MAINTENANCE_RETRY_S
            return
        self.maintenance_error = None
        self.metrics.maintenance_runs.labels(outcome="ok").inc()
        self.metrics.last_maintenance.set(store.last_maintenance_at or time.time())
        try:
            stats = store.stats()
        except Exception:  # noqa: BLE001 - figures only; the next run retries
            stats = {}
        if "fragments" in stats:
            self.metrics.fragments.set(stats["fragments"])
        log.info("maintenance.finished", seconds=round(time.monotonic() - started, 3),
                 fragments=stats.get("fragments"), table_version=stats.get("table_version"),
                 indexes_created=result.get("indexes_created"))

    def maintenance_overdue(self) -> bool:
        """Maintenance that silently stopped running (scheduler dead, every run failing) is a health failure."""
        interval = self.config.sync.maintenance_interval
        if not interval or self.runtime is None:
            return False
        deadline = (self.runtime.store.last_maintenance_at or self.started_at) + _MAINTENANCE_GRACE * interval
        if time.time() <= deadline:
            return False
        # A cycle that began before the deadline (a long catch-up, a rebuild) holds the queued maintenance
        # task back: that is waiting, not stopping. The next cycle runs tasks first.
        started = self.cycle_started_at
        return not (started is not None and started <= deadline)

    def _status_line(self) -> None:
        """STATUS= for systemctl status: progress and figures, sent when they change."""
        assert self.runtime is not None
        engine = self.runtime.engine
        docs = sum(len(d) for d in engine.index.values())
        chunks = sum(i.chunks for d in engine.index.values() for i in d.values())
        backlog = sum(self.backlog(n)[0] for n in engine.connectors)
        failing = sorted({*(n for n, st in engine.status.items() if st.state in ("failing", "unavailable", "blocked")),
                          *self.stalled})
        if self.initial_pending:
            total = len(engine.connectors)
            head = f"catching up: {total - len(self.initial_pending)}/{total} connector(s) done"
        else:
            head = "idle" if not backlog else "syncing"
        line = f"{head}; {docs} docs, {chunks} chunks, backlog {backlog}"
        if failing:
            line += "; failing: " + ", ".join(failing)
        if line != self._last_status_line:
            self._last_status_line = line
            notify("STATUS=" + line)

    def _verify(self) -> None:
        from syncd.verify import verify

        assert self.runtime is not None
        report = verify(self.runtime)
        self.last_verify = {**report.as_dict(), "at": time.time()}
        for kind in ("missing", "stale", "orphaned", "duplicated"):
            self.metrics.drift.labels(kind=kind).set(len(getattr(report, kind)))

    def _check_requests(self) -> None:
        """Hand `syncd sync --connector NAME --allow-mass-delete`, left in the state folder, to the writer."""
        from syncd.approvals import ALL_CONNECTORS, answer, pending_mass_deletes, pending_repairs

        assert self.runtime is not None
        rt = self.runtime
        for name, path in pending_mass_deletes(self.config.state_dir):
            if name in self._requests_queued:
                continue
            self._requests_queued.add(name)

            def run(name: str = name, path: Any = path) -> None:
                try:
                    if name in rt.engine.connectors:
                        result = rt.engine.reconcile(name, allow_mass_delete=True).as_dict()
                        log.info("sync.mass_delete_allowed", connector=name, docs_deleted=result["docs_deleted"])
                    else:
                        result = {"error": f"no connector named {name!r}"}
                    rt.state.save()
                    answer(path, result)
                finally:
                    self._requests_queued.discard(name)

            self.queue.push_task(f"allow-mass-delete:{name}", run)
        for name, path in pending_repairs(self.config.state_dir):
            key = f"repair:{name}"
            if key in self._requests_queued:
                continue
            self._requests_queued.add(key)

            def repair_now(name: str = name, path: Any = path, key: str = key) -> None:
                from syncd.verify import repair, verify

                try:
                    only = None if name == ALL_CONNECTORS else name
                    before = verify(rt, connector=only)
                    result: dict[str, Any] = {"before": before.as_dict()}
                    if not before.ok:
                        result["repaired"] = repair(rt, before).as_dict()
                        log.info("verify.repaired", connector=name, **{k: len(v) for k, v in before.as_dict().items()
                                                                       if isinstance(v, list)})
                    result["after"] = verify(rt, connector=only).as_dict()
                    rt.state.save()
                    answer(path, result)
                finally:
                    self._requests_queued.discard(key)

            self.queue.push_task(key, repair_now)

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

    # -- reload ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config; start, stop or restart connectors whose settings changed."""
        from syncd import config as config_mod
        from syncd.runtime import build_connector

        assert self.runtime is not None
        try:
            new = config_mod.load(self.config.source)
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
                        from syncd.store import doc_key

                        keys = [doc_key(name, d) for d in rt.engine.docs(name)]
                        if keys:
                            rt.store.apply(rt.store.make_rows([]), keys)
                        rt.engine.index.pop(name, None)
                        log.info("connector.removed", connector=name, docs_deleted=len(keys))
                    rt.engine.remove_connector(name)
                    self.initial_pending.discard(name)
                    self.backoff.pop(name, None)
                    self.poll_ok_at.pop(name, None)
                    if self.scheduler is not None:
                        for job_id in (f"poll:{name}", f"reconcile:{name}"):
                            if self.scheduler.get_job(job_id):
                                self.scheduler.remove_job(job_id)
            for name, cc in new_by_name.items():
                if name in rt.connectors:
                    continue
                connector = build_connector(new, cc, rt.state)
                rt.connectors[name] = connector
                rt.engine.add_connector(connector)
                self.initial_pending.add(name)
                self._start_watch(name, connector)  # before its catch-up starts (see start())
                self.queue.push(Change(connector=name, kind="rescan", doc_id=""))
                if self.scheduler is not None:
                    self._schedule_connector(self.scheduler, name, connector)
            self.config = new
            self.policy = _policy(new)
            log.info("config.reloaded", connectors=sorted(new_by_name))
            notify("STATUS=config reloaded: " + ", ".join(sorted(new_by_name)))

        self.queue.push_task("reload", apply)

    # -- read side -------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return not self.health_problems()

    def health_problems(self) -> list[str]:
        """Why the service is unhealthy; empty when it is alive and well."""
        thread = self.writer_thread
        problems = []
        if thread is None or not thread.is_alive():
            problems.append("the writer thread is not running")
        if self.stopping.is_set():
            problems.append("stopping")
        if self.scheduler is not None and not self.scheduler.running:
            problems.append("the scheduler is not running")
        if self.maintenance_overdue():
            problems.append("maintenance has not succeeded for too long"
                            + (f" (last error: {self.maintenance_error})" if self.maintenance_error else ""))
        return problems

    def ready(self) -> bool:
        return self.healthy() and not self.initial_pending and not self.stalled

    def ready_problems(self) -> list[str]:
        """Why /readyz says no: liveness problems, catch-ups not finished, stalled connectors."""
        problems = self.health_problems()
        problems += [f"catching up: {name}" for name in sorted(self.initial_pending)]
        problems += [f"connector {name!r} stalled: its backlog has not shrunk for "
                     f"{time.time() - since:.0f} s" for name, since in sorted(self.stalled.items())]
        return problems

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry)

    def search(self, q: str, k: int, connector: str | None) -> dict[str, Any]:
        assert self.runtime is not None and self.reader is not None
        self.reader.refresh()
        assert self.query_vectors is not None
        vectors = self.query_vectors
        results = self.reader.search(lambda: vectors(q), q, k=k, connector=connector)
        return {"query": q, "results": results}

    def status(self) -> dict[str, Any]:
        assert self.runtime is not None
        # The writer mutates the engine's dictionaries while this reads them: a read that races a
        # resize is simply taken again.
        for _ in range(4):
            try:
                return self._status()
            except RuntimeError as exc:
                if "changed size during iteration" not in str(exc):
                    raise
        return self._status()

    def _status(self) -> dict[str, Any]:
        assert self.runtime is not None
        return build_status(self.runtime, self, queue=self.queue)

    def page(self) -> str:
        return render_page(self.status())


def _policy(config: Config) -> MaintenancePolicy:
    return MaintenancePolicy(compact_every_commits=config.store.compact_every_commits,
                             max_fragments=config.store.max_fragments, ann_min_rows=config.store.ann_min_rows,
                             index_every_rows=config.store.index_every_rows,
                             index_when_idle=config.store.index_when_idle,
                             fold_every_rows=config.store.fold_every_rows)


def _counts(summary: Any) -> dict[str, Any]:
    data = summary.as_dict()
    data.pop("failures", None)
    return data


def build_status(runtime: Runtime, service: Service | None = None, *, queue: WorkQueue | None = None) -> dict[str, Any]:
    """The /status document (also what `syncd status` prints when no daemon runs)."""
    engine = runtime.engine
    store_stats: dict[str, Any] = {}
    try:
        store_stats = runtime.store.stats()
    except Exception as exc:  # noqa: BLE001 - status must answer even when the store is unwell
        store_stats = {"error": str(exc)}
    total_chunks = sum(d.chunks for docs in engine.index.values() for d in docs.values())
    total_docs = sum(len(docs) for docs in engine.index.values())
    connectors = []
    now = time.time()
    for name, connector in engine.connectors.items():
        st = engine.status[name]
        docs = engine.docs(name)
        backlog, oldest = service.backlog(name) if service is not None else (0, None)
        interval = connector.poll_interval
        if interval:
            # Time since the source state the index reflects (the last fully committed poll), which
            # includes any backlog seen since; before the first one, time since start.
            polled = service.poll_ok_at.get(name) if service is not None else None
            since = polled or st.last_success_at or (service.started_at if service else now)
            lag = max(now - since, (now - oldest) if oldest is not None else 0.0)
        else:
            lag = (now - oldest) if oldest is not None else 0.0
        backoff = service.backoff.get(name) if service is not None else None
        cstate = runtime.state.connector(name)
        watch = service.watches.get(name) if service is not None else None
        attempts = engine.attempts.get(name, {})
        worst = max(attempts.items(), key=lambda kv: kv[1], default=None)
        state, reason = _derive_state(st.state, st.mass_delete_blocked is not None,
                                      catching_up=service is not None and name in service.initial_pending,
                                      stalled_since=service.stalled.get(name) if service is not None else None,
                                      backlog=backlog, worst=worst)
        last_error = st.last_error
        if reason and not last_error:
            last_error = reason
        if worst is not None and worst[1] >= RETRY_BUDGET and not last_error:
            last_error = f"{worst[0]}: {cstate.failures.get(worst[0], 'failed')}"
        entry = {
            "name": name, "type": connector.type_name, "state": state,
            "last_sync_at": _iso(st.last_sync_at), "last_success_at": _iso(st.last_success_at),
            "lag_s": round(max(lag, 0.0), 3), "backlog": backlog, "docs": len(docs),
            "chunks": sum(d.chunks for d in docs.values()), "failed_docs": len(cstate.failures),
            "last_error": last_error,
            "state_reason": reason,
            "failures": [{"doc_id": d, "reason": r} for d, r in list(cstate.failures.items())[:100]],
            "mass_delete_blocked": st.mass_delete_blocked,
            "recent": st.recent[-20:],
            "consecutive_failures": backoff.failures if backoff else 0,
            "retry_at": _iso(backoff.retry_at) if backoff and backoff.failures else None,
            "backoff_s": round(backoff.delay_s, 3) if backoff else 0.0,
        }
        if watch is not None:
            entry["watch"] = {"mode": watch.mode, "alive": watch.is_alive(),
                              "fallback": getattr(watch, "fallback_reason", "") or None}
        connectors.append(entry)
    return {
        "version": __version__,
        "uptime_s": round(now - service.started_at, 3) if service else 0.0,
        "store": {"uri": runtime.config.store_uri, "table": runtime.store.table_name,
                  "table_version": store_stats.get("table_version"), "docs": total_docs, "chunks": total_chunks,
                  "rows": store_stats.get("rows"),
                  "fragments": store_stats.get("fragments"), "unindexed_rows": store_stats.get("unindexed_rows"),
                  "bytes": store_stats.get("bytes"), "indexes": store_stats.get("indexes"),
                  "last_reconcile_at": _iso(service.last_reconcile_at) if service else None,
                  "last_maintenance_at": _iso(runtime.store.last_maintenance_at),
                  "maintenance_runs": runtime.store.maintenance_runs, "compactions": runtime.store.compactions,
                  "index_folds": runtime.store.index_folds,
                  "rows_since_indexed": runtime.store.rows_since_indexed,
                  "maintenance_error": service.maintenance_error if service else None,
                  "maintenance_overdue": service.maintenance_overdue() if service else False,
                  **({"error": store_stats["error"]} if "error" in store_stats else {})},
        "embedding": {"model": runtime.config.embedding.model, "dim": runtime.embedder.dim},
        "connectors": connectors,
        "last_reconcile_at": _iso(service.last_reconcile_at) if service else None,
        "verify": service.last_verify if service else None,
        "writer_error": service.writer_error if service else None,
        "healthy": service.healthy() if service else None,
        "problems": service.health_problems() if service else [],
        "ready": service.ready() if service else None,
        "ready_problems": service.ready_problems() if service else [],
    }


RETRY_BUDGET = 3
"""Failed attempts in a row after which a document turns its connector's state to ``degraded``."""


def _derive_state(engine_state: str, blocked: bool, *, catching_up: bool, stalled_since: float | None,
                  backlog: int, worst: tuple[str, int] | None) -> tuple[str, str | None]:
    """A connector's state from facts, most severe first, with the reason when it is not ``idle``/``syncing``.

    ``blocked`` (a refused mass deletion) > ``unavailable``/``failing`` (the last cycle failed) > ``stalled``
    (a backlog that has not shrunk for ``[sync] stall_after``) > ``catching-up`` > ``syncing`` (backlog) >
    ``degraded`` (a document failed ``RETRY_BUDGET`` times in a row) > ``idle``.
    """
    if blocked:
        return "blocked", "a mass deletion waits for approval"
    if engine_state in ("unavailable", "failing"):
        return engine_state, None
    if stalled_since is not None:
        return "stalled", (f"backlog of {backlog} not shrinking since "
                           f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(stalled_since))}")
    if catching_up:
        return "catching-up", None
    if backlog:
        return "syncing", None
    if worst is not None and worst[1] >= RETRY_BUDGET:
        return "degraded", f"{worst[0]!r} failed {worst[1]} times in a row"
    return "idle", None


def _retry_note(connector: dict[str, Any]) -> str:
    if not connector.get("consecutive_failures"):
        return ""
    return (f"<br><small>failed {connector['consecutive_failures']}× in a row; "
            f"next try at {html.escape(str(connector.get('retry_at')))}</small>")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def render_page(status: dict[str, Any]) -> str:
    """A small read-only status page; refreshes itself every 5 seconds."""
    rows = []
    for c in status["connectors"]:
        recent = "".join(
            f"<li>{html.escape(r['action'])} {html.escape(r['doc_id'])}"
            f"{(' — ' + html.escape(r['reason'])) if r.get('reason') else ''}</li>" for r in reversed(c["recent"][-8:])
        )
        rows.append(
            f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['type'])}</td>"
            f"<td class='state {html.escape(c['state'])}'>{html.escape(c['state'])}</td>"
            f"<td>{c['lag_s']}</td><td>{c['backlog']}</td><td>{c['docs']}</td><td>{c['chunks']}</td>"
            f"<td>{c['failed_docs']}</td><td>{html.escape(c['last_error'] or '')}"
            f"{('<br><small>' + html.escape(c['state_reason']) + '</small>') if c.get('state_reason') else ''}"
            f"{_retry_note(c)}</td><td><ul>{recent}</ul></td></tr>"
        )
    store = status["store"]
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in status.get("problems") or [])
    health = (f"<p class='failing'>Unhealthy:</p><ul class='failing'>{problems}</ul>" if problems
              else "<p class='idle'>Healthy.</p>")
    waiting = [p for p in status.get("ready_problems") or [] if p not in (status.get("problems") or [])]
    if waiting:
        health += ("<p class='failing'>Not ready:</p><ul class='failing'>"
                   + "".join(f"<li>{html.escape(p)}</li>" for p in waiting) + "</ul>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>syncd status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left;
vertical-align: top; }} th {{ background: #f3f3f3; }} .idle {{ color: #197a19; }} .failing, .unavailable, .blocked, .stalled,
.degraded {{ color: #b00020; font-weight: bold; }} ul {{ margin: 0; padding-left: 1.2em; }}
</style></head><body>
<h1>syncd {html.escape(status['version'])}</h1>
<p>Store <code>{html.escape(str(store['uri']))}</code>, table <code>{html.escape(str(store['table']))}</code>
version {store['table_version']}: {store['docs']} documents, {store['chunks']} chunks,
{store.get('fragments')} fragments, {store.get('unindexed_rows')} unindexed rows, {_size(store.get('bytes'))} on disk.
Last reconcile {store.get('last_reconcile_at') or 'never'}, last maintenance {store.get('last_maintenance_at') or 'never'}.
Model {html.escape(status['embedding']['model'])} ({status['embedding']['dim']}-d). Up {status['uptime_s']:.0f} s.</p>
{health}
<table><tr><th>connector</th><th>type</th><th>state</th><th>lag (s)</th><th>backlog</th><th>docs</th><th>chunks</th>
<th>failed</th><th>last error</th><th>recent changes</th></tr>
{''.join(rows)}
</table></body></html>"""
