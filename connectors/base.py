"""The connector interface.

A connector says what a source holds and what changed in it; the engine decides what to do. It never
touches the store, the embedder, the scheduler or HTTP.

Errors a connector raises (all from ``syncd.errors``):

* ``DocumentGone`` from ``read``: the document no longer exists; the engine deletes it.
* ``DocumentSkipped`` from ``read``: it exists but cannot be indexed (binary, too large...); the engine
  removes any old copy and records the reason.
* ``DocumentUnavailable`` from ``read``: it could not be read now; the old copy stays, the reason is
  recorded, and it is tried again on the next cycle.
* ``RootUnavailable`` from ``list_documents``: the whole source is missing (unmounted share, deleted
  repository); nothing is deleted.
* ``ConnectorError`` from anything: the source failed as a whole; retried with backoff.
"""

from __future__ import annotations

import abc
import codecs
import fnmatch
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from syncd.config import ConnectorConfig, LimitsConfig
from syncd.models import Change, DocumentRef, SourceDocument


def _percent_escape(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start:error.end]
    return "".join(f"%{b:02X}" for b in bad), error.end


codecs.register_error("syncd-percent", _percent_escape)

_ESCAPED_BYTE = re.compile(rb"%([89A-F][0-9A-F])")


def doc_id_from_bytes(raw: bytes) -> str:
    """A source path given as bytes (POSIX names, git paths) as a doc id: valid Unicode, always.

    Bytes that are not UTF-8 are written ``%XX`` (upper-case hex, always 80-FF: ASCII is valid UTF-8), so
    a file named with Latin-1 bytes is indexed, cited and filtered like any other; every valid name is
    its own doc id, unchanged.
    """
    return raw.decode("utf-8", "syncd-percent")


def doc_id_from_name(name: str) -> str:
    """``doc_id_from_bytes`` for a name the OS decoded with surrogate escapes (``os.fsdecode``,
    ``os.scandir`` on a str path)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return doc_id_from_bytes(name.encode("utf-8", "surrogateescape"))
    return name


def name_candidates(doc_id: str) -> list[bytes]:
    """The source paths a doc id may stand for, most literal first: the id itself, then (when it holds
    ``%XX`` escapes of non-UTF-8 bytes) those bytes. A decoded candidate is kept only if it maps back to
    the same id, so ``caf%C3%A9`` (valid UTF-8 once decoded) never stands for ``café``."""
    literal = doc_id.encode("utf-8", "surrogateescape")
    if b"%" not in literal:
        return [literal]
    decoded = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), literal)
    if decoded != literal and doc_id_from_bytes(decoded) == doc_id:
        return [literal, decoded]
    return [literal]


def is_valid_doc_id(doc_id: str) -> bool:
    """Whether a doc id can be stored, hashed and shown: non-empty, valid Unicode, no NUL."""
    if not doc_id or "\x00" in doc_id:
        return False
    try:
        doc_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class ConnectorContext:
    """What the engine gives a connector: a private state folder and the size limits."""

    state_dir: Path
    """A folder of the connector's own (mirrors, caches); it survives restarts."""
    base_dir: Path
    """The config file's folder: relative paths in the connector's config resolve against it."""
    limits: LimitsConfig


def matches_globs(path: str, patterns: Sequence[str]) -> bool:
    """Whether a relative ``/`` path matches any of the include/exclude globs. ``*`` also crosses folders,
    and a leading ``**/`` matches at the top level too (``**/*.md`` matches ``a.md``)."""
    return _compiled(tuple(patterns)).match(path) is not None


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """All patterns as one regular expression: a listing tests every path against every pattern."""
    alternatives = []
    for pattern in patterns:
        alternatives.append(fnmatch.translate(pattern))
        if pattern.startswith("**/"):
            alternatives.append(fnmatch.translate(pattern[3:]))
    return re.compile("|".join(f"(?:{a})" for a in alternatives) or r"(?!)")


class Watch(abc.ABC):
    """A running watcher that pushes change hints."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop watching; idempotent."""

    @abc.abstractmethod
    def is_alive(self) -> bool:
        """False when the watcher died and must be restarted (the engine then rescans)."""

    @property
    def mode(self) -> str:
        return "events"


class Connector(abc.ABC):
    """A source of documents."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[ConnectorConfig]]

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name

    @abc.abstractmethod
    def list_documents(self) -> Iterator[DocumentRef]:
        """Every indexable document at the source now, with a cheap fingerprint.

        Raises RootUnavailable when the source itself is missing, never an empty listing for it.
        """

    @abc.abstractmethod
    def read(self, doc_id: str) -> SourceDocument:
        """The document's content and metadata. Raises DocumentGone, DocumentSkipped or DocumentUnavailable."""

    def check_available(self) -> None:
        """Raise RootUnavailable when the source itself is missing now.

        The engine asks before it deletes documents that a watcher or a poll reported gone, so a share that
        was unmounted is never read as "these documents were deleted".
        """
        return None

    def watch(self, sink: Callable[[Change], None]) -> Watch | None:
        """Start pushing change hints to ``sink`` (from any thread); None when the source is polled."""
        return None

    @property
    def poll_interval(self) -> float | None:
        """Seconds between polls for polled sources; None for watched ones."""
        return None

    @property
    def reconcile_interval(self) -> float | None:
        """Seconds between full reconcile scans (None: never on a schedule)."""
        return None

    def poll(self) -> Iterator[Change] | None:
        """Incremental changes since the connector's cursor, or None to fall back to a full listing."""
        return None

    @property
    def check_interval(self) -> float | None:
        """Seconds between cheap checks for news (``has_changes``) of a polled source; None: no checks."""
        return None

    def has_changes(self) -> bool:
        """A cheap check (one small request) whether the source changed since the last poll; True makes the
        service poll at once. Runs beside polls and reads, on a scheduler thread."""
        return False

    def commit_cursor(self) -> None:  # noqa: B027 - optional hook; most connectors have no cursor
        """Called once the changes returned by the last poll() are committed to the store."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
