"""The index as the running daemon answers it: ``open_index()``, `syncd mcp` and the MCP tools use this when a
daemon serves the config's state folder. It has the interface of ``syncd.api.Index`` (``search``, ``query``,
``document``, ``sources``) and imports neither the model nor LanceDB: a search is one local HTTP request to the
daemon's warm model. When the daemon stops answering (and no other took its place) the next call opens the
in-process ``Index`` instead, so a handle outlives a daemon restart or stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from syncd import search as search_mod
from syncd.client import Daemon, DaemonUnavailable
from syncd.config import Config
from syncd.errors import SyncdError

if TYPE_CHECKING:
    from syncd.api import Index

SOURCE_FIELDS = ("name", "type", "state", "lag_s", "backlog", "docs", "chunks", "last_success_at", "last_error")


def source_entry(connector: dict[str, Any]) -> dict[str, Any]:
    """What ``sources()`` (and the MCP tool ``list_sources``) says of one connector of `/status`."""
    return {key: connector.get(key) for key in SOURCE_FIELDS}


class DaemonIndex:
    """``syncd.api.Index``'s interface, answered by the running daemon."""

    via = "daemon"

    def __init__(self, config: Config, daemon: Daemon) -> None:
        self.config = config
        self.daemon = daemon
        self._local: Any = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``self._NAME_daemon(...)``; once the daemon is gone for good, ``self._NAME_local(...)``."""
        for _ in range(2):
            if self._local is not None:
                break
            try:
                return getattr(self, f"_{name}_daemon")(*args, **kwargs)
            except DaemonUnavailable:
                found = Daemon.find(self.config)
                if found is not None and found.url != self.daemon.url:
                    self.daemon = found  # restarted on another port
                    continue
                from syncd.api import Index

                self._local = Index(self.config)
                self.via = "local"
        return getattr(self, f"_{name}_local")(*args, **kwargs)

    def search(self, text: str, k: int = 10, connector: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Hybrid search by the daemon; the options are those of ``syncd.api.Index.search``."""
        results: list[dict[str, Any]] = self.query(text, k, connector, **filters)["results"]
        return results

    def query(self, text: str, k: int = 10, connector: str | None = None, **filters: Any) -> dict[str, Any]:
        """The `syncd query --json` document."""
        options = search_mod.options_from_kwargs(k=k, connector=connector, **filters)
        found: dict[str, Any] = self._call("query", text, options)
        return found

    def _query_daemon(self, text: str, options: search_mod.SearchOptions) -> dict[str, Any]:
        return self.daemon.search(text, options)

    def _query_local(self, text: str, options: search_mod.SearchOptions) -> dict[str, Any]:
        found = self._local.answer(text, options)
        return {"query": text, "table_version": found.table_version, "results": found.results}

    def document(self, *, doc_id: str | None = None, uri: str | None = None, connector: str | None = None,
                 principals: Sequence[str] | None = None) -> dict[str, Any] | None:
        """A document's current indexed text by doc id or uri (the daemon's `/document`), when a caller holding
        ``principals`` may read it."""
        found: dict[str, Any] | None = self._call("document", doc_id=doc_id, uri=uri, connector=connector,
                                                  principals=principals)
        return found

    def _document_daemon(self, **kwargs: Any) -> dict[str, Any] | None:
        return self.daemon.document(**kwargs)

    def _document_local(self, **kwargs: Any) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._local.document(**kwargs)
        return found

    def sources(self) -> list[dict[str, Any]]:
        """The connectors with their state, lag, backlog and counts (the daemon's `/status`)."""
        found: list[dict[str, Any]] = self._call("sources")
        return found

    def _sources_daemon(self) -> list[dict[str, Any]]:
        return [source_entry(c) for c in self.daemon.status()["connectors"]]

    def _sources_local(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._local.sources()
        return found


def open_config(config: Config, via: Literal["auto", "daemon", "local"] = "auto") -> Index | DaemonIndex:
    """The index of ``config``: ``auto`` through the running daemon when there is one, else in-process;
    ``daemon`` requires one (SyncdError otherwise); ``local`` always loads the model in this process."""
    if via not in ("auto", "daemon", "local"):
        raise ValueError(f"via must be 'auto', 'daemon' or 'local', not {via!r}")
    if via != "local":
        daemon = Daemon.find(config)
        if daemon is not None:
            return DaemonIndex(config, daemon)
        if via == "daemon":
            raise SyncdError(f"no syncd daemon runs for the state folder {config.state_dir}")
    from syncd.api import Index

    return Index(config)
