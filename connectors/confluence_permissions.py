"""Who may read a Confluence page, from the REST API's answers (v1; Cloud and Data Center).

Confluence lets a user see a page when the user may view its space **and** passes the read restriction of
the page and of every ancestor page (a read restriction is inherited by all descendants; an empty one
restricts nothing). Each restriction and each space permission is a union (listed users, members of listed
groups, or anyone); a page's readers are the intersection of all of them. An ACL is a union of principals,
so the intersection is written as well as a list of principals can write it, never wider than Confluence:

* ``everyone`` only when the space may be viewed anonymously and no page on the way is restricted;
* ``group:G`` when G is named by the space permission (or the space is anonymous) and by every restriction;
* ``user:U`` when U passes every one of them: named in it, or a member of a group it names (group members
  as ``/rest/api/group/{name}/member`` lists them; a group whose members cannot be listed counts as holding
  nobody, which can only leave users out).

Answers read (shapes as documented for REST API v1):

* read restriction: ``GET /rest/api/content/{id}/restriction/byOperation/read`` (``restrictions.user`` and
  ``restrictions.group`` expanded by default), or the same object in a content answer with
  ``expand=restrictions.read.restrictions.user,restrictions.read.restrictions.group``;
* space permissions: ``GET /rest/api/space/{key}?expand=permissions`` (Cloud and Server: ``permissions``, each
  ``{operation: {operation, targetType}, subjects: {user: {results}, group: {results}}, anonymousAccess}``), or
  Data Center's ``GET /rest/api/space/{key}/permissions`` (a list of ``{operation: {operationKey, targetType},
  subject: {type, ...}}``).

Users are named by ``username`` (Data Center), else ``accountId`` (Cloud), else ``userKey``; map them to the
organisation's names with the connector's ``principal_map``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Undetermined(ValueError):
    """An answer that does not say who may read (an unexpected shape, a refusal): the page is then stored
    readable by nobody, with this reason in /status."""


@dataclass(frozen=True, slots=True)
class Readers:
    """Whom one space permission or one read restriction lets read: listed users, members of listed groups,
    or anyone."""

    users: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)
    anyone: bool = False


def user_name(user: Any) -> str | None:
    """How a Confluence user is named in principals: username, else account id, else user key."""
    if not isinstance(user, Mapping):
        return None
    for key in ("username", "accountId", "userKey"):
        value = user.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _results(container: Any, what: str) -> list[Any]:
    if not isinstance(container, Mapping) or not isinstance(container.get("results"), list):
        raise Undetermined(f"the answer holds no list of {what}")
    return list(container["results"])


def parse_restriction(data: Any) -> Readers | None:
    """A read restriction object (``{operation: "read", restrictions: {user: {results}, group: {results}}}``)
    as Readers; None when it restricts nothing (no user, no group)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("restrictions"), Mapping):
        raise Undetermined("the read restriction's users and groups are missing from the answer")
    restrictions = data["restrictions"]
    users = {user_name(u) for u in _results(restrictions.get("user"), "restricting users")}
    groups = {g.get("name") for g in _results(restrictions.get("group"), "restricting groups") if isinstance(g, Mapping)}
    if None in users or None in groups:
        raise Undetermined("a restricting user or group has no name in the answer")
    if not users and not groups:
        return None
    return Readers(users=frozenset(u for u in users if u), groups=frozenset(g for g in groups if g))


def parse_space_permissions(space: Any) -> Readers:
    """Who may view a space, from ``/rest/api/space/{key}?expand=permissions``."""
    if not isinstance(space, Mapping) or not isinstance(space.get("permissions"), list):
        raise Undetermined("the space answer holds no permissions (expand=permissions)")
    users: set[str] = set()
    groups: set[str] = set()
    anyone = False
    for perm in space["permissions"]:
        op = perm.get("operation") if isinstance(perm, Mapping) else None
        if not isinstance(op, Mapping) or op.get("operation") != "read" or op.get("targetType") != "space":
            continue
        anyone = anyone or perm.get("anonymousAccess") is True
        subjects = perm.get("subjects") or {}
        if "user" in subjects:
            users.update(n for u in _results(subjects["user"], "users") if (n := user_name(u)))
        if "group" in subjects:
            groups.update(str(g["name"]) for g in _results(subjects["group"], "groups")
                          if isinstance(g, Mapping) and g.get("name"))
    return _viewers(users, groups, anyone)


def parse_dc_space_permissions(items: Any) -> Readers:
    """Who may view a space, from Data Center's ``/rest/api/space/{key}/permissions``."""
    if not isinstance(items, list):
        raise Undetermined("the space permissions answer is not a list")
    users: set[str] = set()
    groups: set[str] = set()
    anyone = False
    for perm in items:
        op = perm.get("operation") if isinstance(perm, Mapping) else None
        if not isinstance(op, Mapping) or op.get("operationKey") != "read" or op.get("targetType") != "space":
            continue
        subject = perm.get("subject") or {}
        kind = subject.get("type")
        if kind == "anonymous":
            anyone = True
        elif kind == "group" and (name := subject.get("name") or subject.get("groupName")):
            groups.add(str(name))
        elif kind == "user" and (name := user_name(subject)):
            users.add(name)
    return _viewers(users, groups, anyone)


def _viewers(users: set[str], groups: set[str], anyone: bool) -> Readers:
    if not (users or groups or anyone):
        # The token reads the space, so someone may view it: an answer granting nobody is incomplete
        # (permissions hidden from this token), not a space nobody may view.
        raise Undetermined("the space permissions name no one who may view the space (are they visible to the "
                           "token's user?)")
    return Readers(users=frozenset(users), groups=frozenset(groups), anyone=anyone)


def page_acl(space: Readers, restrictions: Sequence[Readers | None],
             members: Callable[[str], frozenset[str]]) -> tuple[str, ...]:
    """The principals who may read a page: those of ``space`` (who may view its space) that pass every one
    of ``restrictions`` (its ancestors' and its own; None: not restricted). ``members(group)`` lists a
    group's users (empty when unknown)."""
    sets = [space, *(r for r in restrictions if r is not None)]
    limited = [s for s in sets if not s.anyone]
    if not limited:
        return ("everyone",)
    groups = {g for g in limited[0].groups if all(g in s.groups for s in limited)}
    # A user qualifies through any set, so the candidates come from the narrowest: the last restriction.
    last = limited[-1]
    candidates: set[str] = set(last.users)
    for group in last.groups - groups:
        candidates |= members(group)

    def passes(user: str, readers: Readers) -> bool:
        return user in readers.users or any(user in members(g) for g in readers.groups)

    users = {u for u in candidates if all(passes(u, s) for s in limited)}
    return tuple(sorted([*(f"group:{g}" for g in groups), *(f"user:{u}" for u in users)]))


def names(users: Iterable[Any]) -> frozenset[str]:
    """The names of the users in a member listing."""
    return frozenset(n for u in users if (n := user_name(u)))
