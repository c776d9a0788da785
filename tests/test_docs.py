"""The documentation of the config cannot drift from the config models: every key of the engine's sections is
either shown in config.example.toml (the keys a user sets) or listed in the README's Tuning table, never both
and never neither."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from syncd import config as config_mod

REPO = Path(__file__).resolve().parent.parent
SECTIONS = {"store": config_mod.StoreConfig, "embedding": config_mod.EmbeddingConfig,
            "chunking": config_mod.ChunkingConfig, "http": config_mod.HttpConfig, "state": config_mod.StateConfig,
            "limits": config_mod.LimitsConfig, "sync": config_mod.SyncConfig, "audit": config_mod.AuditConfig,
            "logging": config_mod.LoggingConfig, "search": config_mod.SearchConfig,
            "reindex": config_mod.ReindexConfig}


def tuning_keys() -> set[str]:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Tuning"):]
    table = table[:table.index("\n## ")]
    keys: set[str] = set()
    for cell in re.findall(r"^\| (.+?) \|", table, re.M):
        first = re.findall(r"`([a-z_]+)\.([a-z_]+)`", cell)
        for section, key in first:
            keys.add(f"{section}.{key}")
        # "`limits.markdown`, `.text`, ..." names several keys of one section
        if first:
            section = first[0][0]
            keys.update(f"{section}.{key}" for key in re.findall(r"`\.([a-z_]+)`", cell))
    return keys


def example_keys() -> set[str]:
    text = (REPO / "config.example.toml").read_text()
    data = tomllib.loads(text)
    keys = {f"{s}.{k}" for s, values in data.items() if s in SECTIONS for k in values}
    # Optional keys shown commented out, e.g. "# token_env = ..." under [http].
    section = None
    for line in text.splitlines():
        if m := re.match(r"^#?\s*\[\[?([a-z_]+)\]", line):  # a section, or a connector shown commented out
            section = m.group(1)
        elif section in SECTIONS and (m := re.match(r"^# ([a-z_]+) = ", line)):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def test_every_engine_key_is_shown_in_the_example_or_documented_as_tuning_and_not_both() -> None:
    fields = {f"{name}.{key}" for name, model in SECTIONS.items() for key in model.model_fields}
    shown, tuning = example_keys(), tuning_keys()
    assert not (shown & tuning), f"both in the example and in the tuning table: {sorted(shown & tuning)}"
    assert fields == shown | tuning, (f"undocumented: {sorted(fields - shown - tuning)}; "
                                      f"documented but unknown: {sorted((shown | tuning) - fields)}")


def test_the_example_shows_about_a_dozen_engine_keys() -> None:
    assert len(example_keys()) <= 16
