"""The MediaWiki connector against a real MediaWiki (Debian's package, SQLite, PHP's built-in server).

Every test writes pages through the real Action API into a namespace of its own and checks that the index
holds exactly the pages and revisions the wiki has, after each sync.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_config
from mediawiki_server import Wiki, WikiClient, indexed, sync, wiki_pages

pytestmark = pytest.mark.mediawiki

NAME = "wiki"


def wiki_config(tmp_path: Path, api_url: str, ns: int | None, **extra: Any) -> Path:
    connector: dict[str, Any] = {"name": NAME, "type": "mediawiki", "api_url": api_url, "poll_interval": "1s",
                                 "request_rate": 0, **extra}
    if ns is not None:
        connector["namespaces"] = [ns]
    return write_config(tmp_path, [connector])








def test_first_sync_indexes_pages_with_revids_urls_and_headings(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any) -> None:
    """A first sync indexes every page of the namespace (title, revid, canonical URL, section headings),
    and a redirect is not indexed as a document of its own."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Alpha", "Intro line about alpacas.\n\n== Care ==\nAlpacas need '''hay''' and [[water]].")
    wiki_client.edit(f"{p}:Beta", "Beta is about beavers.")
    wiki_client.edit(f"{p}:Gamma", "Gamma is about gazelles.")
    wiki_client.edit(f"{p}:Alias", f"#REDIRECT [[{p}:Alpha]]")
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns))
    summary = sync(rt)
    expected = wiki_pages(wiki_client, ns)
    assert set(expected) == {f"{p}:Alpha", f"{p}:Beta", f"{p}:Gamma"}
    assert indexed(rt) == expected
    assert summary.docs_added == len(expected) and not summary.failures
    rows = rt.store.scan(["doc_id", "uri", "title", "text", "heading_path"], f"doc_id = '{p}:Alpha'").to_pylist()
    assert {r["uri"] for r in rows} == {wiki_client.url(f"{p}:Alpha")}
    assert {r["title"] for r in rows} == {f"{p}:Alpha"}
    care = [r for r in rows if "hay" in r["text"]]
    assert care and care[0]["heading_path"] == ["Care"]
    assert "'''" not in care[0]["text"] and "[[" not in care[0]["text"]
    # Nothing changed: the next sync reads recentchanges and finds nothing to do.
    again = sync(rt)
    assert again.docs_seen == 0 and indexed(rt) == expected


def test_index_follows_edit_create_delete_restore_and_move(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any) -> None:
    """Edits, new pages, deletes, restores and moves made through the API reach the index; a move is a
    rename that embeds nothing."""
    ns, p = wiki_ns
    for name, text in (("One", "First page about otters."), ("Two", "Second page about badgers."),
                       ("Three", "Third page about herons.\n\n== Nests ==\nHerons nest in colonies."),
                       ("Four", "Fourth page about voles.")):
        wiki_client.edit(f"{p}:{name}", text)
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns))
    sync(rt)
    assert indexed(rt) == wiki_pages(wiki_client, ns)

    # Edit one page, create another.
    wiki_client.edit(f"{p}:One", "First page about otters, edited: they hold hands while sleeping.")
    wiki_client.edit(f"{p}:Five", "Fifth page about moles.")
    summary = sync(rt)
    assert (summary.docs_changed, summary.docs_added) == (1, 1)
    assert indexed(rt) == wiki_pages(wiki_client, ns)

    # Delete.
    wiki_client.delete(f"{p}:Two")
    summary = sync(rt)
    assert summary.docs_deleted == 1
    assert f"{p}:Two" not in indexed(rt)
    assert indexed(rt) == wiki_pages(wiki_client, ns)

    # Restore: the page comes back with its old revid.
    wiki_client.undelete(f"{p}:Two")
    summary = sync(rt)
    assert summary.docs_added == 1
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert f"{p}:Two" in indexed(rt)

    # Move, leaving a redirect behind: a rename; the redirect is not indexed.
    wiki_client.move(f"{p}:Three", f"{p}:Three moved")
    summary = sync(rt)
    assert (summary.docs_renamed, summary.chunks_embedded, summary.docs_added, summary.docs_deleted) == (1, 0, 0, 0)
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert f"{p}:Three" not in indexed(rt)
    assert indexed(rt)[f"{p}:Three moved"] == str(wiki_client.revid(f"{p}:Three moved"))
    uris = {r["uri"] for r in rt.store.scan(["uri"], f"doc_id = '{p}:Three moved'").to_pylist()}
    assert uris == {wiki_client.url(f"{p}:Three moved")}

    # Move without a redirect.
    wiki_client.move(f"{p}:Four", f"{p}:Four moved", redirect=False)
    summary = sync(rt)
    assert (summary.docs_renamed, summary.chunks_embedded) == (1, 0)
    assert indexed(rt) == wiki_pages(wiki_client, ns)

    # A page turned into a redirect leaves the index.
    wiki_client.edit(f"{p}:Five", f"#REDIRECT [[{p}:One]]")
    summary = sync(rt)
    assert summary.docs_deleted == 1
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert f"{p}:Five" not in indexed(rt)


def test_cursor_boundary_loses_nothing_and_repeats_nothing(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any) -> None:
    """Edits landing in the same second as the cursor are all seen once: each poll re-reads the overlap
    window and skips rows it handled by revision id."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Base", "Base page.")
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns))
    sync(rt)
    connector: Any = rt.connectors[NAME]
    for round_ in range(3):
        titles = [f"{p}:R{round_}P{i}" for i in range(4)]
        for title in titles:
            wiki_client.edit(title, f"Round {round_} text for {title}.")
        wiki_client.edit(titles[0], f"Round {round_} second edit of {titles[0]}.")
        changes = list(connector.poll())
        assert sorted(c.doc_id for c in changes) == sorted(titles)
        summary = rt.engine.process({NAME: {c.doc_id: 1.0 for c in changes}})
        connector.commit_cursor()
        assert summary.docs_added == len(titles)
        assert indexed(rt) == wiki_pages(wiki_client, ns)
        # The rows just handled are inside the next poll's overlap window, yet none comes back.
        cursor = connector.load_cursor()
        rc = wiki_client.get(action="query", list="recentchanges", rcdir="newer", rclimit="max",
                             rcstart=_iso(cursor["ts"] - connector.cfg.overlap), rcnamespace=ns,
                             rcprop="title|ids")["query"]["recentchanges"]
        assert {r["title"] for r in rc} >= set(titles)
        assert list(connector.poll()) == []
        connector.commit_cursor()


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FaultyProxy:
    """An HTTP proxy in front of the wiki answering 503 to every request that names ``fail_marker``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_marker: str | None = None
        self.failed = 0
        self.script: list[tuple[int, dict[str, str], bytes]] = []  # answers for the next requests
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                seen = urllib.parse.unquote_plus(self.path + "?" + body.decode(errors="replace"))
                outer.requests.append(seen)
                if outer.script:
                    status, extra, payload = outer.script.pop(0)
                    self.send_response(status)
                    for k, v in {**extra, "Content-Length": str(len(payload))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if outer.fail_marker and outer.fail_marker in seen:
                    outer.failed += 1
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "cookie", "user-agent")}
                r = httpx.request(method, outer.upstream + self.path, content=body or None, headers=headers, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() in ("content-type", "set-cookie", "retry-after"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api.php"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_proxy(mediawiki: Wiki) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(mediawiki.url)
    yield proxy
    proxy.close()


def test_failed_page_keeps_the_cursor_and_shows_in_status(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any,
        faulty_proxy: FaultyProxy) -> None:
    """A page whose fetch keeps failing (5xx) fails alone, shows in status, and holds the cursor before
    its change, so the next poll brings it (and only it) back."""
    from syncd.service import build_status

    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Start", "Start page.")
    rt = make_runtime(wiki_config(tmp_path, faulty_proxy.api_url, ns, max_retries=1, max_backoff="10ms"))
    sync(rt)
    connector: Any = rt.connectors[NAME]
    before = connector.load_cursor()
    wiki_client.edit(f"{p}:Good one", "A good page about larks.")
    wiki_client.edit(f"{p}:Broken page", "A page the proxy will not let through.")
    wiki_client.edit(f"{p}:Good two", "Another good page about finches.")
    faulty_proxy.fail_marker = "Broken page"
    summary = sync(rt)
    assert faulty_proxy.failed > 0
    assert [f.doc_id for f in summary.failures] == [f"{p}:Broken page"]
    assert set(indexed(rt)) == {f"{p}:Start", f"{p}:Good one", f"{p}:Good two"}
    status = build_status(rt)
    entry = next(c for c in status["connectors"] if c["name"] == NAME)
    assert entry["failed_docs"] == 1 and entry["failures"][0]["doc_id"] == f"{p}:Broken page"
    # The cursor did not move past the failed page's edit.
    broken_rev = wiki_client.revid(f"{p}:Broken page")
    cursor = connector.load_cursor()
    assert f"r{broken_rev}" not in cursor["seen"]
    rc = wiki_client.get(action="query", list="recentchanges", rcnamespace=ns, rcprop="title|timestamp|ids",
                         rclimit="max")["query"]["recentchanges"]
    broken_ts = next(r["timestamp"] for r in rc if r["revid"] == broken_rev)
    assert _iso(cursor["ts"]) <= broken_ts
    assert cursor["ts"] >= before["ts"]

    # Healed: the next poll brings back the failed page only; the good ones were not forgotten.
    faulty_proxy.fail_marker = None
    changes = list(connector.poll())
    assert [c.doc_id for c in changes] == [f"{p}:Broken page"]
    rt.engine.process({NAME: {c.doc_id: 1.0 for c in changes}})
    connector.commit_cursor()
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert f"r{broken_rev}" in connector.load_cursor()["seen"]
    entry = next(c for c in build_status(rt)["connectors"] if c["name"] == NAME)
    assert entry["failed_docs"] == 0
    assert list(connector.poll()) == []


def test_mass_deletion_guard_holds_deletes_and_cursor(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any) -> None:
    """Deleting most pages at once is refused by the engine's guard; the cursor stays so the deletes are
    seen again until allowed."""
    ns, p = wiki_ns
    titles = [f"{p}:Page {i}" for i in range(12)]
    for t in titles:
        wiki_client.edit(t, f"Text of {t}.")
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns))
    sync(rt)
    before = indexed(rt)
    assert set(before) == set(titles)
    doomed = titles[:10]
    for t in doomed:
        wiki_client.delete(t)
    summary = sync(rt)
    assert any("mass-delete-refused" in f.reason for f in summary.failures)
    assert indexed(rt) == before
    connector: Any = rt.connectors[NAME]
    assert sorted(c.doc_id for c in connector.poll()) == sorted(doomed)


def test_first_sync_of_500_pages_fetches_in_batches(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any) -> None:
    """500 pages (plus redirects) imported at once are indexed by a first sync that lists 500 titles per
    request and fetches content 50 titles per request."""
    ns, p = wiki_ns
    count, redirects = 500, 20
    pages = {f"{p}:Page {i:03d}": f"== Section {i} ==\nPage number {i} talks about topic {i % 17}.\n" + "word " * (i % 40)
             for i in range(count)}
    pages.update({f"{p}:Redirect {i}": f"#REDIRECT [[{p}:Page {i:03d}]]" for i in range(redirects)})
    mediawiki.import_pages(pages)
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns))
    connector: Any = rt.connectors[NAME]
    summary = sync(rt)
    expected = wiki_pages(wiki_client, ns)
    assert len(expected) == count
    assert indexed(rt) == expected
    assert summary.docs_added == count and not summary.failures
    batch = connector.cfg.batch_size
    # recentchanges once, the listing (500 per request, continued), the content in batches.
    budget = 1 + math.ceil((count + redirects) / 500) + 1 + math.ceil(count / batch)
    assert connector.http.requests <= budget


def test_bot_password_login(tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient,
                            make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With bot-password credentials from the environment the connector logs in (and asserts it is logged
    in on every request); the password never appears in status."""
    from syncd.service import build_status

    ns, p = wiki_ns
    out = mediawiki.maintenance("createBotPassword.php", "--appid", f"syncd{ns}", "--grants", "basic", "Admin")
    match = re.search(r"password:'([^']+)'", out)
    assert match, out
    password = match.group(1)
    monkeypatch.setenv("TEST_WIKI_USER", f"Admin@syncd{ns}")
    monkeypatch.setenv("TEST_WIKI_PASSWORD", password)
    wiki_client.edit(f"{p}:Private", "Only for bots.")
    rt = make_runtime(wiki_config(tmp_path, mediawiki.api_url, ns, username_env="TEST_WIKI_USER",
                                  password_env="TEST_WIKI_PASSWORD"))
    sync(rt)
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert rt.connectors[NAME]._logged_in  # type: ignore[attr-defined]
    assert password not in json.dumps(build_status(rt), default=str)


@pytest.mark.e2e
def test_cli_sync_and_query_with_the_real_model(tmp_path: Path, mediawiki: Wiki, wiki_client: WikiClient) -> None:
    """`syncd sync --json` on the main namespace (the default) with the real model, then `syncd query`
    cites the page by title and canonical URL."""
    title = "Quokka facts"
    wiki_client.edit(title, "== Habitat ==\nThe quokka is a small marsupial living on Rottnest Island.")
    config = write_config(tmp_path, [{"name": NAME, "type": "mediawiki", "api_url": mediawiki.api_url}])

    def run(*args: str) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args, "--json"],
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1
        return dict(json.loads(lines[0]))

    expected = wiki_pages(wiki_client, 0)
    first = run("sync")
    assert first["docs_added"] == len(expected) and first["failures"] == []
    hits = run("query", "small marsupial on an island")["results"]
    assert hits[0]["doc_id"] == title
    assert hits[0]["uri"] == wiki_client.url(title)
    assert hits[0]["revision"] == expected[title]
    assert hits[0]["heading_path"] == ["Habitat"]
    wiki_client.edit(title, "== Habitat ==\nThe quokka is a small marsupial living on Rottnest Island and Bald Island.")
    second = run("sync")
    assert (second["docs_changed"], second["docs_added"], second["docs_deleted"]) == (1, 0, 0)


def test_maxlag_429_and_5xx_are_retried_after_the_wait_asked(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, make_runtime: Any,
        faulty_proxy: FaultyProxy) -> None:
    """Every request carries maxlag; a maxlag error and a 429 are retried after their Retry-After, a 503
    without one after an exponential backoff bounded by max_backoff."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Polite", "A page read politely.")
    rt = make_runtime(wiki_config(tmp_path, faulty_proxy.api_url, ns, max_retries=3, max_backoff="10ms", maxlag=3))
    connector: Any = rt.connectors[NAME]
    waits: list[float] = []
    connector.http.sleep = waits.append
    lagged = json.dumps({"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged."}})
    faulty_proxy.script = [(200, {"Retry-After": "4", "Content-Type": "application/json"}, lagged.encode()),
                           (429, {"Retry-After": "2"}, b""), (503, {}, b"")]
    summary = sync(rt)
    assert not summary.failures
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    assert waits[:2] == [4.0, 2.0] and len(waits) == 3 and 0 <= waits[2] <= 0.01
    assert faulty_proxy.requests and all("maxlag=3" in r for r in faulty_proxy.requests)


def test_daemon_polls_the_wiki_and_reports_the_connector(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient,
        in_process_daemon: Any) -> None:
    """`syncd run` catches up, then follows the wiki by polling; /status shows the connector's lag."""
    from conftest import wait_for

    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Before", "Written before the daemon started.")
    config = wiki_config(tmp_path, mediawiki.api_url, ns)
    with in_process_daemon(config) as daemon:
        rt = daemon.service.runtime
        wait_for(lambda: indexed(rt) == wiki_pages(wiki_client, ns), what="the catch-up")
        wiki_client.edit(f"{p}:After", "Written while the daemon runs.")
        wiki_client.move(f"{p}:Before", f"{p}:Before moved", redirect=False)
        wait_for(lambda: indexed(rt) == wiki_pages(wiki_client, ns), what="the poll")
        entry = next(c for c in daemon.service.status()["connectors"] if c["name"] == NAME)
        assert entry["type"] == "mediawiki" and entry["last_error"] is None and entry["failed_docs"] == 0
        assert isinstance(entry["lag_s"], float) and entry["last_success_at"] is not None
