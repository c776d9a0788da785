"""File-share connector: a local folder or a mounted network share.

Local disks are watched with watchdog's inotify observer; network mounts (NFS, SMB/CIFS, SSHFS), which
deliver no inotify events, with its polling observer. Events are only hints: the engine re-reads the
file, and a reconcile scan (at start and on a schedule) is the truth. Queue overflow, a dead observer
and the inotify watch limit are detected and answered with a rescan (and, for the limit, polling).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from connectors.base import (
    Connector,
    ConnectorContext,
    Watch,
    doc_id_from_name,
    is_valid_doc_id,
    matches_globs,
    name_candidates,
)
from connectors.posix_permissions import Inode, PermissionsUnknown, Resolver, inode_of
from syncd.config import ConnectorConfig, Duration
from syncd.errors import ConnectorError, DocumentGone, DocumentSkipped, DocumentUnavailable, RootUnavailable
from syncd.extract import media_type_for
from syncd.logs import get_logger
from syncd.models import Change, DocumentRef, SourceDocument

log = get_logger("syncd.filesystem")

NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "fuse.rclone", "afs",
              "ceph", "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2"}

# Hidden files, editor swap/backup files and temporary files of atomic saves.
DEFAULT_IGNORE = [".*", "*~", "*.swp", "*.swx", "*.swo", "*.tmp", "*.temp", "#*#", "4913", "*.part",
                  "*.crdownload", "~$*"]

# Errors of a path that cannot name a file: a name too long, or a file where a folder was expected.
_NAMES_NOTHING = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR})


class FilesystemConfig(ConnectorConfig):
    type: Literal["filesystem"]
    path: str
    """Root folder to index (relative paths are relative to the config file)."""
    include: tuple[str, ...] = ("**/*.md", "**/*.txt", "**/*.rst", "**/*.html", "**/*.pdf")
    """Globs on the path relative to the root; `*` also crosses folders."""
    exclude: tuple[str, ...] = ()
    watch: Literal["auto", "events", "poll"] = "auto"
    """auto picks polling for network filesystems, events (inotify) otherwise."""
    poll_interval: Duration = 2.0
    """How often the polling observer compares snapshots (watch = "poll")."""
    reconcile_interval: Duration = 600.0
    """How often a full scan compares the folder with the index (0 = only at start)."""
    ignore_hidden: bool = True
    """Skip hidden files and folders, editor swap files and temporary files."""




def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "" when unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    best, best_type = "", ""
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, best_type = mount, parts[2]
    return best_type


class FilesystemConnector(Connector):
    type_name = "filesystem"
    config_model = FilesystemConfig

    def __init__(self, config: FilesystemConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        root = Path(os.path.expanduser(config.path))
        if not root.is_absolute():
            root = context.base_dir / root
        self.root = Path(os.path.abspath(root))
        self.permissions = Resolver()
        # With a configured ``acl`` the captured permissions would be replaced anyway: not read at all.
        self.capture_permissions = config.acl is None

    # -- permissions -----------------------------------------------------------------------------------
    def _folders(self, folder: str) -> tuple[Inode, ...] | None:
        """The inodes of the folders from the root down to ``folder`` (absolute, under the root); None when
        one of them cannot be read."""
        root = str(self.root)
        rel = os.path.relpath(folder, root)
        paths = [root] + ([os.path.join(root, *rel.split(os.sep)[:i + 1]) for i in range(len(rel.split(os.sep)))]
                          if rel != "." else [])
        try:
            return tuple(inode_of(p, os.stat(p)) for p in paths)
        except (OSError, PermissionsUnknown):
            return None

    def _acl(self, folders: tuple[Inode, ...] | None, path: str | int, st: os.stat_result) -> tuple[str, ...] | str:
        """The file's ACL, or why it cannot be known."""
        if folders is None:
            return "the permissions of a folder above it cannot be read"
        try:
            return self.permissions.acl(folders, inode_of(path, st))
        except PermissionsUnknown as exc:
            return str(exc)

    def _fingerprint(self, st: os.stat_result, acl: tuple[str, ...] | str | None) -> str:
        base = f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
        if acl is None:
            return base
        # Who may read it is part of the fingerprint: a chmod or setfacl (here or on a folder above) makes a
        # scan read the file again, and the engine then rewrites its ACL without embedding anything.
        text = "\n".join(acl) if isinstance(acl, tuple) else "?"
        return f"{base}:{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"

    # -- paths -----------------------------------------------------------------------------------------
    def doc_id_for(self, path: str | os.PathLike[str]) -> str | None:
        """The doc id (relative posix path) of an absolute path under the root, or None outside it."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(self.root)
        except ValueError:
            return None
        return doc_id_from_name(rel.as_posix()) if rel.parts else None

    def path_of(self, doc_id: str) -> str | None:
        """The absolute path a doc id stands for (a name with non-UTF-8 bytes is kept as ``%XX`` in its id;
        a file literally named so wins, and the listing leaves the other one out).

        None when the id is not one the listing could yield: absolute, with empty, ``.`` or ``..`` parts, a
        NUL or text that is not Unicode. Such an id names nothing here, and joined to the root it would name
        a file outside it or a second id for a file inside it.
        """
        if not is_valid_doc_id(doc_id) or any(part in ("", ".", "..") for part in doc_id.split("/")):
            return None
        return self._join(doc_id)

    def _join(self, doc_id: str) -> str:
        """``path_of`` without the checks: for a listing's prefix, which is normalised instead."""
        candidates = name_candidates(doc_id)
        if len(candidates) > 1 and not os.path.lexists(os.path.join(os.fsencode(self.root), candidates[0])):
            return os.path.join(str(self.root), os.fsdecode(candidates[1]))
        return os.path.join(str(self.root), doc_id)

    def _through_links(self, path: str) -> bool:
        """Whether a path under the root passes through a symlinked folder, which the listing never enters:
        what lies beyond one is outside the root, or inside it under another id."""
        rel = os.path.relpath(path, self.root)
        return os.path.realpath(path) != os.path.normpath(os.path.join(os.path.realpath(self.root), rel))

    def wants(self, doc_id: str) -> bool:
        """Whether a path (relative to the root) is one this connector indexes."""
        if self.cfg.ignore_hidden and any(matches_globs(part, DEFAULT_IGNORE) for part in doc_id.split("/")):
            return False
        return self._wanted(doc_id)

    def _wanted(self, doc_id: str) -> bool:
        """``wants`` without the hidden-name test (the listing applies it to each name as it descends)."""
        if not matches_globs(doc_id, self.cfg.include) or matches_globs(doc_id, self.cfg.exclude):
            return False
        return media_type_for(doc_id) is not None

    def _check_root(self) -> None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise RootUnavailable(f"root folder {self.root} does not exist", connector=self.name) from None
        except OSError as exc:
            raise RootUnavailable(f"root folder {self.root}: {exc.strerror}", connector=self.name) from None
        if not stat.S_ISDIR(st.st_mode):
            raise RootUnavailable(f"root {self.root} is not a folder", connector=self.name)
        self._check_device(st.st_dev)

    def _check_device(self, device: int) -> None:
        """An unmounted share usually leaves its empty mount-point folder behind, on the parent filesystem.

        The device of a non-empty root is remembered; an empty root on another device is reported as
        unavailable instead of being read as "every document deleted".
        """
        from syncd.state import read_json, write_json_atomic

        record = self.context.state_dir / "root.json"
        known = read_json(record)
        known_dev = known.get("device") if isinstance(known, dict) else None
        if known_dev == device:
            return
        try:
            empty = not any(True for _ in os.scandir(self.root))
        except OSError:
            return  # reported by the listing itself
        if empty:
            if known_dev is not None:
                raise RootUnavailable(
                    f"root folder {self.root} is empty and on another filesystem than before "
                    f"(device {device}, was {known_dev}): the share looks unmounted", connector=self.name)
            return
        write_json_atomic(record, {"device": device, "path": str(self.root)})

    def check_available(self) -> None:
        """Raise RootUnavailable when the root folder is missing or not a folder (asked before deleting)."""
        self._check_root()

    # -- listing ---------------------------------------------------------------------------------------
    def list_documents(self, prefix: str = "") -> Iterator[DocumentRef]:
        self._check_root()
        root = str(self.root)
        start, start_rel = root, ""
        if prefix:
            # A prefix is a folder, written any way that stays under the root ("a/", "./a/../a").
            if not is_valid_doc_id(prefix):
                return
            start = os.path.abspath(self._join(prefix))
        if start != root:
            under = self.doc_id_for(start)
            if under is None or (self.cfg.ignore_hidden and
                                 any(matches_globs(part, DEFAULT_IGNORE) for part in under.split("/"))):
                return  # outside the root, or inside a hidden folder
            if self._through_links(start):
                return  # a symlinked folder, or one inside it: the full listing does not enter it either
            start_rel = under + "/"
        # Folders as (absolute path, doc id prefix) strings: doc ids are built by concatenation, not with a
        # Path per file (half the CPU of a no-change pass over 10k files went to pathlib). Each carries the
        # inodes of the folders above it, for the permissions of its files.
        capture = self.capture_permissions
        stack = [(start, start_rel, self._folders(start) if capture else None)]
        while stack:
            folder, rel_prefix, chain = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                if folder == root:
                    raise RootUnavailable(f"root folder {self.root} vanished", connector=self.name) from None
                continue
            except NotADirectoryError:
                continue
            except PermissionError:
                continue  # an unreadable folder: its files cannot be indexed; reported per file when read
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    # A prefix, or a folder nested past the longest path the OS opens: read() finds nothing
                    # there either, so it holds no documents.
                    if folder != start:
                        log.warning("filesystem.path_too_long", connector=self.name, folder=rel_prefix)
                    continue
                # An I/O error (a flaky network share): the listing would be partial, so none of it counts.
                raise ConnectorError(f"listing {folder} failed: {exc.strerror or exc}", connector=self.name) from None
            for entry in entries:
                name = doc_id_from_name(entry.name)
                if name != entry.name and os.path.lexists(os.path.join(folder, name)):
                    # A name with non-UTF-8 bytes whose escaped form is also a real name: the literal one
                    # owns the doc id.
                    log.warning("filesystem.name_shadowed", connector=self.name, doc_id=rel_prefix + name)
                    continue
                rel = rel_prefix + name
                if self.cfg.ignore_hidden and matches_globs(entry.name, DEFAULT_IGNORE):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = None
                        if capture and chain is not None:
                            try:
                                sub = (*chain, inode_of(entry.path, entry.stat(follow_symlinks=False)))
                            except PermissionsUnknown:
                                sub = None
                        stack.append((entry.path, rel + "/", sub))
                        continue
                    # Each part of ``rel`` already passed the hidden-name test above.
                    if not self._wanted(rel):
                        continue
                    st = entry.stat(follow_symlinks=True) if entry.is_symlink() else entry.stat(follow_symlinks=False)
                except OSError:
                    # Dangling or looping symlink, or gone since scandir: read() reports it.
                    yield DocumentRef(doc_id=rel, fingerprint="unreadable")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    yield DocumentRef(doc_id=rel, fingerprint=f"special:{stat.S_IFMT(st.st_mode)}")
                    continue
                acl = self._acl(chain, entry.path, st) if capture else None
                yield DocumentRef(doc_id=rel, fingerprint=self._fingerprint(st, acl))

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, doc_id: str) -> SourceDocument:
        path = self.path_of(doc_id)
        if path is None:
            raise DocumentGone("not-a-path", doc_id=doc_id, connector=self.name,
                               detail="absolute, or with empty, '.' or '..' parts: names nothing under the root")
        media_type = media_type_for(doc_id)
        if media_type is None or not self.wants(doc_id):
            raise DocumentGone("excluded", doc_id=doc_id, connector=self.name)
        if self._through_links(os.path.dirname(path)):
            raise DocumentGone("not-a-path", doc_id=doc_id, connector=self.name,
                               detail="a folder on the way is a symlink, which the listing does not follow")
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            raise DocumentGone("deleted", doc_id=doc_id, connector=self.name) from None
        except OSError as exc:
            if exc.errno in _NAMES_NOTHING:
                raise DocumentGone("not-a-path", doc_id=doc_id, connector=self.name, detail=exc.strerror or "") from None
            raise DocumentUnavailable("unreadable", doc_id=doc_id, connector=self.name, detail=exc.strerror or "") from None
        if stat.S_ISLNK(lst.st_mode):
            try:
                real = Path(os.path.realpath(path, strict=True))
            except (OSError, RuntimeError):
                raise DocumentSkipped("broken-symlink", doc_id=doc_id, connector=self.name,
                                      detail="symlink is dangling or loops") from None
            if real != self.root and self.root not in real.parents:
                raise DocumentSkipped("symlink-outside-root", doc_id=doc_id, connector=self.name,
                                      detail="symlink points outside the connector root")
        limit = getattr(self.context.limits, media_type)
        try:
            # O_NONBLOCK so a FIFO never blocks the reader; O_NOFOLLOW is not used: links were checked above.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise DocumentGone("deleted", doc_id=doc_id, connector=self.name) from None
        except PermissionError:
            raise DocumentUnavailable("permission-denied", doc_id=doc_id, connector=self.name,
                                      detail="no read permission") from None
        except OSError as exc:
            if exc.errno in _NAMES_NOTHING:
                raise DocumentGone("not-a-path", doc_id=doc_id, connector=self.name, detail=exc.strerror or "") from None
            raise DocumentUnavailable("unreadable", doc_id=doc_id, connector=self.name, detail=exc.strerror or "") from None
        acl: tuple[str, ...] | str | None = None
        try:
            st = os.fstat(fd)
            if self.capture_permissions:
                acl = self._acl(self._folders(os.path.dirname(path)), fd, st)
            if not stat.S_ISREG(st.st_mode):
                raise DocumentSkipped("not-a-regular-file", doc_id=doc_id, connector=self.name,
                                      detail="FIFO, socket or device")
            if st.st_size > limit:
                raise DocumentSkipped("too-large", doc_id=doc_id, connector=self.name,
                                      detail=f"{st.st_size} bytes > {media_type} limit {limit}")
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                content = fh.read(limit + 1)
        except OSError as exc:
            raise DocumentUnavailable("read-error", doc_id=doc_id, connector=self.name, detail=exc.strerror or "") from None
        finally:
            os.close(fd)
        if len(content) > limit:
            raise DocumentSkipped("too-large", doc_id=doc_id, connector=self.name,
                                  detail=f"more than the {media_type} limit {limit}")
        digest = hashlib.blake2b(content, digest_size=16).hexdigest()
        owner = str(st.st_uid)
        try:
            import pwd

            owner = pwd.getpwuid(st.st_uid).pw_name
        except (KeyError, ImportError):
            pass
        return SourceDocument(
            doc_id=doc_id,
            fingerprint=self._fingerprint(st, acl),
            revision=digest,
            uri=os.path.join(str(self.root), doc_id),
            title=Path(doc_id).stem,
            content=content,
            media_type=media_type,
            modified_at=dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC),
            metadata={"owner": owner, "mode": oct(stat.S_IMODE(st.st_mode)), "mtime_ns": str(st.st_mtime_ns),
                      "size": str(st.st_size)},
            acl=acl if isinstance(acl, tuple) else None,
            acl_note=acl if isinstance(acl, str) else "",
        )

    # -- watching --------------------------------------------------------------------------------------
    @property
    def reconcile_interval(self) -> float | None:
        return self.cfg.reconcile_interval or None

    def watch_mode(self) -> str:
        if self.cfg.watch != "auto":
            return self.cfg.watch
        return "poll" if filesystem_type(self.root) in NETWORK_FS else "events"

    def watch(self, sink: Callable[[Change], None]) -> Watch:
        self._check_root()
        return FolderWatch(self, sink, self.watch_mode())


class _OverflowHandler(logging.Handler):
    """watchdog reports an inotify queue overflow only in a log record: turn that into a rescan."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()


class FolderWatch(Watch):
    """A watchdog observer on the connector root feeding change hints to the engine."""

    def __init__(self, connector: FilesystemConnector, sink: Callable[[Change], None], mode: str) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        self.connector = connector
        self.sink = sink
        self.requested_mode = mode
        self._mode = mode
        self.fallback_reason = ""
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # An exception here would kill the observer thread: never let one escape.
                try:
                    outer._handle(event)
                except Exception:  # noqa: BLE001
                    logging.getLogger("syncd.filesystem").exception("watch handler failed")
                    outer._emit(Change(connector=connector.name, kind="rescan", doc_id=""))

        self._handler = Handler()
        self._overflow = _OverflowHandler(lambda: self._emit(Change(connector=connector.name, kind="rescan", doc_id="")))
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").addHandler(self._overflow)
        self._lock = threading.Lock()
        self._observer = self._start(mode)

    @property
    def mode(self) -> str:
        return self._mode

    def _start(self, mode: str):  # type: ignore[no-untyped-def]
        from watchdog.observers import Observer
        from watchdog.observers.api import BaseObserver
        from watchdog.observers.polling import PollingObserver

        observer: BaseObserver
        if mode == "poll":
            observer = PollingObserver(timeout=self.connector.cfg.poll_interval)
        else:
            observer = Observer()
        observer.schedule(self._handler, str(self.connector.root), recursive=True)
        try:
            observer.start()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE) or mode == "poll":
                raise
            # The inotify watch limit is reached: poll instead, and say so in status.
            self.fallback_reason = f"inotify limit reached ({exc.strerror}); polling instead"
            logging.getLogger("syncd.filesystem").warning(self.fallback_reason)
            self._mode = "poll"
            observer = PollingObserver(timeout=self.connector.cfg.poll_interval)
            observer.schedule(self._handler, str(self.connector.root), recursive=True)
            observer.start()
        return observer

    def _emit(self, change: Change) -> None:
        self.sink(change)

    def _handle(self, event) -> None:  # type: ignore[no-untyped-def]
        import time

        etype = event.event_type
        if etype in ("opened", "closed_no_write"):
            return
        now = time.time()
        name = self.connector.name
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        if event.is_directory:
            if etype == "attrib" and self.connector.capture_permissions:
                # chmod, chown or setfacl on a folder: who may enter it decides who may read what is under it.
                rel = self.connector.doc_id_for(src)
                if rel is not None or os.path.abspath(src) == str(self.connector.root):
                    self._emit(Change(connector=name, kind="rescan", doc_id=rel or "", seen_at=now))
                return
            if etype in ("moved", "deleted", "created"):
                for path in (src, dest):
                    rel = self.connector.doc_id_for(path) if path else None
                    if rel is not None and self.connector.cfg.ignore_hidden and any(
                            matches_globs(part, DEFAULT_IGNORE) for part in rel.split("/")):
                        continue  # inside .git/ or another ignored folder: nothing there is indexed
                    if rel is not None or (path and os.path.abspath(path) == str(self.connector.root)):
                        self._emit(Change(connector=name, kind="rescan", doc_id=rel or "", seen_at=now))
            return
        # Only paths the connector indexes become hints: editor swap files and temp files of atomic saves
        # would otherwise cost a read each.
        src_id = self.connector.doc_id_for(src)
        if src_id is not None and not self.connector.wants(src_id):
            src_id = None
        if etype == "moved":
            dest_id = self.connector.doc_id_for(dest) if dest else None
            if dest_id is not None and not self.connector.wants(dest_id):
                dest_id = None
            # One hint for both paths, so the engine sees them in the same batch and pairs the rename.
            first, second = (src_id, dest_id) if src_id is not None else (dest_id, None)
            if first is not None:
                self._emit(Change(connector=name, kind="move", doc_id=first, dest_id=second, seen_at=now))
            return
        if src_id is not None:
            kind = "delete" if etype == "deleted" else "upsert"
            self._emit(Change(connector=name, kind=kind, doc_id=src_id, seen_at=now))

    def is_alive(self) -> bool:
        return bool(self._observer.is_alive())

    def stop(self) -> None:
        with self._lock:
            logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
            logging.getLogger("watchdog.observers.inotify").removeHandler(self._overflow)
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except RuntimeError:
                pass

