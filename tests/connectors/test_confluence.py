"""The Confluence connector against a local HTTP server answering like Confluence's REST API (v1):
bodies shaped like Atlassian's documented examples (``results``, ``_links.next``/``base``/``webui``,
``version.number``/``when``, ``body.storage``), 429 with Retry-After, trash and purge."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from connectors.confluence import storage_to_html
from syncd.errors import ConnectorError
from syncd.models import SyncSummary
from syncd.runtime import Runtime
from syncd.state import write_json_atomic

NAME = "conf"
CONTEXT = "/wiki"


class FakeConfluence:
    """A tiny Confluence: pages in spaces, versions, trash, and injectable 429s and 500s."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.base = server.url_for(CONTEXT).rstrip("/")
        self.pages: dict[str, dict[str, Any]] = {}
        self.next_id = 65537
        self.throttle: list[str] = []  # Retry-After values for the next requests, answered 429
        self.broken: set[str] = set()  # page ids whose requests answer 500
        self.garble: list[str] = []  # "malformed" (200, not JSON) or "truncated" (body cut short) for the next requests
        self.log: list[str] = []

    # -- the content --------------------------------------------------------------------------------
    def add(self, space: str, title: str, body: str) -> str:
        pid = str(self.next_id)
        self.next_id += 1
        self.pages[pid] = {"id": pid, "space": space, "title": title, "body": body, "version": 1,
                           "status": "current", "when": self._now()}
        return pid

    def edit(self, pid: str, *, title: str | None = None, body: str | None = None, space: str | None = None) -> None:
        page = self.pages[pid]
        page.update({k: v for k, v in (("title", title), ("body", body), ("space", space)) if v is not None})
        page["version"] += 1
        page["when"] = self._now()

    def trash(self, pid: str) -> None:
        self.pages[pid]["status"] = "trashed"

    def purge(self, pid: str) -> None:
        del self.pages[pid]

    @staticmethod
    def _now() -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def current(self, space: str) -> dict[str, str]:
        """id -> version of the current pages of ``space``."""
        return {pid: str(p["version"]) for pid, p in self.pages.items() if p["space"] == space and p["status"] == "current"}

    # -- the API ------------------------------------------------------------------------------------
    def _json(self, page: dict[str, Any], expand: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": page["id"], "type": "page", "status": page["status"], "title": page["title"],
            "_links": {"webui": f"/spaces/{page['space']}/pages/{page['id']}/{urllib.parse.quote(page['title'])}",
                       "tinyui": f"/x/{page['id']}", "self": f"{self.base}/rest/api/content/{page['id']}"},
            "_expandable": {"container": f"/rest/api/space/{page['space']}", "children": "", "ancestors": ""},
        }
        if "version" in expand:
            out["version"] = {"by": {"type": "known", "displayName": "Admin"}, "when": page["when"],
                              "number": page["version"], "minorEdit": False,
                              "_links": {"self": f"{self.base}/rest/experimental/content/{page['id']}/version"}}
        if "space" in expand:
            out["space"] = {"id": 98306, "key": page["space"], "name": page["space"], "type": "global",
                            "_links": {"webui": f"/spaces/{page['space']}"}}
        if "body.storage" in expand:
            out["body"] = {"storage": {"value": page["body"], "representation": "storage",
                                       "_expandable": {"content": f"/rest/api/content/{page['id']}"}}}
        return out

    def _listing(self, path: str, items: list[dict[str, Any]], args: dict[str, str], expand: str,
                 cursor_style: bool) -> Response:
        limit = int(args.get("limit", 25))
        if cursor_style and "cursor" in args:
            start = int(base64.b64decode(args["cursor"]).decode())
        else:
            start = int(args.get("start", 0))
        chunk = items[start:start + limit]
        links: dict[str, Any] = {"base": self.base, "context": CONTEXT, "self": f"{self.base}{path}"}
        if start + limit < len(items):
            nxt = {k: v for k, v in args.items() if k not in ("start", "cursor")}
            if cursor_style:
                nxt.update({"next": "true", "cursor": base64.b64encode(str(start + limit).encode()).decode()})
            else:
                nxt["start"] = str(start + limit)
            links["next"] = f"{path}?{urllib.parse.urlencode(nxt)}"
        body = {"results": [self._json(p, expand) for p in chunk], "start": start, "limit": limit,
                "size": len(chunk), "_links": links}
        return Response(json.dumps(body), content_type="application/json")

    def _search(self, cql: str) -> list[dict[str, Any]]:
        pages = [p for p in self.pages.values() if p["status"] == "current"]
        if m := re.search(r"space in \(([^)]*)\)", cql):
            spaces = {s.strip().strip('"') for s in m.group(1).split(",")}
            pages = [p for p in pages if p["space"] in spaces]
        if m := re.search(r"\bid in \(([^)]*)\)", cql):
            ids = {s.strip() for s in m.group(1).split(",")}
            pages = [p for p in pages if p["id"] in ids]
        if m := re.search(r'lastmodified >= now\("-(\d+)m"\)', cql):
            since = time.time() - int(m.group(1)) * 60
            pages = [p for p in pages if dt.datetime.fromisoformat(p["when"].replace("Z", "+00:00")).timestamp() >= since]
        if "order by lastmodified" in cql:
            pages.sort(key=lambda p: p["when"])
        return pages

    def handle(self, request: Request) -> Response:
        path = request.path
        args = dict(request.args)
        self.log.append(f"{path}?{urllib.parse.urlencode(args)}")
        if request.headers.get("Authorization") != "Bearer test-token":
            return Response(json.dumps({"statusCode": 401, "message": "Unauthorized"}), status=401)
        if self.throttle:
            return Response(json.dumps({"message": "Rate limit exceeded"}), status=429,
                            headers={"Retry-After": self.throttle.pop(0)}, content_type="application/json")
        if self.garble:
            if self.garble.pop(0) == "malformed":
                return Response('{"results": [{"id": "6553', content_type="application/json")
            body = json.dumps({"results": [], "size": 0, "_links": {}})
            return Response(body[:10], content_type="application/json", headers={"Content-Length": str(len(body))})
        if any(pid in urllib.parse.unquote(request.full_path) for pid in self.broken):
            return Response(json.dumps({"statusCode": 500, "message": "Internal Server Error"}), status=500)
        api = path[len(CONTEXT):]
        expand = args.get("expand", "")
        if api == "/rest/api/content":
            items = [p for p in self.pages.values() if p["space"] == args.get("spaceKey")
                     and p["status"] == args.get("status", "current")]
            return self._listing(api, sorted(items, key=lambda p: p["id"]), args, expand, cursor_style=False)
        if api == "/rest/api/content/search":
            return self._listing(api, self._search(args.get("cql", "")), args, expand, cursor_style=True)
        if m := re.fullmatch(r"/rest/api/content/(\d+)", api):
            page = self.pages.get(m.group(1))
            if page is None or page["status"] != args.get("status", "current"):
                return Response(json.dumps({"statusCode": 404, "message": f"No content found with id: {m.group(1)}"}),
                                status=404, content_type="application/json")
            return Response(json.dumps(self._json(page, expand)), content_type="application/json")
        if api == "/rest/api/space":
            return Response(json.dumps({"results": [], "size": 0, "_links": {}}), content_type="application/json")
        return Response("not found", status=404)


@pytest.fixture
def confluence(httpserver: HTTPServer) -> FakeConfluence:
    fake = FakeConfluence(httpserver)
    httpserver.expect_request(re.compile("^/")).respond_with_handler(fake.handle)
    return fake


@pytest.fixture
def runtime(tmp_path: Path, confluence: FakeConfluence, make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("TEST_CONFLUENCE_TOKEN", "test-token")
    config = write_config(tmp_path, [{
        "name": NAME, "type": "confluence", "base_url": confluence.base, "spaces": ["DOC"],
        "token_env": "TEST_CONFLUENCE_TOKEN", "poll_interval": "1s", "reconcile_interval": "1h",
        "page_size": 3, "request_rate": 0, "max_retries": 2, "max_backoff": "10ms"}])
    rt: Runtime = make_runtime(config)
    return rt


def sync(rt: Runtime) -> SyncSummary:
    """One `syncd sync` cycle: poll, apply, commit the cursor after the store commit."""
    connector = rt.connectors[NAME]
    changes = list(connector.poll() or [])
    if any(c.kind == "rescan" for c in changes):
        summary = rt.engine.reconcile(NAME)
    else:
        summary = rt.engine.process({NAME: {c.doc_id: 1.0 for c in changes}})
    if not any(f.connector == NAME and not f.doc_id for f in summary.failures):
        connector.commit_cursor()
    return summary


def indexed(rt: Runtime) -> dict[str, str]:
    return {doc_id: info.revision for (conn, doc_id), info in rt.store.indexed_docs().items() if conn == NAME}


def expire_reconcile(rt: Runtime) -> None:
    """Make the next poll's id reconciliation due (as if reconcile_interval had passed)."""
    connector: Any = rt.connectors[NAME]
    cursor = connector.load_cursor()
    write_json_atomic(connector.cursor_path, {**cursor, "reconciled_at": 0})


def test_first_sync_follows_next_links_and_keeps_headings(runtime: Runtime, confluence: FakeConfluence) -> None:
    """A first sync lists every current page of the configured spaces through `_links.next`, cites each
    page by version and web link, and keeps the storage format's headings and code macros."""
    ids = [confluence.add("DOC", f"Page {i}", f"<p>Body of page {i} about kestrels.</p>") for i in range(7)]
    setup = confluence.add("DOC", "Setup guide", (
        '<h1>Install</h1><p>Run the installer.</p><h2>Prerequisites</h2><p>You need a <strong>kettle</strong>.</p>'
        '<ac:structured-macro ac:name="code"><ac:parameter ac:name="language">bash</ac:parameter>'
        '<ac:plain-text-body><![CDATA[apt-get install teapot]]></ac:plain-text-body></ac:structured-macro>'))
    confluence.add("OTHER", "Elsewhere", "<p>Not in a configured space.</p>")
    summary = sync(runtime)
    assert indexed(runtime) == confluence.current("DOC")
    assert summary.docs_added == len(ids) + 1 and not summary.failures
    listing_requests = [entry for entry in confluence.log if entry.startswith(f"{CONTEXT}/rest/api/content?")]
    assert len(listing_requests) == math.ceil((len(ids) + 1) / 3)
    rows = runtime.store.scan(["title", "uri", "text", "heading_path", "revision"], f"doc_id = '{setup}'").to_pylist()
    assert {r["title"] for r in rows} == {"Setup guide"}
    assert {r["uri"] for r in rows} == {f"{confluence.base}/spaces/DOC/pages/{setup}/Setup%20guide"}
    text = {r["text"]: r["heading_path"] for r in rows}
    kettle = next(t for t in text if "kettle" in t)
    assert text[kettle] == ["Install", "Prerequisites"]
    assert any("apt-get install teapot" in t for t in text)
    assert not any("bash" == t.strip() for t in text)


def test_incremental_sync_uses_cql_lastmodified_and_skips_what_it_handled(runtime: Runtime,
                                                                         confluence: FakeConfluence) -> None:
    """After the first sync, edits and new pages come from a CQL lastmodified search (with overlap), and a
    page already handled at its version is not handled again."""
    a = confluence.add("DOC", "Alpha", "<p>Alpha about ravens.</p>")
    confluence.add("DOC", "Beta", "<p>Beta about rooks.</p>")
    sync(runtime)
    confluence.log.clear()
    confluence.edit(a, body="<p>Alpha about ravens, now with jackdaws.</p>")
    c = confluence.add("DOC", "Gamma", "<p>Gamma about magpies.</p>")
    summary = sync(runtime)
    assert (summary.docs_changed, summary.docs_added, summary.docs_seen) == (1, 1, 2)
    assert indexed(runtime) == confluence.current("DOC")
    searches = [urllib.parse.unquote_plus(e) for e in confluence.log if "/content/search" in e and " id in " not in
                urllib.parse.unquote_plus(e)]
    assert searches and all('lastmodified >= now("-' in s for s in searches)
    # Both pages are still inside the overlap window, yet nothing comes back.
    connector: Any = runtime.connectors[NAME]
    assert list(connector.poll()) == []
    connector.commit_cursor()
    # A rename re-writes the page's rows under the new title and embeds nothing.
    confluence.edit(c, title="Gamma renamed")
    summary = sync(runtime)
    assert (summary.docs_changed, summary.chunks_embedded) == (1, 0)
    rows = runtime.store.scan(["title", "revision"], f"doc_id = '{c}'").to_pylist()
    assert {(r["title"], r["revision"]) for r in rows} == {("Gamma renamed", confluence.current("DOC")[c])}


def test_429_retry_after_is_honoured(runtime: Runtime, confluence: FakeConfluence) -> None:
    """A 429 is retried after the wait its Retry-After header asks for, and the sync completes."""
    confluence.add("DOC", "Alpha", "<p>Alpha about ravens.</p>")
    waits: list[float] = []
    connector: Any = runtime.connectors[NAME]
    connector.http.sleep = waits.append
    confluence.throttle = ["7", "3"]
    summary = sync(runtime)
    assert not summary.failures
    assert indexed(runtime) == confluence.current("DOC")
    assert waits == [7.0, 3.0]
    assert confluence.throttle == []


@pytest.mark.parametrize("fault", ["malformed", "truncated"])
def test_garbled_answer_is_retried_then_reported(runtime: Runtime, confluence: FakeConfluence, fault: str) -> None:
    """A 200 whose body is not JSON, or is cut short of its Content-Length, is retried like a 5xx; when it
    persists the poll fails with a ConnectorError, the cursor stays, and the next clean poll catches up."""
    connector: Any = runtime.connectors[NAME]
    waits: list[float] = []
    connector.http.sleep = waits.append
    confluence.add("DOC", "Alpha", "<p>Alpha about ravens.</p>")
    confluence.garble = [fault, fault]
    summary = sync(runtime)
    assert not summary.failures and confluence.garble == [] and len(waits) == 2
    assert indexed(runtime) == confluence.current("DOC")
    cursor = connector.cursor_path.read_bytes()

    confluence.add("DOC", "Beta", "<p>Beta about herons.</p>")
    confluence.garble = [fault] * (connector.cfg.max_retries + 1)
    with pytest.raises(ConnectorError):
        connector.poll()
    assert confluence.garble == []
    assert connector.cursor_path.read_bytes() == cursor
    summary = sync(runtime)
    assert not summary.failures
    assert indexed(runtime) == confluence.current("DOC")


def test_deletion_and_trash_found_by_id_reconciliation(runtime: Runtime, confluence: FakeConfluence) -> None:
    """CQL does not report deletions: a purged page, a page moved to the trash and a page moved to a space
    that is not indexed leave the index at the next id reconciliation."""
    ids = [confluence.add("DOC", f"Page {i}", f"<p>Page {i} about wrens.</p>") for i in range(8)]
    sync(runtime)
    confluence.purge(ids[0])
    confluence.trash(ids[1])
    confluence.edit(ids[2], space="OTHER")
    # The incremental search cannot see deletions.
    sync(runtime)
    assert ids[0] in indexed(runtime) and ids[1] in indexed(runtime)
    expire_reconcile(runtime)
    summary = sync(runtime)
    assert summary.docs_deleted == 3
    assert indexed(runtime) == confluence.current("DOC")


def test_mass_trash_is_held_by_the_guard(runtime: Runtime, confluence: FakeConfluence) -> None:
    """Trashing most pages at once is refused by the engine's mass-deletion guard."""
    ids = [confluence.add("DOC", f"Page {i}", f"<p>Page {i} about owls.</p>") for i in range(12)]
    sync(runtime)
    before = indexed(runtime)
    for pid in ids[:10]:
        confluence.trash(pid)
    expire_reconcile(runtime)
    summary = sync(runtime)
    assert any("mass-delete-refused" in f.reason for f in summary.failures)
    assert indexed(runtime) == before


def test_failed_page_keeps_the_cursor(runtime: Runtime, confluence: FakeConfluence) -> None:
    """A page that keeps answering 500 fails alone and holds the cursor before its change; once it
    answers again, the next poll brings back that page only."""
    confluence.add("DOC", "Start", "<p>Start.</p>")
    sync(runtime)
    connector: Any = runtime.connectors[NAME]
    before = connector.load_cursor()
    confluence.add("DOC", "Good", "<p>Good page about swifts.</p>")
    bad = confluence.add("DOC", "Bad", "<p>Bad page about swallows.</p>")
    confluence.add("DOC", "Also good", "<p>Another good page about martins.</p>")
    confluence.broken = {bad}
    summary = sync(runtime)
    assert [f.doc_id for f in summary.failures] == [bad]
    assert set(indexed(runtime)) == set(confluence.current("DOC")) - {bad}
    cursor = connector.load_cursor()
    assert not any(key.startswith(f"{bad}:") for key in cursor["seen"])
    bad_when = dt.datetime.fromisoformat(confluence.pages[bad]["when"].replace("Z", "+00:00")).timestamp()
    assert before["ts"] <= cursor["ts"] <= bad_when
    confluence.broken = set()
    changes = list(connector.poll())
    assert [c.doc_id for c in changes] == [bad]
    runtime.engine.process({NAME: {c.doc_id: 1.0 for c in changes}})
    connector.commit_cursor()
    assert indexed(runtime) == confluence.current("DOC")
    assert list(connector.poll()) == []


def test_storage_format_to_html() -> None:
    """Macros become text the HTML extractor reads: code bodies as <pre>, links as their labels."""
    html = storage_to_html("T", '<p>See <ac:link><ri:page ri:content-title="Other page"/></ac:link> and '
                                '<ac:link><ri:page ri:content-title="X"/><ac:plain-text-link-body><![CDATA[label]]>'
                                '</ac:plain-text-link-body></ac:link>.</p>')
    assert "<title>T</title>" in html
    assert "Other page" in html and "label" in html and "ac:" not in html
