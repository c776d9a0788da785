"""Requests a human hands to the running service through the state folder.

`syncd sync --connector NAME --allow-mass-delete` and `syncd verify --repair` cannot write while the
service holds the writer lock, and HTTP is read-only, so the CLI leaves a request file in
``<state>/requests/``; the service's writer runs the allowed reconcile (or the repair), writes the result
next to it and removes the request. Files are written
atomically (see ``syncd.state``), so a crash on either side leaves either no request or a whole one: an
unanswered request is picked up again when the service restarts.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from syncd.state import read_json, write_json_atomic

REQUEST_VERSION = 1
_PREFIX = "allow-mass-delete."
_REPAIR_PREFIX = "repair."
ALL_CONNECTORS = "*"


def _folder(state_dir: Path) -> Path:
    return state_dir / "requests"


def request_mass_delete(state_dir: Path, connector: str) -> Path:
    """Ask the service to run one reconcile of ``connector`` that may delete past the guard."""
    path = _folder(state_dir) / f"{_PREFIX}{connector}.json"
    result = path.with_suffix(".result.json")
    try:
        result.unlink()
    except FileNotFoundError:
        pass
    write_json_atomic(path, {"state_version": REQUEST_VERSION, "connector": connector, "id": uuid.uuid4().hex,
                             "requested_at": time.time()})
    return path


def request_repair(state_dir: Path, connector: str | None) -> Path:
    """Ask the service to run `verify --repair` (for one connector, or all when ``connector`` is None)."""
    name = connector or ALL_CONNECTORS
    path = _folder(state_dir) / f"{_REPAIR_PREFIX}{'all' if connector is None else connector}.json"
    try:
        path.with_suffix(".result.json").unlink()
    except FileNotFoundError:
        pass
    write_json_atomic(path, {"state_version": REQUEST_VERSION, "connector": name, "id": uuid.uuid4().hex,
                             "requested_at": time.time()})
    return path


def pending_repairs(state_dir: Path) -> list[tuple[str, Path]]:
    """(connector or "*", request file) of every unanswered repair request."""
    return _pending(state_dir, _REPAIR_PREFIX)


def pending_mass_deletes(state_dir: Path) -> list[tuple[str, Path]]:
    """(connector, request file) of every unanswered request."""
    return _pending(state_dir, _PREFIX)


def _pending(state_dir: Path, prefix: str) -> list[tuple[str, Path]]:
    folder = _folder(state_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(f"{prefix}*.json")):
        if path.name.endswith(".result.json"):
            continue
        data = read_json(path)
        if isinstance(data, dict) and data.get("state_version") == REQUEST_VERSION and data.get("connector"):
            out.append((str(data["connector"]), path))
    return out


def answer(path: Path, result: dict[str, Any]) -> None:
    """Record what the allowed run did, then drop the request."""
    data = read_json(path) or {}
    write_json_atomic(path.with_suffix(".result.json"), {**result, "id": data.get("id")})
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def wait_answer(path: Path, timeout: float, alive: Any = None) -> dict[str, Any] | None:
    """The service's answer to the request at ``path``, or None after ``timeout`` seconds or when
    ``alive()`` says the service is gone."""
    wanted = (read_json(path) or {}).get("id")
    result = path.with_suffix(".result.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = read_json(result)
        if isinstance(data, dict) and data.get("id") == wanted:
            data.pop("id", None)
            return data
        if alive is not None and not alive():
            return None
        time.sleep(0.1)
    return None
