"""The MCP server (Model Context Protocol, the official ``mcp`` SDK): tools ``search``, ``get_document`` and
``list_sources`` for agents, over stdio (`syncd mcp`) and over streamable HTTP at the daemon's ``/mcp``.

Both transports serve one tool set built on an *index*: anything with ``search(text, k, **options)``,
``document(doc_id=, uri=, connector=)`` and ``sources()``. `syncd mcp` uses ``open_index`` (the running
daemon when there is one, else the store and the model in-process); the daemon uses its own read side.

``/mcp`` is served by the daemon's own HTTP server through :class:`AsgiBridge`: the SDK's Starlette app
runs unchanged on an event loop thread of its own, and each POST the HTTP server has read (head and body,
token checked) is handed to it as one ASGI request whose answer is collected and written back. The app is
stateless and answers JSON (``stateless_http=True, json_response=True``), so every MCP message is exactly one
request and one answer, which is the shape the HTTP server serves (one request per connection, bounded
workers and timeouts); the optional server-to-client stream (GET) is answered 405, as the transport
specification allows a server that offers none.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import structlog
from pydantic import Field

from syncd import __version__
from syncd.errors import SyncdError

log = structlog.get_logger("syncd.mcp")

_CALLER: contextvars.ContextVar[Any] = contextvars.ContextVar("syncd_mcp_caller", default=None)
"""The HTTP caller (``syncd.http.Caller``) of the MCP request being served over ``/mcp``; None over stdio.
Set by :class:`AsgiBridge` around the request, so the tools answer for the bearer token that asked."""

_INSTRUCTIONS = (
    "syncd keeps a vector index of an organisation's documents (file shares, git repositories, wikis) in sync "
    "with their sources. Use `search` to find passages (hybrid vector + full-text search); every result "
    "carries its citation: uri, revision, start_line/end_line and heading_path. Use `get_document` to read a "
    "whole document by doc_id (with its connector) or uri, and `list_sources` to see which sources are "
    "indexed and how fresh each one is (lag_s: seconds the index may be behind its source)."
)


def build_server(index: Any, *, connectors: Callable[[], Any] | None = None, principals: Sequence[str] = (),
                 require_principals: bool = False) -> Any:
    """An ``MCPServer`` whose tools answer from ``index``; ``connectors()`` gives the configured connector
    names, so an unknown one is an error naming it rather than an empty answer.

    Whom the tools search for: over ``/mcp``, the bearer token's principals (a ``principals`` argument may
    name some of them, as ``principal=`` on /search may: same rules, same refusals); the trusted token and a
    caller without one search ``everyone`` documents unless they name principals. Over stdio the operator
    runs the server with the config, so the argument is taken as given, and ``principals`` (`syncd mcp
    --as`) is the default when a call names none."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import ToolAnnotations

    server: MCPServer[Any] = MCPServer("syncd", version=__version__, instructions=_INSTRUCTIONS, log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                open_world_hint=False)

    def check_connector(connector: str | None) -> None:
        if connector is not None and connectors is not None and connector not in connectors():
            raise ToolError(f"no connector named {connector!r} (list_sources names them)")

    def acting_as(named: list[str] | None) -> tuple[str, ...]:
        """The principals a tool call searches for, or ToolError saying why the caller may not name them."""
        from syncd.acl import PrincipalError, check_principal

        try:
            asked = tuple(check_principal(p) for p in named or ())
        except PrincipalError as exc:
            raise ToolError(str(exc)) from None
        caller = _CALLER.get()
        if caller is None:
            chosen = asked or tuple(principals)
        else:
            from syncd.http import acting_as_problem

            problem = acting_as_problem(asked, caller)
            if problem is not None:
                raise ToolError(problem[1])
            chosen = asked or tuple(sorted(caller.may_act_as or ()))
        if not chosen and require_principals:
            raise ToolError("principals are required: name whom the search is for "
                            "([search] require_principals = true)")
        return chosen

    @server.tool(annotations=read_only)
    def search(query: Annotated[str, Field(min_length=1, description="what to look for, in plain words")],
               k: Annotated[int, Field(ge=1, le=1000, description="how many results")] = 10,
               connector: Annotated[str | None, Field(description="only this source (see list_sources)")] = None,
               path: Annotated[str | None, Field(description="only doc ids matching this glob (* also crosses "
                                                              "folders)")] = None,
               updated_since: Annotated[str | None, Field(description="only documents synced at or after this ISO "
                                                                       "8601 time")] = None,
               min_relevance: Annotated[float | None, Field(ge=0, le=1, description="leave out results below "
                                                                                    "this relevance (0-1)")] = None,
               metadata: Annotated[dict[str, str] | None, Field(description="only documents whose source "
                                                                            "metadata holds every key = value")] = None,
               dedup: Annotated[bool, Field(description="collapse identical texts into one result (also_in)")] = True,
               as_of: Annotated[str | None, Field(description="search the index as it was at this ISO 8601 "
                                                              "time")] = None,
               principals: Annotated[list[str] | None, Field(description="search for these principals (user:NAME, "
                                                                        "group:NAME); by default those of the "
                                                                        "caller's token")] = None,
               ) -> dict[str, Any]:
        """Hybrid (vector + full-text) search over the indexed documents. Each result has the chunk's text,
        its relevance (0-1, higher is better) and its citation: connector, doc_id, uri, title, revision,
        heading_path, start_line and end_line (1-based, inclusive), updated_at; also_in lists other places
        with the same text. The same filters and options as /search and `syncd query`."""
        from syncd.search import SearchError

        if not query.strip():
            raise ToolError("query is empty")
        check_connector(connector)
        who = acting_as(principals)
        filters = {name: value for name, value in (("path", path), ("updated_since", updated_since),
                                                   ("min_relevance", min_relevance), ("metadata", metadata),
                                                   ("as_of", as_of)) if value is not None}
        try:
            answer: dict[str, Any] = index.query(query, k, connector, dedup=dedup, principals=who, **filters)
        except (SearchError, SyncdError, ValueError) as exc:
            raise ToolError(str(exc)) from None
        return answer

    @server.tool(annotations=read_only)
    def get_document(doc_id: Annotated[str | None, Field(description="the document's id in its source (a path "
                                                                     "for files and git, a page title for wikis)")] = None,
                     uri: Annotated[str | None, Field(description="the document's uri, as search cites it")] = None,
                     connector: Annotated[str | None, Field(description="the source holding doc_id (needed when "
                                                                        "several hold that id)")] = None,
                     principals: Annotated[list[str] | None, Field(description="read as these principals "
                                                                              "(user:NAME, group:NAME); by default "
                                                                              "those of the caller's token")] = None,
                     ) -> dict[str, Any]:
        """A document's current indexed text, by doc_id or uri: its chunks in order (the text search cites),
        with the document's uri, title, revision and updated_at, and each chunk's line span and headings. A
        document the caller may not read is answered as absent."""
        from syncd.documents import AmbiguousDocument

        if (doc_id is None) == (uri is None):
            raise ToolError("give either doc_id or uri")
        check_connector(connector)
        who = acting_as(principals)
        try:
            found = index.document(doc_id=doc_id, uri=uri, connector=connector, principals=who)
        except AmbiguousDocument as exc:
            raise ToolError(str(exc)) from None
        if found is None:
            raise ToolError(f"no document with {'doc_id ' + repr(doc_id) if doc_id is not None else 'uri ' + repr(uri)}"
                            f"{' in connector ' + repr(connector) if connector else ''} is in the index")
        result: dict[str, Any] = found
        return result

    @server.tool(annotations=read_only)
    def list_sources() -> dict[str, Any]:
        """The indexed sources (connectors): name, type, state, lag_s (seconds the index may be behind the
        source), backlog (changes seen, not yet searchable), docs, chunks, last_success_at and last_error."""
        return {"sources": index.sources()}

    return server


def serve_stdio(config: Any, principals: Sequence[str] = ()) -> None:
    """`syncd mcp`: the MCP server on stdin/stdout until the client closes it. Answers through the running
    daemon when one serves this config's state folder; otherwise the model loads at the first search. Tool
    calls that name no principals search for ``principals`` (`--as`; none: ``everyone`` documents only)."""
    import anyio

    from syncd.remote import open_config

    holder: dict[str, Any] = {}

    class Lazy:
        """Opens the index at the first tool call, so the client's handshake is answered at once."""

        def __getattr__(self, name: str) -> Any:
            if "index" not in holder:
                holder["index"] = open_config(config)
            return getattr(holder["index"], name)

    server = build_server(Lazy(), connectors=lambda: [c.name for c in config.connectors], principals=principals,
                          require_principals=config.search.require_principals)
    anyio.run(server.run_stdio_async)


class AsgiBridge:
    """Serves an ASGI app (the SDK's streamable HTTP app) to a synchronous HTTP server: an event loop on a
    thread of its own runs the app's session manager; :meth:`handle` runs one request on it and returns the
    whole answer."""

    timeout = 120.0

    def __init__(self, server: Any, *, loopback: bool) -> None:
        from mcp.server.transport_security import TransportSecuritySettings

        if loopback:
            # No token on loopback: the Host and Origin checks keep a web page in the operator's browser
            # (DNS rebinding) from calling the tools.
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
        else:
            # Off loopback every request carries the bearer token, which a browser page does not have.
            security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self._server = server
        self.app = server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                              transport_security=security)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="syncd-mcp", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), or logged once it returned
            self._error = exc
            log.exception("mcp.bridge_failed")
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self._server.session_manager.run():
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=5)

    def handle(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes,
               client: tuple[str, int], server: tuple[str, int], caller: Any = None,
               ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run one request through the app for ``caller`` (whose token the HTTP server checked); its status,
        headers and body."""
        if not self._thread.is_alive():
            return 503, [("content-type", "application/json")], b'{"error": "the MCP endpoint is not running"}'
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.0",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query.encode("latin-1"),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": client, "server": server,
        }
        future = asyncio.run_coroutine_threadsafe(self._call(scope, body, caller), self._loop)
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            future.cancel()
            return 504, [("content-type", "application/json")], b'{"error": "the MCP request timed out"}'

    async def _call(self, scope: dict[str, Any], body: bytes, caller: Any
                    ) -> tuple[int, list[tuple[str, str]], bytes]:
        # The tasks that serve this request are started from this one and inherit its context: the caller.
        _CALLER.set(caller)
        done = asyncio.Event()
        sent_body = False
        status = 500
        out_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # the client is there until its answer is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out_headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return status, out_headers, b"".join(chunks)
