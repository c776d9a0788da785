"""The long-running service (`syncd run`), one file per thread or concern:

* ``lifecycle.py``   ``Service``: builds the parts, starts and stops them, signals, reload, the main loop,
                     and the read side HTTP calls (search, status, health)
* ``queue.py``       ``WorkQueue``: change hints, folder rescans and tasks waiting for the writer
* ``writer.py``      ``Writer``: the writer thread (one batch at a time), polls off the writer, backoff,
                     catch-up, deferred documents and held deletions
* ``maintenance.py`` the maintenance policy and its "is it due" checks, compaction, index folds (the
                     folder thread), the full maintenance, the overdue check
* ``status.py``      the /status document, each connector's state derived from facts, stalls, health and
                     readiness problems, the systemd status line, the status page
* ``requests.py``    operator requests handed over through the state folder (approvals, repairs)
"""

from __future__ import annotations

from syncd.service.lifecycle import Service
from syncd.service.status import RETRY_BUDGET, build_status

__all__ = ["RETRY_BUDGET", "Service", "build_status"]
