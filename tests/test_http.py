"""The HTTP server on its own: a real ThreadingHTTPServer on 127.0.0.1:0 with endpoint callables."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from syncd.http import Endpoints, HttpServer
from syncd.search import SearchOptions


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class FakeService:
    """Endpoint callables whose answers the tests set; search can be held on an event."""

    def __init__(self) -> None:
        self.is_healthy = True
        self.is_ready = False
        self.hold_search = threading.Event()
        self.search_entered = threading.Event()
        self.fail_status = False
        self.searches: list[tuple[str, int, str | None]] = []
        self.options: list[SearchOptions] = []
        self.viewers: list[frozenset[str] | None] = []

    def endpoints(self, token: str | None = None, **more: Any) -> Endpoints:
        return Endpoints(healthy=lambda: self.is_healthy, ready=lambda: self.is_ready, status=self.status,
                         metrics=lambda: b"syncd_up 1\n", search=self.search, page=lambda viewer=None: "<html>page</html>",
                         token=token, problems=lambda: ["the writer thread is not running"], **more)

    def status(self, viewer=None) -> dict[str, Any]:
        self.viewers.append(viewer)
        if self.fail_status:
            raise RuntimeError("status exploded")
        return {"version": "x", "connectors": []}

    def search(self, q: str, options: SearchOptions) -> dict[str, Any]:
        self.searches.append((q, options.k, options.connector))
        self.options.append(options)
        self.search_entered.set()
        if q == "hold":
            self.hold_search.wait(timeout=60)
        return {"query": q, "results": []}


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def server(fake: FakeService) -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, fake.endpoints())
    srv.start()
    yield srv
    fake.hold_search.set()
    srv.stop()


def test_healthz_and_readyz_follow_the_service(server: HttpServer, fake: FakeService) -> None:
    assert _get(server.url + "/healthz")[0] == 200
    assert json.loads(_get(server.url + "/healthz")[2]) == {"status": "ok"}
    assert _get(server.url + "/readyz")[0] == 503
    fake.is_ready = True
    assert _get(server.url + "/readyz")[0] == 200
    fake.is_healthy = False
    code, _, body = _get(server.url + "/healthz")
    assert code == 503
    assert json.loads(body) == {"status": "unhealthy", "problems": ["the writer thread is not running"]}


def test_bad_requests_get_4xx_answers(server: HttpServer, fake: FakeService) -> None:
    assert _get(server.url + "/nope")[0] == 404
    assert _get(server.url + "/search")[0] == 400
    assert _get(server.url + "/search?q=x&k=zero")[0] == 400
    assert _get(server.url + "/search?q=x&k=0")[0] == 400
    assert _get(server.url + "/search?q=x&k=1001")[0] == 400
    code, _, body = _get(server.url + "/search?q=hello%20world&k=3&connector=docs")
    assert code == 200 and json.loads(body) == {"query": "hello world", "results": []}
    assert fake.searches == [("hello world", 3, "docs")]


def test_search_options_reach_the_search_parsed_and_bad_ones_get_a_400_naming_the_option(
        server: HttpServer, fake: FakeService) -> None:
    odd = "it's \"odd\"; DROP %E9 日本/*.md"
    code, _, _ = _get(server.url + f"/search?q=x&k=4&path={quote(odd)}&updated_since=2026-03-03T13:00:00%2B01:00"
                      "&min_relevance=0.45&meta=owner%3Dalice&meta=mode%3D0644%3Dx&dedup=false")
    assert code == 200
    opts = fake.options[-1]
    assert opts.k == 4 and opts.path == odd and opts.min_relevance == 0.45 and opts.dedup is False
    assert opts.updated_since == dt.datetime(2026, 3, 3, 12, tzinfo=dt.UTC)
    assert opts.metadata == {"owner": "alice", "mode": "0644=x"}
    code, _, _ = _get(server.url + "/search?q=x")
    assert code == 200 and fake.options[-1] == SearchOptions(k=10)
    for bad, option in (("updated_since=yesterday", "updated_since"), ("min_relevance=1.5", "min_relevance"),
                        ("min_relevance=abc", "min_relevance"), ("meta=novalue", "meta"), ("dedup=maybe", "dedup"),
                        ("path=a%00b", "path")):
        code, _, body = _get(server.url + f"/search?q=x&{bad}")
        assert code == 400 and json.loads(body)["option"] == option, bad


def test_a_failing_handler_answers_500_and_the_server_keeps_serving(server: HttpServer, fake: FakeService) -> None:
    fake.fail_status = True
    code, _, body = _get(server.url + "/status")
    assert code == 500 and "status exploded" in json.loads(body)["error"]
    assert _get(server.url + "/healthz")[0] == 200
    fake.fail_status = False
    assert _get(server.url + "/status")[0] == 200


def test_a_slow_request_does_not_block_other_requests(server: HttpServer, fake: FakeService) -> None:
    """Each request has its own thread: a search held open never holds up /healthz or /metrics."""
    result: list[int] = []
    slow = threading.Thread(target=lambda: result.append(_get(server.url + "/search?q=hold")[0]))
    slow.start()
    assert fake.search_entered.wait(timeout=30)
    assert _get(server.url + "/healthz")[0] == 200
    code, headers, body = _get(server.url + "/metrics")
    assert code == 200 and body == b"syncd_up 1\n" and headers["Content-Type"].startswith("text/plain")
    assert result == []  # the slow one is still in flight
    fake.hold_search.set()
    slow.join(timeout=30)
    assert result == [200]


def test_status_page_is_html(server: HttpServer) -> None:
    code, headers, body = _get(server.url + "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html") and body == b"<html>page</html>"


def test_status_is_whole_for_the_operator_of_a_daemon_without_tokens_and_filtered_for_anonymous_callers(
        fake: FakeService) -> None:
    """No token at all (the daemon then listens on loopback only): the caller is the operator and sees every
    failing document; once tokens exist, a caller without one sees only what ``everyone`` may read, a
    principal's token what its principals may read, the trusted token everything. Searches of a tokenless
    caller stay ``everyone``'s either way."""
    open_srv = HttpServer("127.0.0.1", 0, fake.endpoints())
    open_srv.start()
    try:
        assert _get(open_srv.url + "/status")[0] == 200
        assert _get(open_srv.url + "/status", {"Authorization": "Bearer anything"})[0] == 200
        assert fake.viewers == [None, None]
        assert _get(open_srv.url + "/search?q=x")[0] == 200 and fake.options[-1].principals == ()
    finally:
        open_srv.stop()
    fake.viewers.clear()
    secured = HttpServer("127.0.0.1", 0, fake.endpoints(token="trusted", tokens={"team": frozenset({"group:eng"})},
                                                         require_token=False))
    secured.start()
    try:
        for headers in ({}, {"Authorization": "Bearer team"}, {"Authorization": "Bearer trusted"}):
            assert _get(secured.url + "/status", headers)[0] == 200
        assert fake.viewers == [frozenset(), frozenset({"group:eng"}), None]
    finally:
        secured.stop()


def test_bearer_token_guards_every_path_but_healthz(fake: FakeService) -> None:
    token = "s3cret-token"  # noqa: S105 - a test value
    srv = HttpServer("127.0.0.1", 0, fake.endpoints(token=token))
    srv.start()
    try:
        fake.is_ready = True
        assert _get(srv.url + "/healthz")[0] == 200
        for path in ("/readyz", "/status", "/metrics", "/search?q=x", "/"):
            code, headers, _ = _get(srv.url + path)
            assert code == 401, path
            assert headers.get("WWW-Authenticate") == "Bearer"
            assert _get(srv.url + path, {"Authorization": "Bearer wrong"})[0] == 401, path
            assert _get(srv.url + path, {"Authorization": token})[0] == 401, path
            assert _get(srv.url + path, {"Authorization": f"Bearer {token}"})[0] == 200, path
        # Health problems are only told to a caller holding the token.
        fake.is_healthy = False
        assert json.loads(_get(srv.url + "/healthz")[2]) == {"status": "unhealthy"}
        assert "problems" in json.loads(_get(srv.url + "/healthz", {"Authorization": f"Bearer {token}"})[2])
    finally:
        srv.stop()
