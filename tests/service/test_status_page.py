"""The status page an operator keeps open, in a real headless Chromium: per connector its lag, backlog, last
success, last error, recent freshness (p50/p95) and recent changes with their times; links to /status and
/metrics; a search box whose results (fetched from /search by the page) show their citations."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, write_config

from syncd import config as config_mod
from syncd.testing import HashEmbedder

REPO = Path(__file__).resolve().parents[2]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no headless browser: install Debian's `chromium` package (apt-get install chromium)")


def browse(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless on ``url``; the page's scripts (its fetch of /search) run within the time budget."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           "--virtual-time-budget=8000", f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@contextmanager
def started(cfg: Path) -> Iterator[Any]:
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


def status(svc: Any) -> dict[str, Any]:
    with urllib.request.urlopen(svc.http.url + "/status", timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_status_page_shows_what_an_operator_watches_and_searches(tmp_path: Path, docs: Path) -> None:
    (docs / "elephants.md").write_text("# Zoo\n\n## Elephants\n\nThe purple elephants dance at noon.\n")
    (docs / "failover.md").write_text("# Operations\n\nThe database fails over to the standby.\n")
    cfg = write_config(tmp_path, [{"name": "handbook", "type": "filesystem", "path": str(docs)}])
    with started(cfg) as svc:
        # Edits seen by the watcher: their freshness lands in the recent window the page summarises.
        for i in range(3):
            (docs / f"note{i}.md").write_text(f"# Note {i}\n\nA short note number {i} about lighthouses.\n")
        wait_for(lambda: status(svc)["connectors"][0]["docs"] == 5, what="notes indexed")
        wait_for(lambda: status(svc)["freshness"]["count"] >= 3, what="freshness samples")
        facts = status(svc)
        entry = facts["connectors"][0]

        dom = browse(svc.http.url + "/?q=purple+elephants", tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        # Links to the machine-readable views.
        assert 'href="/status"' in page and 'href="/metrics"' in page
        # Per connector: lag, backlog, last success (its time), last error.
        # (a later cycle may succeed between the /status read and the page: its time is then later)
        shown = re.findall(r"<time datetime=.(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ).>\d{4}-", page)
        assert "<th>last success</th>" in page and shown and max(shown) >= entry["last_success_at"]
        # (the last error's cell is shown with a failing source in test_service_inprocess's page test)
        assert "<th>last error</th>" in page and "<th>backlog</th>" in page and "<th>lag (s)</th>" in page
        # The recent freshness figures /status gives, formatted as the page shows seconds.
        fresh = facts["freshness"]
        assert fresh["count"] >= 3 and fresh["p50_s"] is not None and fresh["p95_s"] >= fresh["p50_s"]
        assert "p50" in page and "p95" in page and f"({fresh['count']} documents committed)" in page
        # Recent changes with their times (UTC clock time of each change).
        for change in entry["recent"][-3:]:
            assert time.strftime("%H:%M:%S", time.gmtime(change["at"])) in page, change
            assert change["doc_id"] in page
        # The search box ran the query from the address and shows results with their citations.
        assert 'value="purple elephants"' in page or "purple elephants" in page
        assert "class=\"result\"" in page
        assert "handbook:elephants.md lines 5–5 (Zoo › Elephants)" in page
        assert str(docs / "elephants.md") in page and "The purple elephants dance at noon." in page

        shot = tmp_path / "status-page.png"
        proc = browse(svc.http.url + "/?q=purple+elephants", tmp_path, f"--screenshot={shot}",
                      "--window-size=1280,800", "--hide-scrollbars")
        assert proc.returncode == 0, proc.stderr[-2000:]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        if os.environ.get("SYNCD_UPDATE_SCREENSHOT"):
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "status-page.png")


def test_status_reports_recent_freshness_per_connector(tmp_path: Path, docs: Path) -> None:
    """/status → connectors[].freshness and freshness: p50/p95 of the last 15 minutes' commits, nearest rank,
    from the same observations as the histogram."""
    cfg = write_config(tmp_path, [{"name": "handbook", "type": "filesystem", "path": str(docs)}])
    with started(cfg) as svc:
        before = status(svc)
        assert before["freshness"]["count"] == 0 and before["freshness"]["p50_s"] is None
        for value in (0.1, 0.2, 0.3, 0.4, 2.0):
            svc.metrics.observe_freshness("handbook", value)
        after = status(svc)
        assert after["connectors"][0]["freshness"] == {"window_s": 900.0, "count": 5, "p50_s": 0.3, "p95_s": 2.0}
        assert after["freshness"]["count"] == 5
