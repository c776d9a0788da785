"""What the service says about itself: the /status document, each connector's state derived from facts,
stalls, health and readiness problems, the systemd status line, and the status page."""

from __future__ import annotations

import calendar
import html
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from syncd import __version__
from syncd.config import format_duration
from syncd.errors import StoreError, SyncdError
from syncd.notify import notify

if TYPE_CHECKING:
    from syncd.runtime import Runtime
    from syncd.service.lifecycle import Service

log = structlog.get_logger("syncd.status")

T = TypeVar("T")

STORE_WAIT_S = 1.5
"""How long /status waits for each of its reads of the store. A store that does not answer (an object store
that went away, whose client retries for minutes) must not hold /status: the figure is then shown as an
error, and the read goes on in its thread for the next request to pick up."""


class _Read:
    """One read of the store for /status at a time, in a thread of its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.value: Any = None
        self.error: BaseException | None = None


_READS: weakref.WeakKeyDictionary[Any, dict[str, _Read]] = weakref.WeakKeyDictionary()


def bounded_read(owner: Any, name: str, read: Callable[[], T], wait: float = STORE_WAIT_S) -> T:
    """``read()`` run in a thread, waited for ``wait`` seconds; StoreError when it has not answered by then
    (a read still under way from an earlier request is waited for instead of starting another)."""
    entry = _READS.setdefault(owner, {}).setdefault(name, _Read())
    with entry.lock:
        if entry.thread is None or not entry.thread.is_alive():
            def run() -> None:
                try:
                    value, error = read(), None
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    value, error = None, exc
                with entry.lock:
                    entry.value, entry.error = value, error

            entry.thread = threading.Thread(target=run, name=f"status-{name}", daemon=True)
            entry.thread.start()
        thread = entry.thread
    thread.join(wait)
    if thread.is_alive():
        raise StoreError(f"the store did not answer within {wait:g} s ({name})")
    with entry.lock:
        if entry.error is not None:
            raise entry.error
        return entry.value  # type: ignore[no-any-return]


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


RESTRICTED = "(restricted)"


def _recent(entries: list[dict[str, Any]], viewer: frozenset[str] | None) -> list[dict[str, Any]]:
    """Recent changes as ``viewer`` may see them: a document it may not read keeps its action and time, not
    its doc id (a path or a title can say what a restricted document is about)."""
    from syncd.acl import readable

    out = []
    for entry in entries:
        acl = entry.get("acl", ())
        if viewer is None:
            out.append({**entry, "acl": list(acl)})
        elif readable(acl, viewer):
            out.append({k: v for k, v in entry.items() if k != "acl"})
        else:
            out.append({"action": entry["action"], "doc_id": None, "at": entry["at"], "restricted": True})
    return out


def build_status(runtime: Runtime, service: Service | None = None, viewer: frozenset[str] | None = None
                 ) -> dict[str, Any]:
    """The /status document (also what `syncd status` prints when no daemon runs). ``viewer``: what the
    caller may read (None: everything, the trusted token and local commands); doc ids of documents it may
    not read are left out (counts stay)."""
    from syncd.acl import readable

    engine = runtime.engine
    writer = service.writer if service is not None else None
    store_stats: dict[str, Any] = {}
    try:
        store_stats = bounded_read(runtime, "stats", runtime.store.stats)
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
            last_error = (f"{worst[0]}: {cstate.failures.get(worst[0], 'failed')}" if viewer is None
                          else f"a document failed {worst[1]} times in a row")
        unknown = engine.acl_unknown.get(name, {})
        entry = {
            "name": name, "type": connector.type_name, "state": state,
            "last_sync_at": _iso(st.last_sync_at), "last_success_at": _iso(st.last_success_at),
            "lag_s": round(max(lag, 0.0), 3), "backlog": backlog, "docs": len(docs),
            "chunks": sum(d.chunks for d in docs.values()), "failed_docs": len(cstate.failures),
            "last_error": last_error,
            "state_reason": reason,
            # A document not in the index has no ACL to judge it by: only trusted callers see which it is.
            "failures": [{"doc_id": d, "reason": r} for d, r in list(cstate.failures.items())
                         if viewer is None or readable(engine.failure_acl.get(name, {}).get(d), viewer)][:100],
            "mass_delete_blocked": st.mass_delete_blocked,
            "recent": _recent(st.recent[-20:], viewer),
            "permissions": {
                "unreadable_docs": sum(1 for d in docs.values() if not d.acl),
                "undetermined_docs": len(unknown),
                "undetermined": [{"doc_id": d, "reason": r} for d, r in list(unknown.items())[:100]]
                if viewer is None else [],
            },
            "freshness": service.metrics.recent_freshness(name) if service is not None else None,
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
                  "compaction_conflicts": runtime.store.compaction_conflicts,
                  "index_folds": runtime.store.index_folds,
                  "rows_since_indexed": runtime.store.rows_since_indexed,
                  "vector_cache": _vector_cache(service),
                  "maintenance_error": service.maintenance.error if service else None,
                  "maintenance_overdue": service.maintenance.overdue() if service else False,
                  **_shared_store(runtime),
                  **({"error": store_stats["error"]} if "error" in store_stats else {})},
        "embedding": {"model": runtime.config.embedding.model, "dim": runtime.embedder.dim, **runtime.embedding_info},
        "audit": audit_status(runtime, service),
        "connectors": connectors,
        # p50/p95 of change seen -> searchable over the last 15 minutes (the histogram counts since start).
        "freshness": service.metrics.recent_freshness() if service is not None else None,
        "last_reconcile_at": _iso(writer.last_reconcile_at) if writer else None,
        "verify": _verify_view(service.last_verify if service else None, viewer),
        "writer_error": writer.error if writer else None,
        "healthy": service.healthy() if service else None,
        "problems": health_problems(service) if service else [],
        "ready": service.ready() if service else None,
        "ready_problems": ready_problems(service) if service else [],
    }


def _vector_cache(service: Service | None) -> dict[str, Any] | None:
    """``store.vector_cache``: the vectors the daemon holds for the vector leg, and which leg answered how
    often (None: ``[search] vector_cache_mb = 0``)."""
    cache = service.reader.vector_cache if service is not None and service.reader is not None else None
    return cache.figures() if cache is not None else None


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
        out["daemons"] = bounded_read(runtime, "daemons", runtime.daemons)
    except SyncdError as exc:
        out["daemons"] = None
        out["daemons_error"] = str(exc)
    return out


def audit_status(runtime: Runtime, service: Service | None = None) -> dict[str, Any]:
    """/status → ``audit``: how far back as-of answers reach and what the history costs in space."""
    store = service.reader if service is not None and service.reader is not None else runtime.store
    keep = runtime.config.audit.keep_versions_for
    try:
        figures = bounded_read(runtime, "audit", lambda: store.audit_retention(keep))
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


def _verify_view(report: dict[str, Any] | None, viewer: frozenset[str] | None) -> dict[str, Any] | None:
    """The last verify report; for a caller that is not trusted, its document lists become counts."""
    if report is None or viewer is None:
        return report
    return {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}


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
    """The status page an operator keeps open: per connector its state, lag, backlog, last success, last
    error, recent freshness (p50/p95) and recent changes with their times; links to /status and /metrics; a
    search box whose results (from /search) show their citations. Its live part refreshes itself every 5
    seconds without touching the search (a plain reload every 5 seconds without JavaScript)."""
    now = time.time()
    rows = []
    for c in status["connectors"]:
        recent = "".join(
            f"<li><time datetime='{_iso(r['at'])}'>{_clock(r['at'], now)}</time> {html.escape(r['action'])} "
            f"{html.escape(r['doc_id'] or RESTRICTED)}{(' — ' + html.escape(r['reason'])) if r.get('reason') else ''}</li>"
            for r in reversed(c["recent"][-8:]))
        rows.append(
            f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['type'])}</td>"
            f"<td class='state {html.escape(c['state'])}'>{html.escape(c['state'])}</td>"
            f"<td class='num'>{_seconds(c['lag_s'])}</td><td class='num'>{c['backlog']}</td>"
            f"<td class='num'>{c['docs']}</td><td class='num'>{c['chunks']}</td>"
            f"<td>{_when(c.get('last_success_at'), now)}</td>"
            f"<td class='num'>{_quantiles(c.get('freshness'))}</td>"
            f"<td class='num'>{c['failed_docs']}</td><td>{html.escape(c['last_error'] or '')}"
            f"{('<br><small>' + html.escape(c['state_reason']) + '</small>') if c.get('state_reason') else ''}"
            f"{_retry_note(c)}</td><td><ul class='recent'>{recent}</ul></td></tr>"
        )
    store = status["store"]
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in status.get("problems") or [])
    health = (f"<p class='failing'>Unhealthy:</p><ul class='failing'>{problems}</ul>" if problems
              else "<p class='idle'>Healthy.</p>")
    waiting = [p for p in status.get("ready_problems") or [] if p not in (status.get("problems") or [])]
    if waiting:
        health += ("<p class='failing'>Not ready:</p><ul class='failing'>"
                   + "".join(f"<li>{html.escape(p)}</li>" for p in waiting) + "</ul>")
    fresh = status.get("freshness")
    freshness = ""
    if fresh is not None:
        window = f"{fresh['window_s'] / 60:.0f} min"
        freshness = (f"<p id='freshness'>Freshness (change seen → searchable) over the last {window}: "
                     + (f"p50 <b>{_seconds(fresh['p50_s'])} s</b>, p95 <b>{_seconds(fresh['p95_s'])} s</b> "
                        f"({fresh['count']} documents committed)." if fresh["count"] else "nothing committed.")
                     + "</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><noscript><meta http-equiv="refresh" content="5"></noscript>
<title>syncd status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #222; }}
header {{ display: flex; align-items: baseline; gap: 1.5em; flex-wrap: wrap; }} h1 {{ margin: 0 0 .3em; font-size: 1.6em; }}
nav a {{ margin-right: 1em; }} table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }} th {{ background: #f3f3f3; }}
td.num {{ text-align: right; white-space: nowrap; }} .idle {{ color: #197a19; }}
.failing, .unavailable, .blocked, .stalled, .degraded {{ color: #b00020; font-weight: bold; }}
ul {{ margin: 0; padding-left: 1.2em; }} ul.recent {{ list-style: none; padding: 0; }}
time {{ color: #666; font-size: .9em; }} #search {{ margin: 1em 0 .5em; display: flex; gap: .5em; }}
#search input[type=search] {{ flex: 1; max-width: 40em; padding: 4px; }}
#results ol {{ padding-left: 1.5em; }} #results li {{ margin-bottom: .6em; }} .cite {{ color: #555; font-size: .9em; }}
.snippet {{ margin: .15em 0 0; }} .error {{ color: #b00020; }}
</style></head><body>
<header><h1>syncd {html.escape(status['version'])}</h1>
<nav><a href="/status">/status</a><a href="/metrics">/metrics</a><a href="/readyz">/readyz</a></nav></header>
<form id="search" action="/search" method="get" role="search">
<input type="search" name="q" placeholder="Search the index (hybrid: meaning and words)" aria-label="query">
<select name="k" aria-label="results"><option>5</option><option selected>10</option><option>20</option></select>
<button type="submit">Search</button></form>
<div id="results" aria-live="polite"></div>
<div id="live">
<p>Store <code>{html.escape(str(store['uri']))}</code>, table <code>{html.escape(str(store['table']))}</code>
version {store['table_version']}: {store['docs']} documents, {store['chunks']} chunks,
{store.get('fragments')} fragments, {store.get('unindexed_rows')} unindexed rows, {_size(store.get('bytes'))} on disk.
Last reconcile {store.get('last_reconcile_at') or 'never'}, last maintenance {store.get('last_maintenance_at') or 'never'}.
Model {html.escape(status['embedding']['model'])} ({status['embedding']['dim']}-d). Up {status['uptime_s']:.0f} s.</p>
{health}
{freshness}
<table><tr><th>connector</th><th>type</th><th>state</th><th>lag (s)</th><th>backlog</th><th>docs</th><th>chunks</th>
<th>last success</th><th>freshness p50 / p95 (s)</th><th>failed</th><th>last error</th><th>recent changes</th></tr>
{''.join(rows)}
</table>
<p><small>Page rendered {_iso(now)}; times are UTC.</small></p>
</div>
<script>{_PAGE_SCRIPT}</script>
</body></html>"""


# The live part reloads itself; the search asks /search and shows each result with its citation. Text from the
# index is put in with textContent, never as HTML.
_PAGE_SCRIPT = """
const live = document.getElementById('live'), form = document.getElementById('search'),
      out = document.getElementById('results');
setInterval(async () => {
  try {
    const page = await fetch(location.pathname, {cache: 'no-store'});
    if (!page.ok) return;
    const fresh = new DOMParser().parseFromString(await page.text(), 'text/html').getElementById('live');
    if (fresh) live.innerHTML = fresh.innerHTML;
  } catch (e) { /* the daemon is restarting: try again at the next tick */ }
}, 5000);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
async function search(q, k) {
  out.replaceChildren(el('p', '', 'Searching…'));
  let answer;
  try {
    const r = await fetch('/search?' + new URLSearchParams({q: q, k: k}), {cache: 'no-store'});
    answer = await r.json();
    if (!r.ok) throw new Error(answer.error || ('HTTP ' + r.status));
  } catch (e) { out.replaceChildren(el('p', 'error', 'Search failed: ' + e.message)); return; }
  if (!answer.results.length) { out.replaceChildren(el('p', '', 'No results for “' + q + '”.')); return; }
  const list = el('ol');
  for (const r of answer.results) {
    const li = el('li', 'result');
    const head = el('div');
    head.append(el('b', '', r.title || r.doc_id), ' ', el('span', 'cite',
      r.connector + ':' + r.doc_id + ' lines ' + r.start_line + '–' + r.end_line +
      (r.heading_path.length ? ' (' + r.heading_path.join(' › ') + ')' : '') +
      ' @ ' + String(r.revision).slice(0, 12) + ' · score ' + r.score.toFixed(4)));
    const uri = /^https?:/.test(r.uri) ? Object.assign(el('a', 'cite uri', r.uri), {href: r.uri})
                                       : el('div', 'cite uri', r.uri);
    const text = r.text.replace(/\\s+/g, ' ');
    li.append(head, uri, el('p', 'snippet', text.length > 300 ? text.slice(0, 300) + '…' : text));
    list.append(li);
  }
  out.replaceChildren(list);
}
form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = form.q.value.trim();
  if (!q) return;
  history.replaceState(null, '', '?' + new URLSearchParams({q: q}));
  search(q, form.k.value);
});
const initial = new URLSearchParams(location.search).get('q');
if (initial) { form.q.value = initial; search(initial, form.k.value); }
"""


def _clock(ts: float, now: float) -> str:
    """A change's time: the UTC clock time, with how long ago."""
    return f"{time.strftime('%H:%M:%S', time.gmtime(ts))} ({_ago(now - ts)})"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _when(iso: str | None, now: float) -> str:
    if not iso:
        return "never"
    try:
        ts = calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return html.escape(iso)
    return (f"<time datetime='{html.escape(iso)}'>{html.escape(iso.replace('T', ' '))}</time>"
            f"<br><small>{_ago(now - ts)}</small>")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def _quantiles(fresh: dict[str, Any] | None) -> str:
    if not fresh or not fresh.get("count"):
        return "–"
    return (f"{_seconds(fresh['p50_s'])} / {_seconds(fresh['p95_s'])}"
            f"<br><small>{fresh['count']} in {fresh['window_s'] / 60:.0f} min</small>")
