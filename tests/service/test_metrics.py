"""/metrics as a Prometheus user alerts on it: every family has its samples from the start (each connector's
too), no `_created` series, /search requests counted by outcome, per-connector document and chunk gauges,
build info, and the freshness, embedding and commit histograms labelled by connector."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families

from syncd import __version__
from syncd import config as config_mod
from syncd.testing import HashEmbedder

CONNECTOR_FAMILIES = {
    "syncd_docs_synced", "syncd_sync_errors", "syncd_freshness_seconds", "syncd_connector_last_success_timestamp_seconds",
    "syncd_backlog", "syncd_commit_seconds", "syncd_embed_seconds", "syncd_watcher_restarts",
    "syncd_connector_consecutive_failures", "syncd_docs_deferred", "syncd_docs_abandoned", "syncd_stalls",
    "syncd_failed_docs", "syncd_held_deletes", "syncd_connector_docs", "syncd_connector_chunks", "syncd_polls",
}


@contextmanager
def started(cfg: Path) -> Iterator[Any]:
    from syncd.service import Service

    svc = Service(config_mod.load(cfg), embedder=HashEmbedder())
    svc.start()
    loop = threading.Thread(target=svc.run_forever, daemon=True)
    loop.start()
    try:
        yield svc
    finally:
        svc.stopping.set()
        loop.join(timeout=60)


def scrape(svc: Any) -> tuple[str, dict[str, Any]]:
    with urllib.request.urlopen(svc.http.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")


def get_status(svc: Any, path: str) -> int:
    try:
        with urllib.request.urlopen(svc.http.url + path, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_every_family_has_samples_right_after_start(tmp_path: Path, docs: Path) -> None:
    """Scraped as soon as start() returns: every family the registry holds has a sample, each
    per-connector family one for each connector, and no `_created` series exists."""
    (docs / "a.md").write_text("# A\n\nalpha\n")
    other = tmp_path / "other"
    other.mkdir()
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)},
                                  {"name": "other", "type": "filesystem", "path": str(other)}])
    with started(cfg) as svc:
        text, families = scrape(svc)
        # An info family is exposed with the suffix `_info` (text format 0.0.4).
        registered = {f.name + ("_info" if f.type == "info" else "") for f in svc.metrics.registry.collect()}
        assert registered <= set(families)
        for name in registered:
            assert families[name].samples, f"{name} has no sample"
        for name in CONNECTOR_FAMILIES:
            assert name in registered, name
            labelled = {s.labels.get("connector") for s in families[name].samples}
            assert {"docs", "other"} <= labelled, (name, labelled)
        actions = {s.labels["action"] for s in families["syncd_docs_synced"].samples if s.labels["connector"] == "other"}
        assert actions == {"added", "changed", "deleted", "renamed"}
        outcomes = {s.labels["outcome"] for s in families["syncd_search_requests"].samples}
        assert outcomes == {"ok", "bad_request", "error"}
        assert {s.labels["source"] for s in families["syncd_query_vectors"].samples} == {"model", "cache"}
        assert {s.labels["kind"] for s in families["syncd_verify_drift"].samples} == {
            "missing", "stale", "orphaned", "duplicated"}
        assert {s.labels["job"] for s in families["syncd_scheduler_skipped_runs"].samples} >= {
            "reconcile:docs", "reconcile:other", "maintenance"}
        assert "_created" not in text
        (build,) = families["syncd_build_info"].samples
        assert build.name == "syncd_build_info" and build.value == 1.0 and build.labels["version"] == __version__
        assert build.labels["python"] and build.labels["lancedb"] != "unknown"


def test_search_requests_docs_chunks_and_connector_histograms(tmp_path: Path, docs: Path) -> None:
    """/search outcomes are counted; the docs and chunks gauges follow the index per connector (as /status
    says); a committed edit lands in the freshness, embedding and commit histograms of its connector."""
    import json

    for i in range(3):
        (docs / f"n{i}.md").write_text(f"# Note {i}\n\nword{i} alpha\n\n## More\n\nbeta gamma {i}\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    with started(cfg) as svc:
        wait_for(svc.ready, what="ready")
        _, before = scrape(svc)
        assert get_status(svc, "/search?q=alpha&k=2") == 200
        assert get_status(svc, "/search?q=alpha&k=2") == 200
        assert get_status(svc, "/search?q=alpha&k=zero") == 400
        assert get_status(svc, "/search?q=") == 400
        _, after = scrape(svc)
        for outcome, moved in (("ok", 2), ("bad_request", 2), ("error", 0)):
            assert value(after, "syncd_search_requests", "syncd_search_requests_total", outcome=outcome) == value(
                before, "syncd_search_requests", "syncd_search_requests_total", outcome=outcome) + moved

        with urllib.request.urlopen(svc.http.url + "/status", timeout=30) as resp:
            status = json.loads(resp.read())
        (entry,) = status["connectors"]
        assert value(after, "syncd_connector_docs", "syncd_connector_docs", connector="docs") == entry["docs"] == 3
        assert value(after, "syncd_connector_chunks", "syncd_connector_chunks", connector="docs") == entry["chunks"]

        (docs / "n3.md").write_text("# Note 3\n\nA new note about delta.\n")
        wait_for(lambda: value(scrape(svc)[1], "syncd_connector_docs", "syncd_connector_docs", connector="docs") == 4,
                 what="docs gauge at 4")
        _, later = scrape(svc)
        for family in ("syncd_freshness_seconds", "syncd_embed_seconds", "syncd_commit_seconds"):
            count = family + "_count"
            assert value(later, family, count, connector="docs") > value(before, family, count, connector="docs"), family
        assert value(later, "syncd_connector_chunks", "syncd_connector_chunks", connector="docs") == entry["chunks"] + 1
