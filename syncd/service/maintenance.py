"""Store maintenance in the service: the policy, its "is it due" checks, and who runs what when.

``Store`` has the operations (compact, fold one index, the full maintenance, version clean-up); this
module decides when. Three paths, so maintenance never stalls an edit for long:

* after each batch the writer asks ``after_batch``: every ``compact_every_commits`` commits it asks the
  folder to merge small fragments (``compaction_due`` says which); past ``index_every_rows`` unindexed
  rows, it runs the full maintenance (last resort);
* when the writer has been idle for ``index_when_idle`` with rows outside the indexes, the folder brings
  every index up to date beside it (``idle_work``; the full maintenance only when an index is missing);
* the folder thread (``run_folder``): the compaction asked for, beside the writer's commits (Lance remaps
  the indexes for the rows it moves, the longest pause the writer had under sustained writes; figures in
  benchmarks/README.md); after ``MAX_DEFERRALS`` of them in a row gave way to a commit, the writer takes
  the next one between two batches; past ``fold_every_rows`` unindexed rows, a fold: the new fragments
  merged, then every index brought up to date in one commit, beside the writer's commits, spaced by
  ``FOLD_SPACING`` times its duration.

The schedule (``[sync] maintenance_interval``) runs the full maintenance too; maintenance that has not
succeeded for ``MAINTENANCE_GRACE`` intervals is a health failure (``overdue``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from syncd.config import Config
from syncd.errors import StoreError, SyncdError

if TYPE_CHECKING:
    from syncd.service.lifecycle import Service
    from syncd.store import Remap, Store

log = structlog.get_logger("syncd.maintenance")

MAINTENANCE_GRACE = 3.0
"""Maintenance is overdue (a health failure) after this many maintenance intervals without a success."""
RETRY_AFTER_FAILURE_S = 60.0
"""After a failed compaction or maintenance, commits and idle moments leave it alone this long."""
FOLD_SPACING = 9.0
"""After a fold the folder waits this many times its duration before the next one, so folding takes at
most a tenth of one core: a writer that is already behind (a slow model under load) keeps the rest."""
MAX_DEFERRALS = 2
"""Compactions beside the writer that may give way to its commits in a row; the next one runs on the writer's
thread between two batches, where no commit can overtake it. Under edits that keep touching the newest
fragments, every attempt beside the writer would give way: fragments would pile up, each attempt would take
longer and fail more surely, and every read and commit would slow down with them (benchmarks/README.md)."""
FRAGMENT_CHECK_EVERY = 4
"""Commits between two looks at the fragment count (a round trip to the table; a commit adds one or two)."""


@dataclass(frozen=True, slots=True)
class MaintenancePolicy:
    """When to compact and when to bring the indexes up to date (``[store]`` in the config)."""

    compact_every_commits: int = 32
    max_fragments: int = 64
    ann_min_rows: int = 100_000
    index_every_rows: int = 16_384
    index_when_idle: float = 2.0
    fold_every_rows: int = 2048

    @classmethod
    def from_config(cls, config: Config) -> MaintenancePolicy:
        s = config.store
        return cls(compact_every_commits=s.compact_every_commits, max_fragments=s.max_fragments,
                   ann_min_rows=s.ann_min_rows, index_every_rows=s.index_every_rows,
                   index_when_idle=s.index_when_idle, fold_every_rows=s.fold_every_rows)


def compaction_due(store: Store, policy: MaintenancePolicy) -> Remap | None:
    """The compaction the commits since the last one call for, if any, by the indexes it may remap
    (``Store.compact``): ``"quick"`` every ``compact_every_commits`` commits (the small fragments written
    since the full-text index was last folded: quick, so seldom overtaken by a commit); ``"all"`` once the
    table has more than ``max_fragments`` (looked at every ``FRAGMENT_CHECK_EVERY`` commits; Lance rewrites
    the full-text index to remap the rows it moves). The folder also merges the new fragments just before
    each fold (``fold_if_due``), so a fold leaves a small fragment or two that only an "all" compaction
    merges: one every few minutes under sustained writes, not every few seconds."""
    commits = store.commits_since_maintenance
    if commits == 0 or (commits < policy.compact_every_commits and commits % FRAGMENT_CHECK_EVERY):
        return None
    try:
        if store.fragment_count() > policy.max_fragments:
            return "all"
    except StoreError:
        pass  # a failed look is no reason to compact everything; the schedule still runs
    return "quick" if commits >= policy.compact_every_commits else None


def indexing_due(store: Store, policy: MaintenancePolicy, *, idle: bool = False) -> bool:
    """Rows the indexes do not cover yet: past ``index_every_rows``, or any once the writer has been idle for
    ``index_when_idle`` seconds (``idle`` asks the second question too)."""
    if store.rows_since_indexed >= policy.index_every_rows:
        return True
    return (idle and store.rows_since_indexed > 0 and policy.index_when_idle > 0
            and time.monotonic() - store.last_commit_at >= policy.index_when_idle)


def fold_due(store: Store, policy: MaintenancePolicy) -> bool:
    """``fold_every_rows`` rows are outside the indexes."""
    return store.rows_since_indexed >= policy.fold_every_rows


class Maintenance:
    """The service's maintenance: what the writer asks between batches, the folder thread, the schedule's
    full runs, and whether maintenance is overdue."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.policy = MaintenancePolicy.from_config(service.config)
        self.error: str | None = None
        self.last_attempt_at: float | None = None
        self.auto_after = 0.0
        """Monotonic time before which commits and idle moments start no maintenance (after a failure)."""
        self._fold_after = 0.0
        self.compact_wanted: Remap | None = None
        """The compaction the writer asked for (``compaction_due``); the folder runs it (or the writer, when
        no folder runs)."""
        self.deferrals = 0
        """Compactions beside the writer that gave way in a row (``MAX_DEFERRALS``)."""
        self.idle_fold = False
        """The writer went idle with rows outside the indexes: the folder folds now, whatever
        ``fold_every_rows`` says."""
        self.fold_wake = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        assert self.service.runtime is not None
        return self.service.runtime.store

    def reload(self, config: Config) -> None:
        self.policy = MaintenancePolicy.from_config(config)

    @property
    def allowed(self) -> bool:
        """This daemon maintains the table: always on a local folder; on a shared store only while it holds
        the maintenance lease (one daemon at a time compacts, folds indexes and cleans up versions)."""
        runtime = self.service.runtime
        leases = runtime.leases if runtime is not None else None
        return leases is None or leases.maintainer

    # -- the writer's questions -----------------------------------------------------------------------------
    def after_batch(self) -> None:
        """After a batch (writer thread): wake the folder, then compact or run the full maintenance if due."""
        self.fold_wake.set()
        if time.monotonic() < self.auto_after or not self.allowed:
            return
        if indexing_due(self.store, self.policy):
            self.run()
        elif (kind := compaction_due(self.store, self.policy)) is not None:
            if self.thread is not None and self.thread.is_alive() and self.deferrals < MAX_DEFERRALS:
                self.compact_wanted = kind
                self.fold_wake.set()
            else:
                self.compact(remap=kind)

    def idle_work_due(self) -> bool:
        """The writer is idle and rows wait outside the indexes: bring them up to date now, rather than in the
        path of a later edit (unless the folder already is)."""
        return (time.monotonic() >= self.auto_after and self.allowed and not self.idle_fold
                and indexing_due(self.store, self.policy, idle=True))

    def idle_work(self) -> None:
        """What an idle writer does about rows outside the indexes (writer thread). The folder brings every
        index up to date beside the writer, so an edit arriving meanwhile is committed at once: the full
        maintenance here held the first edits of every burst after a pause for as long as it took (a
        compaction of the whole table, every index, the clean-up; figures in benchmarks/README.md). Only
        an index that does not exist yet (a new table; the ANN index once the table passes
        ``ann_min_rows``) makes the writer run the full maintenance, which creates it; the schedule
        (``[sync] maintenance_interval``) still runs it to compact and clean up."""
        thread = self.thread
        try:
            lacking = self.store.lacks_an_index(self.policy.ann_min_rows)
        except StoreError as exc:
            log.warning("maintenance.check_failed", error=str(exc))
            self.auto_after = time.monotonic() + RETRY_AFTER_FAILURE_S
            return
        if lacking or thread is None or not thread.is_alive():
            self.run()
            return
        self.idle_fold = True
        self.fold_wake.set()

    # -- the steps ------------------------------------------------------------------------------------------
    def compact(self, *, beside_writer: bool = False, remap: Remap = "all") -> None:
        """Small fragments merged (``remap``: which indexes it may remap, see ``Store.compact``); if it fails,
        the full maintenance compacts too."""
        if not self.allowed:
            return
        conflicts = self.store.compaction_conflicts
        if self._small_step("compaction", lambda: self.store.compact(beside_writer=beside_writer,
                                                                     remap=remap)) is not None:
            self.service.metrics.compactions.inc()
            self.deferrals = 0
        elif self.store.compaction_conflicts > conflicts:
            self.service.metrics.compaction_conflicts.inc()
            self.deferrals += 1
            log.info("compaction.deferred", reason="a commit touched the fragments being merged first",
                     in_a_row=self.deferrals,
                     next_on=("the writer's thread" if self.deferrals >= MAX_DEFERRALS else "the folder"))

    def compact_if_wanted(self) -> bool:
        """The compaction the writer asked for, on the folder's thread (the folder's loop body). True if it
        ran one."""
        kind = self.compact_wanted
        if kind is None or self.service.runtime is None:
            return False
        self.compact_wanted = None
        if time.monotonic() < self.auto_after or not self.allowed or self.deferrals >= MAX_DEFERRALS:
            return False  # (the last: asked for before the writer took it over)
        self.compact(beside_writer=True, remap=kind)
        if self.store.folds_to_adopt:
            self.service.queue.wake_all()  # an idle writer moves its handle to the new version
        return True

    def adopt_folds(self) -> None:
        self._small_step("index.adopt", self.store.adopt_folds)

    def _small_step(self, event: str, step: Callable[[], Any]) -> Any:
        """A step taken between batches (or by the folder); a failure is logged and holds automatic maintenance
        back for ``RETRY_AFTER_FAILURE_S`` (the schedule still runs)."""
        started = time.monotonic()
        try:
            result = step()
        except SyncdError as exc:
            log.warning(f"{event}_failed", error=str(exc))
            self.auto_after = time.monotonic() + RETRY_AFTER_FAILURE_S
            return None
        log.debug(f"{event}_finished", result=result, seconds=round(time.monotonic() - started, 3))
        return result

    def run(self) -> None:
        """The full maintenance: compaction, every index brought up to date, old versions cleaned up."""
        store = self.store
        metrics = self.service.metrics
        if not self.allowed:
            log.debug("maintenance.skipped", reason="another daemon holds the maintenance lease")
            return
        self.last_attempt_at = time.time()
        started = time.monotonic()
        try:
            result = store.maintain(retention_s=self.service.config.sync.version_retention,
                                    ann_min_rows=self.policy.ann_min_rows,
                                    keep_versions_for=self.service.config.audit.keep_versions_for)
        except SyncdError as exc:
            self.error = str(exc)
            metrics.maintenance_runs.labels(outcome="failed").inc()
            log.error("maintenance.failed", error=str(exc))
            # Commits and idle moments do not retry it at once; the schedule still does.
            self.auto_after = time.monotonic() + RETRY_AFTER_FAILURE_S
            return
        self.error = None
        metrics.maintenance_runs.labels(outcome="ok").inc()
        metrics.last_maintenance.set(store.last_maintenance_at or time.time())
        try:
            stats = store.stats()
        except StoreError:
            stats = {}  # figures only; the next run retries
        if "fragments" in stats:
            metrics.fragments.set(stats["fragments"])
        log.info("maintenance.finished", seconds=round(time.monotonic() - started, 3),
                 fragments=stats.get("fragments"), table_version=stats.get("table_version"),
                 indexes_created=result.get("indexes_created"), audit_tags=result.get("tags"))

    def overdue(self) -> bool:
        """Maintenance that silently stopped running (scheduler dead, every run failing) is a health failure."""
        svc = self.service
        interval = svc.config.sync.maintenance_interval
        if not interval or svc.runtime is None or not self.allowed:
            return False
        deadline = (self.store.last_maintenance_at or svc.started_at) + MAINTENANCE_GRACE * interval
        if time.time() <= deadline:
            return False
        # A cycle that began before the deadline (a long catch-up, a rebuild) holds the queued maintenance
        # task back: that is waiting, not stopping. The next cycle runs tasks first.
        started = svc.writer.cycle_started_at
        return not (started is not None and started <= deadline)

    # -- the folder -----------------------------------------------------------------------------------------
    def start_folder(self) -> None:
        self.thread = threading.Thread(target=self.run_folder, name="syncd-folder", daemon=True)
        self.thread.start()

    def run_folder(self) -> None:
        """The compactions the writer asks for and, past ``fold_every_rows`` unindexed rows, the indexes
        brought up to date one at a time, on this thread: an edit never waits behind either. An index
        update and a data commit rebase onto each other in Lance; a compaction and a commit that deleted
        rows of the fragments it merges do not, and the compaction gives way (``Store.compact``). Folds,
        compaction and the full maintenance take turns through ``Store.maintenance_lock``."""
        stopping = self.service.stopping
        while not stopping.is_set():
            wait = max(0.0, self._fold_after - time.monotonic()) or 1.0
            self.fold_wake.wait(timeout=wait)
            self.fold_wake.clear()
            if stopping.is_set():
                break
            self.compact_if_wanted()
            self.fold_if_due()

    def fold_if_due(self) -> list[str] | None:
        """A fold if one is due and allowed now (the folder's loop body): the fragments written since the
        last one merged, then every index brought up to date in one commit. Returns the indexes folded."""
        if self.service.runtime is None:
            return None
        now = time.monotonic()
        if now < max(self.auto_after, self._fold_after) or not self.allowed or not (
                self.idle_fold or fold_due(self.store, self.policy)):
            return None
        # Merged before the indexes cover them, the new fragments cost nothing to remap; once the full-text
        # index covers them, only a compaction that rewrites it could merge them (``compaction_due``).
        self.compact(beside_writer=True, remap="quick")
        names: list[str] | None = self._small_step("index.fold", self.store.fold_step)
        if names:
            self.service.metrics.index_folds.inc(len(names))
            self.service.queue.wake_all()  # an idle writer moves its handle to the new version
        self.idle_fold = False  # done (or could not run; the next idle moment asks again)
        self._fold_after = time.monotonic() + FOLD_SPACING * (time.monotonic() - now)
        return names

    def stop(self) -> None:
        self.fold_wake.set()
        if self.thread is not None:
            self.thread.join(timeout=60)  # an index update is one atomic commit; at most one is running
