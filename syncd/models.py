"""Data passed between the stages: frozen, keyword-only dataclasses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True, slots=True)
class DocumentRef:
    """A document as a listing sees it, before it is read.

    ``fingerprint`` is cheap to get (file: mtime and size; git: blob sha; wiki: revid). When it equals the
    fingerprint seen last time, the engine trusts that the content is unchanged and does not read it.
    """

    doc_id: str
    fingerprint: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceDocument:
    """A document read from its source: raw content plus citation metadata."""

    doc_id: str
    fingerprint: str
    revision: str
    uri: str
    title: str
    content: bytes
    media_type: str
    """One of the extractor types: markdown, text, rst, html, pdf, wikitext."""
    modified_at: dt.datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_id: str = ""
    """Identity of the content (blob sha, content hash) when ``revision`` names something else, such as a
    commit or a wiki revid. Two documents with equal ``identity`` hold the same content: equal identity
    means unchanged, and a deleted and an added document with equal identity are a rename."""
    uri_template: str = ""
    """A per-chunk citation URI with ``{start_line}`` and ``{end_line}`` fields (a web view's line anchor);
    "" when ``uri`` serves every chunk."""
    acl: tuple[str, ...] | None = None
    """Who may read the document at the source (``syncd.acl``: ``user:NAME``, ``group:NAME``, ``everyone``,
    ``!user:NAME``), as the source names them; None when the connector could not determine it (the document
    is then readable by nobody unless the connector's ``acl`` is configured)."""
    acl_note: str = ""
    """Why ``acl`` is None (shown in /status)."""

    @property
    def identity(self) -> str:
        return self.content_id or self.revision


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """A hint from a watcher: something about ``doc_id`` may have changed.

    Hints are never trusted as the truth: the engine re-reads the source before it writes.
    ``kind`` is ``upsert``, ``delete``, ``move`` (``doc_id`` moved to ``dest_id``) or ``rescan``
    (``doc_id`` is a folder prefix, "" for the whole connector, to be compared with the source).
    """

    connector: str
    kind: str
    doc_id: str
    dest_id: str | None = None
    seen_at: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Block:
    """A structural unit of a document's text: a paragraph, list, code block or table."""

    text: str
    heading_path: tuple[str, ...]
    start_line: int
    end_line: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Chunk:
    """A piece of a document small enough to embed, with what a citation needs."""

    text: str
    index: int
    heading_path: tuple[str, ...]
    start_line: int
    end_line: int
    content_hash: str


@dataclass(kw_only=True, slots=True)
class Failure:
    """A document that could not be indexed, and why."""

    connector: str
    doc_id: str
    reason: str
    skipped: bool = False
    """Not indexable as it is (binary, empty, too large, a symlink out of the root): recorded with its
    reason, not a failure of the run."""
    holds_cursor: bool = False
    """The connector's cursor must not move past this cycle: the whole connector failed, or a batch could not
    be committed for a reason that may pass. Set by the engine from the error's class."""

    def as_dict(self) -> dict[str, object]:
        return {"connector": self.connector, "doc_id": self.doc_id, "reason": self.reason, "skipped": self.skipped}


@dataclass(kw_only=True, slots=True)
class SyncSummary:
    """What one sync or reindex did; the JSON shape of ``syncd sync --json``."""

    docs_seen: int = 0
    docs_changed: int = 0
    docs_added: int = 0
    docs_deleted: int = 0
    docs_renamed: int = 0
    docs_unchanged: int = 0
    docs_failed: int = 0
    docs_skipped: int = 0
    docs_deferred: int = 0
    """Documents whose embedding went past the cycle's budget: their vectors so far are kept and they are
    finished in a later cycle, after smaller documents."""
    docs_abandoned: int = 0
    """Documents changed or deleted again while they were being embedded: their stale work was dropped."""
    docs_permissions: int = 0
    """Documents whose content was unchanged but whose permissions changed: their rows' ``acl`` was
    rewritten, nothing embedded."""
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    model_load_seconds: float = 0.0
    """Part of ``seconds``: the model's fixed start cost in this run (loading it, and the one-time ONNX export
    when this run did it); 0 when nothing needed the model."""
    failures: list[Failure] = field(default_factory=list)

    def merge(self, other: SyncSummary) -> None:
        """Add ``other``'s counts to this one."""
        for name in (
            "docs_seen", "docs_changed", "docs_added", "docs_deleted", "docs_renamed", "docs_unchanged",
            "docs_failed", "docs_skipped", "docs_deferred", "docs_abandoned", "docs_permissions", "chunks_embedded",
            "chunks_reused",
            "chunks_deleted",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        self.model_load_seconds += other.model_load_seconds
        self.failures.extend(other.failures)

    @property
    def problems(self) -> list[Failure]:
        """The failures that make a run fail (exit 1): every one but documents skipped with a reason."""
        return [f for f in self.failures if not f.skipped]

    def as_dict(self) -> dict[str, object]:
        return {
            "docs_seen": self.docs_seen,
            "docs_changed": self.docs_changed,
            "docs_added": self.docs_added,
            "docs_deleted": self.docs_deleted,
            "docs_renamed": self.docs_renamed,
            "docs_unchanged": self.docs_unchanged,
            "docs_failed": self.docs_failed,
            "docs_skipped": self.docs_skipped,
            "docs_deferred": self.docs_deferred,
            "docs_abandoned": self.docs_abandoned,
            "docs_permissions": self.docs_permissions,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_deleted": self.chunks_deleted,
            "seconds": round(self.seconds, 4),
            "model_load_seconds": round(self.model_load_seconds, 4),
            "failures": [f.as_dict() for f in self.failures],
        }
