"""`syncd verify`: compare the index with the sources, without loading the embedding model.

Reports documents that are missing (at the source, not in the index), stale (indexed at another
revision), orphaned (in the index, gone from the source) and duplicated (a chunk id twice, or two
chunks at the same position of a document), and writes into the table by someone else than syncd
(``foreign``: ``Store.foreign_writes``). ``repair`` re-syncs exactly those documents and deletes rows syncd did
not write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import ConnectorError, DocumentError, DocumentGone
from syncd.models import SyncSummary


@dataclass(kw_only=True)
class VerifyReport:
    missing: list[dict[str, str]] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)
    orphaned: list[dict[str, str]] = field(default_factory=list)
    duplicated: list[dict[str, str]] = field(default_factory=list)
    checked_docs: int = 0
    foreign: list[dict[str, Any]] = field(default_factory=list)
    """Writes by someone else (a framework's add_texts or overwrite pointed at the live table)."""
    errors: list[dict[str, str]] = field(default_factory=list)
    torn: set[tuple[str, str]] = field(default_factory=set)
    """(connector, doc_id) of documents whose chunk positions have gaps (reported as stale)."""
    journal: list[dict[str, str]] = field(default_factory=list)
    """Documents whose change journal contradicts the index (its last entry says another content, or says
    the document is there when it is not, or gone when it is there)."""

    @property
    def ok(self) -> bool:
        # A source that could not be listed is not known to be in sync.
        return not (self.missing or self.stale or self.orphaned or self.duplicated or self.errors or self.journal
                    or self.foreign)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "missing": self.missing, "stale": self.stale, "orphaned": self.orphaned,
                               "duplicated": self.duplicated, "foreign": self.foreign,
                               "checked_docs": self.checked_docs}
        if self.errors:
            out["errors"] = self.errors
        if self.journal:
            out["journal"] = self.journal
        return out


def verify(runtime: Any, *, connector: str | None = None) -> VerifyReport:
    """Compare every connector's documents and revisions with the store."""
    from syncd.store import sql_string

    report = VerifyReport()
    store = runtime.store
    report.foreign = store.foreign_writes(after_version=_acknowledged_version(runtime))
    if any(f["kind"] == "schema" for f in report.foreign):
        return report  # not syncd's table any more: nothing below can be read; `syncd reindex` rebuilds it
    where = None
    shared = getattr(runtime, "shared", None) is not None
    if shared:
        # A store shared by several daemons: this one checks (and repairs) its own connectors only; the
        # documents of the others are theirs, even while their daemon is down.
        where = "connector IN (" + ", ".join(sql_string(n) for n in runtime.connectors or [""]) + ")"
    data = store.scan(["chunk_id", "connector", "doc_id", "doc_identity", "chunk_index"], where)
    indexed: dict[tuple[str, str], set[str]] = {}
    positions: Counter[tuple[str, str, int]] = Counter()
    for cid_conn_doc in zip(data["connector"].to_pylist(), data["doc_id"].to_pylist(), data["doc_identity"].to_pylist(),
                            data["chunk_index"].to_pylist(), strict=True):
        conn, doc_id, revision, index = cid_conn_doc
        indexed.setdefault((conn, doc_id), set()).add(revision)
        positions[(conn, doc_id, index)] += 1
    # A document's chunks must sit at positions 0..n-1: a gap means a torn or partial document.
    spans: dict[tuple[str, str], set[int]] = {}
    for conn, doc_id, index in positions:
        spans.setdefault((conn, doc_id), set()).add(index)
    incomplete = {key for key, idx in spans.items() if idx != set(range(len(idx)))}
    report.torn = incomplete
    dup_ids = [cid for cid, n in Counter(data["chunk_id"].to_pylist()).items() if n > 1]
    dup_docs = {(c, d) for (c, d, _), n in positions.items() if n > 1}
    for conn, doc_id in sorted(dup_docs):
        report.duplicated.append({"connector": conn, "doc_id": doc_id})
    if dup_ids and not dup_docs:
        report.duplicated.append({"connector": "", "doc_id": f"{len(dup_ids)} duplicate chunk ids"})
    for (conn, doc_id), revisions in sorted(indexed.items()):
        if len(revisions) > 1 and (conn, doc_id) not in dup_docs:
            report.duplicated.append({"connector": conn, "doc_id": doc_id})
    for name, conn in runtime.connectors.items():
        if connector is not None and name != connector:
            continue
        try:
            refs = list(conn.list_documents())
        except ConnectorError as exc:
            report.errors.append({"connector": name, "doc_id": "", "reason": str(exc)})
            continue
        listed = set()
        failures = runtime.state.connector(name).failures
        for ref in refs:
            report.checked_docs += 1
            try:
                doc = conn.read(ref.doc_id)
            except DocumentGone:
                continue
            except DocumentError as exc:
                # Not indexable: it should not be in the index (a skipped document), or its old copy stays
                # (a document that could not be read now).
                listed.add(ref.doc_id)
                if exc.reason in _SKIP_REASONS and (name, ref.doc_id) in indexed:
                    report.orphaned.append({"connector": name, "doc_id": ref.doc_id})
                continue
            listed.add(ref.doc_id)
            have = indexed.get((name, ref.doc_id))
            if have is None:
                if ref.doc_id in failures and _skipped_reason(failures[ref.doc_id]):
                    continue  # skipped with a recorded reason (empty, binary...) after extraction
                if _not_indexable(runtime, doc):
                    continue  # skipped at extraction, even if the state that recorded why was lost
                report.missing.append({"connector": name, "doc_id": ref.doc_id})
            elif doc.identity not in have or (name, ref.doc_id) in incomplete:
                report.stale.append({"connector": name, "doc_id": ref.doc_id})
        for (conn_name, doc_id) in indexed:
            if conn_name == name and doc_id not in listed:
                report.orphaned.append({"connector": name, "doc_id": doc_id})
    configured = set(runtime.connectors)
    for (conn_name, doc_id) in sorted(indexed):
        if conn_name not in configured and connector is None:
            report.orphaned.append({"connector": conn_name, "doc_id": doc_id})
    # On a shared store, the journal's entries of the other daemons' connectors are theirs to check.
    report.journal = check_journal(store, indexed, connector=connector, only=configured if shared else None)
    return report


def journal_view(store: Any, connector: str | None = None) -> dict[tuple[str, str], str | None]:
    """What the change journal says the index holds: (connector, doc_id) -> content identity, or None for a
    document it says is gone. Documents it has no entry for are absent (indexed before it started)."""
    view: dict[tuple[str, str], str | None] = {}
    if not store.journal.exists():
        return view
    cursor: int | None = None
    while True:
        rows = store.journal.read(after=cursor, connector=connector, limit=10_000)
        for row in rows:
            key = (row["connector"], row["doc_id"])
            if row["action"] == "renamed" and row["old_doc_id"] is not None:
                view[(row["connector"], row["old_doc_id"])] = None
            view[key] = None if row["action"] == "deleted" else (row["identity"] or row["revision"])
        if len(rows) < 10_000:
            return view
        cursor = int(rows[-1]["seq"])


def check_journal(store: Any, indexed: dict[tuple[str, str], set[str]], *, connector: str | None = None,
                  only: Collection[str] | None = None) -> list[dict[str, str]]:
    """Documents on which the change journal and the index disagree (of the connectors in ``only`` when
    given). Read only: a journal a crash left behind is brought up to date by the next writer's start
    (``Journal.catch_up``), and until then shows here."""
    out: list[dict[str, str]] = []
    for key, identity in sorted(journal_view(store, connector).items(), key=lambda kv: kv[0]):
        if only is not None and key[0] not in only:
            continue
        have = indexed.get(key)
        if identity is None and have:
            out.append({"connector": key[0], "doc_id": key[1], "reason": "indexed, but the journal says it was deleted"})
        elif identity is not None and not have:
            out.append({"connector": key[0], "doc_id": key[1], "reason": "the journal says it is indexed; it is not"})
        elif identity is not None and have and identity not in have:
            out.append({"connector": key[0], "doc_id": key[1],
                        "reason": "indexed with another content than the journal's last entry"})
    return out


_SKIP_REASONS = {"binary", "empty", "undecodable", "too-large", "corrupt", "encrypted", "not-a-regular-file",
                 "symlink-outside-root", "broken-symlink", "unsupported-type", "unparseable", "lfs-pointer",
                 "submodule"}


def _skipped_reason(reason: str) -> bool:
    return reason.split(":", 1)[0] in _SKIP_REASONS


def _not_indexable(runtime: Any, doc: Any) -> bool:
    """Whether extraction skips ``doc`` (empty, binary, corrupt...): such a document belongs in no index.
    Extraction needs no model, so verify stays cheap."""
    from syncd.errors import DocumentSkipped
    from syncd.extract import extract

    limits = getattr(runtime.config, "limits", None)
    try:
        extract(doc.content, doc.media_type, size_limit=getattr(limits, doc.media_type, None))
    except DocumentSkipped:
        return True
    return False


ACK_FILE = "verify.json"
"""``{"foreign_acknowledged_version": N}``: table versions up to N were reported as foreign writes and repaired."""


def _acknowledged_version(runtime: Any) -> int:
    from syncd.state import read_json

    data = read_json(runtime.config.state_dir / ACK_FILE)
    return int(data.get("foreign_acknowledged_version", 0)) if isinstance(data, dict) else 0


def repair(runtime: Any, report: VerifyReport) -> SyncSummary:
    """Re-sync exactly the documents the report names."""
    from syncd.store import doc_key

    engine = runtime.engine
    # The store is the truth: in a long-running service the engine's view of it is refreshed first.
    engine.load_index()
    summary = SyncSummary()
    targets: dict[str, set[str]] = {}
    for entry in report.missing + report.stale + report.orphaned + report.duplicated:
        if entry["connector"] and entry["doc_id"]:
            targets.setdefault(entry["connector"], set()).add(entry["doc_id"])
    # Duplicates and documents of removed connectors are cleared first, so the re-sync writes one clean copy.
    clear = [doc_key(e["connector"], e["doc_id"]) for e in report.duplicated if e["connector"]]
    clear += [doc_key(e["connector"], e["doc_id"]) for e in report.orphaned if e["connector"] not in engine.connectors]
    if clear:
        runtime.store.apply(runtime.store.make_rows([]), clear)
        runtime.store.journal.catch_up()  # these deletions are journaled from the version they made
        engine.load_index()
    if any(f["kind"] == "rows" for f in report.foreign):
        summary.chunks_deleted += runtime.store.delete_foreign_rows()
        engine.load_index()
    if any(f["kind"] == "version" for f in report.foreign):
        # The rows they left are repaired (above and below); the versions stay in Lance's history until
        # pruned, so they are acknowledged rather than reported at every verify.
        from syncd.state import write_json_atomic

        versions = [int(f["version"]) for f in report.foreign if f["kind"] == "version"]
        write_json_atomic(runtime.config.state_dir / ACK_FILE, {"foreign_acknowledged_version": max(versions)})
    for name, doc_ids in targets.items():
        if name not in engine.connectors:
            continue
        for doc_id in doc_ids:
            engine.state.connector(name).fingerprints.pop(doc_id, None)
            if (name, doc_id) in report.torn:
                # Rewrite it whole although the stored identity matches: one atomic replacement of all its
                # chunks; vectors of unchanged text are still reused.
                engine.docs(name).pop(doc_id, None)
        summary.merge(engine.process({name: {d: 0.0 for d in doc_ids}}))
    if report.journal:
        fix_journal(runtime.store, report)
    return summary


def fix_journal(store: Any, report: VerifyReport) -> int:
    """Append entries that bring the journal to what the index holds now, marked ``repaired``; returns how
    many. The index is the truth: the journal is corrected, never the index."""
    import time

    from syncd.store import DocState, diff_states

    store.journal.catch_up()
    keys = {(e["connector"], e["doc_id"]) for e in report.journal}
    view = journal_view(store)
    live = store.doc_states(store.table_name, int(store.table.version)) or {}
    before = {k: DocState(revision=view[k] or "", identity=view[k] or "", chunks=0, hashes=frozenset())
              for k in keys if view.get(k)}
    after = {k: v for k, v in live.items() if k in keys}
    entries = diff_states(before, after, table=store.table_name, version=int(store.table.version),
                          committed_at=time.time(), repaired=True)
    store.journal.append(entries)
    return len(entries)
