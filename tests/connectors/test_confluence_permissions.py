"""Who may read a Confluence page, carried into the index: space permissions and page read restrictions
(inherited by every descendant), answered by a local server in the shapes of Confluence's REST API v1
(Cloud: ``space?expand=permissions``, users named by account id; Data Center: ``space/KEY/permissions``,
users named by username), searched as principals through the real pipeline."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from pytest_httpserver import HTTPServer
from test_confluence import CONTEXT, NAME, FakeConfluence, indexed, sync
from werkzeug import Request, Response

from syncd.runtime import Runtime
from syncd.testing import HashEmbedder

# Cloud names users by account id; the connector's principal_map turns them into the organisation's names.
ACCOUNTS = {"alice": "5b10a2844c20165700ede21g", "bob": "5b10ac8d82e05b22cc7d4ef5", "carol": "62e1f0a4c8b2a1d9e3f47a10",
            "mallory": "712020:0e5f4d8c-3b1a-4c2e-9f7d-6a8b9c0d1e2f"}


class PermissionedConfluence(FakeConfluence):
    """FakeConfluence with page trees, read restrictions, space view permissions and group members."""

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        self.parent: dict[str, str] = {}
        self.restrictions: dict[str, dict[str, list[str]]] = {}  # page id -> {"users": [...], "groups": [...]}
        self.viewers: dict[str, dict[str, Any]] = {}  # space -> {"users", "groups", "anonymous"}
        self.members: dict[str, list[str]] = {}
        self.refused: set[str] = set()  # page ids whose restrictions this token may not see (403, not expanded)
        self.data_center = False  # users by username and space permissions at /space/KEY/permissions

    def add_child(self, parent: str, title: str, body: str) -> str:
        pid = self.add(self.pages[parent]["space"], title, body)
        self.parent[pid] = parent
        return pid

    def ancestors(self, pid: str) -> list[str]:
        chain: list[str] = []
        while pid in self.parent:
            pid = self.parent[pid]
            chain.insert(0, pid)
        return chain

    def _user(self, name: str) -> dict[str, Any]:
        if self.data_center:
            return {"type": "known", "username": name, "userKey": f"key-{name}", "displayName": name.title()}
        return {"type": "known", "accountId": ACCOUNTS[name], "accountType": "atlassian",
                "displayName": name.title()}

    def _array(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"results": items, "start": 0, "limit": 200, "size": len(items)}

    def _restriction(self, pid: str) -> dict[str, Any]:
        r = self.restrictions.get(pid, {})
        return {"operation": "read",
                "restrictions": {"user": self._array([self._user(u) for u in r.get("users", [])]),
                                 "group": self._array([{"type": "group", "name": g, "id": f"id-{g}"}
                                                       for g in r.get("groups", [])])},
                "_expandable": {"content": f"/rest/api/content/{pid}"},
                "_links": {"self": f"{self.base}/rest/api/content/{pid}/restriction/byOperation/read"}}

    def _json(self, page: dict[str, Any], expand: str) -> dict[str, Any]:
        out = super()._json(page, expand)
        if "ancestors" in expand:
            out["ancestors"] = [{"id": a, "type": "page", "status": "current", "title": self.pages[a]["title"]}
                                for a in self.ancestors(page["id"])]
        if "restrictions.read.restrictions.user" in expand:
            out["restrictions"] = ({"read": {"operation": "read", "_expandable": {"restrictions": ""}}}
                                   if page["id"] in self.refused else {"read": self._restriction(page["id"])})
        return out

    def _space(self, key: str) -> dict[str, Any]:
        v = self.viewers.get(key, {})
        read = {"operation": "read", "targetType": "space"}
        return {"id": 98306, "key": key, "name": key, "type": "global", "permissions": [
            {"operation": {"operation": "administer", "targetType": "space"}, "anonymousAccess": False,
             "unlicensedAccess": False, "subjects": {"group": self._array([{"type": "group", "name": "admins"}])}},
            {"operation": read, "anonymousAccess": bool(v.get("anonymous")), "unlicensedAccess": False,
             "subjects": {"user": self._array([self._user(u) for u in v.get("users", [])]),
                          "group": self._array([{"type": "group", "name": g} for g in v.get("groups", [])])}}]}

    def _dc_space_permissions(self, key: str) -> list[dict[str, Any]]:
        v = self.viewers.get(key, {})
        read = {"targetType": "space", "operationKey": "read"}
        out: list[dict[str, Any]] = [{"operation": {"targetType": "space", "operationKey": "administer"},
                                      "subject": {"type": "group", "name": "admins", "displayName": "admins"},
                                      "spaceKey": key}]
        out += [{"operation": read, "subject": {"type": "group", "name": g, "displayName": g}, "spaceKey": key}
                for g in v.get("groups", [])]
        out += [{"operation": read, "subject": {**self._user(u), "type": "user"}, "spaceKey": key}
                for u in v.get("users", [])]
        if v.get("anonymous"):
            out.append({"operation": read, "subject": {"type": "anonymous", "displayName": "Anonymous"},
                        "spaceKey": key})
        return out

    def handle(self, request: Request) -> Response:
        api = request.path[len(CONTEXT):]
        ok = request.headers.get("Authorization") == "Bearer test-token"

        def answer(data: Any, status: int = 200) -> Response:
            self.log.append(f"{request.path}?{urllib.parse.urlencode(dict(request.args))}")
            return Response(json.dumps(data), status=status, content_type="application/json")

        if ok and (m := re.fullmatch(r"/rest/api/content/(\d+)/restriction/byOperation/read", api)):
            if m.group(1) in self.refused:
                return answer({"statusCode": 403, "message": "Not permitted to view the restrictions"}, 403)
            return answer(self._restriction(m.group(1)))
        if ok and (m := re.fullmatch(r"/rest/api/space/([A-Z]+)", api)):
            space = self._space(m.group(1))
            if self.data_center or "permissions" not in request.args.get("expand", ""):
                del space["permissions"]
            return answer(space)
        if ok and (m := re.fullmatch(r"/rest/api/space/([A-Z]+)/permissions", api)):
            if not self.data_center:
                return answer({"statusCode": 404, "message": "null for uri"}, 404)
            return answer(self._dc_space_permissions(m.group(1)))
        # Members of a group: Data Center names it in the path, Cloud (whose path form is gone) in a parameter.
        group = None
        if ok and (m := re.fullmatch(r"/rest/api/group/([^/]+)/member", api)):
            if not self.data_center:
                return answer({"statusCode": 404, "message": "null for uri"}, 404)
            group = urllib.parse.unquote(m.group(1))
        elif ok and api == "/rest/api/group/member" and not self.data_center:
            group = request.args.get("name", "")
        if group is not None:
            users = [self._user(u) for u in self.members.get(group, [])]
            return answer({**self._array(users), "_links": {"base": self.base}})
        return super().handle(request)


@pytest.fixture
def confluence(httpserver: HTTPServer) -> PermissionedConfluence:
    fake = PermissionedConfluence(httpserver)
    httpserver.expect_request(re.compile("^/")).respond_with_handler(fake.handle)
    return fake


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def runtime(tmp_path: Path, confluence: PermissionedConfluence, make_runtime: Any, embedder: HashEmbedder,
            monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("TEST_CONFLUENCE_TOKEN", "test-token")
    config = write_config(tmp_path, [{
        "name": NAME, "type": "confluence", "base_url": confluence.base, "spaces": ["DOC"],
        "token_env": "TEST_CONFLUENCE_TOKEN", "poll_interval": "1s", "reconcile_interval": "1h",
        "page_size": 3, "request_rate": 0, "max_retries": 1, "max_backoff": "10ms",
        "principal_map": {f"user:{account}": f"user:{name}" for name, account in ACCOUNTS.items()}}])
    rt: Runtime = make_runtime(config, embedder)
    return rt


def acls(rt: Runtime) -> dict[str, tuple[str, ...]]:
    """doc id -> the ACL its rows carry (every chunk of a page carries the same)."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for row in rt.store.scan(["doc_id", "acl"]).to_pylist():
        out.setdefault(row["doc_id"], set()).add(tuple(row["acl"] or ()))
    assert all(len(v) == 1 for v in out.values()), out
    return {d: next(iter(v)) for d, v in out.items()}


def finds(rt: Runtime, embedder: HashEmbedder, principals: list[str] | None) -> set[str]:
    """The pages a search for the tree's common words returns to a caller holding ``principals``."""
    text = "kestrel handbook"
    vec = HashEmbedder().encode([text])[0]  # the same vectors; the index's embedder counts only what it indexed
    return {r["doc_id"] for r in rt.store.search(vec, text, k=50, principals=principals)}


def tree(confluence: PermissionedConfluence) -> dict[str, str]:
    """Space DOC viewable by groups staff and hr; HR restricted to group hr, its child (no restriction of
    its own) inherits it; Memo restricted to alice alone; Audit restricted to group auditors, which may not
    view the space as a group: only those of its members who may (bob, not mallory) may read it."""
    confluence.viewers["DOC"] = {"groups": ["staff", "hr"]}
    confluence.members.update({"staff": ["alice", "bob"], "hr": ["carol"], "auditors": ["bob", "mallory"]})
    pages = {"canteen": confluence.add("DOC", "Canteen", "<p>The kestrel handbook of the canteen menu.</p>")}
    pages["hr"] = confluence.add("DOC", "HR", "<p>The kestrel handbook of salary bands.</p>")
    pages["child"] = confluence.add_child(pages["hr"], "Bands 2027", "<p>The kestrel handbook of next year's bands.</p>")
    pages["memo"] = confluence.add("DOC", "Memo", "<p>The kestrel handbook memo for alice.</p>")
    pages["audit"] = confluence.add("DOC", "Audit", "<p>The kestrel handbook audit findings.</p>")
    confluence.restrictions[pages["hr"]] = {"groups": ["hr"]}
    confluence.restrictions[pages["memo"]] = {"users": ["alice"]}
    confluence.restrictions[pages["audit"]] = {"groups": ["auditors"]}
    return pages


@pytest.mark.parametrize("shape", ["cloud", "data-center"])
def test_a_page_restricted_to_a_group_and_its_child_are_searchable_by_that_group_alone(
        runtime: Runtime, confluence: PermissionedConfluence, embedder: HashEmbedder, shape: str) -> None:
    """The ACL of every page is the space's viewers narrowed by each restriction on the way from the root:
    a group restriction (and the child inheriting it), a user restriction, a restriction to a group that
    may not view the space (only its members who may)."""
    confluence.data_center = shape == "data-center"
    p = tree(confluence)
    summary = sync(runtime)
    assert not summary.failures and indexed(runtime) == confluence.current("DOC")
    assert acls(runtime) == {p["canteen"]: ("group:hr", "group:staff"), p["hr"]: ("group:hr",),
                             p["child"]: ("group:hr",), p["memo"]: ("user:alice",), p["audit"]: ("user:bob",)}
    assert finds(runtime, embedder, ["group:hr"]) == {p["canteen"], p["hr"], p["child"]}
    assert finds(runtime, embedder, ["user:carol", "group:hr"]) == {p["canteen"], p["hr"], p["child"]}
    assert finds(runtime, embedder, ["user:alice", "group:staff"]) == {p["canteen"], p["memo"]}
    assert finds(runtime, embedder, ["user:bob", "group:staff"]) == {p["canteen"], p["audit"]}
    assert finds(runtime, embedder, ["group:staff"]) == {p["canteen"]}
    assert finds(runtime, embedder, None) == set()  # the space is not open to anonymous users
    assert finds(runtime, embedder, ["user:mallory", "group:contractors"]) == set()


def test_a_lifted_restriction_reaches_every_space_viewer_at_the_next_poll_with_nothing_embedded(
        runtime: Runtime, confluence: PermissionedConfluence, embedder: HashEmbedder) -> None:
    """Restrictions change no page version; the next poll still finds the pages whose readers changed and
    rewrites their rows' ACL: a lifted restriction (the page and its child), a new one (a revocation)."""
    p = tree(confluence)
    sync(runtime)
    assert sync(runtime).docs_permissions == 0  # an incremental poll with nothing changed
    embedded = embedder.embedded
    del confluence.restrictions[p["hr"]]
    confluence.restrictions[p["canteen"]] = {"groups": ["hr"]}
    summary = sync(runtime)
    assert summary.docs_permissions == 3 and summary.chunks_embedded == 0 and embedder.embedded == embedded
    assert not summary.failures
    assert acls(runtime)[p["child"]] == acls(runtime)[p["hr"]] == ("group:hr", "group:staff")
    assert finds(runtime, embedder, ["group:staff"]) == {p["hr"], p["child"]}
    assert p["canteen"] in finds(runtime, embedder, ["group:hr"])


def test_a_space_permission_change_rewrites_the_acl_of_its_pages_at_the_next_poll(
        runtime: Runtime, confluence: PermissionedConfluence, embedder: HashEmbedder) -> None:
    """Opening the space to anonymous users makes its unrestricted pages `everyone`'s (restricted ones keep
    their restriction); taking group hr off the space's viewers takes it off every page, nothing embedded."""
    p = tree(confluence)
    sync(runtime)
    embedded = embedder.embedded
    confluence.viewers["DOC"]["anonymous"] = True
    summary = sync(runtime)
    assert summary.chunks_embedded == 0 and summary.docs_permissions == 2 and embedder.embedded == embedded
    assert acls(runtime)[p["canteen"]] == ("everyone",)
    assert acls(runtime)[p["audit"]] == ("group:auditors",)  # no longer narrowed by the space
    assert acls(runtime)[p["hr"]] == ("group:hr",)
    assert acls(runtime)[p["memo"]] == ("user:alice",)
    assert finds(runtime, embedder, None) == {p["canteen"]}
    confluence.viewers["DOC"] = {"groups": ["staff"]}
    summary = sync(runtime)
    assert summary.chunks_embedded == 0 and embedder.embedded == embedded
    # hr may no longer view the space: its pages are left to those of hr's members who are staff (none).
    assert acls(runtime)[p["canteen"]] == ("group:staff",)
    assert acls(runtime)[p["hr"]] == acls(runtime)[p["child"]] == ()
    assert finds(runtime, embedder, ["user:carol", "group:hr"]) == set()


def test_deny_by_default_when_the_restriction_endpoint_fails(
        runtime: Runtime, confluence: PermissionedConfluence, embedder: HashEmbedder) -> None:
    """A page whose read restrictions the token may not see (403), and its descendants, are stored readable
    by nobody with the reason in /status's undetermined list; once the endpoint answers, the next poll
    gives them their ACL. A space whose permissions cannot be read denies all of its pages the same way."""
    p = tree(confluence)
    confluence.refused.add(p["hr"])
    summary = sync(runtime)
    assert indexed(runtime) == confluence.current("DOC")  # indexed, but for nobody
    assert acls(runtime)[p["hr"]] == acls(runtime)[p["child"]] == ()
    assert acls(runtime)[p["canteen"]] == ("group:hr", "group:staff")
    assert summary.docs_added == 5
    unknown = runtime.engine.acl_unknown[NAME]
    assert set(unknown) == {p["hr"], p["child"]}
    assert all("read restrictions" in why and "403" in why for why in unknown.values()), unknown
    assert finds(runtime, embedder, ["group:hr"]) == {p["canteen"]}

    confluence.refused.clear()
    summary = sync(runtime)
    assert summary.docs_permissions == 2 and summary.chunks_embedded == 0
    assert acls(runtime)[p["hr"]] == ("group:hr",) and not runtime.engine.acl_unknown[NAME]

    confluence.viewers.pop("DOC")  # the answer grants nobody: the token cannot see who may view the space
    summary = sync(runtime)
    assert set(acls(runtime).values()) == {()} and set(runtime.engine.acl_unknown[NAME]) == set(p.values())
    assert all("space DOC" in why for why in runtime.engine.acl_unknown[NAME].values())
    assert finds(runtime, embedder, ["group:hr", "group:staff", "user:alice"]) == set()


def test_a_configured_acl_replaces_what_confluence_says_and_nothing_is_asked_about_permissions(
        tmp_path: Path, confluence: PermissionedConfluence, make_runtime: Any, embedder: HashEmbedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`acl = [...]` on the connector: every page carries it, and no restriction or space permission is read."""
    monkeypatch.setenv("TEST_CONFLUENCE_TOKEN", "test-token")
    config = write_config(tmp_path, [{
        "name": NAME, "type": "confluence", "base_url": confluence.base, "spaces": ["DOC"],
        "token_env": "TEST_CONFLUENCE_TOKEN", "request_rate": 0, "acl": ["group:eng"], "acl_add": ["user:ops"]}])
    rt = make_runtime(config, embedder)
    p = tree(confluence)
    sync(rt)
    assert set(acls(rt)) == set(p.values()) and set(acls(rt).values()) == {("group:eng", "user:ops")}
    assert not any("/restriction" in e or "/rest/api/space/DOC" in e or "/group/" in e for e in confluence.log)
