"""Who may read a document: principals, a document's ACL, and the search filter built from a caller's.

A principal is ``user:NAME``, ``group:NAME`` or ``everyone`` (any caller, authenticated or not). A
document's ACL (the ``acl`` column of every chunk row) is a sorted list of entries:

* a principal: callers holding it may read the document;
* ``!user:NAME``, a deny entry: that user may not, whatever else the ACL grants (a POSIX file whose owner
  has no read bit while its group or others have one; only connectors that capture such rules write them).

A caller holding principals ``P`` may read a document when the ACL holds one of ``P`` or ``everyone``, and
no ``!user:`` entry names one of the users in ``P``. An empty ACL (or a row whose ACL was never computed,
null) is readable by nobody: deny by default. The filter is an SQL expression that LanceDB evaluates with
the label-list index of ``acl`` before ranking, so a caller gets k results whenever k readable rows exist.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from syncd.errors import SyncdError

EVERYONE = "everyone"
DENY = "!"
KINDS = ("user", "group")
MAX_NAME = 256


class PrincipalError(SyncdError, ValueError):
    """A principal string that is not ``user:NAME``, ``group:NAME`` or ``everyone``."""


def check_principal(value: object) -> str:
    """``value`` when it is a valid principal, else PrincipalError saying what is wrong with it."""
    if not isinstance(value, str):
        raise PrincipalError(f"principal {value!r}: expected a string")
    if value == EVERYONE:
        return value
    kind, sep, name = value.partition(":")
    if not sep or kind not in KINDS:
        raise PrincipalError(f"principal {value!r}: expected user:NAME, group:NAME or everyone")
    if not name:
        raise PrincipalError(f"principal {value!r}: the name after {kind}: is empty")
    if len(name) > MAX_NAME:
        raise PrincipalError(f"principal {value[:40]!r}...: the name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise PrincipalError(f"principal {value!r}: the name holds a control character")
    return value


def check_entry(value: object) -> str:
    """An ACL entry: a principal or a ``!user:NAME`` deny entry."""
    if isinstance(value, str) and value.startswith(DENY):
        inner = check_principal(value[1:])
        if not inner.startswith("user:"):
            raise PrincipalError(f"ACL entry {value!r}: only users can be denied (!user:NAME)")
        return value
    return check_principal(value)


def normalize(entries: Iterable[str]) -> tuple[str, ...]:
    """An ACL as stored: unique entries, sorted (so equal ACLs compare equal)."""
    return tuple(sorted(set(entries)))


def effective(captured: Sequence[str] | None, *, override: Sequence[str] | None, extra: Sequence[str] = (),
              mapping: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The ACL a document is stored with: the configured ``override`` when set, else what the connector
    captured, renamed through ``mapping`` (a source identity to a principal; deny entries are renamed by
    the principal they name) and extended with ``extra``. None when nothing determined it (the caller then
    stores an empty ACL: readable by nobody)."""
    if override is not None:
        return normalize([*override, *extra])
    if captured is None:
        return normalize(extra) if extra else None
    mapping = mapping or {}
    out = []
    for entry in captured:
        deny = entry.startswith(DENY)
        name = entry[1:] if deny else entry
        name = mapping.get(name, name)
        out.append(DENY + name if deny else name)
    return normalize([*out, *extra])


def policy_key(override: Sequence[str] | None, extra: Sequence[str], mapping: Mapping[str, str]) -> str:
    """A short hash of a connector's ACL settings: when it changes, every document's ACL is recomputed."""
    data = json.dumps([list(override) if override is not None else None, sorted(extra), sorted(mapping.items())])
    return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


def readable(acl: Sequence[str] | None, principals: Iterable[str] | None) -> bool:
    """What the search filter decides, in Python (for /status): may a caller holding ``principals`` read a
    document with this ACL?"""
    if not acl:
        return False
    held = set(principals or ()) | {EVERYONE}
    if not held.intersection(acl):
        return False
    return not any(DENY + p in acl for p in held if p.startswith("user:"))


def sql_string(value: str) -> str:
    """A SQL string literal: single quotes doubled, NUL rejected."""
    if "\x00" in value:
        raise ValueError("NUL cannot appear in a filter value")
    return "'" + value.replace("'", "''") + "'"


def search_filter(principals: Iterable[str] | None) -> str:
    """The prefilter for a caller holding ``principals`` (None or empty: only ``everyone`` documents).
    Every value is checked and escaped; nothing a caller sends reaches the expression raw."""
    held = sorted({check_principal(p) for p in principals or ()} | {EVERYONE})
    expr = "array_has_any(acl, [" + ", ".join(sql_string(p) for p in held) + "])"
    users = [DENY + p for p in held if p.startswith("user:")]
    if users:
        expr += " AND NOT array_has_any(acl, [" + ", ".join(sql_string(u) for u in users) + "])"
    return expr
