"""State files migrate version by version and are never thrown away."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncd.errors import ConfigError
from syncd.state import STATE_VERSION, ConnectorState, migrate


def test_a_version_1_state_file_is_upgraded_in_order_keeping_its_cache_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps({"state_version": 1, "fingerprints": {"a.md": ["1:2:3", "rev"]},
                                "failures": {"b.md": "binary: NUL byte"}, "cursor": None, "extra": {}}))
    state = ConnectorState(path)
    assert state.fingerprints == {"a.md": ["1:2:3", "rev"]}
    assert state.failures == {"b.md": "binary: NUL byte"}
    state.save()
    saved = json.loads(path.read_text())
    assert saved == {"state_version": STATE_VERSION, "fingerprints": {"a.md": ["1:2:3", "rev"]},
                     "failures": {"b.md": "binary: NUL byte"}, "acl_policy": ""}


def test_every_version_below_the_current_one_has_a_migration_step(tmp_path: Path) -> None:
    for version in range(1, STATE_VERSION):
        upgraded = migrate({"state_version": version, "fingerprints": {}, "failures": {}}, tmp_path / "x.json")
        assert upgraded["state_version"] == STATE_VERSION


def test_a_state_file_from_a_newer_syncd_is_refused_naming_the_state_folder(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps({"state_version": STATE_VERSION + 1, "fingerprints": {"a.md": ["x", "y"]}}))
    with pytest.raises(ConfigError) as caught:
        ConnectorState(path)
    assert caught.value.key == "state.dir" and "newer" in str(caught.value)
    assert json.loads(path.read_text())["fingerprints"] == {"a.md": ["x", "y"]}  # untouched


def test_a_failed_reindex_leaves_the_cache_failures_and_acl_settings_as_the_state_file_has_them(
        tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    state = ConnectorState(path)
    state.set_fingerprint("a.md", "1:2:3", "rev")
    state.failures["empty.md"] = "empty: no content"
    state.acl_policy = "before"
    state.save()
    saved = path.read_text()
    # What a reindex does before its first batch, then records while it builds.
    state.spill_fingerprints()
    state.failures.clear()
    state.acl_policy = "after"
    state.set_fingerprint("b.md", "4:5:6", "rev2")
    state.failures["c.md"] = "corrupt: x"
    state.drop_spill()
    assert state.fingerprints == {"a.md": ["1:2:3", "rev"]}
    assert state.failures == {"empty.md": "empty: no content"} and state.acl_policy == "before"
    state.save()
    assert json.loads(path.read_text()) == json.loads(saved)
