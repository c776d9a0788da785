"""Remote faults against the real MediaWiki and a git remote served over HTTP, through a fault-injecting proxy.

The proxy forwards to the real server and, per request, can hang past the client's timeout, answer 500 or
502, answer 429 with ``Retry-After: 1``, answer 200 with a malformed JSON body, or send a body shorter than
its Content-Length and close. Transient faults are retried (waits seen through the client's recorder,
never the clock); persistent ones fail the poll (or only the affected page) with the reason in ``/status``,
keep the cursor, let the other connector sync, and the next poll after the fault clears loses nothing.
"""

from __future__ import annotations

import functools
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for, write_config
from mediawiki_server import Wiki, WikiClient, indexed, sync, wiki_pages

from syncd.runtime import Runtime
from tests.gitrepo import GitRepo, git

FAULTS = ("hang", "500", "502", "429", "malformed", "truncated")
NAME = "wiki"
# What each fault leaves in the error a user sees.
WIKI_WORDS = {"hang": "timeout", "500": "HTTP 500", "502": "HTTP 502", "429": "HTTP 429",
              "malformed": "did not answer JSON", "truncated": "RemoteProtocolError"}


class FaultProxy:
    """An HTTP proxy in front of ``upstream``. ``plan`` faults the next matching requests one each;
    ``always`` faults every matching request; ``match`` limits faults to requests whose path or body
    contains it."""

    def __init__(self, upstream: str, *, hang_s: float = 20.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hang_s = hang_s
        self.plan: list[str] = []
        self.always: str | None = None
        self.match: str | None = None
        self.requests: list[str] = []
        self.faulted: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=60)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes, *, length: int | None = None) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def _handle(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                seen = urllib.parse.unquote_plus(self.path + "?" + body.decode(errors="replace"))
                fault = outer._choose(seen)
                if fault == "hang":
                    outer.release.wait(outer.hang_s)
                    self.close_connection = True
                    return
                if fault in ("500", "502"):
                    self._send(int(fault), {"Content-Type": "text/html"}, b"<h1>upstream trouble</h1>")
                    return
                if fault == "429":
                    self._send(429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"slow down")
                    return
                if fault == "malformed":
                    self._send(200, {"Content-Type": "application/json"}, b'{"batchcomplete": true, "query": {"pag')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "cookie", "user-agent")}
                r = outer.http.request(method, outer.upstream + self.path, content=body or None, headers=headers)
                keep = {k: v for k, v in r.headers.items()
                        if k.lower() in ("content-type", "set-cookie", "retry-after", "last-modified")}
                if fault == "truncated":
                    # Announce more than is sent, send half, close.
                    self._send(r.status_code, keep, r.content[: len(r.content) // 2], length=len(r.content) + 1)
                    return
                self._send(r.status_code, keep, r.content)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _choose(self, seen: str) -> str | None:
        with self.lock:
            self.requests.append(seen)
            if self.match is not None and self.match not in seen:
                return None
            fault = self.plan.pop(0) if self.plan else self.always
            if fault is not None:
                self.faulted.append(fault)
            return fault

    def set(self, always: str | None = None, *, plan: list[str] | None = None, match: str | None = None) -> None:
        with self.lock:
            self.always, self.plan, self.match = always, list(plan or []), match
            if always is None and not plan:
                self.release.set()
            else:
                self.release.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


# -- helpers ---------------------------------------------------------------------------------------------






def http_status(daemon: Any) -> dict[str, Any]:
    """/status over HTTP from the in-process daemon."""
    with urllib.request.urlopen(daemon.service.http.url + "/status", timeout=30) as resp:  # noqa: S310 - local
        data: dict[str, Any] = json.loads(resp.read())
    return data


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["connectors"] if c["name"] == name)


@pytest.fixture
def wiki_proxy(mediawiki: Wiki) -> Iterator[FaultProxy]:
    proxy = FaultProxy(mediawiki.url)
    yield proxy
    proxy.close()


def _wiki_connector(api_url: str, ns: int, **extra: Any) -> dict[str, Any]:
    return {"name": NAME, "type": "mediawiki", "api_url": api_url, "namespaces": [ns], "poll_interval": "300ms",
            "request_rate": 0, "max_retries": 2, "max_backoff": "10ms", "timeout": "1s", **extra}


def _files_connector(root: Path) -> dict[str, Any]:
    return {"name": "files", "type": "filesystem", "path": str(root)}


# -- MediaWiki: transient faults -------------------------------------------------------------------------
@pytest.mark.mediawiki
@pytest.mark.parametrize("fault", FAULTS)
def test_wiki_transient_fault_is_retried_with_the_wait_asked(
        fault: str, tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient,
        make_runtime: Any, wiki_proxy: FaultProxy) -> None:
    """Two faulty answers in a row, then good ones: the sync succeeds with exactly two retries, after the
    Retry-After asked (429) or a backoff capped by max_backoff (the others)."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Alpha", "Alpha page about owls.")
    rt = make_runtime(write_config(tmp_path, [_wiki_connector(wiki_proxy.url + "/api.php", ns)]))
    connector: Any = rt.connectors[NAME]
    waits: list[float] = []
    connector.http.sleep = waits.append
    sync(rt)
    # A clean round of the same shape as the faulty one: how many requests it takes.
    wiki_client.edit(f"{p}:Alpha", "Alpha page about owls, edited once.")
    wiki_client.edit(f"{p}:Beta", "Beta page about bats.")
    before = connector.http.requests
    assert not sync(rt).failures
    clean = connector.http.requests - before
    assert waits == [] and indexed(rt) == wiki_pages(wiki_client, ns)

    wiki_client.edit(f"{p}:Alpha", "Alpha page about owls, edited twice.")
    wiki_client.edit(f"{p}:Gamma", "Gamma page about geckos.")
    wiki_proxy.set(plan=[fault, fault])
    before = connector.http.requests
    summary = sync(rt)
    assert not summary.failures, summary.failures
    assert wiki_proxy.faulted == [fault, fault]
    assert connector.http.requests - before == clean + 2
    if fault == "429":
        assert waits == [1.0, 1.0]
    else:
        assert len(waits) == 2 and all(0 <= w <= 0.01 for w in waits), waits
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    cursor = connector.load_cursor()
    assert f"r{wiki_client.revid(f'{p}:Gamma')}" in cursor["seen"]


# -- MediaWiki: persistent faults in the running service -------------------------------------------------
@pytest.mark.mediawiki
@pytest.mark.parametrize("fault", FAULTS)
def test_wiki_persistent_fault_fails_the_poll_keeps_the_cursor_and_recovers(
        fault: str, tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient,
        wiki_proxy: FaultProxy, in_process_daemon: Any) -> None:
    """Every request to the wiki fails: each poll fails with the reason in /status, the cursor file stays
    as it was, the filesystem connector keeps syncing and the service stays healthy; once the fault clears
    the next poll brings every change made meanwhile."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Alpha", "Alpha page about owls.")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "one.md").write_text("# One\n\nThe first file, about lighthouses.\n")
    config = write_config(tmp_path, [_files_connector(root), _wiki_connector(wiki_proxy.url + "/api.php", ns)],
                          sync={"backoff_max": "1s", "verify_interval": "0s"})
    with in_process_daemon(config) as daemon:
        rt = daemon.service.runtime
        wiki: Any = rt.connectors[NAME]
        waits: list[float] = []
        wiki.http.sleep = waits.append
        wait_for(lambda: indexed(rt) == wiki_pages(wiki_client, ns) and wiki.cursor_path.exists(), what="catch-up")

        wiki_proxy.set(fault)
        wait_for(lambda: WIKI_WORDS[fault] in (entry(http_status(daemon), NAME)["last_error"] or ""),
                 timeout=60, what="the poll failure in /status")
        cursor = wiki.cursor_path.read_bytes()
        faulted = len(wiki_proxy.faulted)
        wiki_client.edit(f"{p}:Alpha", "Alpha page about owls, edited while the wiki was failing.")
        wiki_client.edit(f"{p}:Beta", "Beta page about bats, written while the wiki was failing.")
        (root / "two.md").write_text("# Two\n\nA second file, about harbours.\n")
        wait_for(lambda: "two.md" in indexed(rt, "files"), what="the filesystem connector to keep syncing")
        # Two more failed polls (the service backs off, capped at 1 s).
        wait_for(lambda: len(wiki_proxy.faulted) >= faulted + 2 * (wiki.cfg.max_retries + 1), timeout=60,
                 what="more failed polls")
        status = http_status(daemon)
        assert WIKI_WORDS[fault] in entry(status, NAME)["last_error"]
        assert entry(status, NAME)["state"] in ("failing", "unavailable")
        assert entry(status, NAME)["consecutive_failures"] >= 1
        assert entry(status, "files")["last_error"] is None
        assert status["healthy"] is True and daemon.service.healthy()
        assert wiki.cursor_path.read_bytes() == cursor
        assert f"{p}:Beta" not in indexed(rt)
        if fault == "429":
            assert waits and set(waits) == {1.0}
        else:
            assert all(w <= 0.01 for w in waits), waits

        wiki_proxy.set(None)
        expected = wiki_pages(wiki_client, ns)
        assert set(expected) == {f"{p}:Alpha", f"{p}:Beta"}
        wait_for(lambda: indexed(rt) == expected, timeout=60, what="the catch-up after the fault cleared")
        wait_for(lambda: entry(http_status(daemon), NAME)["last_error"] is None, what="the error to clear")
        # The cursor is written just after the store commit that the index check above already saw.
        after = wait_for(lambda: (c := json.loads(wiki.cursor_path.read_text()))["seen"]
                         and f"r{expected[f'{p}:Beta']}" in c["seen"] and c, what="the cursor past the catch-up")
        assert after["ts"] >= json.loads(cursor)["ts"]
        assert set(indexed(rt, "files")) == {"one.md", "two.md"}


@pytest.mark.mediawiki
@pytest.mark.parametrize("fault", FAULTS)
def test_wiki_fault_on_one_page_fails_only_that_page(
        fault: str, tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient,
        wiki_proxy: FaultProxy, in_process_daemon: Any) -> None:
    """Only the requests naming one page fail: that page alone is failed with a reason in /status, its
    neighbours in the same batch are indexed, the cursor stays before its change, and it is indexed on a
    later cycle once the fault clears."""
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Alpha", "Alpha page about owls.")
    config = write_config(tmp_path, [_wiki_connector(wiki_proxy.url + "/api.php", ns)],
                          sync={"backoff_max": "1s", "verify_interval": "0s"})
    with in_process_daemon(config) as daemon:
        rt = daemon.service.runtime
        wiki: Any = rt.connectors[NAME]
        wiki.http.sleep = lambda _s: None
        wait_for(lambda: indexed(rt) == wiki_pages(wiki_client, ns) and wiki.cursor_path.exists(), what="catch-up")
        wiki_proxy.set(fault, match=f"{p}:Broken")
        wiki_client.edit(f"{p}:Alpha", "Alpha page about owls, edited.")
        broken = wiki_client.edit(f"{p}:Broken", "A page whose every answer fails.")
        wiki_client.edit(f"{p}:Gamma", "Gamma page about geckos.")

        def failed_alone() -> bool:
            e = entry(http_status(daemon), NAME)
            return [f["doc_id"] for f in e["failures"]] == [f"{p}:Broken"]

        wait_for(failed_alone, timeout=60, what="the page's failure in /status")
        expected = wiki_pages(wiki_client, ns)
        wait_for(lambda: indexed(rt) == {t: r for t, r in expected.items() if t != f"{p}:Broken"}, what="neighbours")
        e = entry(http_status(daemon), NAME)
        assert e["failed_docs"] == 1 and e["failures"][0]["reason"]
        assert daemon.service.healthy()
        cursor = wiki.load_cursor()
        assert f"r{broken}" not in cursor["seen"]

        wiki_proxy.set(None)
        wait_for(lambda: indexed(rt) == expected, timeout=60, what="the failed page on a later cycle")
        wait_for(lambda: entry(http_status(daemon), NAME)["failed_docs"] == 0, what="the failure to clear")
        wait_for(lambda: f"r{broken}" in (wiki.load_cursor() or {}).get("seen", {}), what="the cursor to pass it")


# -- git over dumb HTTP ----------------------------------------------------------------------------------
class StaticServer:
    """A stdlib static file server: git's "dumb" HTTP protocol needs nothing more."""

    def __init__(self, root: Path) -> None:
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GIT_WORDS = {"hang": "timed out", "500": "error: 500", "502": "error: 502", "truncated": "transfer closed"}


def _push(repo: GitRepo) -> str:
    repo.push()
    git(repo.remote, "update-server-info")
    return repo.remote_head()


def _blobs(repo: GitRepo) -> dict[str, str]:
    head = repo.remote_head()
    return {path: sha for path, (_mode, sha) in repo.files_at(head).items() if path.endswith(".md")}


def _identities(rt: Runtime, name: str) -> dict[str, str]:
    return {doc_id: info.identity for (conn, doc_id), info in rt.store.indexed_docs().items() if conn == name}


@pytest.mark.parametrize("fault", ["hang", "500", "502", "truncated"])
def test_git_over_http_fault_keeps_the_cursor_and_recovers(fault: str, tmp_path: Path, in_process_daemon: Any) -> None:
    """A git remote served over HTTP fails (5xx, a body cut short, a server that stops answering): the poll
    fails with a ConnectorError in /status, the cursor stays at the last synced commit, the filesystem
    connector keeps syncing; once the fault clears the next poll reaches the branch head."""
    repo = GitRepo(tmp_path / "git")
    repo.write("a.md", "# A\n\nAbout anchors.\n")
    repo.write("b.md", "# B\n\nAbout buoys.\n")
    repo.commit("first")
    first = _push(repo)
    static = StaticServer(tmp_path / "git")
    proxy = FaultProxy(static.url)
    root = tmp_path / "docs"
    root.mkdir()
    config = write_config(tmp_path, [
        _files_connector(root),
        {"name": "repo", "type": "git", "url": f"{proxy.url}/remote.git", "branch": "main", "poll_interval": "300ms",
         "retries": 0, "timeout": "3s"}], sync={"backoff_max": "1s", "verify_interval": "0s"})
    try:
        with in_process_daemon(config) as daemon:
            rt = daemon.service.runtime
            cursor_path = rt.connectors["repo"].cursor_path
            wait_for(lambda: _identities(rt, "repo") == _blobs(repo), what="catch-up over dumb HTTP")
            wait_for(lambda: cursor_path.exists() and json.loads(cursor_path.read_text())["commit"] == first,
                     what="the cursor")

            repo.write("a.md", "# A\n\nAbout anchors, edited.\n")
            repo.write("c.md", "# C\n\nAbout capstans.\n")
            repo.remove("b.md")
            repo.commit("second")
            # Objects are fetched one file each over dumb HTTP: fault those, the refs still answer.
            proxy.set(fault, match="/objects/")
            _push(repo)
            wait_for(lambda: entry(http_status(daemon), "repo")["last_error"], timeout=60,
                     what="the fetch failure in /status")
            (root / "note.md").write_text("# Note\n\nA file synced while the git remote fails.\n")
            wait_for(lambda: "note.md" in indexed(rt, "files"), what="the filesystem connector to keep syncing")
            status = http_status(daemon)
            error = entry(status, "repo")["last_error"]
            assert error.startswith("git repo: ") and GIT_WORDS[fault] in error, error
            assert entry(status, "repo")["state"] in ("failing", "unavailable")
            assert status["healthy"] is True
            assert json.loads(cursor_path.read_text())["commit"] == first
            assert set(_identities(rt, "repo")) == {"a.md", "b.md"}

            proxy.set(None)
            wait_for(lambda: _identities(rt, "repo") == _blobs(repo), timeout=60, what="the catch-up after the fault")
            wait_for(lambda: json.loads(cursor_path.read_text())["commit"] == repo.remote_head(), what="the cursor")
            wait_for(lambda: entry(http_status(daemon), "repo")["last_error"] is None, what="the error to clear")
    finally:
        proxy.close()
        static.close()


def test_git_over_http_transient_5xx_is_retried(tmp_path: Path, make_runtime: Any) -> None:
    """One 503 from a git remote over HTTP is retried within the same poll: the sync succeeds."""
    repo = GitRepo(tmp_path / "git")
    repo.write("a.md", "# A\n\nAbout anchors.\n")
    repo.commit("first")
    _push(repo)
    static = StaticServer(tmp_path / "git")
    proxy = FaultProxy(static.url)
    try:
        rt = make_runtime(write_config(tmp_path, [
            {"name": "repo", "type": "git", "url": f"{proxy.url}/remote.git", "branch": "main", "retries": 1}]))
        proxy.set(plan=["502"], match="/info/refs")
        summary = sync(rt, "repo")
        assert not summary.failures, summary.failures
        assert proxy.faulted == ["502"]
        assert _identities(rt, "repo") == _blobs(repo)
    finally:
        proxy.close()
        static.close()
