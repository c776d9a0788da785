"""Confluence page webhooks (Data Center: X-Hub-Signature, HMAC-SHA256 of the body) on the service in this
process, against the local Confluence of test_confluence.py. The hourly poll never comes due in the test:
what changes, the webhook started."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, write_config
from pytest_httpserver import HTTPServer
from test_confluence import NAME, FakeConfluence

from syncd import config as config_mod
from syncd.testing import HashEmbedder

SECRET = "confluence-webhook-" + "8d41"


@contextmanager
def running(config_path: Path) -> Iterator[Any]:
    from syncd.service import Service

    service = Service(config_mod.load(config_path), embedder=HashEmbedder())
    service.start()
    loop = threading.Thread(target=service.run_forever, daemon=True)
    loop.start()
    try:
        yield service
    finally:
        service.stopping.set()
        loop.join(timeout=60)
        assert not loop.is_alive()


def event(name: str, pid: str, space: str = "DOC") -> bytes:
    """A Confluence Data Center page event (Administration > Webhooks), as it is posted."""
    return json.dumps({"timestamp": 1764504000000, "event": name, "userKey": "ff8080817d5b3b5c017d5b3c5e8e0000",
                       "page": {"id": int(pid), "spaceKey": space, "title": "Runbook", "version": 2,
                                "creatorKey": "ff8080817d5b3b5c017d5b3c5e8e0000",
                                "lastModifierKey": "ff8080817d5b3b5c017d5b3c5e8e0000",
                                "creationDate": 1764400000000, "lastModificationDate": 1764504000000}}).encode()


def post(service: Any, body: bytes, secret: str = SECRET) -> int:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(service.http.url + f"/hooks/{NAME}", data=body, method="POST",
                                 headers={"X-Hub-Signature": signature, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def indexed(service: Any) -> dict[str, str]:
    return {doc_id: info.revision for (conn, doc_id), info in service.runtime.store.indexed_docs().items()
            if conn == NAME}


@pytest.fixture
def confluence(httpserver: HTTPServer) -> FakeConfluence:
    fake = FakeConfluence(httpserver)
    httpserver.expect_request(re.compile("^/")).respond_with_handler(fake.handle)
    return fake


def test_page_webhooks_start_the_poll_and_reach_what_cql_cannot_see(
        tmp_path: Path, confluence: FakeConfluence, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CONFLUENCE_TOKEN", "test-token")
    monkeypatch.setenv("TEST_CONFLUENCE_WEBHOOK", SECRET)
    keep = confluence.add("DOC", "Runbook", "<p>Restart the queue workers one at a time.</p>")
    gone = confluence.add("DOC", "Old plan", "<p>Superseded.</p>")
    cfg = write_config(tmp_path, [{
        "name": NAME, "type": "confluence", "base_url": confluence.base, "spaces": ["DOC"],
        "token_env": "TEST_CONFLUENCE_TOKEN", "poll_interval": "1h", "reconcile_interval": "1h",
        "request_rate": 0, "webhook_secret_env": "TEST_CONFLUENCE_WEBHOOK"}])
    with running(cfg) as service:
        wait_for(lambda: service.ready() and not service.writer.polling(NAME), what="catch-up")
        assert indexed(service) == {keep: "1", gone: "1"}
        # An edit: the event starts the poll, whose CQL search finds it.
        confluence.edit(keep, body="<p>Restart the queue workers two at a time since the upgrade.</p>")
        assert post(service, event("page_updated", keep)) == 202
        wait_for(lambda: indexed(service).get(keep) == "2", what="the edit indexed")
        # A page moved to the trash: CQL never reports it; the event names it, and the page is read again.
        confluence.trash(gone)
        assert post(service, event("page_trashed", gone)) == 202
        wait_for(lambda: gone not in indexed(service), what="the trashed page removed")
        # A forged event runs nothing; another kind of event is ignored.
        confluence.edit(keep, body="<p>Changed without an event.</p>")
        assert post(service, event("page_updated", keep), secret="wrong") == 401
        assert post(service, json.dumps({"event": "space_updated", "space": {"key": "DOC"}}).encode()) == 204
        wait_for(lambda: not service.writer.polling(NAME), what="no poll in flight")
        assert indexed(service)[keep] == "2"
        polls = service.metrics.polls.labels(connector=NAME, trigger="hook")._value.get()
        assert polls == 2
