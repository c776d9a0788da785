"""A real MediaWiki for tests: Debian's mediawiki package with SQLite, installed into a temporary folder
with maintenance/install.php and served on 127.0.0.1 by PHP's built-in server (one per test process).

Each test takes its own custom namespace (``wiki_ns``), so tests share the wiki without seeing each
other's pages. Without the package the tests are skipped, unless SYNCD_REQUIRE_MEDIAWIKI=1 (CI), where
they fail.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest

# Debian's install location; SYNCD_MEDIAWIKI_DIR points elsewhere (another install, or none to check the skip).
MEDIAWIKI = Path(os.environ.get("SYNCD_MEDIAWIKI_DIR", "/usr/share/mediawiki"))
ADMIN = "Admin"
PASSWORD = "syncd-test-admin-password-2026"
NS_FIRST = 3000
NS_COUNT = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing() -> str | None:
    if not (MEDIAWIKI / "maintenance" / "install.php").exists():
        return f"MediaWiki is not installed ({MEDIAWIKI}/maintenance/install.php missing; apt-get install mediawiki)"
    if shutil.which("php") is None:
        return "php is not installed (apt-get install php-cli php-sqlite3 php-intl php-mbstring php-xml)"
    return None


class WikiClient:
    """An admin session on the wiki's Action API (clientlogin), for creating, editing, deleting,
    restoring and moving pages the way a user would."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.http = httpx.Client(timeout=60)
        token = self.get(action="query", meta="tokens", type="login")["query"]["tokens"]["logintoken"]
        result = self.post(action="clientlogin", username=ADMIN, password=PASSWORD, logintoken=token,
                           loginreturnurl="http://127.0.0.1/")
        assert result["clientlogin"]["status"] == "PASS", result
        self.csrf = self.get(action="query", meta="tokens")["query"]["tokens"]["csrftoken"]

    def get(self, **params: Any) -> dict[str, Any]:
        r = self.http.get(self.api_url, params={"format": "json", "formatversion": "2", **params})
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        assert "error" not in data, data
        return data

    def post(self, **params: Any) -> dict[str, Any]:
        r = self.http.post(self.api_url, data={"format": "json", "formatversion": "2", **params})
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        assert "error" not in data, data
        return data

    def edit(self, title: str, text: str) -> int:
        """Create or edit a page; returns the new revid."""
        result = self.post(action="edit", title=title, text=text, token=self.csrf, summary="test")["edit"]
        assert result["result"] == "Success", result
        return int(result.get("newrevid") or result["oldrevid"])

    def delete(self, title: str) -> None:
        self.post(action="delete", title=title, token=self.csrf, reason="test")

    def undelete(self, title: str) -> None:
        self.post(action="undelete", title=title, token=self.csrf, reason="test")

    def move(self, old: str, new: str, *, redirect: bool = True) -> None:
        params: dict[str, Any] = {"action": "move", "from": old, "to": new, "token": self.csrf, "reason": "test"}
        if not redirect:
            params["noredirect"] = "1"
        self.post(**params)

    def revid(self, title: str) -> int:
        page = self.get(action="query", titles=title, prop="info")["query"]["pages"][0]
        return int(page["lastrevid"])

    def url(self, title: str) -> str:
        page = self.get(action="query", titles=title, prop="info", inprop="url")["query"]["pages"][0]
        return str(page["canonicalurl"])

    def close(self) -> None:
        self.http.close()


@dataclass
class Wiki:
    """A running wiki: its folder, URLs and helpers."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    _ns: Iterator[int] = field(default_factory=lambda: itertools.count(NS_FIRST, 2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api.php"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "MW_CONFIG_FILE": str(self.dir / "LocalSettings.php")}

    def new_namespace(self) -> tuple[int, str]:
        """A namespace no other test uses: (id, prefix of its titles)."""
        ns = next(self._ns)
        assert ns < NS_FIRST + 2 * NS_COUNT, "out of test namespaces; raise NS_COUNT"
        return ns, f"Ns{ns}"

    def client(self) -> WikiClient:
        return WikiClient(self.api_url)

    def maintenance(self, script: str, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(["php", str(MEDIAWIKI / "maintenance" / script), *args], input=stdin,
                                capture_output=True, env=self.env, cwd=MEDIAWIKI, timeout=600, check=False)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        return result.stdout.decode(errors="replace")

    def import_pages(self, pages: dict[str, str]) -> None:
        """Create many pages at once through maintenance/importDump.php (an XML export file)."""
        parts = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">']
        for i, (title, text) in enumerate(pages.items()):
            parts.append(
                f"<page><title>{escape(title)}</title><revision><id>{i + 1}</id>"
                f"<timestamp>2026-01-01T00:00:00Z</timestamp><contributor><username>{ADMIN}</username></contributor>"
                f"<model>wikitext</model><format>text/x-wiki</format>"
                f'<text xml:space="preserve">{escape(text)}</text></revision></page>')
        parts.append("</mediawiki>")
        dump = self.dir / "import.xml"
        dump.write_text("\n".join(parts), encoding="utf-8")
        self.maintenance("importDump.php", "--no-updates", str(dump))


def _start(folder: Path) -> Wiki:
    port = _free_port()
    data = folder / "data"
    data.mkdir(parents=True)
    subprocess.run(
        ["php", "maintenance/install.php", "--dbtype", "sqlite", "--dbpath", str(data), "--dbname", "wiki",
         "--confpath", str(folder), "--server", f"http://127.0.0.1:{port}", "--scriptpath", "", "--lang", "en",
         "--skins", "Vector", "--pass", PASSWORD, "Wiki", ADMIN],
        cwd=MEDIAWIKI, capture_output=True, check=True, timeout=300)
    extra = ["", "# Test namespaces, one per test."]
    for ns in range(NS_FIRST, NS_FIRST + 2 * NS_COUNT, 2):
        extra.append(f'$wgExtraNamespaces[{ns}] = "Ns{ns}"; $wgExtraNamespaces[{ns + 1}] = "Ns{ns}_talk";')
    with open(folder / "LocalSettings.php", "a", encoding="utf-8") as fh:
        fh.write("\n".join(extra) + "\n")
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", "-t", str(MEDIAWIKI)], cwd=MEDIAWIKI,
                            env={**os.environ, "MW_CONFIG_FILE": str(folder / "LocalSettings.php")},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    wiki = Wiki(dir=folder, port=port, proc=proc)
    from conftest import wait_for

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"php -S exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            return httpx.get(wiki.api_url, params={"action": "query", "meta": "siteinfo", "format": "json"},
                             timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout=60, interval=0.1, what="the wiki to answer")
    return wiki


def _stop(wiki: Wiki) -> None:
    try:
        os.killpg(wiki.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wiki.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(wiki.proc.pid, signal.SIGKILL)
        wiki.proc.wait()


@pytest.fixture(scope="session")
def mediawiki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wiki]:
    """The session's wiki (installed and started once per test process)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("SYNCD_REQUIRE_MEDIAWIKI") == "1":
            pytest.fail(f"SYNCD_REQUIRE_MEDIAWIKI=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    wiki = _start(tmp_path_factory.mktemp("mediawiki"))
    try:
        yield wiki
    finally:
        _stop(wiki)


@pytest.fixture
def wiki_ns(mediawiki: Wiki) -> tuple[int, str]:
    """A namespace of this test's own: (id, title prefix)."""
    return mediawiki.new_namespace()


@pytest.fixture
def wiki_client(mediawiki: Wiki) -> Iterator[WikiClient]:
    client = mediawiki.client()
    yield client
    client.close()


# -- helpers shared by the wiki tests ------------------------------------------------------------------------
def sync(rt: Any, name: str = "wiki") -> Any:
    """One `syncd sync` cycle for a polled connector: poll, apply, commit the cursor after the store commit."""
    connector = rt.connectors[name]
    changes = list(connector.poll() or [])
    if any(c.kind == "rescan" for c in changes):
        summary = rt.engine.reconcile(name)
    else:
        summary = rt.engine.process({name: {c.doc_id: 1.0 for c in changes}})
    if not any(f.connector == name and not f.doc_id for f in summary.failures):
        connector.commit_cursor()
    rt.state.save()
    return summary


def indexed(rt: Any, name: str = "wiki") -> dict[str, str]:
    """doc_id -> revision, as the store holds them."""
    return {doc_id: info.revision for (conn, doc_id), info in rt.store.indexed_docs().items() if conn == name}


def wiki_pages(client: WikiClient, ns: int) -> dict[str, str]:
    """title -> latest revid of every non-redirect page in ``ns``, asked from the wiki directly."""
    out: dict[str, str] = {}
    cont: dict[str, Any] = {}
    while True:
        data = client.get(action="query", generator="allpages", gapnamespace=ns, gapfilterredir="nonredirects",
                          gaplimit="max", prop="info", **cont)
        for page in data.get("query", {}).get("pages", []):
            out[page["title"]] = str(page["lastrevid"])
        if "continue" not in data:
            return out
        cont = data["continue"]
