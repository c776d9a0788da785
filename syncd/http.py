"""The read-only HTTP endpoint: /healthz, /readyz, /status, /metrics, /search and a status page at /.

The standard library's threaded server runs in its own daemon thread: a slow client or a handler error
never blocks or stops the sync loop. Handlers only read.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import structlog

log = structlog.get_logger("syncd.http")


class Endpoints:
    """What the handlers call; the daemon provides it."""

    def __init__(self, *, healthy: Callable[[], bool], ready: Callable[[], bool], status: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes], search: Callable[[str, int, str | None], dict[str, Any]],
                 page: Callable[[], str], token: str | None,
                 problems: Callable[[], list[str]] | None = None) -> None:
        self.healthy = healthy
        self.problems = problems
        self.ready = ready
        self.status = status
        self.metrics = metrics
        self.search = search
        self.page = page
        self.token = token


class _Handler(BaseHTTPRequestHandler):
    server_version = "syncd"
    endpoints: Endpoints

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http.request", line=format % args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data, separators=(",", ":")).encode())

    def _authorized(self) -> bool:
        token = self.endpoints.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlparse(self.path)
        ep = self.endpoints
        try:
            if url.path == "/healthz":
                ok = ep.healthy()
                body: dict[str, Any] = {"status": "ok" if ok else "unhealthy"}
                if not ok and ep.problems is not None and self._authorized():
                    body["problems"] = ep.problems()
                self._json(200 if ok else 503, body)
                return
            if not self._authorized():
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if url.path == "/readyz":
                ok = ep.ready()
                self._json(200 if ok else 503, {"status": "ready" if ok else "catching-up"})
            elif url.path == "/status":
                self._json(200, ep.status())
            elif url.path == "/metrics":
                self._send(200, ep.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path == "/search":
                params = parse_qs(url.query)
                q = params.get("q", [""])[0]
                if not q.strip():
                    self._json(400, {"error": "missing query parameter q"})
                    return
                try:
                    k = int(params.get("k", ["10"])[0])
                except ValueError:
                    self._json(400, {"error": "k must be a whole number"})
                    return
                if not 1 <= k <= 1000:
                    self._json(400, {"error": "k must be between 1 and 1000"})
                    return
                self._json(200, ep.search(q, k, params.get("connector", [None])[0]))
            elif url.path in ("/", "/index.html"):
                self._send(200, ep.page().encode(), "text/html; charset=utf-8")
            else:
                self._json(404, {"error": f"no such path: {url.path}"})
        except Exception as exc:  # noqa: BLE001 - a handler error must answer 500, never kill the server
            log.exception("http.handler_failed", path=url.path)
            try:
                self._json(500, {"error": str(exc)})
            except OSError:
                pass


class HttpServer:
    """The server in its own daemon thread; handler threads are daemons too, so a hung client never
    holds up shutdown."""

    def __init__(self, host: str, port: int, endpoints: Endpoints) -> None:
        handler = type("Handler", (_Handler,), {"endpoints": endpoints})
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="syncd-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
