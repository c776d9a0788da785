"""deploy/: the systemd unit passes `systemd-analyze verify` and scores 2.0 or lower on `security`.

These need Debian's `systemd` package (it ships systemd-analyze); without it they fail, naming it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from syncd import config as config_mod

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "syncd.service"
MAX_EXPOSURE = 2.0


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: install Debian's `systemd` package (apt-get install systemd)")
    return path


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_verifies(systemd_analyze: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this venv's syncd, which exists)."""
    syncd_bin = Path(sys.executable).parent / "syncd"
    assert syncd_bin.exists(), syncd_bin
    unit = tmp_path / "syncd.service"
    unit.write_text(UNIT.read_text().replace("/opt/syncd/venv/bin/syncd", str(syncd_bin)))
    proc = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_security_exposure_is_at_most_2(systemd_analyze: str) -> None:
    proc = subprocess.run([systemd_analyze, "security", "--offline=yes", "--threshold=20", str(UNIT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for syncd\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_unit_has_the_service_settings() -> None:
    s = _unit_settings()
    for key, value in {"Type": "notify", "Restart": "on-failure", "ProtectSystem": "strict",
                       "ProtectHome": "read-only", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "PrivateDevices": "yes", "CapabilityBoundingSet": "", "DynamicUser": "yes",
                       "StateDirectory": "syncd", "StandardOutput": "journal", "StandardError": "journal",
                       "SystemCallFilter": "@system-service", "ReadWritePaths": "/var/lib/syncd"}.items():
        assert value in s.get(key, []), (key, s.get(key))
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    for key in ("WatchdogSec", "TimeoutStopSec", "ExecReload"):
        assert key in s, key
    assert "#ReadOnlyPaths=" in UNIT.read_text()  # the example for watched shares
    assert s["ExecStart"] == ["/opt/syncd/venv/bin/syncd --config /etc/syncd/config.toml run"]


def test_deploy_config_is_valid_and_writes_only_under_the_state_directory() -> None:
    path = REPO / "deploy" / "config.toml"
    cfg = config_mod.parse(tomllib.loads(path.read_text()), base_dir=Path("/etc/syncd"), source=str(path))
    assert cfg.store_uri.startswith("/var/lib/syncd/")
    assert str(cfg.state_dir).startswith("/var/lib/syncd/")
    assert cfg.http.is_loopback


def test_install_script_parses_and_the_env_example_holds_no_values() -> None:
    script = REPO / "deploy" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=60).returncode == 0
    text = script.read_text()
    for needle in ("/opt/syncd", "/etc/syncd", '"$ETC/config.toml"', "systemctl enable", "systemd-analyze verify"):
        assert needle in text, needle
    for line in (REPO / "deploy" / "syncd.env.example").read_text().splitlines():
        assert not line.strip() or line.startswith("#"), line
