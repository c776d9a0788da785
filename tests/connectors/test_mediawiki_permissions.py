"""Who may read a wiki page, as the real MediaWiki says it ($wgGroupPermissions), carried into the index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for, write_config
from mediawiki_server import Wiki, WikiClient, indexed, sync, wiki_pages

from syncd.testing import HashEmbedder

NAME = "wiki"
RESTRICTED = """
# test_mediawiki_permissions: reading only for the groups staff and sysop.
$wgGroupPermissions['*']['read'] = false;
$wgGroupPermissions['user']['read'] = false;
$wgGroupPermissions['staff']['read'] = true;
$wgGroupPermissions['sysop']['read'] = true;
"""
OPENED = "$wgGroupPermissions['*']['read'] = true;\n"


@pytest.fixture
def settings(mediawiki: Wiki) -> Iterator[Path]:
    """The wiki's LocalSettings.php, put back as it was after the test (the wiki is this process's)."""
    path = mediawiki.dir / "LocalSettings.php"
    before = path.read_text()
    yield path
    path.write_text(before)

    def readable() -> bool:
        answer = httpx.get(mediawiki.api_url, params={"action": "query", "titles": "Main Page", "format": "json"})
        return "error" not in answer.json()

    wait_for(readable, timeout=30, interval=0.5, what="the wiki's settings as they were")


@pytest.mark.mediawiki
def test_a_wiki_only_some_groups_may_read_is_searchable_by_those_groups_alone(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient, settings: Path,
        make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading restricted to `staff` and `sysop`: every page is stored readable by exactly those groups, a
    search finds it as one of them and not as anyone else. Opening reading to everyone rewrites the pages'
    ACL at the next full pass, with nothing embedded."""
    ns, p = wiki_ns
    out = mediawiki.maintenance("createBotPassword.php", "--appid", f"syncdacl{ns}", "--grants", "basic", "Admin")
    match = re.search(r"password:'([^']+)'", out)
    assert match, out
    monkeypatch.setenv("TEST_WIKI_USER", f"Admin@syncdacl{ns}")
    monkeypatch.setenv("TEST_WIKI_PASSWORD", match.group(1))
    wiki_client.edit(f"{p}:Salaries", "The salary bands of the staff are reviewed every spring.")
    wiki_client.edit(f"{p}:Rota", "The on-call rota of the staff changes every monday.")
    settings.write_text(settings.read_text() + RESTRICTED)
    # Without a login the wiki now refuses to show the page (once PHP has read the settings again).
    def refused() -> bool:
        answer = httpx.get(mediawiki.api_url, params={"action": "query", "titles": f"{p}:Rota", "prop": "revisions",
                                                      "rvprop": "content", "format": "json", "formatversion": "2"})
        return bool(answer.json().get("error", {}).get("code") == "readapidenied")

    wait_for(refused, timeout=30, interval=0.5, what="the wiki to refuse anonymous reading")

    config = write_config(tmp_path, [{"name": NAME, "type": "mediawiki", "api_url": mediawiki.api_url,
                                      "namespaces": [ns], "request_rate": 0, "username_env": "TEST_WIKI_USER",
                                      "password_env": "TEST_WIKI_PASSWORD"}])
    embedder = HashEmbedder()
    rt = make_runtime(config, embedder)
    sync(rt)
    assert indexed(rt) == wiki_pages(wiki_client, ns)
    acls = {tuple(a) for a in rt.store.scan(["acl"]).column("acl").to_pylist()}
    assert acls == {("group:staff", "group:sysop")}
    vec = embedder.encode(["salary bands reviewed every spring"])[0]

    def found(principals: list[str] | None) -> set[str]:
        return {r["doc_id"] for r in rt.store.search(vec, "salary bands", principals=principals)}

    assert f"{p}:Salaries" in found(["group:staff"]) and f"{p}:Salaries" in found(["user:Admin", "group:sysop"])
    for outsider in (None, ["group:user"], ["user:mallory", "group:contractors"]):
        assert found(outsider) == set(), outsider

    settings.write_text(settings.read_text() + OPENED)
    wait_for(lambda: not refused(), timeout=30, interval=0.5, what="the wiki to let anyone read")
    embedded = embedder.embedded
    summary = rt.engine.reconcile(NAME)
    assert summary.docs_permissions == 2 and summary.chunks_embedded == 0 and embedder.embedded == embedded
    acls = {tuple(a) for a in rt.store.scan(["acl"]).column("acl").to_pylist()}
    assert acls == {("everyone", "group:staff", "group:sysop")}
    assert f"{p}:Salaries" in found(None)
