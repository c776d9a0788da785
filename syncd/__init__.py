"""syncd: keeps a LanceDB vector index true to file shares, git repositories and wikis."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from syncd.api import Index


def open_index(config_path: str | None = None) -> Index:
    """A read-only handle for RAG applications: ``open_index("syncd.toml").search("question", k=5)``."""
    from syncd.api import Index

    return Index.open(config_path)


__all__ = ["__version__", "open_index"]
