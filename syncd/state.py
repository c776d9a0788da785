"""State files: human-readable JSON, versioned, written atomically (temp file, fsync, rename).

Per connector, ``<state>/connectors/<name>.json`` holds the fingerprint cache (what each document's
cheap fingerprint was when its content hash was last seen) and the documents that failed and why
(connectors keep their cursors in files of their own, in their state folder). The fingerprint cache
states facts about the source, never about the store, so it is safe whether or not it is ahead of or
behind the store after a crash: the store's own ``revision`` column is what the engine compares against.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from syncd.errors import ConfigError

STATE_VERSION = 2


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 drops ``cursor`` and ``extra``, which nothing used (connectors keep their own cursors)."""
    data.pop("cursor", None)
    data.pop("extra", None)
    return data


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""``MIGRATIONS[n]`` turns a version-n state document into version n+1; a file is upgraded step by step."""


def migrate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A state document upgraded, in order, to ``STATE_VERSION``; never thrown away. A file written by a
    newer syncd is refused (exit 2) rather than read wrongly."""
    version = data.get("state_version", 1)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise ConfigError(f"{path}: state version {version!r} is newer than this syncd understands "
                          f"({STATE_VERSION}); run the syncd that wrote it, or move the state folder away",
                          key="state.dir")
    while version < STATE_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["state_version"] = version
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, lambda fh: json.dump(data, fh, ensure_ascii=False, separators=(",", ":")))


def write_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    """``write`` fills a temp file beside ``path``, which then replaces it (fsync of the file and folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
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
        data = read_json(path)
        data = migrate(data, path) if isinstance(data, dict) else {}
        # doc_id -> [fingerprint, revision]
        self._fingerprints: dict[str, list[str]] | None = data.get("fingerprints", {})
        self.failures: dict[str, str] = data.get("failures", {})
        self.acl_policy: str = data.get("acl_policy", "")
        """The hash of the connector's ACL settings at the last full pass (``Engine.acl_policy``)."""
        self.dirty = False
        self._spill: TextIO | None = None

    @property
    def fingerprints(self) -> dict[str, list[str]]:
        if self._fingerprints is None:  # written from a spill file by save(): read back only if asked for
            data = read_json(self.path)
            self._fingerprints = migrate(data, self.path).get("fingerprints", {}) if isinstance(data, dict) else {}
        return self._fingerprints

    @property
    def spill_path(self) -> Path:
        return self.path.with_name(f".{self.path.stem}.fingerprints.jsonl")

    def spill_fingerprints(self) -> None:
        """Start the cache afresh, kept in a file beside the state file instead of memory until ``save``: a
        reindex of a large corpus then holds no per-document state (~330 bytes a document in a dict)."""
        self._fingerprints = {}
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._spill = open(self.spill_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by save()

    def set_fingerprint(self, doc_id: str, fingerprint: str, revision: str) -> None:
        if self._spill is not None:
            self._spill.write(json.dumps([doc_id, fingerprint, revision], ensure_ascii=False) + "\n")
        else:
            self.fingerprints[doc_id] = [fingerprint, revision]
        self.dirty = True

    def drop_spill(self) -> None:
        """A reindex that failed: its spilled fingerprints are not the cache, nor are the failures and ACL
        settings it recorded; all are read back from the state file, which is unchanged."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
            self._fingerprints = None
            self.spill_path.unlink(missing_ok=True)
            data = read_json(self.path)
            data = migrate(data, self.path) if isinstance(data, dict) else {}
            self.failures = data.get("failures", {})
            self.acl_policy = data.get("acl_policy", "")
            self.dirty = False

    def _write(self, fh: TextIO) -> None:
        def dump(value: object) -> str:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

        if self._spill is None:  # one call into the C encoder: the daemon saves after every batch
            fh.write(dump({"state_version": STATE_VERSION, "fingerprints": self.fingerprints,
                           "failures": self.failures, "acl_policy": self.acl_policy}))
            return
        fh.write('{"state_version":' + dump(STATE_VERSION) + ',"fingerprints":{')
        self._spill.close()
        entries = _chain_spill(self.spill_path, iter(self.fingerprints.items()))
        for i, (doc_id, value) in enumerate(entries):
            fh.write(("," if i else "") + dump(doc_id) + ":" + dump(value))
        fh.write('},"failures":' + dump(self.failures) + ',"acl_policy":' + dump(self.acl_policy) + "}")

    def save(self) -> None:
        write_atomic(self.path, self._write)
        if self._spill is not None:
            self._spill = None
            self._fingerprints = None  # on disk now; read back on first use
            self.spill_path.unlink(missing_ok=True)
        self.dirty = False


def _chain_spill(path: Path, first: Iterator[tuple[str, list[str]]]) -> Iterator[tuple[str, list[str]]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            doc_id, fingerprint, revision = json.loads(line)
            yield doc_id, [fingerprint, revision]
    yield from first


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
