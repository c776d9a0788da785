"""The writer: the only thread that touches the engine and the store's write path.

It takes everything pending at once and commits it as one batch, so an isolated save is processed at once
(no quiet period) and a burst batches itself while the previous batch is being embedded and committed.
Polled connectors fetch off this thread (a hung remote holds up only its own connector) and hand their
changes over as tasks; a connector that keeps failing backs off exponentially. After each batch the writer
asks maintenance what is due.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from syncd.errors import SyncdError
from syncd.models import Change, SyncSummary
from syncd.notify import notify

if TYPE_CHECKING:
    from syncd.pipeline import Engine
    from syncd.service.lifecycle import Service

log = structlog.get_logger("syncd.writer")

BACKOFF_BASE_S = 60.0
"""First wait after a failure of a connector that has neither a poll nor a reconcile interval."""
MAX_REQUESTED_DOCS = 1024
"""Document ids hooks may name for the next poll of a connector; past that the poll alone finds them."""
REQUEST_SETTLE_S = 0.25
"""A poll requested while one is in flight starts once requests have stopped coming for this long..."""
REQUEST_MAX_WAIT_S = 5.0
"""... or this long after it was first requested, so a steady stream of requests cannot hold it back."""
STATE_SAVE_EVERY_S = 5.0
"""The fingerprint cache is written at most this often (it only holds facts about the sources)."""


class StopRequested(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised in the writer between embedding slices once SIGTERM/SIGINT arrived: the batch in flight is
    abandoned before its commit, so no document is ever half-written and the state never runs ahead.
    A BaseException so the engine's per-document error handling lets it through."""


class StoppableEmbedder:
    """Wraps the embedder: embeds in slices and gives up between them once the service is stopping."""

    def __init__(self, inner: Any, stopping: threading.Event, slice_size: int) -> None:
        self._inner = inner
        self._stopping = stopping
        self._slice = max(1, slice_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: Any) -> Any:
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


def _counts(summary: SyncSummary) -> dict[str, Any]:
    data = summary.as_dict()
    data.pop("failures", None)
    return data


class Writer:
    """The writer thread and the per-connector facts it keeps: backoff, catch-up, progress, last poll."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.thread: threading.Thread | None = None
        self.alive_at = time.time()
        self.error: str | None = None
        self.cycle_started_at: float | None = None
        self.last_reconcile_at: float | None = None
        self.initial_pending: set[str] = set()
        """Connectors whose first catch-up has not finished (the service is not ready before)."""
        self.backoff: dict[str, Backoff] = {}
        self.poll_ok_at: dict[str, float] = {}
        """When the last fully committed poll of each polled connector started: its lag is measured from it."""
        self.progress_at: dict[str, float] = {}
        """When a cycle last finished work of each connector (committed, skipped, failed or deferred)."""
        self._poll_mutex = threading.Lock()
        self._polling: set[str] = set()
        """Connectors with a poll in flight (fetching, or its changes waiting for the writer)."""
        self._poll_again: dict[str, str] = {}
        """Connectors whose next poll was requested while one was in flight, with what asked for it."""
        self._pushed_at: dict[str, float] = {}
        self._requested_at: dict[str, float] = {}
        """When the last poll request of each connector came (monotonic)."""
        self._queued_at: dict[str, float] = {}
        """When the poll now queued behind the one in flight was first requested (monotonic)."""
        self._requested_docs: dict[str, set[str]] = {}

    @property
    def engine(self) -> Engine:
        assert self.service.runtime is not None
        return self.service.runtime.engine

    def start(self) -> None:
        engine = self.engine
        engine.embed_budget = self.service.config.sync.embed_budget
        engine.superseded = self.service.queue.has_hint
        self.thread = threading.Thread(target=self.run, name="syncd-writer", daemon=True)
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        if self.thread is not None:
            # The writer stops between embedding slices (StopRequested) or after its commit: merge_insert is
            # one atomic commit and the state only advances after it, so nothing is ever half-written.
            self.thread.join(timeout=60)
            if self.thread.is_alive():
                log.error("daemon.writer_still_busy", action="exiting; the uncommitted batch is redone on restart")

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        svc = self.service
        engine = self.engine
        maintenance = svc.maintenance
        q = svc.queue
        last_state_save = time.time()
        failed_cycles = 0
        while not svc.stopping.is_set():
            idle_work = adopt = False
            flush: list[str] = []
            with q.cond:
                while q.empty() and not svc.stopping.is_set():
                    self.alive_at = time.time()
                    flush = self._deletes_due()
                    if flush:
                        break
                    if svc.runtime is not None and svc.runtime.store.folds_to_adopt:
                        adopt = True  # the folder committed an index update: show it in /status at once
                        break
                    if maintenance.idle_work_due():
                        idle_work = True
                        break
                    held = any(engine.held_deletes(n)[0] for n in engine.connectors)
                    q.cond.wait(timeout=min(0.2 if held else 1.0, maintenance.policy.index_when_idle or 1.0))
                if svc.stopping.is_set():
                    break
            if flush:
                self._flush_deletes(flush)
                continue
            if adopt:
                maintenance.adopt_folds()
                continue
            if idle_work:
                maintenance.idle_work()
                continue
            with q.cond:
                if q.empty():
                    continue
                rescans, q.rescans = q.rescans, {}
                touched = set(rescans)
                tasks = list(q.tasks)
                q.tasks.clear()
                hints: dict[str, dict[str, float]] = {}
                if not any(rescans.values()):
                    hints, q.hints = q.hints, {}
                    q.in_flight = {c: dict(d) for c, d in hints.items()}
                touched |= set(hints)
            self.alive_at = self.cycle_started_at = time.time()
            try:
                while tasks:
                    name, fn = tasks[0]
                    if name == "rebuild":
                        notify("STATUS=rebuilding the index (settings changed)")
                    fn()
                    tasks.pop(0)
                self._rescan(rescans)
                if hints:
                    engine.process(hints, hold_deletes=True, between_batches=maintenance.after_batch)
                self.error = None
                failed_cycles = 0
                done = time.time()
                for name in touched:
                    self.progress_at[name] = done
            except StopRequested:
                log.info("writer.batch_abandoned", reason="stopping", action="redone by the catch-up on restart")
                break
            except Exception as exc:  # noqa: BLE001 - the writer must survive anything one cycle throws
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("writer.cycle_failed")
                # The connectors whose work failed show it, whatever failed (status never says idle then).
                for name in touched:
                    st = engine.status.get(name)
                    if st is not None:
                        st.state, st.last_error = "failing", f"writer cycle failed: {self.error}"
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
                svc.stopping.wait(min(60.0, 2.0 ** (failed_cycles - 1)))
            finally:
                with q.cond:
                    q.in_flight = {}
                self._requeue_deferred()
            try:
                self._figures()
                maintenance.after_batch()
                svc.status_line()
                if time.time() - last_state_save > STATE_SAVE_EVERY_S:
                    assert svc.runtime is not None
                    svc.runtime.state.save()
                    last_state_save = time.time()
            except Exception as exc:  # noqa: BLE001 - a full disk for the state file must not end the writer
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("writer.housekeeping_failed")
            finally:
                self.cycle_started_at = None  # the cycle includes the maintenance it made due

    def _rescan(self, rescans: dict[str, set[str]]) -> None:
        """Full catch-ups and folder rescans; ``rescans`` keeps what is left if one raises."""
        engine = self.engine
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
                self.request_poll(name, trigger="catch-up")
                continue
            for prefix in targets:
                summary = engine.reconcile(name, prefix=prefix,
                                           between_batches=self.service.maintenance.after_batch)
                self.last_reconcile_at = time.time()
                if not prefix:
                    self.outcome(name, engine.cursor_may_advance(summary, name))
                if summary.docs_changed or summary.docs_added or summary.docs_deleted or summary.docs_renamed:
                    log.info("sync.finished", connector=name, kind="reconcile", **_counts(summary))
            rescans.pop(name)
            self.catch_up_done(name)

    def _figures(self) -> None:
        metrics = self.service.metrics
        engine = self.engine
        for name in engine.connectors:
            count, _ = self.backlog(name)
            metrics.backlog.labels(connector=name).set(count)
            metrics.failed_docs.labels(connector=name).set(len(engine.attempts.get(name, {})))

    def backlog(self, name: str) -> tuple[int, float | None]:
        """(changes seen but not committed, first-seen time of the oldest): the queue, the batch in flight,
        deletions held for the guard and documents deferred past the embedding budget."""
        count, oldest = self.service.queue.backlog(name)
        held = self.engine.held_since(name) if self.service.runtime is not None else None
        if held:
            count += held[0]
            oldest = held[1] if oldest is None else min(oldest, held[1])
        return count, oldest

    # -- deferred documents and held deletions ----------------------------------------------------------
    def _requeue_deferred(self) -> None:
        """Documents the engine deferred past its embedding budget go back in the queue, first-seen time kept."""
        if self.service.runtime is None:
            return
        engine = self.engine
        deferred, engine.deferred = engine.deferred, {}
        for name, docs in deferred.items():
            for doc_id, seen in docs.items():
                self.service.queue.push(Change(connector=name, kind="upsert", doc_id=doc_id, seen_at=seen))

    def _deletes_due(self) -> list[str]:
        """Connectors whose held deletions have settled: none for ``[sync] delete_settle`` and the watcher's
        hints drained (or held ten times that long while edits keep coming)."""
        engine = self.engine
        settle = self.service.config.sync.delete_settle
        now = time.monotonic()
        due = []
        for name in engine.connectors:
            count, at = engine.held_deletes(name)
            if not count or at is None or now - at < settle:
                continue
            if not self.service.queue.hints.get(name) or now - at >= 10 * settle:
                due.append(name)
        return due

    def _flush_deletes(self, names: list[str]) -> None:
        self.alive_at = self.cycle_started_at = time.time()
        try:
            for name in names:
                summary = self.engine.flush_deletes(name)
                self.progress_at[name] = time.time()
                if summary.docs_deleted or summary.failures:
                    log.info("sync.finished", connector=name, kind="deletions", **_counts(summary))
        except Exception as exc:  # noqa: BLE001 - the writer must survive anything one cycle throws
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("writer.cycle_failed")
        finally:
            self.cycle_started_at = None
            self._requeue_deferred()

    # -- polls and backoff ------------------------------------------------------------------------------
    def backing_off(self, name: str, job: str) -> bool:
        """True (and the skip counted) while a failing connector waits for its next attempt."""
        backoff = self.backoff.get(name)
        if backoff is not None and time.time() < backoff.retry_at:
            self.service.metrics.skipped_runs.labels(job=job).inc()
            return True
        return False

    def outcome(self, name: str, ok: bool) -> None:
        """Record a cycle's outcome for the connector's backoff."""
        backoff = self.backoff.setdefault(name, Backoff())
        if ok:
            backoff.succeeded()
        else:
            connector = self.engine.connectors.get(name)
            base = (connector.poll_interval or connector.reconcile_interval or BACKOFF_BASE_S) if connector else 1.0
            backoff.failed(max(base, 0.001), self.service.config.sync.backoff_max, time.time())
            log.warning("connector.backing_off", connector=name, failures=backoff.failures,
                        retry_in_s=round(backoff.delay_s, 3))
        self.service.metrics.consecutive_failures.labels(connector=name).set(backoff.failures)

    def polling(self, name: str) -> bool:
        """Whether a poll of the connector is in flight."""
        with self._poll_mutex:
            return name in self._polling

    def poll(self, name: str) -> None:
        """Poll and apply in the calling thread (the writer)."""
        changes, started, error = self._fetch(name)
        self._apply_poll(name, changes, started, error)

    def poll_in_background(self, name: str) -> None:
        """Fetch a polled connector's changes in this thread (a scheduler worker), then hand them to the
        writer: a slow or hung remote holds up only its own connector, never the writer.

        One poll per connector is in flight at a time, from the fetch until the writer has applied its
        changes, so the connector never fetches while the writer reads from it. A scheduled poll that finds
        one in flight is skipped (counted); a requested one (``request_poll``) waits for it instead.
        """
        with self._poll_mutex:
            if name in self._polling:
                self.service.metrics.skipped_runs.labels(job=f"poll:{name}").inc()
                return
            self._polling.add(name)
        self._run_poll(name, "schedule")

    def request_poll(self, name: str, *, trigger: str, pushed_at: float | None = None,
                     docs: Iterable[str] = ()) -> str | None:
        """Poll the connector now (a push hook, a change check), coalesced: with no poll in flight one starts
        ("started"); with one in flight another is queued to run right after it ("queued"), however many
        requests arrive meanwhile, because the poll in flight may have fetched before the push landed.

        ``pushed_at`` (a hook's arrival) is where the freshness of what that poll commits is measured
        from; ``docs`` are document ids the poll reads again besides its own changes (at most
        ``MAX_REQUESTED_DOCS`` waiting). None when the connector does not exist or is not polled.
        """
        connector = self.engine.connectors.get(name) if self.service.runtime is not None else None
        if connector is None or not connector.poll_interval:
            return None
        with self._poll_mutex:
            if pushed_at is not None:
                self._pushed_at.setdefault(name, pushed_at)  # the oldest push not yet served
            waiting = self._requested_docs.setdefault(name, set())
            for doc_id in docs:
                if len(waiting) >= MAX_REQUESTED_DOCS:
                    break
                waiting.add(doc_id)
            self._requested_at[name] = time.monotonic()
            if name in self._polling:
                self._poll_again.setdefault(name, trigger)
                self._queued_at.setdefault(name, time.monotonic())
                return "queued"
            self._polling.add(name)
        self._start_poll_thread(name, trigger)
        return "started"

    def _start_poll_thread(self, name: str, trigger: str) -> None:
        threading.Thread(target=self._run_poll, args=(name, trigger), name=f"syncd-poll-{name}",
                         daemon=True).start()

    def _run_poll(self, name: str, trigger: str) -> None:
        """One poll; the caller has marked the connector as polling. Everything requested so far is served
        by this poll: requests arriving from here on queue the next one."""
        with self._poll_mutex:
            self._poll_again.pop(name, None)
            pushed_at = self._pushed_at.pop(name, None)
            docs = self._requested_docs.pop(name, set())
        self.service.metrics.polls.labels(connector=name, trigger=trigger).inc()
        handed = False
        try:
            changes, started, error = self._fetch(name)

            def apply() -> None:
                try:
                    self._apply_poll(name, changes, started, error, pushed_at=pushed_at, docs=docs)
                finally:
                    self._poll_finished(name)
                    self.catch_up_done(name)

            self.service.queue.push_task(f"poll:{name}", apply)
            handed = True
        finally:
            if not handed:
                self._poll_finished(name)

    def _poll_finished(self, name: str) -> None:
        with self._poll_mutex:
            again = self._poll_again.get(name)
            if again is None or self.service.stopping.is_set():
                self._poll_again.pop(name, None)
                self._polling.discard(name)
                return
        # Still marked as polling: the queued poll runs once the burst is over, and requests meanwhile
        # join it instead of queueing another.
        threading.Thread(target=self._run_queued_poll, args=(name, again), name=f"syncd-poll-{name}",
                         daemon=True).start()

    def _run_queued_poll(self, name: str, trigger: str) -> None:
        """A queued poll starts once no request came for ``REQUEST_SETTLE_S``, or ``REQUEST_MAX_WAIT_S`` after
        it was queued, whichever is first: a burst of hooks (a forge retrying, a push of many refs, a flood)
        costs one more poll, not one per poll's duration."""
        while not self.service.stopping.is_set():
            with self._poll_mutex:
                now = time.monotonic()
                due = min(self._requested_at.get(name, now) + REQUEST_SETTLE_S,
                          self._queued_at.get(name, now) + REQUEST_MAX_WAIT_S)
                if now >= due:
                    self._queued_at.pop(name, None)
                    break
            self.service.stopping.wait(due - now)
        if self.service.stopping.is_set():
            with self._poll_mutex:
                self._polling.discard(name)
            return
        self._run_poll(name, trigger)

    def _fetch(self, name: str) -> tuple[list[Change] | None, float, SyncdError | None]:
        """The connector's changes since its cursor (None: a full listing is needed), or the error."""
        started = time.time()
        connector = self.engine.connectors.get(name)
        if connector is None:
            return [], started, None
        try:
            changes = connector.poll()
            return (None if changes is None else list(changes)), started, None
        except SyncdError as exc:
            return None, started, exc

    def _apply_poll(self, name: str, changes: list[Change] | None, started: float, error: SyncdError | None,
                    *, pushed_at: float | None = None, docs: Iterable[str] = ()) -> None:
        """Writer side of a poll: apply the fetched changes, then move the connector's cursor if the engine
        says it may. A poll a push hook asked for measures freshness from the hook's arrival (``pushed_at``);
        ``docs`` are read again besides the poll's changes."""
        engine = self.engine
        connector = engine.connectors.get(name)
        if connector is None:
            return
        if error is not None:
            engine.status[name].last_error = str(error)
            engine.status[name].state = "failing"
            self.service.metrics.sync_errors.labels(connector=name).inc()
            log.error("poll.failed", connector=name, error=str(error))
            self._poll_done(name, started, False)
            return
        if changes is None:
            summary = engine.reconcile(name, between_batches=self.service.maintenance.after_batch)
            self._poll_done(name, started, engine.cursor_may_advance(summary, name))
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
        if pushed_at is not None:
            seen = {doc_id: min(pushed_at, now) for doc_id in seen}
        for doc_id in docs:
            seen.setdefault(doc_id, pushed_at or now)
        # Documents that failed in the engine (the model, the store) since the cursor moved past them.
        for doc_id in engine.retry_candidates(name):
            seen.setdefault(doc_id, now)
        between = self.service.maintenance.after_batch
        summary = (engine.reconcile(name, between_batches=between) if rescan
                   else engine.process({name: seen}, between_batches=between))
        ok = engine.cursor_may_advance(summary, name)
        if ok:
            connector.commit_cursor()
        self._poll_done(name, started, ok)

    def catch_up_done(self, name: str) -> None:
        if name in self.initial_pending:
            self.initial_pending.discard(name)
            total = len(self.engine.connectors)
            notify(f"STATUS=catching up: {total - len(self.initial_pending)}/{total} connector(s) done")
            if not self.initial_pending:
                log.info("daemon.ready")

    def _poll_done(self, name: str, started: float, ok: bool) -> None:
        if ok:
            # The index now reflects the source as of this poll's start: lag is measured from there.
            self.poll_ok_at[name] = started
        self.outcome(name, ok)

    def forget(self, name: str) -> None:
        """A connector removed by a reload."""
        self.initial_pending.discard(name)
        self.backoff.pop(name, None)
        self.poll_ok_at.pop(name, None)
        self.progress_at.pop(name, None)
