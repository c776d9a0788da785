"""Errors raised by syncd.

The tree::

    SyncdError                     root of everything syncd raises on purpose
    ├── ConfigError                the config file is missing, unreadable or invalid (exit 2)
    ├── StoreError                 LanceDB could not be opened or written
    ├── AsOfUnavailable            no kept table version holds the index as it was at an as-of time
    ├── BadArgument                a malformed TIME, VERSION, cursor or limit of a read (HTTP 400, exit 2)
    ├── ModelError                 the embedding model could not be loaded
    ├── DocumentError              something is wrong with one document
    │   ├── DocumentSkipped        (terminal) the document is not indexable: binary, too big, ...
    │   └── DocumentUnavailable    (transient) the document could not be read right now
    └── ConnectorError             a connector as a whole failed (listing, remote down, ...)

Two mixins say what the engine does with an error:

* ``TransientError``: retry later with backoff; the cursor does not move past it.
* ``TerminalError``: record the reason, skip the document and carry on.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Root of the errors syncd raises on purpose."""


class TransientError:
    """Mixin: the failure may go away; retry with backoff."""


class TerminalError:
    """Mixin: retrying will not help; record, skip and carry on."""


class ConfigError(SyncdError):
    """The configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreError(SyncdError, TransientError):
    """LanceDB could not be opened, read or written."""


class ModelError(SyncdError, TerminalError):
    """The embedding model could not be loaded."""


class DocumentError(SyncdError):
    """A problem with one document; carries the connector, the doc id and a short reason code."""

    def __init__(self, reason: str, *, doc_id: str = "", connector: str = "", detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.doc_id = doc_id
        self.connector = connector
        self.detail = detail

    def describe(self) -> str:
        """The reason shown in summaries and status, e.g. ``binary: NUL byte in the first 8 KiB``."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class DocumentSkipped(DocumentError, TerminalError):
    """The document cannot be indexed as it is (binary, empty, oversized, undecodable, ...)."""


class DocumentUnavailable(DocumentError, TransientError):
    """The document could not be read now (permission denied, vanished mid-read, remote error)."""


class ConnectorError(SyncdError, TransientError):
    """A connector failed as a whole: a listing or the remote it talks to."""

    def __init__(self, message: str, *, connector: str = "") -> None:
        super().__init__(message)
        self.connector = connector


class RootUnavailable(ConnectorError):
    """The connector's root (a share, a repository, a wiki) is missing or unmounted.

    Raised instead of listing nothing, so an unmounted share is never read as "every document deleted".
    """


class MassDeletionRefused(SyncdError):
    """A cycle would delete more than the allowed share of a connector's documents."""

    def __init__(self, *, connector: str, would_delete: int, total: int, limit: float) -> None:
        super().__init__(
            f"connector {connector!r}: refusing to delete {would_delete} of {total} documents "
            f"(more than {limit:.0%}); run `syncd sync --connector {connector} --allow-mass-delete` to allow"
        )
        self.connector = connector
        self.would_delete = would_delete
        self.total = total
        self.limit = limit


class DocumentGone(DocumentError):
    """The document no longer exists at the source (deleted, or vanished while being read)."""


class AsOfUnavailable(SyncdError):
    """An as-of time the kept table versions cannot answer exactly; ``oldest`` is the oldest time available
    (unix time), None when no history is kept yet."""

    def __init__(self, message: str, *, oldest: float | None) -> None:
        super().__init__(message)
        self.oldest = oldest


class BadArgument(SyncdError):
    """A malformed argument of a read (``since``, ``as_of``, ``cursor``, ``limit``); ``key`` names it."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
