"""Who may read a file: POSIX mode bits, POSIX ACLs (``system.posix_acl_access``) and the folders above it.

The rules are the kernel's (acl(5), "access check algorithm"): the owner is judged by the owner bits alone;
a user named in an ACL entry by that entry (within the mask); else, if any of the caller's groups (the
owning group or a named group) has an entry granting the access, it is granted, and if some matched but
none grants it, refused; else the "other" bits decide. A file is readable when it grants read and every
folder from the connector root down to it grants search (execute). The folders above the root are how the
share is mounted on this host, not part of its permissions, and are not looked at.

The result is an ACL in ``syncd.acl``'s terms:

* ``everyone`` when a caller with no local identity ("other") may read it;
* ``group:NAME`` for each group whose members may read it by their membership alone;
* then, for every local user (the password database; root is judged by the permission bits like any user:
  its override of them is not mirrored), the decision above with that user's groups is compared with what
  those entries grant a caller holding ``user:NAME`` and the user's ``group:`` principals; where they differ,
  ``user:NAME`` or a deny entry ``!user:NAME`` makes the ACL exact for that user (an owner without the read bit on a file
  others may read, a folder only a group may enter, ...).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

ACL_XATTR = "system.posix_acl_access"
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
READ, SEARCH = 4, 1
_NO_ACL = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


class PermissionsUnknown(Exception):
    """The permissions of a file or of a folder above it could not be read."""


@dataclass(frozen=True, slots=True)
class Inode:
    """The permission-relevant facts of one file or folder."""

    uid: int
    gid: int
    mode: int
    acl: bytes = b""

    def allows(self, uid: int, gids: frozenset[int], want: int) -> bool:
        """The kernel's access check for a caller ``uid`` in ``gids`` (uid -1: nobody in particular)."""
        owner, group, other = (self.mode >> 6) & 7, (self.mode >> 3) & 7, self.mode & 7
        if uid == self.uid:
            return bool(owner & want)
        entries = _parse(self.acl) if self.acl else ()
        if not entries:
            if self.gid in gids:
                return bool(group & want)
            return bool(other & want)
        mask = 7
        groups: list[tuple[int, int]] = []
        named_user: int | None = None
        for tag, perm, ident in entries:
            if tag == _MASK:
                mask = perm
            elif tag == _USER and ident == uid:
                named_user = perm
            elif tag == _GROUP_OBJ:
                groups.append((self.gid, perm))
            elif tag == _GROUP:
                groups.append((ident, perm))
            elif tag == _OTHER:
                other = perm
        if named_user is not None:
            return bool(named_user & mask & want)
        matched = False
        for gid, perm in groups:
            if gid in gids:
                matched = True
                if perm & mask & want:
                    return True
        return False if matched else bool(other & want)

    def groups_named(self) -> list[int]:
        """Every group this inode's permissions name (the owning group and named ACL groups)."""
        return [self.gid, *(ident for tag, _, ident in (_parse(self.acl) if self.acl else ()) if tag == _GROUP)]


def _parse(raw: bytes) -> list[tuple[int, int, int]]:
    """The entries of a ``system.posix_acl_access`` value: a 4-byte version, then (tag u16, perm u16, id u32)."""
    if len(raw) < 4 or (len(raw) - 4) % 8:
        raise PermissionsUnknown(f"malformed {ACL_XATTR} ({len(raw)} bytes)")
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def inode_of(path: str | int, st: os.stat_result) -> Inode:
    """The facts of ``path`` (or an open descriptor) whose stat is ``st``: its POSIX ACL read where the
    filesystem has them. Raises PermissionsUnknown when the ACL exists but cannot be read."""
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno in _NO_ACL:
            raw = b""
        else:
            raise PermissionsUnknown(f"cannot read {ACL_XATTR}: {exc.strerror or exc}") from None
    if raw:
        _parse(raw)  # a malformed value is unknown permissions, found now rather than per check
    return Inode(uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode), acl=raw)


@dataclass(frozen=True, slots=True)
class Identities:
    """The local users (and their groups) and the names of users and groups, read from the databases."""

    users: tuple[tuple[str, int, frozenset[int]], ...]
    user_names: dict[int, str]
    group_names: dict[int, str]

    def user(self, uid: int) -> str:
        return "user:" + self.user_names.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return "group:" + self.group_names.get(gid, str(gid))


def _load_identities() -> Identities:
    members: dict[str, set[int]] = {}
    group_names: dict[int, str] = {}
    for g in grp.getgrall():
        group_names.setdefault(g.gr_gid, g.gr_name)
        for member in g.gr_mem:
            members.setdefault(member, set()).add(g.gr_gid)
    users = []
    user_names: dict[int, str] = {}
    for p in pwd.getpwall():
        user_names.setdefault(p.pw_uid, p.pw_name)
        users.append((p.pw_name, p.pw_uid, frozenset({p.pw_gid, *members.get(p.pw_name, ())})))
    return Identities(users=tuple(users), user_names=user_names, group_names=group_names)


class Resolver:
    """Turns a file's inode and the inodes of the folders above it into an ACL; caches by those facts (files
    of one folder usually share all of them) and reloads the user and group databases when they change."""

    DB_FILES = ("/etc/passwd", "/etc/group")
    CHECK_EVERY_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: Identities | None = None
        self._stamp: tuple[float, ...] = ()
        self._checked = 0.0
        self._cache: dict[tuple[tuple[Inode, ...], Inode], tuple[str, ...]] = {}

    def identities(self) -> Identities:
        with self._lock:
            now = time.monotonic()
            if self._ids is None or now - self._checked >= self.CHECK_EVERY_S:
                self._checked = now
                stamp = tuple(_mtime(p) for p in self.DB_FILES)
                if self._ids is None or stamp != self._stamp:
                    self._ids, self._stamp = _load_identities(), stamp
                    self._cache.clear()
            return self._ids

    def acl(self, folders: Sequence[Inode], file: Inode) -> tuple[str, ...]:
        """The ACL of a file under ``folders`` (the connector root first)."""
        ids = self.identities()
        key = (tuple(folders), file)
        found = self._cache.get(key)
        if found is not None:
            return found
        chain = [(f, SEARCH) for f in folders] + [(file, READ)]

        def can(uid: int, gids: frozenset[int]) -> bool:
            return all(inode.allows(uid, gids, want) for inode, want in chain)

        entries: set[str] = set()
        everyone = can(-1, frozenset())
        if everyone:
            entries.add("everyone")
        granted_groups = set()
        for gid in dict.fromkeys(g for inode, _ in chain for g in inode.groups_named()):
            if can(-1, frozenset({gid})):
                granted_groups.add(gid)
                entries.add(ids.group(gid))
        for _name, uid, gids in ids.users:
            exact = can(uid, gids)
            encoded = everyone or bool(granted_groups & gids)
            if exact and not encoded:
                entries.add(ids.user(uid))
            elif encoded and not exact:
                entries.add("!" + ids.user(uid))
        result = tuple(sorted(entries))
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = result
        return result


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
