"""Crash consistency (short version of scripts/crash_soak.py): `syncd run`, the real packaged model, a folder
a writer process keeps changing, 20+ SIGKILLs at random moments (start-up, mid-batch, the instant a
commit's files appear), restarts; then the index converges to exactly the folder's content."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import REPO

KILLS = 21


def _harness_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("crash_soak", REPO / "scripts" / "crash_soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_9_at_random_moments_converges_without_drift(tmp_path: Path) -> None:
    """After 21 kill -9s of a daemon syncing a changing folder, verify is clean, every file is indexed
    exactly once with contiguous chunks, and LanceDB opens and answers queries."""
    crash_soak = _harness_module()
    harness = crash_soak.Harness(tmp_path, seed=20261124)
    result = harness.run(KILLS, modes=["startup", "random", "commit"])
    assert result["kills"] == KILLS
    modes = [k["mode"] for k in harness.kills]
    assert modes.count("startup") == modes.count("random") == modes.count("commit") == KILLS // 3
    assert result["verify_rc"] == 0, result["verify"]
    assert result["verify"]["ok"] is True
    for kind in ("missing", "stale", "orphaned", "duplicated"):
        assert result["verify"][kind] == []
    assert result["index_equals_source"], result
    assert result["verify"]["checked_docs"] >= result["source_docs"]
    assert result["torn"] == []
    assert result["duplicate_chunk_ids"] == 0
    assert result["indexed_docs"] == result["source_docs"] == result["final_status_docs"]
    assert result["vector_hits"] == min(5, result["rows"])
