"""The sync engine: where a changed document becomes chunks, vectors and one atomic store commit.

The engine is the single writer. Given candidate document ids (from watcher hints, a poll or a full
listing), it reads each one, compares its revision with the store, extracts and chunks what changed,
reuses the vectors of every chunk whose content hash the store already holds (unchanged paragraphs,
renames, copies), embeds only the rest, and writes the whole batch in one ``merge_insert``. State (the
fingerprint cache, failures, cursors) advances only after that commit returns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from connectors.base import Connector, doc_id_from_name, is_valid_doc_id
from syncd import acl as acl_mod
from syncd.chunking import Chunker
from syncd.errors import (
    ConnectorError,
    DocumentError,
    DocumentGone,
    DocumentSkipped,
    MassDeletionRefused,
    RootUnavailable,
    StoreError,
    TransientError,
)
from syncd.extract import extract
from syncd.metrics import Metrics
from syncd.models import Chunk, Failure, SourceDocument, SyncSummary
from syncd.state import StateDir
from syncd.store import IndexedDoc, Store, chunk_id, doc_key, sql_string

log = structlog.get_logger("syncd.pipeline")

SKIPPED = "skipped"
"""Fingerprint-cache mark of a document skipped as not indexable (its reason is in the failures)."""

DELETE_WINDOW_S = 300.0
"""The mass-deletion guard's cycle for watcher-reported deletions: deletions within this window add up."""


@dataclass(kw_only=True)
class ConnectorStatus:
    """What /status shows of one connector (beyond counts read from the index)."""

    state: str = "starting"
    last_sync_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    mass_delete_blocked: dict[str, Any] | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class _Planned:
    doc: SourceDocument
    chunks: list[Chunk]
    title: str
    previous: IndexedDoc | None
    acl: tuple[str, ...] | None = ()


EMBED_SLICE = 128
"""Texts embedded between two looks at whether a document in the batch changed again or was deleted."""

PENDING_VECTORS_MAX = 200_000
"""Vectors kept for documents finished in later cycles; past this the keep is emptied (correct, only slower)."""

REBUILD_REOPEN_EVERY = 64
"""Batches between two reopenings of a reindex's table (``Store.reopen_table``: memory stays flat)."""


class Engine:
    """Reads, chunks, embeds and writes. Not thread-safe: one thread (the writer) calls it."""

    def __init__(self, *, store: Store, embedder: Any, chunker: Chunker, connectors: Mapping[str, Connector],
                 state: StateDir, limits: Any, max_batch_docs: int = 256, max_delete_fraction: float = 0.5,
                 mass_delete_min_docs: int = 10, metrics: Metrics | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.connectors = dict(connectors)
        self.state = state
        self.limits = limits
        self.max_batch_docs = max_batch_docs
        self.max_delete_fraction = max_delete_fraction
        self.mass_delete_min_docs = mass_delete_min_docs
        self.metrics = metrics or Metrics()
        self.index: dict[str, dict[str, IndexedDoc]] = {}
        self.status: dict[str, ConnectorStatus] = {name: ConnectorStatus() for name in self.connectors}
        self._deletes: dict[str, deque[tuple[float, int]]] = {}
        self.embed_budget: int | None = None
        """New chunk texts embedded for one commit (None: no limit); set by the service."""
        self.superseded: Callable[[str, str], bool] | None = None
        """Asked between embedding slices: has this document changed again (or gone) since its batch began?
        Set by the service (a newer hint in its queue); work on such a document is abandoned."""
        self.deferred: dict[str, dict[str, float]] = {}
        """Documents past the embedding budget, by connector, with their first-seen time: the caller queues
        them again; their vectors so far wait in ``_pending_vectors``."""
        self._pending_vectors: dict[str, np.ndarray] = {}
        self._pending_owner: dict[tuple[str, str], set[str]] = {}
        self._held: dict[str, dict[str, float]] = {}
        self._abandoned_needs: dict[str, list[str]] = {}
        self._between: Callable[[], None] | None = None
        self.attempts: dict[str, dict[str, int]] = {}
        """Failed attempts in a row of documents that failed for a reason that may pass, by connector."""
        self._held_at: dict[str, float] = {}
        self._lookup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-lookup")
        self.journal_enabled = True
        """Append every committed change to the store's change journal (off only to measure its cost)."""
        self._journal_behind = False
        self.only_own_connectors = False
        """A store shared with other daemons: the index view holds this engine's connectors only."""
        self.write_guard: Callable[[str], None] | None = None
        """Called before each commit for a connector; raises (``LeaseLost``) when this engine may not write it."""
        self.acl_unknown: dict[str, dict[str, str]] = {}
        """Documents whose permissions could not be determined (stored readable by nobody), by connector,
        with the reason: shown in /status until the source or the connector's ``acl`` says who may read."""
        self._acls: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.failure_acl: dict[str, dict[str, tuple[str, ...]]] = {}
        """The ACL of documents that failed or were skipped after they were read: /status shows their doc ids
        to callers who may read them."""

    # -- permissions -----------------------------------------------------------------------------------
    def acl_policy(self, name: str) -> str:
        """The hash of connector ``name``'s ACL settings (``acl``, ``acl_add``, ``principal_map``)."""
        cfg = self.connectors[name].config
        return acl_mod.policy_key(cfg.acl, cfg.acl_add, cfg.principal_map)

    def _acl_for(self, name: str, doc: SourceDocument) -> tuple[str, ...]:
        """The ACL ``doc`` is stored with (``document_acl``); a document no setting says anything of is
        recorded in ``acl_unknown`` with the reason."""
        found, note = document_acl(self.connectors[name].config, doc)
        unknown = self.acl_unknown.setdefault(name, {})
        if found is None:
            unknown[doc.doc_id] = note
            found = ()
        else:
            unknown.pop(doc.doc_id, None)
        return self._acls.setdefault(found, found)

    # -- index view ------------------------------------------------------------------------------------
    def load_index(self) -> None:
        """Read which documents (and revisions) the store holds."""
        self.index = {name: {} for name in self.connectors}
        for (connector, doc_id), info in self.store.indexed_docs().items():
            if self.only_own_connectors and connector not in self.connectors:
                continue
            self.index.setdefault(connector, {})[doc_id] = info

    def docs(self, connector: str) -> dict[str, IndexedDoc]:
        return self.index.setdefault(connector, {})

    def add_connector(self, connector: Connector) -> None:
        self.connectors[connector.name] = connector
        self.status.setdefault(connector.name, ConnectorStatus())
        self.index.setdefault(connector.name, {})

    def remove_connector(self, name: str) -> None:
        self.connectors.pop(name, None)
        self.status.pop(name, None)

    def drop_connector(self, name: str) -> int:
        """A connector taken out of the config: its documents leave the index in one commit, and the engine
        forgets it. Returns the number of documents deleted."""
        docs = self.docs(name)
        keys = [doc_key(name, d) for d in docs]
        if keys:
            if self.write_guard is not None:
                self.write_guard(name)
            version = self.store.apply(self.store.make_rows([]), keys)
            at = time.time()
            self._journal([_entry(name, d, "deleted", None, info, 0, 0, info.chunks, 0, self.store.table_name,
                                  version, None, at) for d, info in docs.items()])
        self.index.pop(name, None)
        self._held.pop(name, None)
        self.attempts.pop(name, None)
        self.remove_connector(name)
        return len(keys)

    # -- entry points ----------------------------------------------------------------------------------
    def reconcile(self, name: str, *, prefix: str | Sequence[str] = "", allow_mass_delete: bool = False,
                  between_batches: Callable[[], None] | None = None) -> SyncSummary:
        """Compare the connector's full listing (or the parts under ``prefix``, one folder or several) with
        the index. ``between_batches`` is called after each committed batch, once the engine's view and state
        have advanced (the service runs its maintenance there, so a long catch-up keeps the table compact).

        Folders are reconciled together so that a folder move (gone under one prefix, new under another)
        is one cycle in which the new documents are written before the old ones are deleted: their chunk
        vectors are still in the store to be reused.
        """
        started = time.monotonic()
        prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
        if "" in prefixes:
            prefixes = []
        # A folder inside another one being rescanned adds nothing but a second listing.
        prefixes = [p for p in prefixes if not any(q != p and _under(p, q) for q in prefixes)]
        connector = self.connectors[name]
        cstate = self.state.connector(name)
        status = self.status[name]
        status.last_sync_at = time.time()
        summary = SyncSummary()
        try:
            if prefixes:
                refs = [ref for p in prefixes for ref in connector.list_documents(p)]  # type: ignore[call-arg]
            else:
                refs = list(connector.list_documents())
        except (ConnectorError, OSError) as exc:  # an I/O error a connector let through: the listing is partial
            self._connector_failed(name, exc, summary)
            summary.seconds = time.monotonic() - started
            return summary
        indexed = self.docs(name)
        scope = [d for d in indexed if not prefixes or any(_under(d, p) for p in prefixes)]
        listed = {ref.doc_id for ref in refs}
        candidates: list[str] = []
        fingerprints: dict[str, str] = {}
        # ACL settings changed since the last full pass: every document's ACL is computed again (read, never
        # embedded); so is that of a document whose rows carry none yet (an index from before permissions).
        policy = self.acl_policy(name)
        policy_same = cstate.acl_policy == policy
        for ref in refs:
            summary.docs_seen += 1
            cached = cstate.fingerprints.get(ref.doc_id)
            have = indexed.get(ref.doc_id)
            if cached and cached[0] == ref.fingerprint and (
                    (have and cached[1] == have.identity and ref.doc_id not in cstate.failures
                     and policy_same and have.acl is not None)
                    # Skipped as not indexable (empty, binary, too large...) and not touched since.
                    or (have is None and cached[1] == SKIPPED and ref.doc_id in cstate.failures)):
                summary.docs_unchanged += 1
                continue
            candidates.append(ref.doc_id)
            fingerprints[ref.doc_id] = ref.fingerprint
        gone = [d for d in scope if d not in listed]
        # A document whose fingerprint reappears under a new id was moved (a renamed folder), not deleted.
        new_by_fp = {ref.fingerprint: ref.doc_id for ref in refs if ref.doc_id not in indexed}
        moves = {d: new_by_fp[fp] for d in gone if (fp := (cstate.fingerprints.get(d) or [""])[0]) in new_by_fp}
        allowed_gone = self._guard_deletions(name, len(gone) - len(moves), len(indexed), allow_mass_delete, summary)
        if allowed_gone:
            # Each move's old and new id go in the same batch, so it is paired as one rename.
            targets = set(moves.values())
            groups = [[new, old] for old, new in moves.items()]
            groups += [[d] for d in candidates if d not in targets] + [[d] for d in gone if d not in moves]
        else:
            groups = [[d] for d in candidates]
        # Failures that vanished from the listing are forgotten.
        in_scope = [d for d in cstate.failures if not prefixes or any(_under(d, p) for p in prefixes)]
        for doc_id in [d for d in in_scope if d not in listed]:
            cstate.failures.pop(doc_id, None)
            cstate.dirty = True
        self._between = between_batches
        try:
            self._apply_groups(name, groups, {}, summary, allow_mass_delete=True, count_seen=False,
                               fingerprints=fingerprints)
        finally:
            self._between = None
        if not prefixes and not policy_same and not any(f.holds_cursor for f in summary.failures):
            cstate.acl_policy = policy
            cstate.dirty = True
        self._finish_cycle(name, summary)
        summary.seconds = time.monotonic() - started
        return summary

    @staticmethod
    def cursor_may_advance(summary: SyncSummary, name: str) -> bool:
        """Whether a poll's cursor may move past the changes ``summary`` applied for connector ``name``: not
        when the connector failed as a whole or a batch was not committed for a reason that may pass (its
        documents would be skipped for good). A document that failed alone is recorded and retried by later
        polls (``retry_candidates``), so it lets the cursor pass."""
        return not any(f.holds_cursor for f in summary.failures if f.connector == name)

    def retry_candidates(self, name: str) -> list[str]:
        """Documents whose last attempt failed for a reason that may pass (not a skip): polled connectors
        add them to every poll, since their cursor has moved past them."""
        cstate = self.state.connector(name)
        return [d for d, fp in ((d, cstate.fingerprints.get(d)) for d in cstate.failures)
                if not (fp and fp[1] == SKIPPED)]

    def process(self, changes: Mapping[str, Mapping[str, float]], *, hold_deletes: bool = False,
                between_batches: Callable[[], None] | None = None) -> SyncSummary:
        """Apply change hints: ``{connector: {doc_id: first_seen_unix_time}}``.

        Deletions found are judged by the mass-deletion guard all together, before any is committed: at the
        end of this call (a poll's changes are the whole picture), or, with ``hold_deletes`` (watcher
        hints, which arrive one file at a time), when the caller calls ``flush_deletes`` once the burst is
        over.
        """
        started = time.monotonic()
        summary = SyncSummary()
        self._between = between_batches
        try:
            for name, seen in changes.items():
                if name not in self.connectors or not seen:
                    continue
                self.status[name].last_sync_at = time.time()
                self._apply_all(name, list(seen), seen, summary, allow_mass_delete=False, count_seen=True)
                if not hold_deletes:
                    self._flush_deletes(name, summary)
                self._finish_cycle(name, summary)
        finally:
            self._between = None
        summary.seconds = time.monotonic() - started
        return summary

    def held_deletes(self, name: str) -> tuple[int, float | None]:
        """(deletions held for ``name``, monotonic time the last one was held)."""
        return len(self._held.get(name, {})), self._held_at.get(name)

    def held_since(self, name: str) -> tuple[int, float] | None:
        """(deletions held for ``name``, first-seen time of the oldest), or None when none is held."""
        held = self._held.get(name)
        return (len(held), min(held.values())) if held else None

    def flush_deletes(self, name: str) -> SyncSummary:
        """Judge every deletion held for ``name`` at once and apply them, or refuse them all."""
        started = time.monotonic()
        summary = SyncSummary()
        if name in self.connectors:
            self._flush_deletes(name, summary)
            self._finish_cycle(name, summary)
        summary.seconds = time.monotonic() - started
        return summary

    def _flush_deletes(self, name: str, summary: SyncSummary) -> None:
        held = self._held.pop(name, {})
        self._held_at.pop(name, None)
        self.metrics.held_deletes.labels(connector=name).set(0)
        if not held:
            return
        indexed = self.docs(name)
        real = [d for d in held if d in indexed]
        try:
            self.connectors[name].check_available()
        except RootUnavailable as exc:
            # An unmounted share is not "every document deleted": nothing is deleted, the next scan decides.
            self._connector_failed(name, exc, summary)
            return
        # Watcher deletions within DELETE_WINDOW_S add up, measured against the documents there were before.
        recent = self._recent_deletes(name)
        if real and not self._guard_deletions(name, len(real) + recent, len(indexed) + recent, False, summary):
            return
        # Each is read again: a document recreated meanwhile is written, not deleted.
        self._apply_groups(name, [[d] for d in held], held, summary, allow_mass_delete=True, count_seen=False)

    # -- the guard -------------------------------------------------------------------------------------
    def _recent_deletes(self, name: str) -> int:
        """Documents of ``name`` deleted in the last DELETE_WINDOW_S seconds."""
        window = self._deletes.setdefault(name, deque())
        horizon = time.time() - DELETE_WINDOW_S
        while window and window[0][0] < horizon:
            window.popleft()
        return sum(n for _, n in window)

    def _guard_deletions(self, name: str, would_delete: int, total: int, allow: bool, summary: SyncSummary) -> bool:
        status = self.status[name]
        limit = self.max_delete_fraction * total
        if allow or would_delete <= limit or would_delete < self.mass_delete_min_docs:
            status.mass_delete_blocked = None
            return True
        exc = MassDeletionRefused(connector=name, would_delete=would_delete, total=total,
                                  limit=self.max_delete_fraction)
        status.mass_delete_blocked = {"would_delete": would_delete, "total": total,
                                      "max_delete_fraction": self.max_delete_fraction, "since": time.time()}
        status.last_error = str(exc)
        log.error("sync.mass_delete_refused", connector=name, would_delete=would_delete, total=total,
                  max_delete_fraction=self.max_delete_fraction)
        # The refused deletions have not happened: the cursor waits for the approval.
        summary.failures.append(Failure(connector=name, doc_id="", reason=f"mass-delete-refused: {exc}",
                                        holds_cursor=True))
        return False

    # -- applying --------------------------------------------------------------------------------------
    def _apply_all(self, name: str, doc_ids: list[str], seen: Mapping[str, float], summary: SyncSummary, *,
                   allow_mass_delete: bool, count_seen: bool) -> None:
        self._apply_groups(name, [[d] for d in doc_ids], seen, summary, allow_mass_delete=allow_mass_delete,
                           count_seen=count_seen)

    def _apply_groups(self, name: str, groups: list[list[str]], seen: Mapping[str, float], summary: SyncSummary, *,
                      allow_mass_delete: bool, count_seen: bool, fingerprints: Mapping[str, str] | None = None) -> None:
        """Apply in batches of about max_batch_docs; a group (a move's two ids) is never split."""
        batch: list[str] = []
        for group in groups:
            batch.extend(group)
            if len(batch) >= self.max_batch_docs:
                self._apply_batch(name, batch, seen, summary, allow_mass_delete=allow_mass_delete,
                                  count_seen=count_seen, fingerprints=fingerprints)
                batch = []
                if self._between is not None:
                    self._between()
        if batch:
            self._apply_batch(name, batch, seen, summary, allow_mass_delete=allow_mass_delete, count_seen=count_seen,
                              fingerprints=fingerprints)

    def _apply_batch(self, name: str, doc_ids: list[str], seen: Mapping[str, float], summary: SyncSummary, *,
                     allow_mass_delete: bool, count_seen: bool, fingerprints: Mapping[str, str] | None = None) -> None:
        connector = self.connectors[name]
        cstate = self.state.connector(name)
        indexed = self.docs(name)
        planned: dict[str, _Planned] = {}
        gone: list[str] = []
        skipped: dict[str, str] = {}
        unchanged_fp: dict[str, tuple[str, str]] = {}
        acl_changed: dict[str, tuple[SourceDocument, tuple[str, ...]]] = {}
        read_acl: dict[str, tuple[str, ...]] = {}  # of every document read: who may see its failure in /status
        skipped_fp: dict[str, str | None] = {}
        failed: dict[str, str] = {}
        invalid: dict[str, str] = {}
        held = self._held.get(name, {})
        read_at: dict[str, float] = {}
        for doc_id in dict.fromkeys(doc_ids):
            if count_seen:
                summary.docs_seen += 1
            held.pop(doc_id, None)  # looked at again now
            if not is_valid_doc_id(doc_id):
                # A connector's bug, not the document's: it can be neither stored nor shown as it is.
                shown = doc_id_from_name(doc_id.replace("\x00", "\\0")) or "(empty)"
                invalid[shown] = "invalid-doc-id: not valid Unicode, empty, or holds NUL"
                log.error("document.invalid_id", connector=name, doc_id=shown)
                continue
            bound = log.bind(connector=name, doc_id=doc_id)
            read_at[doc_id] = time.time()
            try:
                doc = connector.read(doc_id)
            except DocumentGone:
                for h in self._pending_owner.pop((name, doc_id), ()):
                    self._pending_vectors.pop(h, None)
                if doc_id in indexed:
                    gone.append(doc_id)
                else:
                    cstate.fingerprints.pop(doc_id, None)
                    if cstate.failures.pop(doc_id, None) is not None:
                        cstate.dirty = True
                continue
            except DocumentSkipped as exc:
                skipped[doc_id] = exc.describe()
                skipped_fp[doc_id] = (fingerprints or {}).get(doc_id)
                bound.warning("document.skipped", reason=exc.describe())
                continue
            except DocumentError as exc:
                failed[doc_id] = exc.describe()
                bound.warning("document.failed", reason=exc.describe())
                continue
            previous = indexed.get(doc_id)
            acl = read_acl[doc_id] = self._acl_for(name, doc)
            if previous is not None and previous.identity == doc.identity:
                if previous.acl != acl:
                    # Only who may read it changed: its rows are rewritten with the new ACL, nothing embedded.
                    acl_changed[doc_id] = (doc, acl)
                    continue
                unchanged_fp[doc_id] = (doc.fingerprint, doc.identity)
                summary.docs_unchanged += 1
                continue
            try:
                extracted = extract(doc.content, doc.media_type, size_limit=getattr(self.limits, doc.media_type, None))
                chunks = self.chunker.chunk(extracted.blocks)
            except DocumentSkipped as exc:
                skipped[doc_id] = exc.describe()
                skipped_fp[doc_id] = doc.fingerprint
                bound.warning("document.skipped", reason=exc.describe())
                continue
            except Exception as exc:  # noqa: BLE001 - a parser bug on one document must not fail the batch
                skipped[doc_id] = f"extract-failed: {type(exc).__name__}: {exc}"[:500]
                skipped_fp[doc_id] = doc.fingerprint
                bound.error("document.extract_failed", error=repr(exc)[:500])
                continue
            title = doc.title if doc.title and doc.media_type not in ("markdown", "html", "rst") else (
                extracted.title or doc.title)
            planned[doc_id] = _Planned(doc=doc, chunks=chunks, title=title, previous=previous, acl=acl)

        if gone and not allow_mass_delete:
            # Deletions are held and judged all together (``_flush_deletes``): a burst arrives over many
            # batches, and the guard must see it whole before any of it is committed. The old side of a
            # rename in this batch is not a deletion (its content lives on) and goes through now.
            new_identities = {p.doc.identity for p in planned.values() if p.previous is None}
            hold = [d for d in gone if indexed[d].identity not in new_identities]
            if hold:
                held = self._held.setdefault(name, {})
                now_s = time.time()
                for d in hold:
                    held[d] = min(held.get(d, now_s), seen.get(d) or now_s)
                self._held_at[name] = time.monotonic()
                self.metrics.held_deletes.labels(connector=name).set(len(held))
                hold_set = set(hold)
                gone = [d for d in gone if d not in hold_set]

        # Renames: a deleted document and a new one with the same content in the same batch.
        new_by_revision: dict[str, list[str]] = {}
        for doc_id, plan in planned.items():
            if plan.previous is None:
                new_by_revision.setdefault(plan.doc.identity, []).append(doc_id)
        renamed: set[str] = set()
        renamed_from: set[str] = set()
        rename_of: dict[str, str] = {}
        for old_id in gone:
            targets = new_by_revision.get(indexed[old_id].identity)
            if targets:
                new_id = targets.pop()
                renamed.add(new_id)
                renamed_from.add(old_id)
                rename_of[new_id] = old_id

        # Vectors: reuse every content hash the store has (or an earlier cycle embedded for a document it
        # deferred), embed the rest once each, smallest documents first within the budget. Hashes the store
        # certainly lacks (its hash filter) are embedded while the reusable vectors are being read.
        texts = {c.content_hash: _embed_text(c) for plan in planned.values() for c in plan.chunks}
        vectors: dict[str, np.ndarray] = {h: v for h in texts if (v := self._pending_vectors.get(h)) is not None}
        hint = self.store.hash_filter
        need = [h for h in texts if h not in vectors]
        fresh = [h for h in need if hint is not None and h not in hint]
        known = [h for h in need if hint is None or h in hint]
        embedded: dict[str, np.ndarray] = {}
        embed_failed: dict[str, str] = {}
        abandoned: list[str] = []
        budget = self.embed_budget
        try:
            lookup = self._lookup_pool.submit(self.store.vectors_for, known) if known and fresh else None
            try:
                if known and lookup is None:
                    vectors.update(self.store.vectors_for(known))
                if fresh:
                    more, more_failed, used = self._embed_budgeted(name, planned, fresh, texts, budget, abandoned)
                    embedded.update(more)
                    embed_failed.update(more_failed)
                    budget = None if budget is None else max(0, budget - used)
            finally:
                if lookup is not None:
                    vectors.update(self._lookup_result(lookup))
            missing = [h for h in known if h not in vectors]
            if missing:
                more, more_failed, _ = self._embed_budgeted(name, planned, missing, texts, budget, abandoned)
                embedded.update(more)
                embed_failed.update(more_failed)
        except StoreError as exc:
            self._batch_failed(name, list(planned) + gone, exc, summary)
            return
        to_embed = {h: texts[h] for h in embedded}
        vectors.update(embedded)
        summary.chunks_embedded += len(embedded)
        self.metrics.chunks_embedded.inc(len(embedded))
        for doc_id, reason in embed_failed.items():
            planned.pop(doc_id, None)
            failed[doc_id] = reason
            renamed.discard(doc_id)
        for doc_id in abandoned:
            # What was embedded is kept: a document changed again usually keeps most of its chunks.
            owned = self._pending_owner.setdefault((name, doc_id), set())
            for h in self._abandoned_hashes(doc_id, texts, embedded):
                self._pending_vectors[h] = embedded[h]
                owned.add(h)
            renamed.discard(doc_id)
            summary.docs_abandoned += 1
            self.metrics.docs_abandoned.labels(connector=name).inc()
            bound = log.bind(connector=name, doc_id=doc_id)
            bound.info("document.abandoned", reason="changed or deleted again while it was embedded")
        for doc_id in [d for d, p in planned.items() if any(c.content_hash not in vectors for c in p.chunks)]:
            # Past the budget: what it has so far is kept, and it comes back after the smaller documents.
            plan = planned.pop(doc_id)
            owned = self._pending_owner.setdefault((name, doc_id), set())
            for c in plan.chunks:
                if c.content_hash in embedded:
                    self._pending_vectors[c.content_hash] = embedded[c.content_hash]
                    owned.add(c.content_hash)
            self.deferred.setdefault(name, {})[doc_id] = seen.get(doc_id) or time.time()
            renamed.discard(doc_id)
            summary.docs_deferred += 1
            self.metrics.docs_deferred.labels(connector=name).inc()
        if len(self._pending_vectors) > PENDING_VECTORS_MAX:
            self._pending_vectors.clear()
            self._pending_owner.clear()

        # One commit for the whole batch.
        now = dt.datetime.now(dt.UTC)
        rows = self._rows(name, planned, vectors, now, failed, renamed)
        if acl_changed:
            try:
                acl_rows = self.store.rows_with_acl({doc_key(name, d): acl for d, (_, acl) in acl_changed.items()})
            except StoreError as exc:
                self._batch_failed(name, list(planned) + gone + list(acl_changed), exc, summary)
                return
            rows = pa.concat_tables([rows, acl_rows]) if rows.num_rows else acl_rows
        dropped = [s for s in skipped if s in indexed]
        replace = [doc_key(name, d) for d in [*planned, *gone, *dropped, *acl_changed]]
        # Every old row is overwritten when no document is removed and none got fewer chunks: the cheap upsert.
        covers = not gone and not dropped and all(
            p.previous is None or p.previous.chunks <= len(p.chunks) for p in planned.values())
        version: int | None = None
        if replace:
            commit_start = time.monotonic()
            try:
                if self.write_guard is not None:
                    self.write_guard(name)
                version = self.store.apply(rows, replace, covers_all_rows=covers)
            except StoreError as exc:
                self._batch_failed(name, list(planned) + gone + list(acl_changed), exc, summary)
                return
            self.metrics.commits.inc()
            self.metrics.commit_seconds.labels(connector=name).observe(time.monotonic() - commit_start)
        committed_at = time.time()

        # The commit returned: now the view of the index and the state may advance.
        status = self.status[name]
        table_name = self.store.table_name
        entries: list[dict[str, Any]] = []
        paired = {rename_of[d] for d in planned if d in renamed}
        for doc_id, plan in planned.items():
            reused = sum(1 for c in plan.chunks if c.content_hash not in to_embed)
            if plan.previous is None:
                if doc_id in renamed:
                    summary.docs_renamed += 1
                    action = "renamed"
                else:
                    summary.docs_added += 1
                    action = "added"
            else:
                summary.docs_changed += 1
                action = "changed"
                summary.chunks_deleted += max(0, plan.previous.chunks - len(plan.chunks))
            if action != "renamed":
                summary.chunks_reused += reused
                self.metrics.chunks_reused.inc(reused)
            self.metrics.docs_synced.labels(connector=name, action=action).inc()
            before = indexed.get(rename_of[doc_id]) if action == "renamed" else plan.previous
            # A rename's old rows all go; an edit's rows beyond the new chunk count go.
            dropped_rows = (before.chunks if action == "renamed" else max(0, before.chunks - len(plan.chunks))
                            ) if before is not None else 0
            entries.append(_entry(name, doc_id, action, plan.doc, before, len(plan.chunks) - reused, reused,
                                  dropped_rows, len(plan.chunks), table_name, version,
                                  seen.get(doc_id) or read_at.get(doc_id), committed_at,
                                  old_doc_id=rename_of.get(doc_id) if action == "renamed" else None))
            indexed[doc_id] = IndexedDoc(revision=plan.doc.revision, chunks=len(plan.chunks), identity=plan.doc.identity,
                                         acl=plan.acl)
            cstate.fingerprints[doc_id] = [plan.doc.fingerprint, plan.doc.identity]
            cstate.failures.pop(doc_id, None)
            _remember(status, action, doc_id, committed_at, acl=plan.acl)
        for doc_id, (doc, acl) in acl_changed.items():
            info = indexed[doc_id]
            indexed[doc_id] = IndexedDoc(revision=info.revision, chunks=info.chunks, identity=info.identity, acl=acl)
            cstate.fingerprints[doc_id] = [doc.fingerprint, doc.identity]
            cstate.failures.pop(doc_id, None)
            summary.docs_permissions += 1
            entries.append(_entry(name, doc_id, "permissions", doc, info, 0, 0, 0, info.chunks, table_name, version,
                                  seen.get(doc_id) or read_at.get(doc_id), committed_at))
            self.metrics.docs_synced.labels(connector=name, action="permissions").inc()
            _remember(status, "permissions", doc_id, committed_at, acl=acl)
        deleted_now = sum(1 for d in gone if d not in renamed_from)
        if deleted_now:
            self._deletes.setdefault(name, deque()).append((committed_at, deleted_now))
        for doc_id in gone:
            info = indexed.pop(doc_id)
            cstate.fingerprints.pop(doc_id, None)
            cstate.failures.pop(doc_id, None)
            if doc_id not in paired:
                entries.append(_entry(name, doc_id, "deleted", None, info, 0, 0, info.chunks, 0, table_name, version,
                                      seen.get(doc_id) or read_at.get(doc_id), committed_at))
            self.acl_unknown.get(name, {}).pop(doc_id, None)
            if doc_id not in renamed_from:
                summary.docs_deleted += 1
                summary.chunks_deleted += info.chunks
                self.metrics.docs_synced.labels(connector=name, action="deleted").inc()
                _remember(status, "deleted", doc_id, committed_at, acl=info.acl)
        for doc_id, pair in unchanged_fp.items():
            cstate.fingerprints[doc_id] = list(pair)
            cstate.failures.pop(doc_id, None)
        for doc_id in skipped:
            if (was := indexed.pop(doc_id, None)) is not None:
                summary.chunks_deleted += was.chunks
                # No longer indexable (emptied, too large...): its chunks left the index.
                entries.append(_entry(name, doc_id, "deleted", None, was, 0, 0, was.chunks, 0, table_name, version,
                                      seen.get(doc_id) or read_at.get(doc_id), committed_at))
            fp = skipped_fp.get(doc_id)
            if fp:
                # Not read again until it changes: a skip is about the content, not the moment.
                cstate.fingerprints[doc_id] = [fp, SKIPPED]
            else:
                cstate.fingerprints.pop(doc_id, None)
        for doc_id, reason in [*skipped.items(), *invalid.items()]:
            cstate.failures[doc_id] = reason
            # A parser that crashed is a fault to fix (the run fails); any other skip is about the document.
            crashed = reason.startswith("extract-failed")
            summary.docs_failed += crashed
            summary.docs_skipped += not crashed
            summary.failures.append(Failure(connector=name, doc_id=doc_id, reason=reason, skipped=not crashed))
            _remember(status, "failed" if crashed else "skipped", doc_id, committed_at, reason, acl=read_acl.get(doc_id))
        for doc_id in [*planned, *gone, *skipped]:
            for h in self._pending_owner.pop((name, doc_id), ()):
                self._pending_vectors.pop(h, None)
        attempts = self.attempts.setdefault(name, {})
        for doc_id in [*planned, *gone, *skipped, *unchanged_fp, *acl_changed]:
            attempts.pop(doc_id, None)
        for doc_id, reason in failed.items():
            attempts[doc_id] = attempts.get(doc_id, 0) + 1
            cstate.failures[doc_id] = reason
            summary.docs_failed += 1
            summary.failures.append(Failure(connector=name, doc_id=doc_id, reason=reason))
            self.metrics.sync_errors.labels(connector=name).inc()
            _remember(status, "failed", doc_id, committed_at, reason, acl=read_acl.get(doc_id))
        failure_acl = self.failure_acl.setdefault(name, {})
        for doc_id in [*planned, *gone, *unchanged_fp, *acl_changed]:
            failure_acl.pop(doc_id, None)
        for doc_id in [*skipped, *failed]:
            if doc_id in read_acl:
                failure_acl[doc_id] = read_acl[doc_id]
            else:
                failure_acl.pop(doc_id, None)
        cstate.dirty = True
        if replace:
            self._journal(entries, version)
        for doc_id in list(planned) + gone:
            first_seen = seen.get(doc_id)
            if first_seen:
                self.metrics.observe_freshness(name, max(0.0, committed_at - first_seen))
        if planned or gone:
            log.info("sync.batch_committed", connector=name, upserts=len(planned), deletes=len(gone),
                     embedded=len(to_embed), version=self.store.table.version if replace else None)

    def _journal(self, entries: list[dict[str, Any]], version: int | None = None) -> None:
        """Append a commit's entries to the change journal. Never fails the batch (it is committed): a failed
        append leaves the journal behind, and it is brought up to date from the table's version history
        before the next append (or at the next start, after a crash right here)."""
        if not self.journal_enabled or not entries:
            return
        if os.environ.get("SYNCD_TEST_CRASH_AT"):
            from syncd.testing import crash_point

            crash_point("journal-append")
        journal = self.store.journal
        try:
            if self._journal_behind:
                journal.catch_up(until=None if version is None else version - 1)
                self._journal_behind = False
            journal.append(entries)
        except StoreError as exc:
            self._journal_behind = True
            log.error("journal.append_failed", error=str(exc), entries=len(entries),
                      action="brought up to date from the table's versions before the next append")

    def _rows(self, name: str, planned: dict[str, _Planned], vectors: Mapping[str, np.ndarray], now: dt.datetime,
              failed: dict[str, str], renamed: set[str]) -> Any:
        """The batch's rows as one Arrow table. A document whose rows cannot be built (a value the schema
        refuses) fails alone with the reason; the rest of the batch is written."""
        try:
            return self.store.make_rows([_record(name, d, p, c, vectors[c.content_hash], now)
                                         for d, p in planned.items() for c in p.chunks])
        except (ValueError, TypeError) as exc:  # Arrow's conversion errors (ArrowInvalid, ArrowTypeError) among them
            log.warning("sync.rows_invalid", connector=name, error=str(exc)[:300], action="isolating the document")
        good = []
        for doc_id, plan in list(planned.items()):
            try:
                records = [_record(name, doc_id, plan, c, vectors[c.content_hash], now) for c in plan.chunks]
                self.store.make_rows(records)
            except (ValueError, TypeError) as exc:
                planned.pop(doc_id)
                renamed.discard(doc_id)
                failed[doc_id] = f"invalid-row: {type(exc).__name__}: {exc}"[:500]
                log.error("document.invalid_row", connector=name, doc_id=doc_id, error=str(exc)[:300])
                continue
            good.extend(records)
        return self.store.make_rows(good)

    def _abandoned_hashes(self, doc_id: str, texts: Mapping[str, str], embedded: Mapping[str, np.ndarray]) -> list[str]:
        return [h for h in self._abandoned_needs.pop(doc_id, ()) if h in embedded and h in texts]

    def _embed_budgeted(self, name: str, planned: dict[str, _Planned], hashes: list[str], texts: Mapping[str, str],
                        budget: int | None, abandoned: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str], int]:
        """Embed ``hashes`` (new chunk texts of ``planned``), smallest documents first and at most ``budget``
        texts, plus one slice of progress on the first document past it, so a large document advances
        every cycle without holding back the small ones. Between slices, documents that changed again or
        were deleted are dropped from ``planned`` (into ``abandoned``). Returns (vectors, failures, texts
        embedded)."""
        wanted = set(hashes)
        needs = {d: list(dict.fromkeys(c.content_hash for c in p.chunks if c.content_hash in wanted))
                 for d, p in planned.items()}
        order = sorted((d for d in needs if needs[d]), key=lambda d: len(needs[d]))
        chosen: dict[str, None] = {}
        if budget is None:
            for d in order:
                chosen.update(dict.fromkeys(needs[d]))
        else:
            over = []
            for d in order:
                extra = [h for h in needs[d] if h not in chosen]
                if len(chosen) + len(extra) <= budget:
                    chosen.update(dict.fromkeys(extra))
                else:
                    over.append(d)
            room = max(budget - len(chosen), budget // 4)
            for d in over[:1]:
                for h in needs[d]:
                    if room <= 0:
                        break
                    if h not in chosen:
                        chosen[h] = None
                        room -= 1
        owners: dict[str, set[str]] = {}
        for d, hs in needs.items():
            for h in hs:
                owners.setdefault(h, set()).add(d)
        # Sorted by length so that each slice's model calls hold texts of similar width.
        queue = sorted(chosen, key=lambda h: len(texts[h]))
        out: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        for start in range(0, len(queue), EMBED_SLICE):
            part = {h: texts[h] for h in queue[start:start + EMBED_SLICE] if owners.get(h)}
            if part:
                vecs, fails = self._embed(part, planned, connector=name)
                out.update(vecs)
                failed.update(fails)
            if self.superseded is not None and start + EMBED_SLICE < len(queue):
                for d in [d for d in planned if self.superseded(name, d)]:
                    planned.pop(d)
                    abandoned.append(d)
                    self._abandoned_needs[d] = needs.get(d, [])
                    for h in needs.get(d, ()):
                        owners.get(h, set()).discard(d)
        return out, failed, len(out)

    def _lookup_result(self, future: Future[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The reusable vectors read on the lookup thread (a method of its own so probes can time the wait)."""
        return future.result()

    def _embed(self, texts: dict[str, str], planned: dict[str, _Planned], *,
               connector: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Embed ``texts`` (hash -> text); on failure, isolate the documents whose chunks fail."""
        started = time.monotonic()
        out, failed = embed_isolated(self.embedder, texts, planned)
        self.metrics.embed_seconds.labels(connector=connector).observe(time.monotonic() - started)
        return out, failed

    def _batch_failed(self, name: str, doc_ids: Iterable[str], exc: Exception, summary: SyncSummary) -> None:
        cstate = self.state.connector(name)
        reason = f"store-write-failed: {exc}"
        self.status[name].last_error = reason
        log.error("sync.batch_failed", connector=name, error=str(exc))
        attempts = self.attempts.setdefault(name, {})
        holds = isinstance(exc, TransientError)
        for doc_id in doc_ids:
            attempts[doc_id] = attempts.get(doc_id, 0) + 1
            cstate.failures[doc_id] = reason
            summary.docs_failed += 1
            summary.failures.append(Failure(connector=name, doc_id=doc_id, reason=reason, holds_cursor=holds))
            self.metrics.sync_errors.labels(connector=name).inc()
        cstate.dirty = True

    def _connector_failed(self, name: str, exc: Exception, summary: SyncSummary) -> None:
        status = self.status[name]
        status.last_error = str(exc)
        status.state = "unavailable" if isinstance(exc, RootUnavailable) else "failing"
        self.metrics.sync_errors.labels(connector=name).inc()
        summary.failures.append(Failure(connector=name, doc_id="", reason=str(exc), holds_cursor=True))
        log.error("connector.failed", connector=name, error=str(exc))

    def _finish_cycle(self, name: str, summary: SyncSummary) -> None:
        status = self.status[name]
        connector_failures = [f for f in summary.failures if f.connector == name and not f.doc_id]
        if not connector_failures:
            status.last_success_at = time.time()
            status.state = "idle"
            if status.mass_delete_blocked is None:
                status.last_error = None
            self.metrics.last_success.labels(connector=name).set(status.last_success_at)
        elif status.mass_delete_blocked is not None:
            status.state = "blocked"

    # -- full rebuild ----------------------------------------------------------------------------------
    def rebuild(self, *, only: str | None = None, progress: bool = False, reload_index: bool = True) -> SyncSummary:
        """Re-read, re-chunk and re-embed every document into a scratch table, then replace the live table's
        content with it in one commit (``Store.replace_contents``), under the same name. A failure or a crash
        before that commit leaves the live table untouched (the scratch table is dropped now, or at the next
        writer's start).

        The caller is the only writer while this runs (the writer lock; in the service, the writer thread):
        changes seen meanwhile wait in the queue and are synced after, against the new content. With
        ``only``, the other connectors' rows are copied over unchanged. ``reload_index=False`` is for a
        process that exits after the rebuild: the view of the indexed documents is left unread afterwards,
        and the fingerprint cache goes to a file as it is built instead of staying in memory.
        """
        started = time.monotonic()
        summary = SyncSummary()
        base_version = int(self.store.table.version)
        table = self.store.create_scratch()
        name_new = self.store.scratch_name
        batches = 0
        try:
            carried = carry_filter(self.store, list(self.connectors), only)
            if carried is not None:
                keep = self.store.scan(self.store.table.schema.names, carried)
                if keep.num_rows:
                    table.add(keep)
            for name, connector in self.connectors.items():
                if only is not None and name != only:
                    continue
                # The listing is streamed, a batch at a time: memory follows the batch, not the corpus. A
                # progress bar (a terminal only) counts the documents in a first, cheap pass.
                total = sum(1 for _ in connector.list_documents()) if progress else 0
                bar = _progress(total, f"reindex {name}", progress)
                cstate = self.state.connector(name)
                if reload_index:
                    cstate.fingerprints.clear()
                else:
                    cstate.spill_fingerprints()
                cstate.failures.clear()
                cstate.acl_policy = self.acl_policy(name)
                refs = iter(connector.list_documents())
                while batch := [r.doc_id for r in islice(refs, self.max_batch_docs)]:
                    self._rebuild_batch(name, batch, table, summary)
                    batches += 1
                    if batches % REBUILD_REOPEN_EVERY == 0:
                        table = self.store.reopen_table(name_new)
                    if bar is not None:
                        bar.update(len(batch))
                if bar is not None:
                    bar.close()
            self.store.replace_contents(table, base_version=base_version)
        except BaseException:
            self.store.drop_table(name_new)
            for name in self.connectors:
                self.state.connector(name).drop_spill()
            raise
        if self.journal_enabled:
            try:
                # A reindex is not a change set of its own: the journal records, at the new table's version,
                # the documents whose content differs from the table it replaced (re-embedding alone is no
                # change), and marks it.
                self.store.journal.catch_up(reason="reindexed")
            except StoreError as exc:
                log.error("journal.catch_up_failed", error=str(exc), action="retried at the next start")
        self.state.save(only_dirty=False)
        if reload_index:
            self.load_index()
        summary.seconds = time.monotonic() - started
        return summary

    def _rebuild_batch(self, name: str, doc_ids: list[str], table: Any, summary: SyncSummary) -> None:
        batch = prepare_batch(self.connectors[name].read, doc_ids, self.chunker, self.limits,
                              acl_for=lambda doc: self._acl_for(name, doc))
        vectors, failed = self._embed(batch.texts, batch.planned, connector=name) if batch.texts else ({}, {})
        self.metrics.chunks_embedded.inc(len(vectors))
        records = batch_records(name, batch.planned, vectors, failed, dt.datetime.now(dt.UTC))
        if records:
            table.add(self.store.make_rows(records))
        account_rebuilt(self.state.connector(name), summary, name, seen=len(doc_ids), problems=batch.problems,
                        failed=failed, added=batch.fingerprints(failed), chunks_embedded=len(vectors))


# -- the stages of a full rebuild, shared by ``Engine.rebuild`` and the cluster reindex (syncd/cluster.py) ---
@dataclass(kw_only=True)
class PreparedBatch:
    """A rebuild batch read, extracted and chunked: what is left to embed, and what could not be indexed."""

    planned: dict[str, _Planned]
    problems: dict[str, tuple[str, bool]]
    """Documents that cannot be indexed, in the order met: doc id -> (reason, skipped with a reason)."""
    texts: dict[str, str]
    """Content hash -> the text the model embeds, once per distinct chunk text."""

    def fingerprints(self, failed: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """Documents written, with their fingerprint-cache entry (fingerprint, identity)."""
        return {d: (p.doc.fingerprint, p.doc.identity) for d, p in self.planned.items() if d not in failed}


def prepare_document(read: Callable[[str], SourceDocument], doc_id: str, chunker: Chunker, limits: Any) -> _Planned:
    """Read, extract and chunk one document for a rebuild. Raises what ``read`` and the extractor raise."""
    doc = read(doc_id)
    extracted = extract(doc.content, doc.media_type, size_limit=getattr(limits, doc.media_type, None))
    chunks = chunker.chunk(extracted.blocks)
    title = doc.title if doc.title and doc.media_type not in ("markdown", "html", "rst") else (
        extracted.title or doc.title)
    return _Planned(doc=doc, chunks=chunks, title=title, previous=None)


def carry_filter(store: Any, configured: Sequence[str], only: str | None) -> str | None:
    """The rows a rebuild copies over unchanged, as a filter (None: none). With ``only``, every other
    connector's; on a store shared by several daemons, also those of connectors this config does not name
    (other daemons' connectors: theirs to write, never dropped by this rebuild). On a local folder, a
    connector no longer configured is not carried: its rows go, as verify would report them orphaned."""
    from syncd.coordination import SharedFacts

    shared = isinstance(getattr(store, "facts", None), SharedFacts)
    rebuilt = [only] if only is not None else list(configured)
    if only is None and not shared:
        return None
    if not rebuilt:
        return "true"
    return "connector NOT IN (" + ", ".join(sql_string(n) for n in rebuilt) + ")"


def document_acl(cfg: Any, doc: SourceDocument) -> tuple[tuple[str, ...] | None, str]:
    """The ACL ``doc`` is stored with, by connector config ``cfg``: its configured ``acl``, else what the
    connector captured (renamed through ``principal_map``, extended with ``acl_add``). None, with the reason,
    when neither says anything: the document is then stored readable by nobody."""
    captured: Sequence[str] | None = doc.acl
    note = ""
    if captured is not None:
        try:
            captured = [acl_mod.check_entry(e) for e in captured]
        except acl_mod.PrincipalError as exc:
            captured, note = None, f"the source named an invalid principal: {exc}"
    else:
        note = doc.acl_note or "the source gives no permissions for it: set acl = [...] in the connector's config"
    return acl_mod.effective(captured, override=cfg.acl, extra=cfg.acl_add, mapping=cfg.principal_map), note


def prepare_batch(read: Callable[[str], SourceDocument], doc_ids: Iterable[str], chunker: Chunker,
                  limits: Any, acl_for: Callable[[SourceDocument], tuple[str, ...]] | None = None) -> PreparedBatch:
    """``prepare_document`` for each document: one that is gone is left out, one that cannot be indexed is
    recorded with its reason, and one bad document never fails the others."""
    planned: dict[str, _Planned] = {}
    problems: dict[str, tuple[str, bool]] = {}
    for doc_id in doc_ids:
        try:
            plan = prepare_document(read, doc_id, chunker, limits)
            # Without ``acl_for`` the ACL is left null: readable by nobody until the next pass computes it,
            # without embedding.
            plan.acl = acl_for(plan.doc) if acl_for is not None else None
            planned[doc_id] = plan
        except DocumentGone:
            continue
        except DocumentSkipped as exc:
            problems[doc_id] = (exc.describe(), True)
        except (DocumentError, Exception) as exc:  # noqa: BLE001 - one bad document must not fail a reindex
            problems[doc_id] = (exc.describe() if isinstance(exc, DocumentError)
                                else f"extract-failed: {type(exc).__name__}", False)
    texts: dict[str, str] = {}
    for plan in planned.values():
        for c in plan.chunks:
            texts.setdefault(c.content_hash, _embed_text(c))
    return PreparedBatch(planned=planned, problems=problems, texts=texts)


def embed_isolated(embedder: Any, texts: dict[str, str],
                   planned: Mapping[str, _Planned]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embed ``texts`` (hash -> text) in one call; on failure, document by document, so the documents whose
    chunks the model refuses fail alone. Returns (vectors by hash, failed documents with their reason)."""
    hashes = list(texts)
    try:
        matrix = embedder.encode([texts[h] for h in hashes])
        good = np.isfinite(matrix).all(axis=1)
        if good.all():
            return dict(zip(hashes, matrix, strict=True)), {}
    except Exception as exc:  # noqa: BLE001 - the model may raise anything; isolate per document below
        log.warning("embed.batch_failed", error=str(exc), texts=len(hashes))
    # Retry document by document so one bad document cannot fail the others.
    out: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for doc_id, plan in planned.items():
        wanted = [c.content_hash for c in plan.chunks if c.content_hash in texts and c.content_hash not in out]
        if not wanted:
            continue
        try:
            matrix = embedder.encode([texts[h] for h in wanted])
        except Exception as exc:  # noqa: BLE001
            failed[doc_id] = f"embedding-failed: {type(exc).__name__}: {exc}"
            continue
        if not np.isfinite(matrix).all():
            failed[doc_id] = "embedding-failed: the model returned non-finite values"
            continue
        out.update(zip(wanted, matrix, strict=True))
    return out, failed


def batch_records(name: str, planned: Mapping[str, _Planned], vectors: Mapping[str, np.ndarray],
                  failed: Mapping[str, str], now: dt.datetime) -> list[dict[str, Any]]:
    """The rows of every planned document that did not fail, in the store's record shape."""
    return [_record(name, doc_id, plan, c, vectors[c.content_hash], now)
            for doc_id, plan in planned.items() if doc_id not in failed for c in plan.chunks]


def account_rebuilt(cstate: Any, summary: SyncSummary, name: str, *, seen: int,
                    problems: Mapping[str, tuple[str, bool]], failed: Mapping[str, str],
                    added: Mapping[str, tuple[str, str]], chunks_embedded: int) -> None:
    """A rebuilt batch in the summary and the connector's state (failures, fingerprint cache)."""
    summary.docs_seen += seen
    summary.chunks_embedded += chunks_embedded
    for doc_id, (reason, skipped) in [*problems.items(), *((d, (r, False)) for d, r in failed.items())]:
        cstate.failures[doc_id] = reason
        if skipped:
            summary.docs_skipped += 1
        else:
            summary.docs_failed += 1
        summary.failures.append(Failure(connector=name, doc_id=doc_id, reason=reason, skipped=skipped))
    for doc_id, (fingerprint, identity) in added.items():
        summary.docs_added += 1
        cstate.set_fingerprint(doc_id, fingerprint, identity)
    cstate.dirty = True


def _under(doc_id: str, prefix: str) -> bool:
    return doc_id == prefix or doc_id.startswith(prefix.rstrip("/") + "/")


def _embed_text(chunk: Chunk) -> str:
    from syncd.chunking import embed_input

    return embed_input(chunk.text, chunk.heading_path)


def _chunk_uri(doc: SourceDocument, c: Chunk) -> str:
    if not doc.uri_template:
        return doc.uri
    return doc.uri_template.replace("{start_line}", str(c.start_line)).replace("{end_line}", str(c.end_line))


def _record(connector: str, doc_id: str, plan: _Planned, c: Chunk, vector: np.ndarray, now: dt.datetime) -> dict[str, Any]:
    return {
        "chunk_id": chunk_id(connector, doc_id, c.index), "doc_key": doc_key(connector, doc_id),
        "doc_id": doc_id, "connector": connector, "text": c.text, "vector": vector,
        "uri": _chunk_uri(plan.doc, c), "title": plan.title, "revision": plan.doc.revision, "chunk_index": c.index,
        "heading_path": list(c.heading_path), "start_line": c.start_line, "end_line": c.end_line,
        "content_hash": c.content_hash, "updated_at": now, "doc_identity": plan.doc.identity,
        "modified_at": plan.doc.modified_at,
        "source_metadata": json.dumps(dict(plan.doc.metadata), sort_keys=True, ensure_ascii=False),
        "acl": list(plan.acl) if plan.acl is not None else None,
    }


def _entry(connector: str, doc_id: str, action: str, doc: SourceDocument | None, before: IndexedDoc | None,
           embedded: int, reused: int, deleted: int, chunks: int, table: str, version: int | None,
           seen_at: float | None, committed_at: float, *, old_doc_id: str | None = None) -> dict[str, Any]:
    """One change journal entry (``syncd.store.journal_schema``); never any chunk text."""
    return {"connector": connector, "doc_id": doc_id, "action": action, "old_doc_id": old_doc_id,
            "revision": doc.revision if doc is not None else None,
            "previous_revision": before.revision if before is not None else None,
            "identity": doc.identity if doc is not None else None,
            "previous_identity": before.identity if before is not None else None,
            "chunks_embedded": embedded, "chunks_reused": reused, "chunks_deleted": deleted, "chunks": chunks,
            "live_table": table, "table_version": version, "seen_at": seen_at, "committed_at": committed_at}


def _remember(status: ConnectorStatus, action: str, doc_id: str, at: float, reason: str | None = None, *,
              acl: Sequence[str] | None = None) -> None:
    entry: dict[str, Any] = {"action": action, "doc_id": doc_id, "at": at}
    if reason:
        entry["reason"] = reason
    # Who may see this entry in /status (its doc id may say what a restricted document is about); an entry
    # without one (a failure, a skip) is shown to trusted callers only.
    entry["acl"] = tuple(acl) if acl is not None else ()
    status.recent.append(entry)
    del status.recent[:-50]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="doc")
