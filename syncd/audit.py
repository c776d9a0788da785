"""Reading the audit trail: the change journal's public shape (/changes, `syncd history`, the Python API) and
the TIME / VERSION arguments of `since` and `as_of`.

The journal itself lives in the store (``syncd.store.Journal``); this module only turns its rows into the
documented shape and parses what callers send. Entries never carry chunk text.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from syncd.errors import BadArgument

PUBLIC_FIELDS = ("connector", "doc_id", "action", "old_doc_id", "revision", "previous_revision", "chunks_embedded",
                 "chunks_reused", "chunks_deleted", "table_version", "seen_at", "committed_at")
MAX_LIMIT = 1000


def iso(ts: float | None) -> str | None:
    """Unix time as ISO 8601 UTC with microseconds (an as-of at exactly this time finds the same version)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str, *, key: str) -> float:
    """ISO 8601 (``2026-03-03T12:00:00Z``, fractions and offsets allowed; no zone means UTC) as unix time."""
    text = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadArgument(f"expected an ISO 8601 time such as 2026-03-03T12:00:00Z, got {value!r}", key=key) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def parse_since(value: str) -> dict[str, Any]:
    """``since``: a table version (a whole number: changes made after it) or a TIME (changes committed at or
    after it), as keyword arguments of ``Journal.read``."""
    text = value.strip()
    if text.isdigit():
        return {"since_version": int(text)}
    return {"since_time": parse_time(text, key="since")}


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A journal row in the documented shape (times ISO 8601), plus ``repaired`` (an entry written at
    start-up from the table's version history after a crash: ``seen_at`` is then unknown) and ``seq`` (the
    entry's number: unique in the store, whichever daemon wrote it, and the cursor of ``order=oldest``)."""
    out = {name: row.get(name) for name in PUBLIC_FIELDS}
    out["seq"] = row.get("seq")
    out["seen_at"] = iso(row.get("seen_at"))
    out["committed_at"] = iso(row.get("committed_at"))
    out["repaired"] = bool(row.get("repaired"))
    return out


def changes_page(journal: Any, *, since: str | None = None, connector: str | None = None,
                 doc_id: str | None = None, limit: int | str | None = None, cursor: str | None = None,
                 order: str | None = None) -> dict[str, Any]:
    """One /changes page: ``{"changes": [...], "next_cursor": ..., "order": ...}``.

    Oldest first by default: the cursor is the last entry's sequence number, and every later page starts
    after it. Numbers follow the journal's commit order without gaps, whichever daemon appended, so paging
    while writes continue yields every entry exactly once (new ones come at the end);
    ``next_cursor`` is always set, and an empty page means caught up for now. ``order=newest`` pages back in
    time; its ``next_cursor`` is null once the oldest entry was returned."""
    order = (order or "oldest").strip().lower()
    if order not in ("oldest", "newest"):
        raise BadArgument(f"expected oldest or newest, got {order!r}", key="order")
    try:
        size = 100 if limit in (None, "") else int(limit)
    except ValueError:
        raise BadArgument(f"expected a whole number, got {limit!r}", key="limit") from None
    if not 1 <= size <= MAX_LIMIT:
        raise BadArgument(f"must be between 1 and {MAX_LIMIT}", key="limit")
    after: int | None = None
    if cursor not in (None, ""):
        assert cursor is not None
        if not cursor.strip().isdigit():
            raise BadArgument(f"not a cursor this endpoint returned: {cursor!r}", key="cursor")
        after = int(cursor)
    filters = parse_since(since) if since else {}
    newest = order == "newest"
    if not journal.exists():
        return {"changes": [], "next_cursor": None if newest else (cursor or "0"), "order": order}
    rows = journal.read(after=None if newest else after, before=after if newest else None, connector=connector,
                        doc_id=doc_id, limit=size + 1, newest_first=newest, **filters)
    more = len(rows) > size
    rows = rows[:size]
    if newest:
        next_cursor = str(rows[-1]["seq"]) if more and rows else None
    else:
        next_cursor = str(rows[-1]["seq"]) if rows else (cursor or "0")
    return {"changes": [public(r) for r in rows], "next_cursor": next_cursor, "order": order, "has_more": more}


def history_line(entry: dict[str, Any]) -> str:
    """One human-readable line of `syncd history`."""
    action = entry["action"]
    what = f"{entry['connector']}:{entry['doc_id']}"
    if action == "renamed":
        what = f"{entry['connector']}:{entry['old_doc_id']} -> {entry['doc_id']}"
    revs = ""
    if entry.get("previous_revision") or entry.get("revision"):
        revs = f" {(entry.get('previous_revision') or '-')[:12]} -> {(entry.get('revision') or '-')[:12]}"
    chunks = (f" chunks +{entry['chunks_embedded'] or 0} embedded, {entry['chunks_reused'] or 0} reused, "
              f"-{entry['chunks_deleted'] or 0} deleted")
    tail = " (repaired)" if entry.get("repaired") else ""
    return f"{entry['committed_at']}  v{entry['table_version']}  {action:<8} {what}{revs}{chunks}{tail}"
