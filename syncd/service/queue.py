"""The work queue between the sources and the writer: change hints, folder rescans and tasks."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.models import Change


@dataclass
class WorkQueue:
    """Pending work, de-duplicated: hints per (connector, doc id) keep the time first seen. Watchers, the
    scheduler and HTTP hooks push; only the writer takes."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    hints: dict[str, dict[str, float]] = field(default_factory=dict)
    rescans: dict[str, set[str]] = field(default_factory=dict)
    tasks: deque[tuple[str, Callable[[], None]]] = field(default_factory=deque)
    in_flight: dict[str, dict[str, float]] = field(default_factory=dict)

    def push(self, change: Change) -> None:
        seen = change.seen_at or time.time()
        with self.cond:
            if change.kind == "rescan":
                self.rescans.setdefault(change.connector, set()).add(change.doc_id)
            else:
                docs = self.hints.setdefault(change.connector, {})
                for doc_id in (change.doc_id, change.dest_id):
                    if doc_id:
                        docs[doc_id] = min(docs.get(doc_id, seen), seen)
            self.cond.notify()

    def push_task(self, name: str, fn: Callable[[], None]) -> None:
        """A task for the writer; one of each name waits at a time."""
        with self.cond:
            if all(n != name for n, _ in self.tasks):
                self.tasks.append((name, fn))
            self.cond.notify()

    def has_hint(self, connector: str, doc_id: str) -> bool:
        """A hint for the document is waiting (it changed again since the writer took its batch)."""
        return doc_id in self.hints.get(connector, ())

    def backlog(self, connector: str) -> tuple[int, float | None]:
        """(documents seen but not committed, first-seen time of the oldest): waiting and in flight."""
        with self.cond:
            pending = dict(self.in_flight.get(connector, {}))
            for doc_id, seen in self.hints.get(connector, {}).items():
                pending[doc_id] = min(seen, pending.get(doc_id, seen))
        times = pending.values()
        return len(pending), (min(times) if times else None)

    def empty(self) -> bool:
        with self.cond:
            return not any(self.hints.values()) and not any(self.rescans.values()) and not self.tasks

    def wake_all(self) -> None:
        with self.cond:
            self.cond.notify_all()
