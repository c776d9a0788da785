"""The read-only HTTP endpoint: /healthz, /readyz, /status, /metrics, /search, /changes and a status page at /.

Shape: one acceptor thread and a small pool of worker threads, all daemons. The acceptor accepts
connections without blocking and, with `selectors`, buffers each request head until its blank line
arrives; only then is the connection handed to a worker, which runs the stdlib request handler on the
buffered bytes. So a slow or idle client costs a buffer, not a thread, and the token is checked as soon
as a worker takes the request. Limits, all attributes of `HttpServer` so tests can lower them:

- a head must arrive within `head_timeout` seconds of the accept, or the socket is closed;
- a head over `max_head_bytes` is answered 431 and closed;
- at most `max_pending` connections wait for their head; past that the oldest is closed, so file
  descriptors stay bounded under a flood;
- at most `max_waiting` complete requests wait for a free worker; past that the answer is 503;
- a worker reads a body and writes the answer with a socket timeout of `io_timeout` seconds.

One request per connection (HTTP/1.0, no keep-alive): the simplest shape that lets the acceptor own
every connection's idle time. The callers are probes, Prometheus and RAG applications making one call at
a time, for which a new connection on loopback costs nothing that matters.

A client that goes away (reset, broken pipe, a write timeout) is logged at debug level: that is the
client's business. An endpoint that raises answers 500 and is logged with its traceback. Handlers only
read, except ``POST /hooks/NAME``, which can only ask for a connector's poll (``syncd/hooks.py``).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlparse

import structlog

if TYPE_CHECKING:
    from syncd.search import SearchOptions

log = structlog.get_logger("syncd.http")

# Errors that mean the client went away or stopped reading: never a bug of ours.
_CLIENT_GONE = (ConnectionError, TimeoutError)

# A connector name as the config allows it (the rest of /hooks/NAME).
_HOOK_NAME = re.compile(r"[a-z0-9_-]{1,200}")

# The end of a request head: an empty line, with or without CR (the stdlib parser accepts both).
_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: ``may_act_as`` None for the trusted token (any principal), else the principals the
    caller's token may name (empty for a caller without a token)."""

    authenticated: bool
    may_act_as: frozenset[str] | None
    operator: bool = False
    """A caller of a daemon with no token at all (it then listens on loopback only): the operator on this
    machine, who sees /status whole; its searches are still an anonymous caller's (``everyone``)."""

    def allows(self, principal: str) -> bool:
        return principal == "everyone" or self.may_act_as is None or principal in self.may_act_as

    @property
    def viewer(self) -> frozenset[str] | None:
        """What /status may show this caller: everything (None), or what these principals may read."""
        return None if self.operator else self.may_act_as


def acting_as_problem(principals: Iterable[str], caller: Caller) -> tuple[int, str] | None:
    """Why ``caller`` may not act as ``principals`` (valid principal strings), as an HTTP status and a
    message: 401 without a token, 403 for a token limited to others; None when it may (``/search``,
    ``/document`` and the MCP tools decide alike)."""
    for p in principals:
        if p == "everyone":
            continue
        if not caller.authenticated:
            return 401, f"acting as {p} needs a bearer token that may act as it"
        if not caller.allows(p):
            return 403, f"this token may not act as {p}"
    return None


ANONYMOUS = Caller(authenticated=False, may_act_as=frozenset())
LOCAL_OPERATOR = Caller(authenticated=False, may_act_as=frozenset(), operator=True)


class Endpoints:
    """What the handlers call; the daemon provides it.

    ``token`` is the trusted backend's bearer token (it may act as any principal); ``tokens`` maps further
    tokens to the principals each may act as. A token is required on every path but /healthz when
    ``require_token`` is set (by default: when any token is given); without one, a caller is anonymous and
    searches ``everyone`` documents only. ``search`` is called with the query and its options (principals
    validated and allowed for the caller); ``status``, ``page`` and ``changes`` with what the caller may
    see (``Caller.viewer``).
    """

    def __init__(self, *, healthy: Callable[[], bool], ready: Callable[[], bool],
                 status: Callable[[frozenset[str] | None], dict[str, Any]],
                 metrics: Callable[[], bytes], search: Callable[[str, SearchOptions], dict[str, Any]],
                 page: Callable[[frozenset[str] | None], str], token: str | None,
                 problems: Callable[[], list[str]] | None = None,
                 connectors: Callable[[], Collection[str]] | None = None,
                 ready_problems: Callable[[], list[str]] | None = None,
                 hook: Callable[[str, Mapping[str, str], bytes | None], tuple[int, dict[str, Any]]] | None = None,
                 changes: Callable[..., dict[str, Any]] | None = None,
                 document: Callable[..., dict[str, Any] | None] | None = None,
                 mcp: Callable[..., tuple[int, list[tuple[str, str]], bytes]] | None = None,
                 count_search: Callable[[str], None] | None = None,
                 tokens: Mapping[str, Sequence[str]] | None = None, require_token: bool | None = None,
                 require_principals: bool = False) -> None:
        self.healthy = healthy
        self.ready_problems = ready_problems
        self.problems = problems
        self.ready = ready
        self.status = status
        self.metrics = metrics
        self.search = search
        self.page = page
        self.token = token
        self.tokens = {t: frozenset(p) for t, p in (tokens or {}).items()}
        self.require_token = (token is not None or bool(self.tokens)) if require_token is None else require_token
        self.require_principals = require_principals
        # The configured connector names; when given, /search rejects any other name with a 400 as the CLI does.
        self.connectors = connectors
        # POST /hooks/NAME: (connector, headers, body or None when over the size cap) -> (status, JSON body).
        # It authenticates with the connector's own webhook secret, not the bearer token (see syncd/hooks.py).
        self.hook = hook
        self.changes = changes
        """/changes: the change journal, paged (``syncd.audit.changes_page``'s keyword arguments)."""
        # /document?doc_id=&connector= or ?uri=: a document's indexed text (syncd.documents).
        self.document = document
        # POST /mcp: one MCP request through the SDK's app (syncd.mcp_server.AsgiBridge.handle).
        self.mcp = mcp
        # Told each /search outcome: "ok", "bad_request" (400) or "error" (500).
        self.count_search = count_search


class _Answer:
    """A response computed before anything is written, so a write error is never mistaken for a handler bug."""

    def __init__(self, code: int, body: bytes, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}



def _json(code: int, data: Any) -> _Answer:
    return _Answer(code, json.dumps(data, separators=(",", ":")).encode())


class _PrefixedReader(io.RawIOBase):
    """The bytes the acceptor already read, then the socket."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writes with sendall, so the socket timeout bounds a client that stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _Handler(BaseHTTPRequestHandler):
    server_version = "syncd"
    protocol_version = "HTTP/1.0"  # one request per connection: see the module docstring
    endpoints: Endpoints

    def __init__(self, sock: socket.socket, prefix: bytes, client_address: Any, server: Any, timeout: float) -> None:
        self._prefix = prefix
        self.timeout = timeout  # type: ignore[misc]  # the stdlib reads it per instance (StreamRequestHandler.setup)
        super().__init__(sock, client_address, server)

    def setup(self) -> None:
        # The stdlib's setup would read from a fresh socket file and lose the head the acceptor buffered.
        self.connection = self.request
        self.connection.settimeout(self.timeout)
        self.rfile = io.BufferedReader(_PrefixedReader(self._prefix, self.connection))
        self.wfile = _SocketWriter(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http.request", line=format % args)

    def _write(self, answer: _Answer) -> None:
        self.send_response(answer.code)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def _caller(self) -> Caller | None:
        """The caller the request's bearer token names, the anonymous caller when it has none and none is
        required, or None (401): a token is required, or the one given is not known."""
        ep = self.endpoints
        header = self.headers.get("Authorization")
        unsecured = not ep.require_token and ep.token is None and not ep.tokens
        if header is None:
            return LOCAL_OPERATOR if unsecured else None if ep.require_token else ANONYMOUS
        given = header.encode()
        found: Caller | None = None
        # Every token is compared (in constant time each), so the answer's timing says nothing of which matched.
        if ep.token is not None and hmac.compare_digest(given, f"Bearer {ep.token}".encode()):
            found = Caller(authenticated=True, may_act_as=None)
        for token, principals in ep.tokens.items():
            if hmac.compare_digest(given, f"Bearer {token}".encode()) and found is None:
                found = Caller(authenticated=True, may_act_as=principals)
        if found is None and unsecured:
            return LOCAL_OPERATOR  # no token configured at all (loopback): a header means nothing
        return found

    def _authorized(self) -> bool:
        return self._caller() is not None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlparse(self.path)
        try:
            answer = self._route(url.path, url.query)
        except Exception as exc:  # noqa: BLE001 - a handler error must answer 500, never kill the server
            log.exception("http.handler_failed", path=url.path)
            answer = _json(500, {"error": str(exc)})
        # Outside the try: an error while writing is the client's (see HttpServer._serve).
        self._write(answer)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        url = urlparse(self.path)
        try:
            if url.path.startswith("/hooks/"):
                answer = self._hook(url.path.removeprefix("/hooks/"))
            elif not self._authorized():
                answer = _Answer(401, b"", headers={"WWW-Authenticate": "Bearer"})
            elif url.path == "/mcp" and self.endpoints.mcp is not None:
                answer = self._mcp(url.path, url.query)
            else:
                answer = _json(405, {"error": f"{url.path} does not take POST"})
        except _CLIENT_GONE:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler error must answer 500, never kill the server
            log.exception("http.handler_failed", path=url.path)
            answer = _json(500, {"error": str(exc)})
        self._write(answer)

    @property
    def server_limit(self) -> int:
        return cast("HttpServer", self.server).max_hook_bytes

    def _hook(self, name: str) -> _Answer:
        """A push hook: its own secret instead of the bearer token (forges cannot send one), a capped body."""
        ep = self.endpoints
        if ep.hook is None or not _HOOK_NAME.fullmatch(name):
            return _json(404, {"error": f"no hooks at /hooks/{name}"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return _json(411, {"error": "a hook needs a Content-Length"})
        body: bytes | None = None
        if 0 <= length <= self.server_limit:
            body = self.rfile.read(length)
            if len(body) != length:
                return _json(400, {"error": "the body ended before its Content-Length"})
        elif length < 0:
            return _json(400, {"error": "a negative Content-Length"})
        else:
            # Read and drop a body up to a bound, so closing does not reset the connection before the client
            # has read the 413; past the bound the connection is simply closed.
            left = min(length, 4 * self.server_limit)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        code, data = ep.hook(name, dict(self.headers.items()), body)
        if code == 204:
            return _Answer(204, b"")
        return _json(code, data)
    def do_DELETE(self) -> None:  # noqa: N802 - stdlib naming
        url = urlparse(self.path)
        if not self._authorized():
            answer = _Answer(401, b"", headers={"WWW-Authenticate": "Bearer"})
        elif url.path == "/mcp" and self.endpoints.mcp is not None:
            answer = _MCP_NO_STREAM  # stateless: there is no session to end
        else:
            answer = _json(405, {"error": f"{url.path} does not accept DELETE"})
        self._write(answer)

    max_body_bytes = 4 * 1024 * 1024

    def _mcp(self, path: str, query: str) -> _Answer:
        """POST /mcp (authorised already): one MCP request through the SDK's app."""
        mcp = self.endpoints.mcp
        assert mcp is not None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return _json(411, {"error": "a POST needs a Content-Length"})
        if not 0 <= length <= self.max_body_bytes:
            return _json(413, {"error": f"the body is larger than {self.max_body_bytes} bytes"})
        body = self.rfile.read(length)
        host, port = getattr(self.server, "address", ("", 0))
        code, headers, data = mcp("POST", path, query, list(self.headers.items()), body,
                                  (str(self.client_address[0]), int(self.client_address[1])), (host, port),
                                  caller=self._caller())
        kept = {k: v for k, v in headers if k.lower() not in ("content-type", "content-length")}
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "application/json")
        return _Answer(code, data, content_type, kept)

    def _route(self, path: str, query: str) -> _Answer:
        ep = self.endpoints
        if path == "/healthz":
            ok = ep.healthy()
            body: dict[str, Any] = {"status": "ok" if ok else "unhealthy"}
            caller = self._caller()
            if not ok and ep.problems is not None and caller is not None and (
                    caller.authenticated or not ep.require_token):
                body["problems"] = ep.problems()
            return _json(200 if ok else 503, body)
        caller = self._caller()
        if caller is None:
            return _Answer(401, b"", headers={"WWW-Authenticate": "Bearer"})
        if path == "/readyz":
            ok = ep.ready()
            ready: dict[str, Any] = {"status": "ready" if ok else "catching-up"}
            if not ok and ep.ready_problems is not None:
                problems = ep.ready_problems()
                ready["problems"] = problems
                if any("stalled" in p for p in problems):
                    ready["status"] = "stalled"
            return _json(200 if ok else 503, ready)
        if path == "/status":
            return _json(200, ep.status(caller.viewer))
        if path == "/metrics":
            return _Answer(200, ep.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/search":
            try:
                answer = self._search(parse_qs(query), caller)
            except Exception:
                self._count_search("error")
                raise
            self._count_search("ok" if answer.code == 200 else "bad_request" if answer.code == 400 else "error")
            return answer
        if path == "/changes" and ep.changes is not None:
            return self._changes(parse_qs(query), caller)
        if path == "/document" and ep.document is not None:
            return self._document(parse_qs(query), caller)
        if path == "/mcp" and ep.mcp is not None:
            return _MCP_NO_STREAM
        if path in ("/", "/index.html"):
            return _Answer(200, ep.page(caller.viewer).encode(), "text/html; charset=utf-8")
        return _json(404, {"error": f"no such path: {path}"})

    def _count_search(self, outcome: str) -> None:
        if self.endpoints.count_search is not None:
            self.endpoints.count_search(outcome)

    def _search(self, params: dict[str, list[str]], caller: Caller) -> _Answer:
        from syncd.search import SearchOptionError, options_from_params

        ep = self.endpoints
        q = params.get("q", [""])[0]
        if not q.strip():
            return _json(400, {"error": "missing query parameter q"})
        try:
            options = options_from_params(params)
        except SearchOptionError as exc:
            return _json(400, {"error": str(exc), "option": exc.option})
        connector = options.connector
        if connector is not None and ep.connectors is not None and connector not in ep.connectors():
            # The same answer as `syncd query --connector NAME` gives for a name it does not know.
            return _json(400, {"error": f"no connector named {connector!r}", "option": "connector"})
        refused = self._acting_as(options.principals, caller)
        if refused is not None:
            return refused
        from syncd.errors import AsOfUnavailable

        try:
            return _json(200, ep.search(q, options))
        except AsOfUnavailable as exc:
            from syncd.audit import iso

            return _json(400, {"error": str(exc), "option": "as_of", "oldest_available_at": iso(exc.oldest)})

    def _acting_as(self, principals: Sequence[str], caller: Caller) -> _Answer | None:
        """The refusal when ``caller`` may not act as ``principals`` (valid principals already), else None."""
        if not principals and self.endpoints.require_principals:
            return _json(400, {"error": "principal= is required: name whom the search is for "
                                        "([search] require_principals = true)", "option": "principal"})
        problem = acting_as_problem(principals, caller)
        if problem is None:
            return None
        code, message = problem
        if code == 401:
            return _Answer(401, json.dumps({"error": message}).encode(), headers={"WWW-Authenticate": "Bearer"})
        return _json(code, {"error": message})

    def _changes(self, params: dict[str, list[str]], caller: Caller) -> _Answer:
        from syncd.errors import BadArgument

        ep = self.endpoints
        assert ep.changes is not None
        args: dict[str, Any] = {key: params[key][0] for key in ("since", "connector", "doc_id", "limit", "cursor", "order")
                                if key in params}
        try:
            return _json(200, ep.changes(viewer=caller.viewer, **args))
        except BadArgument as exc:
            return _json(400, {"error": str(exc)})


    def _document(self, params: dict[str, list[str]], caller: Caller) -> _Answer:
        from syncd.acl import PrincipalError, check_principal
        from syncd.documents import AmbiguousDocument

        ep = self.endpoints
        assert ep.document is not None
        doc_id, uri, connector = (params.get(name, [None])[0] for name in ("doc_id", "uri", "connector"))
        if (doc_id is None) == (uri is None):
            return _json(400, {"error": "give either doc_id or uri"})
        if connector is not None and ep.connectors is not None and connector not in ep.connectors():
            return _json(400, {"error": f"no connector named {connector!r}"})
        try:
            principals = tuple(check_principal(p) for p in params.get("principal", []))
        except PrincipalError as exc:
            return _json(400, {"error": str(exc), "option": "principal"})
        refused = self._acting_as(principals, caller)
        if refused is not None:
            return refused
        try:
            found = ep.document(doc_id=doc_id, uri=uri, connector=connector, principals=principals)
        except AmbiguousDocument as exc:
            return _json(400, {"error": str(exc)})
        if found is None:
            # The same answer for a document the caller may not read: its existence is not revealed either.
            return _json(404, {"error": "no such document in the index"})
        return _json(200, found)


# The MCP endpoint is stateless: no server-to-client stream to open (GET) and no session to end (DELETE).
_MCP_NO_STREAM = _Answer(405, b'{"error":"the MCP endpoint takes POST only (stateless, no stream)"}',
                         headers={"Allow": "POST"})


class _Pending:
    """A connection whose request head is still arriving."""

    __slots__ = ("sock", "address", "buf", "accepted", "draining_until")

    def __init__(self, sock: socket.socket, address: Any, now: float) -> None:
        self.sock = sock
        self.address = address
        self.buf = bytearray()
        self.accepted = now
        # Set once a 431 is written: read and drop what the client still sends, so closing does not reset
        # the connection before the client has read the answer.
        self.draining_until: float | None = None


def _plain_answer(status: HTTPStatus, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode() + body


_TOO_LARGE = _plain_answer(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
_BUSY = _plain_answer(HTTPStatus.SERVICE_UNAVAILABLE, "busy, try again", "Retry-After: 1\r\n")
_STOP = object()


class HttpServer:
    """The HTTP server: an acceptor thread that buffers request heads and a bounded pool of workers.

    Counters for metrics (only the acceptor writes them): `closed_slow` (head not complete within
    `head_timeout`), `evicted` (closed because `max_pending` was reached), `rejected` (431, head too large)
    and `busy` (503, every worker busy and `max_waiting` requests queued).
    """

    workers = 8
    head_timeout = 10.0
    io_timeout = 10.0
    max_head_bytes = 16 * 1024
    max_hook_bytes = 4 * 1024 * 1024  # a forge's push event lists at most ~20 commits; larger is answered 413
    max_pending = 256
    max_waiting = 64
    linger = 1.0  # seconds to drain a rejected client before closing
    accept_pause = 0.1  # seconds without accepting after accept() failed (out of file descriptors)
    backlog = 128

    def __init__(self, host: str, port: int, endpoints: Endpoints) -> None:
        self._handler = type("Handler", (_Handler,), {"endpoints": endpoints})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=self.backlog)
        self._listener.setblocking(False)
        host, port = self._listener.getsockname()[:2]
        self._address = (str(host), int(port))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, _Pending] = {}  # accept order, oldest first; the acceptor's own
        self._work: queue.Queue[Any] = queue.Queue()
        # /healthz has a worker of its own: liveness never waits behind slow searches in the pool.
        self._health: queue.Queue[Any] = queue.Queue()
        self._active: set[socket.socket] = set()  # handed to a worker, not yet closed
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self._accept_paused_until: float | None = None
        self.closed_slow = 0
        self.evicted = 0
        self.rejected = 0
        self.busy = 0
        self.thread = threading.Thread(target=self._accept_loop, name="syncd-http", daemon=True)
        self._workers = [threading.Thread(target=self._work_loop, args=(self._work,), name=f"syncd-http-{i}",
                                          daemon=True) for i in range(self.workers)]
        self._health_worker = threading.Thread(target=self._work_loop, args=(self._health,),
                                               name="syncd-http-health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def pending(self) -> int:
        """Connections whose request head has not arrived yet."""
        return len(self._pending)

    def start(self) -> None:
        for worker in [*self._workers, self._health_worker]:
            worker.start()
        self.thread.start()

    def stop(self) -> None:
        """Close the listener and every open connection within a fraction of a second; a worker still
        inside an endpoint finishes it and finds its socket shut."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self.thread.is_alive():
            self.thread.join(timeout=1.0)
        else:
            self._close_all_pending()
        # Requests nobody has started are dropped; the sentinels then end the idle workers.
        for waiting in (self._work, self._health):
            while True:
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    self._close(item[0])
        with self._active_lock:
            for sock in self._active:
                # shutdown, not close: the worker holding it closes it, so its descriptor is never reused under it.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for _ in self._workers:
            self._work.put(_STOP)
        self._health.put(_STOP)
        deadline = time.monotonic() + 0.2
        for worker in [*self._workers, self._health_worker]:
            if worker.is_alive():
                worker.join(timeout=max(0.0, deadline - time.monotonic()))
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # --- the acceptor ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(self._select_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    elif isinstance(key.fileobj, socket.socket):
                        # Looked up, not indexed: _accept may have evicted it earlier in this same round.
                        p = self._pending.get(key.fileobj)
                        if p is not None:
                            self._read_or_drop(p)
                self._expire()
                self._resume_accepting()
        except Exception:  # noqa: BLE001 - logged; the server must not die silently
            log.exception("http.acceptor_failed")
        finally:
            self._close_all_pending()
            sel.close()

    def _select_timeout(self) -> float:
        # Wake at least twice a second, so a head_timeout changed on a live server takes effect.
        deadlines = [self._deadline(p) for p in self._pending.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return 0.5
        return min(0.5, max(0.0, min(deadlines) - time.monotonic()))

    def _deadline(self, p: _Pending) -> float:
        return p.draining_until if p.draining_until is not None else p.accepted + self.head_timeout

    def _accept(self) -> None:
        # A bounded batch, so a connection storm cannot starve the reads and the deadlines.
        for _ in range(64):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: the listener would stay readable and spin this loop, so stop watching
                # it for a moment; the connection waits in the backlog.
                log.warning("http.accept_failed", error=str(exc))
                self._selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + self.accept_pause
                return
            sock.setblocking(False)
            while len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending.values()))
                self.evicted += 1
                log.debug("http.evicted", client=oldest.address[0])
                self._drop(oldest)
            self._pending[sock] = _Pending(sock, address, time.monotonic())
            self._selector.register(sock, selectors.EVENT_READ)

    def _resume_accepting(self) -> None:
        if self._accept_paused_until is not None and time.monotonic() >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _read_or_drop(self, p: _Pending) -> None:
        try:
            self._read(p)
        except Exception:  # noqa: BLE001 - one bad connection must not end the acceptor
            log.exception("http.read_failed", client=p.address[0])
            self._drop(p)

    def _read(self, p: _Pending) -> None:
        sock = p.sock
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(p)
            return
        if p.draining_until is not None:
            return
        p.buf += data
        end = _HEAD_END.search(p.buf)
        head_length = end.end() if end else len(p.buf)
        if head_length > self.max_head_bytes:
            self.rejected += 1
            log.debug("http.head_too_large", client=p.address[0], bytes=head_length)
            with contextlib.suppress(OSError):
                sock.send(_TOO_LARGE)
                sock.shutdown(socket.SHUT_WR)
            p.draining_until = time.monotonic() + self.linger
            p.buf = bytearray()
            return
        if end is None:
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        lane = self._health if p.buf.startswith(b"GET /healthz") else self._work
        if lane.qsize() >= self.max_waiting:
            self.busy += 1
            log.debug("http.busy", client=p.address[0])
            with contextlib.suppress(OSError):
                sock.send(_BUSY)
            self._close(sock)
            return
        sock.setblocking(True)
        with self._active_lock:
            self._active.add(sock)
        lane.put((sock, bytes(p.buf), p.address))

    def _expire(self) -> None:
        now = time.monotonic()
        for p in [p for p in self._pending.values() if self._deadline(p) <= now]:
            if p.draining_until is None:
                self.closed_slow += 1
                log.debug("http.head_timeout", client=p.address[0], bytes=len(p.buf))
            self._drop(p)

    def _drop(self, p: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(p.sock)
        self._pending.pop(p.sock, None)
        self._close(p.sock)

    def _close_all_pending(self) -> None:
        for p in list(self._pending.values()):
            self._drop(p)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.close()

    # --- the workers -------------------------------------------------------------------------------

    def _work_loop(self, lane: queue.Queue[Any]) -> None:
        while True:
            item = lane.get()
            if item is _STOP:
                return
            self._serve(*item)

    def _serve(self, sock: socket.socket, head: bytes, address: Any) -> None:
        try:
            self._handler(sock, head, address, self, self.io_timeout)
        except _CLIENT_GONE as exc:
            log.debug("http.client_gone", client=address[0], error=type(exc).__name__)
        except OSError as exc:
            if self._stopping.is_set():
                log.debug("http.closed_on_stop", client=address[0], error=type(exc).__name__)
            else:
                log.warning("http.connection_failed", client=address[0], error=repr(exc))
        except Exception:  # noqa: BLE001 - a bug in the plumbing must not end the worker
            log.exception("http.connection_failed", client=address[0])
        finally:
            with self._active_lock:
                self._active.discard(sock)
            self._close(sock)
