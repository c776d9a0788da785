"""Config validation: every error names the key; CLI exits 2 on config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncd import config as config_mod
from syncd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config_mod.load(path)


def test_the_example_config_is_valid_and_resolves_paths_against_its_folder():
    cfg = config_mod.load(REPO / "config.example.toml")
    assert cfg.store_uri == str(REPO / ".syncd" / "index")
    assert cfg.connectors[0].name == "handbook"
    assert cfg.sync.verify_interval == 3600.0


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[store]\nurl = 'x'\n", "store.url", "unknown key"),
    ("[embedding]\nbatch_size = 0\n", "embedding.batch_size", "greater than or equal to 1"),
    ("[sync]\nverify_interval = 'soon'\n", "sync.verify_interval", "duration"),
    ("[http]\nbind = 'nonsense'\n", "http.bind", "host:port"),
    ("[[connectors]]\nname = 'Bad Name'\ntype = 'filesystem'\npath = '.'\n", "connectors[0].name", "a-z0-9"),
    ("[[connectors]]\nname = 'x'\ntype = 'nosuch'\n", "connectors[0].type", "unknown connector type"),
    ("[[connectors]]\nname = 'x'\ntype = 'filesystem'\n", "connectors[0].path", "Field required"),
    ("[[connectors]]\nname = 'x'\ntype = 'filesystem'\npath = '.'\nwatch = 'sometimes'\n", "connectors[0].watch", "auto"),
    ("[[connectors]]\nname='x'\ntype='filesystem'\npath='.'\n[[connectors]]\nname='x'\ntype='filesystem'\npath='.'\n",
     "connectors[1].name", "duplicate"),
    ("[store\n", None, "invalid TOML"),
])
def test_invalid_config_fails_naming_the_key_and_the_problem(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text)
    assert err.value.key == key
    assert problem in str(err.value)
    if key:
        assert key in str(err.value)


def test_durations_accept_units():
    assert [config_mod.parse_duration(v) for v in ("250ms", "30s", "10m", "1h", 5)] == [0.25, 30, 600, 3600, 5]


def test_cli_exits_2_with_the_key_on_a_bad_config_and_on_a_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[chunking]\nmax_tokens = 'many'\n")
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(bad), "status"], capture_output=True, text=True)
    assert out.returncode == 2 and "chunking.max_tokens" in out.stderr and out.stdout == ""
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(tmp_path / "nope.toml"), "sync"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_cli_usage_error_exits_2():
    out = subprocess.run([sys.executable, "-m", "syncd", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2


def test_secrets_come_from_a_named_file_or_variable_and_never_show(tmp_path, monkeypatch):
    secret = tmp_path / "creds" / "http-token"
    secret.parent.mkdir()
    secret.write_text("s3cr3t-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secret.parent))
    assert config_mod.resolve_secret(None, key="http.token_file", file="$CREDENTIALS_DIRECTORY/http-token") == \
        "s3cr3t-token"
    monkeypatch.setenv("SYNCD_T", "from-env")
    assert config_mod.resolve_secret("SYNCD_T", key="http.token_env") == "from-env"
    with pytest.raises(ConfigError) as err:
        config_mod.resolve_secret(None, key="http.token_file", file=str(tmp_path / "missing"))
    assert err.value.key == "http.token_file" and "missing" in str(err.value)
    monkeypatch.delenv("SYNCD_T")
    with pytest.raises(ConfigError) as err:
        config_mod.resolve_secret("SYNCD_T", key="http.token_env")
    assert "SYNCD_T is not set" in str(err.value) and "from-env" not in str(err.value)
