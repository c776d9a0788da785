"""Operator requests handed to the running service through the state folder: `syncd sync --connector NAME
--allow-mass-delete` and `syncd verify --repair` leave a request file there when the service holds the
writer lock; the main loop hands each to the writer as a task, and the answer goes back beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from syncd.service.lifecycle import Service

log = structlog.get_logger("syncd.requests")


class Requests:
    def __init__(self, service: Service) -> None:
        self.service = service
        self._queued: set[str] = set()

    def check(self) -> None:
        """Queue every request not queued yet (main loop)."""
        from syncd.approvals import pending_mass_deletes, pending_repairs

        for name, path in pending_mass_deletes(self.service.config.state_dir):
            self._queue(f"allow-mass-delete:{name}", lambda name=name, path=path: self._allow_mass_delete(name, path))
        for name, path in pending_repairs(self.service.config.state_dir):
            self._queue(f"repair:{name}", lambda name=name, path=path: self._repair(name, path))

    def _queue(self, key: str, run: Any) -> None:
        if key in self._queued:
            return
        self._queued.add(key)

        def task() -> None:
            try:
                run()
            finally:
                self._queued.discard(key)

        self.service.queue.push_task(key, task)

    def _allow_mass_delete(self, name: str, path: Path) -> None:
        from syncd.approvals import answer

        rt = self.service.runtime
        assert rt is not None
        if name in rt.engine.connectors:
            result = rt.engine.reconcile(name, allow_mass_delete=True).as_dict()
            log.info("sync.mass_delete_allowed", connector=name, docs_deleted=result["docs_deleted"])
        else:
            result = {"error": f"no connector named {name!r}"}
        rt.state.save()
        answer(path, result)

    def _repair(self, name: str, path: Path) -> None:
        from syncd.approvals import ALL_CONNECTORS, answer
        from syncd.verify import repair, verify

        rt = self.service.runtime
        assert rt is not None
        only = None if name == ALL_CONNECTORS else name
        before = verify(rt, connector=only)
        result: dict[str, Any] = {"before": before.as_dict()}
        if not before.ok:
            result["repaired"] = repair(rt, before).as_dict()
            log.info("verify.repaired", connector=name,
                     **{k: len(v) for k, v in before.as_dict().items() if isinstance(v, list)})
        result["after"] = verify(rt, connector=only).as_dict()
        rt.state.save()
        answer(path, result)
