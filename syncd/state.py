"""State files: human-readable JSON, versioned, written atomically (temp file, fsync, rename).

Per connector, ``<state>/connectors/<name>.json`` holds the fingerprint cache (what each document's
cheap fingerprint was when its content hash was last seen), the documents that failed and why, and any
connector cursor. The fingerprint cache states facts about the source, never about the store, so it is
safe whether or not it is ahead of or behind the store after a crash: the store's own ``revision``
column is what the engine compares against.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

STATE_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A torn or corrupt state file is only a cache: start it again.
        return None


class ConnectorState:
    """Fingerprint cache, failures and cursor of one connector."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path) or {}
        if data.get("state_version") != STATE_VERSION:
            data = {}
        # doc_id -> [fingerprint, revision]
        self.fingerprints: dict[str, list[str]] = data.get("fingerprints", {})
        self.failures: dict[str, str] = data.get("failures", {})
        self.cursor: Any = data.get("cursor")
        self.extra: dict[str, Any] = data.get("extra", {})
        self.dirty = False

    def save(self) -> None:
        write_json_atomic(self.path, {
            "state_version": STATE_VERSION, "fingerprints": self.fingerprints, "failures": self.failures,
            "cursor": self.cursor, "extra": self.extra,
        })
        self.dirty = False


class StateDir:
    """The state folder: one ConnectorState per connector, loaded on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._connectors: dict[str, ConnectorState] = {}
        self._lock = threading.Lock()  # /status may load a connector's state while the writer saves

    def connector(self, name: str) -> ConnectorState:
        with self._lock:
            if name not in self._connectors:
                self._connectors[name] = ConnectorState(self.root / "connectors" / f"{name}.json")
            return self._connectors[name]

    def connector_dir(self, name: str) -> Path:
        path = self.root / "connectors" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, *, only_dirty: bool = True) -> None:
        with self._lock:
            states = list(self._connectors.values())
        for state in states:
            if state.dirty or not only_dirty:
                state.save()
