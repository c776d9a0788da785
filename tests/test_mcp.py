"""The MCP server, tried with the official SDK's own client: the daemon's /mcp over streamable HTTP (on
loopback without a token, off loopback only with it) and `syncd mcp` over stdio (through a running daemon,
and on its own with the real model when none runs)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config

from syncd import config as config_mod
from syncd.testing import HashEmbedder

TOOLS = {"search", "get_document", "list_sources"}
CITATION = ("connector", "doc_id", "uri", "title", "revision", "heading_path", "start_line", "end_line", "text")
TOKEN_ENV = "SYNCD_TEST_MCP_TOKEN"


def write_docs(docs: Path) -> None:
    (docs / "elephants.md").write_text("# Zoo\n\nIntro line.\n\n## Elephants\n\nThe purple elephants dance at noon "
                                       "near the fountain.\n")
    (docs / "failover.md").write_text("# Operations\n\nThe database fails over to the standby in the second "
                                      "data centre.\n")


@contextmanager
def service(cfg: Path) -> Iterator[Any]:
    from syncd.service import Service

    svc = Service(config_mod.load(cfg), embedder=HashEmbedder())
    svc.start()
    loop = threading.Thread(target=svc.run_forever, daemon=True)
    loop.start()
    try:
        wait_for(svc.ready, what="ready")
        yield svc
    finally:
        svc.stopping.set()
        loop.join(timeout=60)
        assert not loop.is_alive()


def http_search(svc: Any, q: str, k: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    url = svc.http.url.replace("0.0.0.0", "127.0.0.1") + f"/search?q={quote(q)}&k={k}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def query_vectors(svc: Any) -> float:
    """The daemon's count of queries it embedded or found in its cache (every search it answered)."""
    r = svc.metrics.registry
    return sum(r.get_sample_value("syncd_query_vectors_total", {"source": s}) or 0.0 for s in ("model", "cache"))


async def exercise(client: Any) -> dict[str, Any]:
    """What a desktop agent does: list the tools, search, read the cited document, list the sources."""
    tools = {t.name for t in (await client.list_tools()).tools}
    search = await client.call_tool("search", {"query": "purple elephants", "k": 2})
    assert not search.is_error, search.content
    top = search.structured_content["results"][0]
    by_id = await client.call_tool("get_document", {"doc_id": top["doc_id"], "connector": top["connector"]})
    by_uri = await client.call_tool("get_document", {"uri": top["uri"]})
    sources = await client.call_tool("list_sources", {})
    unknown = await client.call_tool("search", {"query": "x", "connector": "nope"})
    missing = await client.call_tool("get_document", {"doc_id": "no-such.md"})
    filtered = await client.call_tool("search", {"query": "purple elephants", "path": "fail*", "dedup": False,
                                                 "min_relevance": 0})
    bad_time = await client.call_tool("search", {"query": "x", "updated_since": "yesterday"})
    return {"tools": tools, "search": search.structured_content, "by_id": by_id.structured_content,
            "by_uri": by_uri.structured_content, "sources": sources.structured_content,
            "unknown": (unknown.is_error, unknown.content[0].text), "missing": (missing.is_error, missing.content[0].text),
            "filtered": filtered.structured_content, "bad_time": (bad_time.is_error, bad_time.content[0].text)}


def unversioned(result: dict[str, Any]) -> dict[str, Any]:
    """A search answer without the table version it came from: a maintenance commit between two searches
    moves the version, not the results."""
    return {**{k: v for k, v in result.items() if k != "table_version"},
            "results": [{k: v for k, v in r.items() if k != "table_version"} for r in result["results"]]}


def check(seen: dict[str, Any], expected_search: dict[str, Any]) -> None:
    assert seen["tools"] == TOOLS
    assert unversioned(seen["search"]) == unversioned(expected_search)  # the answer of /search, citations and all
    top = seen["search"]["results"][0]
    assert top["doc_id"] == "elephants.md" and all(key in top for key in CITATION)
    assert top["heading_path"] == ["Zoo", "Elephants"] and top["start_line"] == 7
    doc = seen["by_id"]
    assert doc == seen["by_uri"]
    assert (doc["doc_id"], doc["connector"], doc["uri"]) == (top["doc_id"], top["connector"], top["uri"])
    assert doc["text"] == "Zoo\n\nIntro line.\n\nElephants\n\nThe purple elephants dance at noon near the fountain."
    assert [c["start_line"] for c in doc["chunks"]] == [3, 7]
    (source,) = seen["sources"]["sources"]
    assert (source["name"], source["type"], source["docs"]) == ("docs", "filesystem", 2)
    assert "lag_s" in source and "last_success_at" in source
    assert seen["unknown"][0] and "no connector named 'nope'" in seen["unknown"][1]
    assert seen["missing"][0] and "no-such.md" in seen["missing"][1]
    # The search options pass through: a path glob (with no relevance floor) keeps only the other document;
    # a bad time is named.
    assert {r["doc_id"] for r in seen["filtered"]["results"]} == {"failover.md"}
    assert seen["bad_time"][0] and "updated_since" in seen["bad_time"][1] and "yesterday" in seen["bad_time"][1]


def test_mcp_over_http_on_loopback(tmp_path: Path, docs: Path) -> None:
    """The SDK's client on the daemon's /mcp: tools listed, search with citations equal to /search,
    documents by id and by uri, sources with their lag; each tool search is a daemon query."""
    from mcp import Client

    write_docs(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with service(cfg) as svc:
        expected = http_search(svc, "purple elephants", 2)
        before = query_vectors(svc)

        async def run() -> dict[str, Any]:
            async with Client(svc.http.url + "/mcp") as client:
                return await exercise(client)

        seen = asyncio.run(run())
        check(seen, expected)
        assert query_vectors(svc) == before + 2  # the two searches that ran (not the refused ones)


def test_mcp_over_http_off_loopback_needs_the_token(tmp_path: Path, docs: Path, monkeypatch: Any) -> None:
    """Bound off loopback, /mcp refuses a client without the bearer token (401) and serves one with it."""
    import httpx2
    from mcp import Client

    write_docs(docs)
    monkeypatch.setenv(TOKEN_ENV, "mcp-test-token")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0", "token_env": TOKEN_ENV})
    with service(cfg) as svc:
        url = svc.http.url.replace("0.0.0.0", "127.0.0.1") + "/mcp"
        auth = {"Authorization": "Bearer mcp-test-token"}
        expected = http_search(svc, "purple elephants", 2, auth)

        async def without() -> None:
            async with Client(url) as client:
                await client.list_tools()

        with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the refusal in its task groups; the raw 401 below
            asyncio.run(without())
        raw = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers={"Accept": "application/json, text/event-stream"})
        assert raw.status_code == 401

        async def with_token() -> dict[str, Any]:
            async with httpx2.AsyncClient(headers=auth, timeout=30) as http, Client(
                    _transport(url, http)) as client:
                return await exercise(client)

        check(asyncio.run(with_token()), expected)


def _transport(url: str, http: Any) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=http)


def test_mcp_get_and_delete_are_refused_as_stateless(tmp_path: Path, docs: Path) -> None:
    """The endpoint is stateless: no server-to-client stream (GET) and no session to end (DELETE), 405."""
    import httpx2

    write_docs(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with service(cfg) as svc:
        for method in ("GET", "DELETE"):
            answer = httpx2.request(method, svc.http.url + "/mcp", headers={"Accept": "text/event-stream"})
            assert answer.status_code == 405 and answer.headers["allow"] == "POST"


def _stdio(cfg: Path, *extra: str) -> Any:
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=["-m", "syncd", "mcp", "--config", str(cfg), *extra],
                                 env=dict(os.environ), cwd=str(cfg.parent))


def test_syncd_mcp_over_stdio_answers_through_the_running_daemon(tmp_path: Path, docs: Path) -> None:
    """`syncd mcp` with a daemon running: the tools answer from the daemon (its query counter moves), the
    same answers as its /search."""
    from mcp import Client

    write_docs(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with service(cfg) as svc:
        expected = http_search(svc, "purple elephants", 2)
        before = query_vectors(svc)

        async def run() -> dict[str, Any]:
            async with Client(_stdio(cfg)) as client:
                return await exercise(client)

        seen = asyncio.run(run())
        check(seen, expected)
        assert query_vectors(svc) == before + 2  # the two searches that ran (not the refused ones)


@pytest.mark.e2e
def test_syncd_mcp_over_stdio_without_a_daemon_uses_the_real_model(tmp_path: Path, docs: Path) -> None:
    """No daemon: `syncd mcp` opens the store and loads the packaged model itself; its search finds the
    passage by meaning and cites it, like `syncd query --json` does."""
    from mcp import Client

    write_docs(docs)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    sync = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "sync", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert sync.returncode == 0, sync.stderr[-3000:]
    query = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "query", "--json", "-k", "2",
                            "purple elephants"], capture_output=True, text=True, timeout=600)
    assert query.returncode == 0, query.stderr[-3000:]

    async def run() -> dict[str, Any]:
        async with Client(_stdio(cfg)) as client:
            return await exercise(client)

    check(asyncio.run(run()), json.loads(query.stdout))


def test_mcp_tools_answer_for_the_callers_token_and_a_token_cannot_act_as_someone_else(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Over /mcp the tools search and read for the bearer token's principals, exactly as /search filters: a
    document readable by group:hr is found and served to the hr token, never to alice's token (not even when
    it names group:hr: refused as /search refuses it), and to the trusted backend only when it names group:hr."""
    import httpx2
    from mcp import Client

    for name, text in (("public", "The purple elephants dance at noon."),
                       ("hr", "The purple elephants salary bands are confidential.")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.md").write_text(f"# {name}\n\n{text}\n")
    monkeypatch.setenv("SYNCD_TEST_MCP_TRUSTED", "trusted-token")
    monkeypatch.setenv("SYNCD_TEST_MCP_ALICE", "alice-token")
    monkeypatch.setenv("SYNCD_TEST_MCP_HR", "hr-token")
    cfg = write_config(tmp_path, [{"name": "public", "type": "filesystem", "path": str(tmp_path / "public"),
                                   "acl": ["everyone"]},
                                  {"name": "hr", "type": "filesystem", "path": str(tmp_path / "hr"),
                                   "acl": ["group:hr"]}],
                       http={"token_env": "SYNCD_TEST_MCP_TRUSTED",
                             "tokens": [{"token_env": "SYNCD_TEST_MCP_ALICE", "principals": ["user:alice"]},
                                        {"token_env": "SYNCD_TEST_MCP_HR", "principals": ["user:hana", "group:hr"]}]})

    async def as_token(url: str, token: str, principals: list[str] | None = None) -> dict[str, Any]:
        extra = {} if principals is None else {"principals": principals}
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http, Client(
                _transport(url, http)) as client:
            found = await client.call_tool("search", {"query": "purple elephants", "k": 5, **extra})
            doc = await client.call_tool("get_document", {"doc_id": "hr.md", "connector": "hr", **extra})
        return {"search": (found.is_error, found.structured_content if not found.is_error else found.content[0].text),
                "doc": (doc.is_error, doc.structured_content if not doc.is_error else doc.content[0].text)}

    def connectors(seen: dict[str, Any]) -> set[str]:
        assert not seen["search"][0], seen["search"]
        return {r["connector"] for r in seen["search"][1]["results"]}

    with service(cfg) as svc:
        url = svc.http.url + "/mcp"
        hr = asyncio.run(as_token(url, "hr-token"))
        assert connectors(hr) == {"public", "hr"}
        assert not hr["doc"][0] and "salary bands" in hr["doc"][1]["text"]

        alice = asyncio.run(as_token(url, "alice-token"))
        assert connectors(alice) == {"public"}
        assert alice["doc"][0] and "hr.md" in alice["doc"][1]  # answered as absent

        posing = asyncio.run(as_token(url, "alice-token", ["group:hr"]))
        for refused in (posing["search"], posing["doc"]):
            assert refused[0] and refused[1].endswith(": this token may not act as group:hr"), refused

        assert connectors(asyncio.run(as_token(url, "trusted-token"))) == {"public"}
        backend = asyncio.run(as_token(url, "trusted-token", ["user:hana", "group:hr"]))
        assert connectors(backend) == {"public", "hr"} and not backend["doc"][0]

        bad = asyncio.run(as_token(url, "trusted-token", ["hr"]))
        assert bad["search"][0] and "'hr'" in bad["search"][1]


def test_syncd_mcp_over_stdio_answers_for_whom_the_operator_names(tmp_path: Path, monkeypatch: Any) -> None:
    """Over stdio there is no token: the operator, who runs `syncd mcp` with the config, says whom the tools
    answer for. `--as group:hr` finds the document only group:hr may read (through the running daemon); without
    it only everyone's documents; a call's own principals replace the default."""
    from mcp import Client

    for name, text in (("public", "The purple elephants dance at noon."),
                       ("hr", "The purple elephants salary bands are confidential.")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.md").write_text(f"# {name}\n\n{text}\n")
    monkeypatch.setenv(TOKEN_ENV, "stdio-trusted-token")
    cfg = write_config(tmp_path, [{"name": n, "type": "filesystem", "path": str(tmp_path / n), "acl": a}
                                  for n, a in (("public", ["everyone"]), ("hr", ["group:hr"]))],
                       http={"token_env": TOKEN_ENV})

    async def connectors(*extra: str, principals: list[str] | None = None) -> set[str]:
        args = {"query": "purple elephants", "k": 5, **({"principals": principals} if principals else {})}
        async with Client(_stdio(cfg, *extra)) as client:
            found = await client.call_tool("search", args)
        assert not found.is_error, found.content
        return {r["connector"] for r in found.structured_content["results"]}

    bad = subprocess.run([sys.executable, "-m", "syncd", "mcp", "--config", str(cfg), "--as", "hr"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "'hr'" in bad.stderr, bad.stderr
    with service(cfg):
        assert asyncio.run(connectors("--as", "group:hr")) == {"public", "hr"}
        assert asyncio.run(connectors()) == {"public"}
        assert asyncio.run(connectors("--as", "group:hr", principals=["user:someone"])) == {"public"}
        assert asyncio.run(connectors(principals=["group:hr"])) == {"public", "hr"}
