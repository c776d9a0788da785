"""syncd: keeps a LanceDB vector index true to file shares, git repositories and wikis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

__version__ = "0.1.0"

if TYPE_CHECKING:
    from syncd.api import Index
    from syncd.remote import DaemonIndex


def open_index(config_path: str | None = None, *,
               via: Literal["auto", "daemon", "local"] = "auto") -> Index | DaemonIndex:
    """A read-only handle for RAG applications: ``open_index("syncd.toml").search("question", k=5)``.

    ``via="auto"`` asks the running daemon when one serves the config's state folder (no model in this
    process; a search is one local HTTP request) and otherwise loads the model here; ``"daemon"`` requires
    the daemon, ``"local"`` never uses it."""
    from syncd import config as config_mod
    from syncd.remote import open_config

    return open_config(config_mod.load(config_path), via=via)


__all__ = ["__version__", "open_index"]
