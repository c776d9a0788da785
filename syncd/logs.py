"""structlog set-up: readable console output on a TTY, JSON lines otherwise (journald collects them)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from syncd.redact import redact_event


class _Deferred:
    """A module's logger that imports structlog at its first use. Modules that log only on some paths (the
    connectors, whose config classes every command reads) then do not make `syncd query`, which asks the
    daemon and logs nothing, import structlog and its console renderer."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str | None = None) -> Any:
    """``structlog.get_logger(name)``, imported when the logger is first used."""
    return _Deferred(name)


def configure(level: str = "info", fmt: str = "auto") -> None:
    import structlog

    numeric = getattr(logging, level.upper(), logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,  # after the traceback is text, so a secret in an exception is masked too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Library loggers (watchdog, apscheduler) go to stderr too, at warning and above.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
