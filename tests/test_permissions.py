"""Permission-aware retrieval: the filter inside the search, who may act as whom over HTTP, what /status
shows, deny by default. (Real files with owners, groups and POSIX ACLs: test_permissions_fs.py.)"""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import acl as acl_mod
from syncd import config as config_mod
from syncd.store import Store, chunk_id, doc_key
from syncd.testing import HashEmbedder
from tests.conftest import wait_for, write_config
from tests.gitrepo import GitRepo

DIM = 384


def _rows(store: Store, docs: list[tuple[str, list[str]]], text: str = "quarterly report figures") -> Any:
    emb = HashEmbedder()
    now = dt.datetime.now(dt.UTC)
    vectors = emb.encode([f"{text} {doc_id}" for doc_id, _ in docs])
    return store.make_rows([{
        "chunk_id": chunk_id("c", doc_id, 0), "doc_key": doc_key("c", doc_id), "doc_id": doc_id, "connector": "c",
        "text": f"{text} {doc_id}", "vector": vec, "uri": doc_id, "title": doc_id, "revision": "r", "chunk_index": 0,
        "heading_path": [], "start_line": 1, "end_line": 1, "content_hash": f"{i:032x}", "updated_at": now,
        "doc_identity": "r", "modified_at": None, "metadata": "{}", "acl": acl,
    } for i, ((doc_id, acl), vec) in enumerate(zip(docs, vectors, strict=True))])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "index"), tmp_path / "state", base_table="chunks", dim=DIM, signature="t")
    s.open()
    yield s


def _search(store: Store, principals: list[str] | None, k: int = 10, text: str = "quarterly report figures"
            ) -> list[str]:
    vec = HashEmbedder().encode([text])[0]
    return [r["doc_id"] for r in store.search(vec, text, k=k, principals=principals)]


@pytest.mark.parametrize("indexed", [False, True], ids=["flat", "indexed"])
def test_a_user_who_may_read_3_of_1000_matching_documents_gets_those_3_first(store: Store, indexed: bool) -> None:
    docs = [(f"doc{i:04d}", ["user:alice"] if i in (17, 500, 999) else ["group:finance"]) for i in range(1000)]
    store.apply(_rows(store, docs), [doc_key("c", d) for d, _ in docs])
    if indexed:
        store.maintain(retention_s=600, ann_min_rows=1000)
        assert {"acl", "vector", "text"} <= set(store.stats()["indexes"])
    assert sorted(_search(store, ["user:alice"])) == ["doc0017", "doc0500", "doc0999"]
    assert len(_search(store, ["group:finance"], k=10)) == 10
    assert _search(store, None) == [] == _search(store, ["user:bob"])


def test_deny_entries_and_everyone(store: Store) -> None:
    docs = [("open", ["everyone"]), ("not-bob", ["!user:bob", "everyone"]), ("eng", ["!user:bob", "group:eng"]),
            ("nobody", []), ("never-computed", None)]
    store.apply(_rows(store, docs), [doc_key("c", d) for d, _ in docs])  # type: ignore[misc]
    assert set(_search(store, None)) == {"open", "not-bob"}
    assert set(_search(store, ["user:alice", "group:eng"])) == {"open", "not-bob", "eng"}
    assert set(_search(store, ["user:bob", "group:eng"])) == {"open"}
    for doc_id, acl in docs:
        for principals in ([], ["user:alice", "group:eng"], ["user:bob", "group:eng"]):
            assert acl_mod.readable(acl, principals) == (doc_id in _search(store, principals)), (doc_id, principals)


_names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_names, other=_names)
def test_principal_names_with_quotes_and_odd_characters_are_escaped_in_the_filter(
        store: Store, name: str, other: str) -> None:
    mine, theirs = f"group:{name}", f"group:{other}"
    docs = [("mine", [mine]), ("theirs", [theirs])]
    store.apply(_rows(store, docs), [doc_key("c", d) for d, _ in docs])
    assert _search(store, [mine]) == (["mine"] if mine != theirs else ["mine", "theirs"]) or (
        mine == theirs and set(_search(store, [mine])) == {"mine", "theirs"})
    if mine != theirs:
        assert _search(store, [mine]) == ["mine"]
        assert "mine" not in _search(store, [theirs])


@pytest.mark.parametrize("bad", ["alice", "user:", "role:admin", "user:a\x01b", "!user:alice", "", "group:" + "x" * 300])
def test_bad_principal_strings_are_refused_with_a_message_naming_them(bad: str) -> None:
    with pytest.raises(acl_mod.PrincipalError, match="principal"):
        acl_mod.check_principal(bad)


# -- HTTP ------------------------------------------------------------------------------------------------

TRUSTED, ALICE_TOKEN = "trusted-backend-token", "alice-personal-token"  # noqa: S105 - test values


@contextmanager
def service_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections: Any) -> Iterator[Any]:
    from syncd.service import Service

    for name in ("public", "hr", "alice"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}-notes.md").write_text(f"# {name} notes\n\nquarterly report figures for {name}\n")
    connectors = [{"name": n, "type": "filesystem", "path": str(tmp_path / n), "acl": a}
                  for n, a in (("public", ["everyone"]), ("hr", ["group:hr"]), ("alice", ["user:alice"]))]
    monkeypatch.setenv("SYNCD_TEST_TRUSTED", TRUSTED)
    monkeypatch.setenv("SYNCD_TEST_ALICE", ALICE_TOKEN)
    http = {"token_env": "SYNCD_TEST_TRUSTED",
            "tokens": [{"token_env": "SYNCD_TEST_ALICE", "principals": ["user:alice"]}], **sections.pop("http", {})}
    cfg = write_config(tmp_path, connectors, http=http, **sections)
    service = Service(config_mod.load(cfg), embedder=HashEmbedder())
    service.start()
    loop = threading.Thread(target=service.run_forever, daemon=True)
    loop.start()
    try:
        wait_for(service.ready, what="ready")
        yield service
    finally:
        service.stopping.set()
        loop.join(timeout=60)


def call(service: Any, path: str, params: list[tuple[str, str]] | None = None, token: str | None = None
         ) -> tuple[int, Any]:
    url = service.http.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body, code = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode()


def found(answer: tuple[int, Any]) -> set[str]:
    code, body = answer
    assert code == 200, body
    return {r["connector"] for r in body["results"]}


def test_who_may_act_as_whom_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = [("q", "quarterly report figures"), ("k", "10")]
    with service_with(tmp_path, monkeypatch) as service:
        # Nothing restricted for a caller without a token, on loopback too; it cannot claim a principal.
        assert found(call(service, "/search", q)) == {"public"}
        code, body = call(service, "/search", [*q, ("principal", "user:alice")])
        assert code == 401 and "bearer token" in body["error"]
        # The trusted backend acts for anyone.
        assert found(call(service, "/search", [*q, ("principal", "user:alice")], TRUSTED)) == {"public", "alice"}
        assert found(call(service, "/search", [*q, ("principal", "group:hr"), ("principal", "user:bob")],
                          TRUSTED)) == {"public", "hr"}
        assert found(call(service, "/search", q, TRUSTED)) == {"public"}  # no principal: everyone's only
        # A personal token acts for its owner only.
        assert found(call(service, "/search", [*q, ("principal", "user:alice")], ALICE_TOKEN)) == {"public", "alice"}
        code, body = call(service, "/search", [*q, ("principal", "user:bob")], ALICE_TOKEN)
        assert code == 403 and body["error"] == "this token may not act as user:bob"
        code, body = call(service, "/search", [*q, ("principal", "user:alice"), ("principal", "group:hr")], ALICE_TOKEN)
        assert code == 403 and "group:hr" in body["error"]
        assert call(service, "/search", q, "not-a-token")[0] == 401
        # Bad principal strings: a 400 naming the string and what is wrong.
        for bad, why in (("alice", "expected user:NAME"), ("user:", "empty"), ("role:x", "expected user:NAME")):
            code, body = call(service, "/search", [*q, ("principal", bad)], TRUSTED)
            assert code == 400 and repr(bad) in body["error"] and why in body["error"], body
        # /status: counts for everyone, restricted doc ids only for those who may read them.
        anon = call(service, "/status")[1]
        full = call(service, "/status", token=TRUSTED)[1]
        alice = call(service, "/status", token=ALICE_TOKEN)[1]
        assert "hr-notes" not in json.dumps(anon) and "alice-notes" not in json.dumps(anon)
        assert "hr-notes" in json.dumps(full) and "alice-notes" in json.dumps(full)
        assert "alice-notes" in json.dumps(alice) and "hr-notes" not in json.dumps(alice)
        assert [c["docs"] for c in anon["connectors"]] == [c["docs"] for c in full["connectors"]] == [1, 1, 1]
        page = call(service, "/")[1]
        assert "hr-notes" not in page and "public-notes" in page


def test_require_principals_refuses_a_search_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with service_with(tmp_path, monkeypatch, search={"require_principals": True}) as service:
        code, body = call(service, "/search", [("q", "report")], TRUSTED)
        assert code == 400 and "require_principals" in body["error"]
        assert found(call(service, "/search", [("q", "report"), ("principal", "user:alice")], TRUSTED)) == {
            "public", "alice"}


def test_a_git_repository_without_a_configured_acl_is_readable_by_nobody_and_says_why(
        tmp_path: Path, make_runtime) -> None:
    from syncd.service import build_status

    repo = GitRepo(tmp_path / "repo")
    repo.write("guide.md", "# Guide\n\nquarterly report figures\n")
    repo.commit()
    repo.push()
    cfg = write_config(tmp_path, [{"name": "repo", "type": "git", "url": repo.url}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("repo")
    assert rt.store.count_rows() > 0
    vec = HashEmbedder().encode(["quarterly report figures"])[0]
    for principals in (None, ["user:alice"], ["group:eng"]):
        assert rt.store.search(vec, "quarterly", principals=principals) == []
    perms = build_status(rt)["connectors"][0]["permissions"]
    assert perms["undetermined_docs"] == 1 and perms["unreadable_docs"] == 1
    assert perms["undetermined"][0]["doc_id"] == "guide.md" and "acl" in perms["undetermined"][0]["reason"]
    assert build_status(rt, viewer=frozenset())["connectors"][0]["permissions"]["undetermined"] == []
    rt.close()
    # Configured: readable by the group, written without embedding anything again.
    cfg = write_config(tmp_path, [{"name": "repo", "type": "git", "url": repo.url, "acl": ["group:eng"]}])
    rt = make_runtime(cfg)
    s = rt.engine.reconcile("repo")
    assert s.docs_permissions == 1 and s.chunks_embedded == 0
    assert [r["doc_id"] for r in rt.store.search(vec, "quarterly", principals=["group:eng"])] == ["guide.md"]
    assert rt.store.search(vec, "quarterly", principals=None) == []


def test_an_index_from_before_permissions_gains_acl_without_re_embedding(tmp_path: Path, make_runtime) -> None:
    import lancedb
    import pyarrow as pa

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nquarterly report figures\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    emb = HashEmbedder()
    rt = make_runtime(cfg, emb)
    rt.engine.reconcile("docs")
    table = rt.store.table_name
    rt.close()
    # The table as an older syncd wrote it: no acl column.
    db = lancedb.connect(str(tmp_path / "index"))
    old = db.open_table(table).to_arrow().drop_columns(["acl"])
    from lancedb.index import FTS

    db.create_table(table, old, mode="overwrite").create_index("text", config=FTS())
    assert "acl" not in db.open_table(table).schema.names
    emb2 = HashEmbedder()
    rt = make_runtime(cfg, emb2)
    assert "acl" in rt.store.table.schema.names
    vec = emb2.encode(["quarterly report figures"])[0]
    assert rt.store.search(vec, "quarterly") == []  # null: readable by nobody until computed
    s = rt.engine.reconcile("docs")
    assert s.docs_permissions == 1 and s.chunks_embedded == 0 and emb2.embedded == 1  # the query above only
    assert [r["doc_id"] for r in rt.store.search(vec, "quarterly")] == ["a.md"]
    assert pa.types.is_list(rt.store.table.schema.field("acl").type)
    assert np.asarray(rt.store.scan(["vector"]).column("vector").to_pylist()).shape[0] >= 1


def test_document_is_served_only_to_callers_who_may_read_it_and_is_a_404_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/document filters like /search: a restricted document's text reaches a caller holding a principal of
    its ACL, and everyone else gets the 404 of a document the index does not hold (its existence not told)."""
    with service_with(tmp_path, monkeypatch) as service:
        doc = [("doc_id", "alice-notes.md"), ("connector", "alice")]
        absent = call(service, "/document", [("doc_id", "no-such.md"), ("connector", "alice")], TRUSTED)
        assert absent[0] == 404
        for params, token in (([], None), ([], TRUSTED), ([], ALICE_TOKEN), ([("principal", "group:hr")], TRUSTED)):
            assert call(service, "/document", doc + params, token) == absent
        code, body = call(service, "/document", [*doc, ("principal", "user:alice")], ALICE_TOKEN)
        assert code == 200 and "quarterly report figures for alice" in body["text"]
        code, body = call(service, "/document", [("uri", body["uri"]), ("principal", "user:alice")], TRUSTED)
        assert code == 200 and body["doc_id"] == "alice-notes.md"
        # Who may act as whom: the same refusals as /search.
        code, body = call(service, "/document", [*doc, ("principal", "user:alice")])
        assert code == 401 and "bearer token" in body["error"]
        code, body = call(service, "/document", [*doc, ("principal", "user:bob")], ALICE_TOKEN)
        assert code == 403 and body["error"] == "this token may not act as user:bob"
        code, body = call(service, "/document", [*doc, ("principal", "bob")], TRUSTED)
        assert code == 400 and "'bob'" in body["error"]
        # A document everyone may read needs no principal.
        code, body = call(service, "/document", [("doc_id", "public-notes.md")])
        assert code == 200 and body["connector"] == "public"
