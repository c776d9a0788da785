"""MediaWiki has no webhooks: a cheap check of recentchanges (one row) every few seconds starts the poll at
once. On the real wiki (tests/mediawiki_server.py), with the hourly poll never due during the test."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config
from mediawiki_server import Wiki, WikiClient

from syncd import config as config_mod
from syncd.testing import HashEmbedder

pytestmark = pytest.mark.mediawiki


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


def polls(service: Any, trigger: str) -> float:
    return float(service.metrics.polls.labels(connector="wiki", trigger=trigger)._value.get())


def search_titles(service: Any, q: str) -> list[str]:
    with urllib.request.urlopen(service.http.url + f"/search?q={quote(q)}&k=5", timeout=30) as resp:
        return [r["doc_id"] for r in json.loads(resp.read())["results"]]


def test_a_wiki_edit_is_queryable_within_the_check_interval_not_the_poll_interval(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient) -> None:
    ns, p = wiki_ns
    wiki_client.edit(f"{p}:Existing", "A page written before the daemon started.")
    cfg = write_config(tmp_path, [{"name": "wiki", "type": "mediawiki", "api_url": mediawiki.api_url,
                                   "namespaces": [ns], "poll_interval": "1h", "check_interval": "1s",
                                   "request_rate": 0}])
    with running(cfg) as service:
        wait_for(lambda: service.ready() and not service.writer.polling("wiki"), timeout=60, what="catch-up")
        connector = service.runtime.connectors["wiki"]
        # Nothing new: the check says so, and no poll runs.
        assert connector.has_changes() is False
        time.sleep(2.5)
        assert polls(service, "check") == 0
        # An edit in another namespace is not news for this connector.
        _, other_p = mediawiki.new_namespace()
        wiki_client.edit(f"{other_p}:Elsewhere", "Not in the indexed namespace.")
        assert connector.has_changes() is False
        edited = time.time()
        wiki_client.edit(f"{p}:Fresh", "Written while the daemon runs: quokka lighthouse ferrule.")
        wait_for(lambda: f"{p}:Fresh" in search_titles(service, "quokka lighthouse ferrule"), timeout=60,
                 what="the edit queryable")
        waited = time.time() - edited
        assert waited < 600, f"{waited:.1f} s: the check, not the hourly poll, found it"
        assert polls(service, "check") >= 1 and polls(service, "schedule") == 0
        # Freshness is measured from the edit's own time.
        assert service.metrics.freshness.labels(connector="wiki")._sum.get() > 0
        wait_for(lambda: not service.writer.polling("wiki"), what="the poll done")
        assert connector.has_changes() is False
