"""Process-wide allocator setting, applied once at start by the CLI."""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas (``MALLOC_ARENA_MAX``)."""
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX=2`` would.

    glibc gives threads that allocate at the same time arenas of their own (up to eight per core) and keeps
    the memory freed in each for reuse there; with LanceDB's, Arrow's and torch's thread pools a process's
    RSS then follows the work it has done rather than the data it holds
    (``benchmarks/diagnostics/reindex_rss.py``). The CLI sets it for the batch commands only: in `syncd run`
    the cap slowed the multi-threaded flat vector scans of `/search` (an A/B of the query benchmark), so the
    service keeps glibc's default; an operator may set ``MALLOC_ARENA_MAX`` in the unit to trade that for a
    smaller footprint (benchmarks/README.md has the figures). Does nothing off glibc, or when the environment
    sets ``MALLOC_ARENA_MAX`` itself. Returns whether the cap was set."""
    if sys.platform != "linux" or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
