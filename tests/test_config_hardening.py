"""Config hardening: every duration key has a sane floor, and a state folder, store folder or model folder
that cannot serve is a config error (exit 2, naming the key) however it is reached, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from syncd import config as config_mod
from syncd.errors import ConfigError
from syncd.registry import connector_class, connector_types

# The smallest valid section of each built-in connector type; a new type needs an entry here.
MINIMAL_CONNECTORS: dict[str, dict[str, Any]] = {
    "filesystem": {"path": "."},
    "git": {"url": "file:///srv/git/docs.git"},
    "mediawiki": {"api_url": "http://127.0.0.1:8080/api.php"},
    "confluence": {"base_url": "https://example.atlassian.net/wiki", "spaces": ["DOCS"], "token_env": "T"},
}
BUILTIN_TYPES = sorted(MINIMAL_CONNECTORS)


def _is_duration(field: Any) -> bool:
    return any(getattr(m, "func", None) is config_mod.parse_duration for m in field.metadata)


def duration_keys() -> list[tuple[str, str]]:
    """(section, key) of every duration in the engine's sections and every registered connector type."""
    keys = []
    for section, info in config_mod.Config.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, config_mod.Section):
            keys += [(section, name) for name, f in model.model_fields.items() if _is_duration(f)]
    for ctype in connector_types():
        model = connector_class(ctype).config_model
        keys += [(ctype, name) for name, f in model.model_fields.items() if _is_duration(f)]
    return keys


def load_with(tmp_path: Path, section: str, key: str, value: str | float) -> config_mod.Config:
    """A config whose ``section`` (an engine section, or a connector type) sets ``key = value``."""
    if section in MINIMAL_CONNECTORS:
        data: dict[str, Any] = {"connectors": [{"name": "c", "type": section, **MINIMAL_CONNECTORS[section],
                                                key: value}]}
    else:
        data = {section: {key: value}}
    return config_mod.parse(data, base_dir=tmp_path, source="t.toml")


def read_back(cfg: config_mod.Config, section: str, key: str) -> float:
    owner = cfg.connectors[0] if section in MINIMAL_CONNECTORS else getattr(cfg, section)
    return float(getattr(owner, key))


def test_every_built_in_connector_type_is_covered_here() -> None:
    assert set(BUILTIN_TYPES) <= set(connector_types())


def test_every_duration_key_declares_a_floor() -> None:
    """A new duration key, in the engine or in a connector, must say how short it may be."""
    keys = duration_keys()
    assert ("filesystem", "poll_interval") in keys and ("sync", "backoff_max") in keys
    missing = [f"{s}.{k}" for s, k in keys
               if config_mod.duration_floor(k, s if s in connector_types() else None) is None]
    assert missing == [], f"add these keys to config.DURATION_FLOORS: {missing}"


@pytest.mark.parametrize(("section", "key"), [k for k in duration_keys() if k[0] not in connector_types()
                                              or k[0] in BUILTIN_TYPES])
def test_a_duration_below_its_floor_fails_naming_the_key_and_the_minimum(
        tmp_path: Path, section: str, key: str) -> None:
    floor = config_mod.duration_floor(key, section if section in MINIMAL_CONNECTORS else None)
    assert floor is not None
    where = f"connectors[0].{key}" if section in MINIMAL_CONNECTORS else f"{section}.{key}"
    minimum = config_mod.format_duration(floor.minimum)

    assert read_back(load_with(tmp_path, section, key, minimum), section, key) == floor.minimum
    if floor.minimum > 0:
        with pytest.raises(ConfigError) as err:
            load_with(tmp_path, section, key, floor.minimum / 2)  # a bare number is seconds
        assert err.value.key == where
        assert where in str(err.value) and f"at least {minimum}" in str(err.value)
    if floor.zero is not None:  # 0 keeps its documented meaning ("off", "only at start", ...)
        assert read_back(load_with(tmp_path, section, key, "0s"), section, key) == 0
    else:
        with pytest.raises(ConfigError) as err:
            load_with(tmp_path, section, key, "0s")
        assert err.value.key == where and f"at least {minimum}" in str(err.value)


def test_zero_is_refused_where_it_would_not_mean_off(tmp_path: Path) -> None:
    """Where 0 is undocumented it is refused: a Confluence reconcile of 0 would list every page on every poll."""
    assert config_mod.duration_floor("reconcile_interval", "filesystem").zero == "only at start"
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, "confluence", "reconcile_interval", "0s")
    assert err.value.key == "connectors[0].reconcile_interval"
    for key in ("poll_interval", "timeout", "max_backoff"):
        with pytest.raises(ConfigError):
            load_with(tmp_path, "mediawiki", key, "0s")


def test_the_example_config_and_the_defaults_respect_the_floors() -> None:
    cfg = config_mod.load(Path(__file__).resolve().parent.parent / "config.example.toml")
    assert cfg.connectors[0].poll_interval >= 0.1
    for ctype in BUILTIN_TYPES:  # defaults are not validated by pydantic: check them here
        model = connector_class(ctype).config_model
        for name, field in model.model_fields.items():
            floor = config_mod.duration_floor(name, ctype) if _is_duration(field) else None
            if floor is not None:
                assert field.default >= floor.minimum or (field.default == 0 and floor.zero), (ctype, name)


def test_durations_are_shown_in_their_shortest_exact_unit() -> None:
    assert [config_mod.format_duration(s) for s in (0.01, 0.1, 1, 1.5, 60, 90, 600, 3600, 86400)] == \
        ["10ms", "100ms", "1s", "1.5s", "1m", "90s", "10m", "1h", "1d"]


# -- the CLI: every bad setting exits 2 naming the key ------------------------------------------------------
def syncd(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def assert_config_error(out: subprocess.CompletedProcess[str], key: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f": {key}: " in out.stderr or out.stderr.startswith(f"syncd: {key}: "), out.stderr


def test_a_poll_interval_of_0_exits_2_naming_the_key_and_the_minimum(tmp_path: Path, docs: Path) -> None:
    """The reported busy loop: watch = "poll" with poll_interval = "0s" is refused before anything starts."""
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs), "watch": "poll",
                                   "poll_interval": "0s"}])
    for command in ("run", "sync"):
        out = syncd(cfg, command)
        assert_config_error(out, "connectors[0].poll_interval")
        assert "at least 100ms" in out.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "index").exists()


@pytest.mark.parametrize("command", [["run"], ["sync"], ["reindex"], ["status"], ["verify"], ["query", "x"]])
def test_a_state_dir_that_is_a_file_exits_2_for_every_command(tmp_path: Path, docs: Path, command: list[str]) -> None:
    (tmp_path / "state").write_text("not a folder")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    out = syncd(cfg, *command)
    assert_config_error(out, "state.dir")
    assert "is not a folder" in out.stderr


def test_a_state_dir_below_a_file_exits_2(tmp_path: Path, docs: Path) -> None:
    (tmp_path / "blocker").write_text("")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       state={"dir": "./blocker/state"})
    assert_config_error(syncd(cfg, "sync"), "state.dir")


@pytest.mark.parametrize("command", [["sync"], ["status"], ["query", "x"]])
def test_a_local_store_uri_that_is_a_file_exits_2(tmp_path: Path, docs: Path, command: list[str]) -> None:
    (tmp_path / "index").write_text("not a folder")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    out = syncd(cfg, *command)
    assert_config_error(out, "store.uri")


@pytest.mark.parametrize("command", [["run"], ["sync"], ["reindex"], ["verify"], ["query", "x"]])
def test_a_missing_model_folder_exits_2_naming_embedding_model(tmp_path: Path, docs: Path,
                                                              command: list[str]) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       embedding={"model": "./no-such-model"})
    out = syncd(cfg, *command)
    assert_config_error(out, "embedding.model")
    assert str(tmp_path / "no-such-model") in out.stderr


def test_a_model_folder_without_a_model_and_a_model_file_are_config_errors(tmp_path: Path) -> None:
    from syncd.embedding import resolve_model_path

    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    for name, problem in (("empty", "no config.json or tokenizer.json"), ("file", "is a file")):
        with pytest.raises(ConfigError) as err:
            resolve_model_path(name, base_dir=tmp_path)
        assert err.value.key == "embedding.model" and problem in str(err.value)


def test_a_relative_model_folder_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.embedding import from_config, resolve_model_path

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mini").symlink_to(resolve_model_path("all-MiniLM-L6-v2"))
    cfg = config_mod.load(write_config(tmp_path, [], embedding={"model": "./models/mini"}))
    monkeypatch.chdir("/")
    assert from_config(cfg).path == tmp_path / "models" / "mini"


def test_an_empty_token_variable_is_reported_as_empty_not_unset(tmp_path: Path, docs: Path) -> None:
    with pytest.raises(ConfigError) as err:
        os.environ["SYNCD_TEST_EMPTY_TOKEN"] = ""
        try:
            config_mod.resolve_secret("SYNCD_TEST_EMPTY_TOKEN", key="http.token_env")
        finally:
            del os.environ["SYNCD_TEST_EMPTY_TOKEN"]
    assert "SYNCD_TEST_EMPTY_TOKEN is empty" in str(err.value) and err.value.key == "http.token_env"

    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0", "token_env": "SYNCD_TEST_EMPTY_TOKEN"})
    out = syncd(cfg, "run", env={"SYNCD_TEST_EMPTY_TOKEN": ""})
    assert_config_error(out, "http.token_env")
    assert "SYNCD_TEST_EMPTY_TOKEN is empty" in out.stderr


# -- read-only filesystems (a real read-only mount: root ignores permission bits) ---------------------------
@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on a read-only tmpfs mount."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: a read-only tmpfs must be mountable")
        pytest.skip("mounting a read-only tmpfs needs root")
    target = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a read-only tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.parametrize(("state_dir", "commands"), [
    (".", [["run"], ["sync"], ["reindex"], ["verify", "--repair"], ["status"], ["verify"]]),
    ("./state", [["run"], ["sync"], ["status"]]),
])
def test_a_state_dir_on_a_read_only_filesystem_exits_2(tmp_path: Path, docs: Path, read_only_dir: Path,
                                                       state_dir: str, commands: list[list[str]]) -> None:
    """Writers are refused before they start; status and verify, which read, are refused only where the
    state they need is not there and cannot be made."""
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       state={"dir": str(read_only_dir / state_dir)})
    for command in commands:
        out = syncd(cfg, *command)
        assert_config_error(out, "state.dir")
        assert "Read-only file system" in out.stderr or "read-only filesystem" in out.stderr


def test_a_store_on_a_read_only_filesystem_exits_2_for_writers(tmp_path: Path, docs: Path,
                                                               read_only_dir: Path) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       store={"uri": str(read_only_dir / "index")})
    out = syncd(cfg, "sync")
    assert_config_error(out, "store.uri")
    assert "read-only filesystem" in out.stderr


def test_the_writer_lock_on_a_read_only_state_dir_is_a_config_error(tmp_path: Path, read_only_dir: Path) -> None:
    """The Python API reaches the state folder first through the writer lock: same error, same key."""
    from syncd.runtime import WriterLock

    with pytest.raises(ConfigError) as err:
        WriterLock(read_only_dir / "state").acquire()
    assert err.value.key == "state.dir"
