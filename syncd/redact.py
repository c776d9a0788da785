"""Secrets kept out of every line syncd writes: logs, ``/status``, ``/metrics`` and error messages.

The store's credentials reach syncd from the environment (``AWS_SECRET_ACCESS_KEY``...) or from a
``*_env`` key of ``[store.storage_options]``. Each value is registered here when it is read; the log
renderer and the store's error translation pass their text through ``redact``, so a library that echoes a
request (a URL, a header) into its error cannot carry a secret out.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import MutableMapping
from typing import Any

SECRET_OPTION = re.compile(r"(secret|password|token|access_key|account_key|sas_|service_account|credential|"
                           r"client_id|session)", re.IGNORECASE)
"""Storage option keys that hold credentials: refused in the config file (a ``*_env`` key names them)."""

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY",
              "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_TOKEN", "AZURE_CLIENT_SECRET", "GOOGLE_SERVICE_ACCOUNT_KEY")
"""The standard credential variables the object-store clients read by themselves."""

MASK = "***"
_MIN_LEN = 4  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """From now on ``redact`` masks ``value``."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def register_environment() -> None:
    """Register the credentials the standard variables hold (the store's clients read them by themselves)."""
    for name in SECRET_ENV:
        register_secret(os.environ.get(name))


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every string value of a log event passes through ``redact``."""
    if not _secrets:
        return event
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}
