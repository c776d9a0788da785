"""What the service says about itself: the /status document, each connector's state derived from facts,
stalls, health and readiness problems, the systemd status line, and the status page."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

import structlog

from syncd import __version__
from syncd.config import format_duration
from syncd.errors import StoreError, SyncdError
from syncd.notify import notify

if TYPE_CHECKING:
    from syncd.runtime import Runtime
    from syncd.service.lifecycle import Service

log = structlog.get_logger("syncd.status")


def health_problems(service: Service) -> list[str]:
    """Why the service is not alive and well (a liveness failure, /healthz); empty when it is."""
    problems = []
    if not service.writer.is_alive():
        problems.append("the writer thread is not running")
    if service.stopping.is_set():
        problems.append("stopping")
    if service.scheduler is not None and not service.scheduler.running:
        problems.append("the scheduler is not running")
    if service.maintenance.overdue():
        error = service.maintenance.error
        problems.append("maintenance has not succeeded for too long" + (f" (last error: {error})" if error else ""))
    leases = service.runtime.leases if service.runtime is not None else None
    if leases is not None:
        for name, holder in sorted(leases.lost.items()):
            problems.append(f"lease {name} lost" + (f" to daemon {holder}" if holder else " (the store did not "
                            "answer its renewals for a whole lease_ttl)") + ": this daemon no longer writes it")
    return problems


def ready_problems(service: Service) -> list[str]:
    """Why /readyz says no: liveness problems, catch-ups not finished, stalled connectors."""
    problems = health_problems(service)
    problems += [f"catching up: {name}" for name in sorted(service.writer.initial_pending)]
    problems += [f"connector {name!r} stalled: its backlog has not shrunk for "
                 f"{time.time() - since:.0f} s" for name, since in sorted(service.stalls.since.items())]
    return problems


class Stalls:
    """A backlog that has not shrunk for ``[sync] stall_after`` (nothing of the connector finished in that
    time) is a stall: shown in /status and /readyz, logged and counted (``syncd_stalls_total``)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.since: dict[str, float] = {}

    def check(self) -> None:
        svc = self.service
        if svc.runtime is None:
            return
        now = time.time()
        limit = svc.config.sync.stall_after
        for name in list(svc.runtime.engine.connectors):
            count, oldest = svc.writer.backlog(name)
            last = max(svc.writer.progress_at.get(name, svc.started_at), oldest or now)
            stalled = bool(count) and now - last >= limit
            if stalled and name not in self.since:
                self.since[name] = last
                svc.metrics.stalls.labels(connector=name).inc()
                log.error("connector.stalled", connector=name, backlog=count, since_s=round(now - last, 1),
                          writer_error=svc.writer.error)
            elif not stalled and name in self.since:
                del self.since[name]
                log.info("connector.unstalled", connector=name)


def status_line(service: Service, last: str) -> str:
    """STATUS= for systemctl status: progress and figures, sent when they change. Returns the line."""
    assert service.runtime is not None
    engine = service.runtime.engine
    docs = sum(len(d) for d in engine.index.values())
    chunks = sum(i.chunks for d in engine.index.values() for i in d.values())
    backlog = sum(service.writer.backlog(n)[0] for n in engine.connectors)
    failing = sorted({*(n for n, st in engine.status.items() if st.state in ("failing", "unavailable", "blocked")),
                      *service.stalls.since})
    pending = service.writer.initial_pending
    if pending:
        total = len(engine.connectors)
        head = f"catching up: {total - len(pending)}/{total} connector(s) done"
    else:
        head = "idle" if not backlog else "syncing"
    line = f"{head}; {docs} docs, {chunks} chunks, backlog {backlog}"
    if failing:
        line += "; failing: " + ", ".join(failing)
    if line != last:
        notify("STATUS=" + line)
    return line


def build_status(runtime: Runtime, service: Service | None = None) -> dict[str, Any]:
    """The /status document (also what `syncd status` prints when no daemon runs)."""
    engine = runtime.engine
    writer = service.writer if service is not None else None
    store_stats: dict[str, Any] = {}
    try:
        store_stats = runtime.store.stats()
    except StoreError as exc:  # status must answer even when the store is unwell
        store_stats = {"error": str(exc)}
    total_chunks = sum(d.chunks for docs in engine.index.values() for d in docs.values())
    total_docs = sum(len(docs) for docs in engine.index.values())
    connectors = []
    now = time.time()
    for name, connector in engine.connectors.items():
        st = engine.status[name]
        docs = engine.docs(name)
        backlog, oldest = writer.backlog(name) if writer is not None else (0, None)
        interval = connector.poll_interval
        if interval:
            # Time since the source state the index reflects (the last fully committed poll), which
            # includes any backlog seen since; before the first one, time since start.
            polled = writer.poll_ok_at.get(name) if writer is not None else None
            since = polled or st.last_success_at or (service.started_at if service else now)
            lag = max(now - since, (now - oldest) if oldest is not None else 0.0)
        else:
            lag = (now - oldest) if oldest is not None else 0.0
        backoff = writer.backoff.get(name) if writer is not None else None
        cstate = runtime.state.connector(name)
        watch = service.watches.get(name) if service is not None else None
        attempts = engine.attempts.get(name, {})
        worst = max(attempts.items(), key=lambda kv: kv[1], default=None)
        state, reason = _derive_state(st.state, st.mass_delete_blocked is not None,
                                      catching_up=writer is not None and name in writer.initial_pending,
                                      stalled_since=service.stalls.since.get(name) if service is not None else None,
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
                  "last_reconcile_at": _iso(writer.last_reconcile_at) if writer else None,
                  "last_maintenance_at": _iso(runtime.store.last_maintenance_at),
                  "maintenance_runs": runtime.store.maintenance_runs, "compactions": runtime.store.compactions,
                  "index_folds": runtime.store.index_folds,
                  "rows_since_indexed": runtime.store.rows_since_indexed,
                  "maintenance_error": service.maintenance.error if service else None,
                  "maintenance_overdue": service.maintenance.overdue() if service else False,
                  **_shared_store(runtime),
                  **({"error": store_stats["error"]} if "error" in store_stats else {})},
        "embedding": {"model": runtime.config.embedding.model, "dim": runtime.embedder.dim, **runtime.embedding_info},
        "audit": audit_status(runtime, service),
        "connectors": connectors,
        "last_reconcile_at": _iso(writer.last_reconcile_at) if writer else None,
        "verify": service.last_verify if service else None,
        "writer_error": writer.error if writer else None,
        "healthy": service.healthy() if service else None,
        "problems": health_problems(service) if service else [],
        "ready": service.ready() if service else None,
        "ready_problems": ready_problems(service) if service else [],
    }


def _shared_store(runtime: Any) -> dict[str, Any]:
    """``store.daemons`` and this daemon's part, for a store shared by several daemons (facts read from the
    store's leases and heartbeats; an error reading them is shown, not raised)."""
    if getattr(runtime, "shared", None) is None:
        return {}
    leases = runtime.leases
    out: dict[str, Any] = {"daemon_id": leases.daemon_id if leases else None,
                           "maintainer": leases.maintainer if leases else None,
                           "commit_retries": runtime.store.commit_retries}
    try:
        out["daemons"] = runtime.daemons()
    except SyncdError as exc:
        out["daemons"] = None
        out["daemons_error"] = str(exc)
    return out


def audit_status(runtime: Runtime, service: Service | None = None) -> dict[str, Any]:
    """/status → ``audit``: how far back as-of answers reach and what the history costs in space."""
    store = service.reader if service is not None and service.reader is not None else runtime.store
    keep = runtime.config.audit.keep_versions_for
    try:
        figures = store.audit_retention(keep)
    except StoreError as exc:
        return {"keep_versions_for": format_duration(keep) if keep else "0", "error": str(exc)}
    journal = figures.get("journal") or {}
    return {
        "keep_versions_for": format_duration(keep) if keep else "0",
        "oldest_available_at": _iso_precise(figures["oldest_available_at"]),
        "versions_kept": figures["versions_kept"], "daily_tags": figures["daily_tags"],
        "oldest_daily_tag": figures["oldest_daily_tag"], "versions_bytes": figures["versions_bytes"],
        "journal": {"table": journal.get("table"), "entries": journal.get("entries", 0),
                    "bytes": journal.get("bytes", 0), "oldest_change_at": _iso_precise(journal.get("oldest_change_at"))},
    }


def _iso_precise(ts: float | None) -> str | None:
    from syncd.audit import iso

    return iso(ts)


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
