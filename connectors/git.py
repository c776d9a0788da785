"""Git connector: a branch of a git repository (docs-as-code).

syncd keeps its own bare mirror of the branch in the connector's state folder. Each poll fetches the
branch (shallow by default: only the tip's objects are transferred), and the work is the tree diff
between the last synced commit and the new branch head, with rename detection on. Because the diff is
between trees, no common ancestor is needed: force-pushes, rebases, resets and a branch deleted and
recreated are ordinary changes. The last synced commit is pinned by a ref of the mirror
(``refs/syncd/synced``) so that it outlives a history rewrite; when it is missing (first sync, a mirror
re-cloned after corruption) the poll asks the engine for a full comparison instead.

Every read happens at the head commit that the poll or listing pinned, so a push arriving mid-cycle
cannot mix two commits. Blobs are read through long-lived ``git cat-file`` processes: one blob at a time,
only those that changed.

The git command line is used (argument lists, never a shell; prompts disabled). Credentials come from
the environment or from git's own credential helpers and SSH configuration, never from the config file.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
import signal
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import field_validator

from connectors.base import Connector, ConnectorContext, doc_id_from_bytes, matches_globs, name_candidates
from syncd.config import Duration, PushConfig
from syncd.errors import (
    ConnectorError,
    DocumentGone,
    DocumentSkipped,
    DocumentUnavailable,
    RootUnavailable,
)
from syncd.extract import media_type_for
from syncd.logs import get_logger
from syncd.models import Change, DocumentRef, SourceDocument
from syncd.state import read_json, write_json_atomic

log = get_logger("syncd.git")

CURSOR_VERSION = 1
SYNCED_REF = "refs/syncd/synced"
MODE_FILE = "100644"
MODE_SUBMODULE = "160000"
MODE_SYMLINK = "120000"
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
LFS_POINTER_MAX = 1024  # git-lfs never writes a pointer file larger than this
BINARY_SNIFF = 8000  # git's own heuristic: a NUL byte in the first 8000 bytes means binary
WEB_URL_FIELDS = {"revision", "commit", "blob", "path", "branch", "start_line", "end_line"}

# Environment variables that would point git at another repository than the mirror.
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                      "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES")

# How git words its failures (with LC_ALL=C). Remote and authentication messages are checked first.
_AUTH_MARKERS = ("authentication failed", "could not read username", "could not read password",
                 "terminal prompts disabled", "permission denied", "host key verification failed",
                 "invalid username or password", "http basic: access denied", "returned error: 401",
                 "returned error: 403")
_MISSING_MARKERS = ("does not appear to be a git repository", "repository not found", "no such repository",
                    "returned error: 404")
_REMOTE_MARKERS = ("could not read from remote repository", "unable to access", "could not resolve host",
                   "connection refused", "connection timed out", "connection reset", "failed to connect",
                   "couldn't connect", "network is unreachable", "the remote end hung up", "early eof",
                   "operation timed out", "ssl", "gnutls", "proxy")
_CORRUPT_MARKERS = ("corrupt", "bad object", "missing blob", "missing tree", "missing commit", "unable to read",
                    "did not send all necessary objects", "invalid object", "bad tree", "not a git repository",
                    "object file", "index-pack failed", "unpack-objects", "loose object", "broken link",
                    "inflate", "failed to read object", "hash mismatch", "sha1 mismatch", "bad packed",
                    "packfile", "is empty", "not a valid object", "invalid sha1 pointer", "bad config",
                    "unable to parse", "fatal: bad", "missing object")


class GitConfig(PushConfig):
    """A branch of a git repository, mirrored locally and polled."""

    type: Literal["git"]
    url: str
    """The repository: a local path (relative to the config file), file://, https:// or ssh:// URL. Never put
    credentials here: git's credential helpers, SSH keys or the environment provide them."""
    branch: str = "main"
    """The branch to index."""
    include: tuple[str, ...] = ("**/*.md", "**/*.rst", "**/*.txt")
    """Globs on the path in the repository; `*` also crosses folders."""
    exclude: tuple[str, ...] = ()
    """Globs on the path in the repository that are never indexed (submodules included)."""
    poll_interval: Duration = 60.0
    """How often the branch is fetched and diffed against the last synced commit."""
    web_url: str | None = None
    """Citation URI template, e.g. `https://git.example.com/org/repo/blob/{revision}/{path}#L{start_line}-L{end_line}`.
    Fields: revision (= commit), blob, path, branch, start_line, end_line. Default: the url joined with the path."""
    shallow: bool = True
    """Fetch only the branch tip (depth 1); the tree diff needs no history."""
    timeout: Duration = 600.0
    """Longest a single git command (a fetch) may run before it counts as failed."""
    retries: int = 2
    """Extra attempts, with exponential backoff, when a fetch fails on a network error."""

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "://" in value:
            parts = urlsplit(value)
            if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
                raise ValueError("must not hold credentials; use git's credential helper, SSH keys or the "
                                 "environment (GIT_ASKPASS, GIT_SSH_COMMAND)")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        value = value.removeprefix("refs/heads/")
        if (not value or value.startswith(("-", "/")) or value.endswith(("/", ".lock")) or ".." in value
                or re.search(r"[\x00-\x20~^:?*\[\\\x7f]", value) or "@{" in value):
            raise ValueError("not a valid branch name")
        return value

    @field_validator("web_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        unknown = fields - WEB_URL_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {sorted(WEB_URL_FIELDS)}")
        return value

    @field_validator("poll_interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value

    @field_validator("retries")
    @classmethod
    def _retries(cls, value: int) -> int:
        if not 0 <= value <= 10:
            raise ValueError("must be between 0 and 10")
        return value


class GitFailed(Exception):
    """A git command failed; ``kind`` is auth, missing, remote, corrupt or other."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.command = args
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.kind = classify(self.stderr)
        super().__init__(f"git {args[0] if args else ''} failed ({returncode}): {self.last_line}")

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return (fatal or lines or ["no message"])[0][:300]


def classify(stderr: str) -> str:
    """What a git error message means: auth, missing, remote, corrupt or other."""
    text = stderr.lower()
    for kind, markers in (("auth", _AUTH_MARKERS), ("missing", _MISSING_MARKERS), ("remote", _REMOTE_MARKERS),
                          ("corrupt", _CORRUPT_MARKERS)):
        if any(marker in text for marker in markers):
            return kind
    return "other"




def _is_utf8(path: str) -> bool:
    """Doc ids are UTF-8 strings in the store and in JSON: a path git holds in another encoding is not indexed."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _KeepPlaceholders(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _BlobReader:
    """Long-lived ``git cat-file --batch-check`` and ``--batch`` processes, fed object names."""

    def __init__(self, run_env: dict[str, str], git_dir: Path) -> None:
        self.env = run_env
        self.git_dir = git_dir
        self.check: subprocess.Popen[bytes] | None = None
        self.batch: subprocess.Popen[bytes] | None = None

    def _start(self, mode: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["git", "--git-dir", str(self.git_dir), "cat-file", mode],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=self.env)

    @staticmethod
    def _ask(proc: subprocess.Popen[bytes], name: str) -> list[str]:
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(name.encode() + b"\n")
        stdin.flush()
        header = stdout.readline()
        if not header:
            raise OSError("git cat-file exited")
        return header.decode().split()

    def info(self, sha: str) -> tuple[str, int] | None:
        """(type, size) of an object, or None when the mirror does not hold it."""
        if self.check is None or self.check.poll() is not None:
            self.check = self._start("--batch-check")
        parts = self._ask(self.check, sha)
        if len(parts) < 3 or parts[1] == "missing":
            return None
        return parts[1], int(parts[2])

    def content(self, sha: str) -> bytes | None:
        if self.batch is None or self.batch.poll() is not None:
            self.batch = self._start("--batch")
        parts = self._ask(self.batch, sha)
        if len(parts) < 3 or parts[1] == "missing":
            return None
        size = int(parts[2])
        stdout: IO[bytes] | None = self.batch.stdout
        assert stdout is not None
        data = stdout.read(size + 1)  # the content and its trailing newline
        if len(data) != size + 1:
            raise OSError("short read from git cat-file")
        return data[:size]

    def close(self) -> None:
        for proc in (self.check, self.batch):
            if proc is None:
                continue
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        self.check = self.batch = None


class GitConnector(Connector):
    """A git branch, polled: each poll yields the paths the branch head changed since the last synced commit."""

    type_name = "git"
    config_model = GitConfig

    def __init__(self, config: GitConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.remote = self._resolve_url(config.url, context.base_dir)
        self.mirror = context.state_dir / "mirror.git"
        self.cursor_path = context.state_dir / "cursor.json"
        self._lock_path = context.state_dir / "mirror.lock"
        self._env = self._git_env()
        self._reader: _BlobReader | None = None
        self._read_lock = threading.Lock()
        # The head commit being synced (None: the branch has no commit yet) and what is known of its tree:
        # path -> (mode, blob sha, size or -1), or None for a path known to be absent.
        self._head: str | None = None
        self._head_time: dt.datetime | None = None
        self._pinned = False
        self._entries: dict[str, tuple[str, str, int] | None] = {}
        self._entries_complete = False
        self._pending: dict[str, Any] | None = None
        self._skip_next_fetch = False
        self._needs_reclone = False
        self._full_fetch = False
        """Set once the remote refused a shallow fetch (git's dumb HTTP protocol)."""
        self._unavailable: set[str] = set()
        self._last_fetch: tuple[str | None, float] | None = None
        """(head, when) of this process's last fetch of a poll."""
        self._arrived_after: float | None = None
        """The head of the last fetch was not on the remote before this time (an earlier fetch found another)."""

    # -- configuration -----------------------------------------------------------------------------------
    @staticmethod
    def _resolve_url(url: str, base_dir: Path) -> str:
        if "://" in url or re.match(r"^[^/]+:", url):  # a URL, or scp-like user@host:path
            return url
        path = Path(os.path.expanduser(url))
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    @staticmethod
    def _git_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
        env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": "C", "GIT_LITERAL_PATHSPECS": "1",
                    "GIT_ASK_YESNO": "false"})
        return env

    @property
    def poll_interval(self) -> float | None:
        return self.cfg.poll_interval

    def wants(self, path: str, mode: str) -> bool:
        """Whether an entry of the tree is a document of this connector (submodules are, to be reported)."""
        if mode == MODE_SYMLINK or matches_globs(path, self.cfg.exclude) or not _is_utf8(path):
            return False
        if mode == MODE_SUBMODULE:
            return True
        return matches_globs(path, self.cfg.include) and media_type_for(path) is not None

    # -- running git -------------------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float | None = None, git_dir: Path | None = None) -> bytes:
        cmd = ["git", "--git-dir", str(git_dir or self.mirror), *args]
        limit = timeout or self.cfg.timeout
        try:
            # A session of its own: a fetch runs helpers (git-remote-http, ssh) as children of git, and a
            # timeout must stop them too, or they hang on the stalled server long after git was killed.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise ConnectorError("the git command is not installed", connector=self.name) from None
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except BaseException as exc:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ConnectorError(f"git {self.name}: git {args[0]} timed out after {limit:g} s",
                                     connector=self.name) from None
            raise
        if proc.returncode != 0:
            raise GitFailed(list(args), proc.returncode, stderr.decode(errors="replace"))
        return stdout

    @contextmanager
    def _mirror_lock(self) -> Iterator[None]:
        """One process at a time changes the mirror (the daemon and a `syncd verify` may share it)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _translate(self, exc: GitFailed, what: str) -> ConnectorError:
        message = f"git {self.name}: {what}: {exc.last_line}"
        if exc.kind == "missing":
            return RootUnavailable(message, connector=self.name)
        return ConnectorError(message, connector=self.name)

    # -- the mirror --------------------------------------------------------------------------------------
    def _mirror_ok(self) -> bool:
        if not (self.mirror / "HEAD").is_file():
            return False
        try:
            out = self._run("rev-parse", "--is-bare-repository", timeout=60)
        except GitFailed:
            return False
        return out.strip() == b"true"

    def _create_mirror(self) -> None:
        """A fresh bare mirror, built aside and moved into place."""
        self._close_reader()
        tmp = self.mirror.with_name(f"{self.mirror.name}.new")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["git", "init", "--bare", "--quiet", str(tmp)], check=True, capture_output=True,
                           env=self._env, stdin=subprocess.DEVNULL, timeout=60)
            self._run("config", "remote.origin.url", self.remote, git_dir=tmp, timeout=60)
        except subprocess.CalledProcessError as exc:
            raise ConnectorError(f"git {self.name}: cannot create the mirror: "
                                 f"{exc.stderr.decode(errors='replace').strip()}", connector=self.name) from None
        except GitFailed as exc:
            raise self._translate(exc, "cannot create the mirror") from None
        if self.mirror.exists():
            trash = self.mirror.with_name(f"{self.mirror.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.mirror, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, self.mirror)

    def _reclone(self, reason: str) -> None:
        log.warning("git.mirror_recloned", connector=self.name, reason=reason)
        self._create_mirror()
        self._needs_reclone = False

    def _ensure_mirror(self) -> None:
        if self._needs_reclone:
            self._reclone("a git command found the mirror corrupt")
        elif not self._mirror_ok():
            if self.mirror.exists():
                self._reclone("the mirror is not a readable git repository")
            else:
                self._create_mirror()
        else:
            url = self._run("config", "--get", "remote.origin.url", timeout=60).decode().strip()
            if url != self.remote:
                self._run("config", "remote.origin.url", self.remote, timeout=60)

    def _fetch_once(self) -> str | None:
        """Fetch the branch into the mirror; the new head commit, or None when the repository is empty."""
        tracking = f"refs/remotes/origin/{self.cfg.branch}"
        args = ["fetch", "--quiet", "--no-tags", "--prune", "--no-write-fetch-head"]
        if self.cfg.shallow and not self._full_fetch:
            args.append("--depth=1")
        try:
            self._run(*args, "origin", f"+refs/heads/{self.cfg.branch}:{tracking}")
        except GitFailed as exc:
            if "does not support shallow" in exc.stderr and not self._full_fetch:
                # A server speaking git's "dumb" HTTP protocol (static files) cannot serve a shallow fetch:
                # fetch the whole branch from it instead, this time and from now on.
                log.info("git.shallow_unsupported", connector=self.name, action="fetching full history")
                self._full_fetch = True
                return self._fetch_once()
            if "couldn't find remote ref" not in exc.stderr:
                raise
            # The branch is not there: an empty repository, or a branch that was deleted.
            refs = self._run("ls-remote", "origin").strip()
            if refs:
                raise RootUnavailable(f"git {self.name}: branch {self.cfg.branch!r} does not exist on the remote",
                                      connector=self.name) from None
            if self._load_cursor().get("commit"):
                raise RootUnavailable(f"git {self.name}: the repository has no branches any more",
                                      connector=self.name) from None
            return None
        return self._run("rev-parse", "--verify", "--quiet", f"{tracking}^{{commit}}").decode().strip()

    def _fetch(self) -> str | None:
        """Fetch with retries on network errors and one re-clone when the mirror is corrupt."""
        import tenacity

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("git.fetch_retry", connector=self.name, attempt=state.attempt_number, error=str(exc))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, GitFailed) and e.kind in ("remote", "other")),
            stop=tenacity.stop_after_attempt(self.cfg.retries + 1),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8), before_sleep=before_sleep, reraise=True)
        with self._mirror_lock():
            for attempt in (1, 2):
                try:
                    self._ensure_mirror()
                    return retrying(self._fetch_once)
                except GitFailed as exc:
                    if exc.kind == "corrupt" and attempt == 1:
                        self._reclone(exc.last_line)
                        continue
                    raise self._translate(exc, f"fetching {self.cfg.branch!r} failed") from None
        raise AssertionError("unreachable")

    def _pin(self, head: str | None) -> None:
        """Make ``head`` the commit every read of this cycle sees."""
        if head != self._head:
            self._entries = {}
            self._entries_complete = False
        self._head = head
        self._pinned = True
        self._head_time = None
        if head is not None:
            try:
                stamp = self._run("show", "-s", "--format=%ct", head, timeout=60).decode().strip()
                self._head_time = dt.datetime.fromtimestamp(int(stamp), tz=dt.UTC)
            except (GitFailed, ValueError):
                self._head_time = None

    def _has_tree(self, commit: str) -> bool:
        try:
            self._run("cat-file", "-e", f"{commit}^{{tree}}", timeout=60)
        except GitFailed:
            return False
        return True

    # -- cursor --------------------------------------------------------------------------------------------
    def _load_cursor(self) -> dict[str, Any]:
        data = read_json(self.cursor_path)
        if not isinstance(data, dict) or data.get("state_version") != CURSOR_VERSION:
            return {}
        return data

    def commit_cursor(self) -> None:
        """Persist the head just synced as the last synced commit, and pin it in the mirror."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        pending["retry"] = sorted(self._unavailable)
        write_json_atomic(self.cursor_path, pending)
        commit = pending.get("commit")
        if commit:
            try:
                with self._mirror_lock():
                    self._run("update-ref", SYNCED_REF, commit, timeout=60)
            except GitFailed as exc:
                # The cursor file is the truth; without the ref a rewrite may force a full comparison later.
                log.warning("git.pin_failed", connector=self.name, error=exc.last_line)

    def _set_pending(self) -> None:
        self._unavailable = set()
        self._pending = {"state_version": CURSOR_VERSION, "commit": self._head, "branch": self.cfg.branch,
                         "url": self.remote, "synced_at": time.time()}

    # -- listing and polling ---------------------------------------------------------------------------------
    def list_documents(self, prefix: str = "") -> Iterator[DocumentRef]:
        """Every document at the branch head (fetched now, unless a poll of this cycle just did)."""
        if self._skip_next_fetch:
            self._skip_next_fetch = False
        else:
            self._pin(self._fetch())
            self._set_pending()
        if self._head is None:
            self._entries_complete = True
            return
        entries: dict[str, tuple[str, str, int] | None] = {}
        try:
            for record in self._stream_z("ls-tree", "-r", "-l", "-z", "--full-tree", self._head):
                meta, _, path = record.partition("\t")
                mode, kind, sha, size = meta.split()
                if kind == "tree" or not self.wants(path, mode):
                    continue
                if prefix and not (path == prefix or path.startswith(prefix.rstrip("/") + "/")):
                    continue
                entries[path] = (mode, sha, int(size) if size.isdigit() else -1)
                yield DocumentRef(doc_id=path, fingerprint=sha)
        except GitFailed as exc:
            if exc.kind == "corrupt":
                self._needs_reclone = True
            raise self._translate(exc, "listing the branch head failed") from None
        self._entries = entries
        self._entries_complete = not prefix

    def _stream_z(self, *args: str) -> Iterator[str]:
        """The NUL-separated records a git command prints, read as they come (bounded memory)."""
        proc = subprocess.Popen(["git", "--git-dir", str(self.mirror), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self._env)
        assert proc.stdout is not None and proc.stderr is not None
        rest = b""
        try:
            while True:
                block = proc.stdout.read(1 << 16)
                if not block:
                    break
                records = (rest + block).split(b"\0")
                rest = records.pop()
                for record in records:
                    yield doc_id_from_bytes(record)
            stderr = proc.stderr.read().decode(errors="replace")
            if proc.wait() != 0:
                raise GitFailed(list(args), proc.returncode, stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        if rest:
            yield doc_id_from_bytes(rest)

    def poll(self) -> Iterator[Change]:
        """Fetch; the changes between the last synced commit and the new head (eagerly: errors raise here).

        A first sync, or a last synced commit the mirror lacks, gives one ``rescan``: the engine then
        compares the full listing with the index (resuming where an interrupted first sync stopped).
        """
        fetched_at = time.time()
        head = self._fetch()
        self._pin(head)
        cursor = self._load_cursor()
        previous = cursor.get("commit")
        retry = [d for d in cursor.get("retry", []) if isinstance(d, str)]
        self._set_pending()
        now = self._pushed_at(head, fetched_at, cursor)
        if head is None and not previous:
            return iter(())
        attempted = [h for h in cursor.get("attempted", []) if isinstance(h, str) and h not in (previous, head)]
        if (not previous or head is None or not self._has_tree(previous)
                or not all(self._has_tree(h) for h in attempted)):
            self._skip_next_fetch = True
            log.info("git.full_compare", connector=self.name, head=head, previous=previous)
            return iter([Change(connector=self.name, kind="rescan", doc_id="", seen_at=now)])
        changes = self._diff(previous, head, now) if previous != head else []
        seen = {c.doc_id for c in changes}
        # A poll whose changes were partly written when it failed or the process died left documents of a
        # head past the cursor in the index; a file that head added and this one removed again is in neither
        # side of the new diff. The paths those heads touched are checked again, read at the new head.
        for old_head in attempted:
            for path in self._stream_z("diff-tree", "-r", "-z", "--name-only", "--no-renames", "--no-commit-id",
                                       previous, old_head):
                if path not in seen and self.wants(path, MODE_FILE):
                    seen.add(path)
                    changes.append(Change(connector=self.name, kind="upsert", doc_id=path, seen_at=now))
        changes += [Change(connector=self.name, kind="upsert", doc_id=d, seen_at=now) for d in retry if d not in seen]
        if head != previous:
            # Written before the engine applies anything of this head; commit_cursor() replaces it.
            write_json_atomic(self.cursor_path, {**cursor, "attempted": sorted({*attempted, head})})
        log.info("git.polled", connector=self.name, previous=previous, head=head, changes=len(changes))
        return iter(changes)

    def _pushed_at(self, head: str | None, fetched_at: float, cursor: dict[str, Any]) -> float:
        """When the head commit reached the remote, as near as a poll can tell: its commit time, but not
        before the last fetch that still found another head (a commit made long before it was pushed), and
        not after now. Freshness of what this poll finds is measured from it."""
        now = time.time()
        if self._last_fetch is None:
            synced_at = cursor.get("synced_at")
            bound = float(synced_at) if cursor.get("commit") != head and isinstance(synced_at, int | float) else None
        elif self._last_fetch[0] != head:
            bound = self._last_fetch[1]
        else:
            bound = self._arrived_after
        self._arrived_after = bound
        self._last_fetch = (head, fetched_at)
        if self._head_time is None:
            return now
        return min(now, max(self._head_time.timestamp(), bound or 0.0))

    def _diff(self, old: str, new: str, now: float) -> list[Change]:
        """Tree diff with rename detection; a rename is delete(old) + upsert(new), pairs first and adjacent."""
        pairs: list[Change] = []
        others: list[Change] = []
        try:
            records = list(self._stream_z("diff-tree", "-r", "-z", "--raw", "-M", "--no-commit-id", old, new))
        except GitFailed as exc:
            if exc.kind == "corrupt":
                self._needs_reclone = True
            raise self._translate(exc, "diffing the branch head failed") from None
        i = 0
        while i < len(records):
            meta = records[i]
            if not meta.startswith(":"):
                i += 1
                continue
            old_mode, new_mode, _old_sha, new_sha, status = meta[1:].split()[:5]
            if status[0] in "RC":
                src, dst = records[i + 1], records[i + 2]
                i += 3
            else:
                src = dst = records[i + 1]
                i += 2
            deleted = status[0] == "D"
            new_wanted = not deleted and self.wants(dst, new_mode)
            if status[0] == "R" and src != dst:
                if self.wants(src, old_mode):
                    self._entries[src] = None
                    (pairs if new_wanted else others).append(
                        Change(connector=self.name, kind="delete", doc_id=src, seen_at=now))
            if new_wanted:
                self._entries[dst] = (new_mode, new_sha, -1)
                (pairs if status[0] == "R" else others).append(
                    Change(connector=self.name, kind="upsert", doc_id=dst, seen_at=now))
            elif status[0] != "R" and self.wants(src, old_mode):
                self._entries[src] = None
                others.append(Change(connector=self.name, kind="delete", doc_id=src, seen_at=now))
        return pairs + others

    # -- reading -------------------------------------------------------------------------------------------
    def _ensure_pinned(self) -> None:
        if self._pinned:
            return
        # Read outside a cycle (verify --repair): the mirror's current head, without fetching.
        try:
            out = self._run("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{self.cfg.branch}^{{commit}}",
                            timeout=60)
            self._pin(out.decode().strip() or None)
        except GitFailed:
            self._pin(None)

    def _entry(self, path: str) -> tuple[str, str, int] | None:
        if path in self._entries:
            return self._entries[path]
        if self._entries_complete or self._head is None:
            return None
        try:
            # A path with non-UTF-8 bytes is ``%XX`` in its doc id: ask for every path it may stand for.
            out = self._run("ls-tree", "-z", "-l", "--full-tree", self._head, "--",
                            *(os.fsdecode(c) for c in name_candidates(path)), timeout=60)
        except GitFailed as exc:
            if exc.kind == "corrupt":
                self._needs_reclone = True
            raise DocumentUnavailable("git-error", doc_id=path, connector=self.name, detail=exc.last_line) from None
        entry: tuple[str, str, int] | None = None
        for record in out.split(b"\0"):
            meta, _, name = doc_id_from_bytes(record).partition("\t")
            if name == path and entry is None:
                mode, kind, sha, size = meta.split()
                entry = None if kind == "tree" else (mode, sha, int(size) if size.isdigit() else -1)
        self._entries[path] = entry
        return entry

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _blob(self, doc_id: str, sha: str, limit: int, media_type: str) -> bytes:
        with self._read_lock:
            if self._reader is None:
                self._reader = _BlobReader(self._env, self.mirror)
            try:
                info = self._reader.info(sha)
                if info is None:
                    raise DocumentUnavailable("git-error", doc_id=doc_id, connector=self.name,
                                              detail=f"blob {sha} is missing from the mirror")
                if info[1] > limit:
                    raise DocumentSkipped("too-large", doc_id=doc_id, connector=self.name,
                                          detail=f"{info[1]} bytes > {media_type} limit {limit}")
                content = self._reader.content(sha)
            except (OSError, ValueError) as exc:
                self._close_reader()
                raise DocumentUnavailable("git-error", doc_id=doc_id, connector=self.name, detail=str(exc)) from None
            if content is None:
                raise DocumentUnavailable("git-error", doc_id=doc_id, connector=self.name,
                                          detail=f"blob {sha} is missing from the mirror")
            return content

    def read(self, doc_id: str) -> SourceDocument:
        """The document at the pinned head commit: DocumentGone when absent there, DocumentSkipped for
        submodules, LFS pointers, binary and oversized blobs."""
        self._ensure_pinned()
        try:
            return self._read(doc_id)
        except DocumentUnavailable as exc:
            if "missing" in exc.detail:
                self._needs_reclone = True
            self._unavailable.add(doc_id)
            raise

    def _read(self, doc_id: str) -> SourceDocument:
        entry = self._entry(doc_id)
        if entry is None:
            raise DocumentGone("deleted", doc_id=doc_id, connector=self.name)
        mode, sha, _size = entry
        if not self.wants(doc_id, mode):
            raise DocumentGone("excluded", doc_id=doc_id, connector=self.name)
        if mode == MODE_SUBMODULE:
            raise DocumentSkipped("submodule", doc_id=doc_id, connector=self.name,
                                  detail=f"submodule at commit {sha} is not followed")
        media_type = media_type_for(doc_id)
        assert media_type is not None  # wants() checked it
        limit = int(getattr(self.context.limits, media_type))
        content = self._blob(doc_id, sha, limit, media_type)
        if len(content) < LFS_POINTER_MAX and content.startswith(LFS_POINTER_PREFIX):
            raise DocumentSkipped("lfs-pointer", doc_id=doc_id, connector=self.name,
                                  detail="a Git LFS pointer; the content lives outside the repository")
        if media_type != "pdf" and b"\0" in content[:BINARY_SNIFF]:
            raise DocumentSkipped("binary", doc_id=doc_id, connector=self.name,
                                  detail=f"NUL byte in the first {BINARY_SNIFF} bytes")
        head = self._head or ""
        uri, uri_template = self._uri(doc_id, head, sha)
        return SourceDocument(
            doc_id=doc_id, fingerprint=sha, revision=head, content_id=sha, uri=uri, uri_template=uri_template,
            title=PurePosixPath(doc_id).stem, content=content, media_type=media_type, modified_at=self._head_time,
            metadata={"commit": head, "blob": sha, "branch": self.cfg.branch, "mode": mode},
        )

    def _uri(self, path: str, commit: str, blob: str) -> tuple[str, str]:
        """The document's citation URI, and a per-chunk template when the web URL has line fields."""
        if self.cfg.web_url:
            values = _KeepPlaceholders(revision=commit, commit=commit, blob=blob, branch=quote(self.cfg.branch, safe="/"),
                                       path=quote(path, safe="/"))
            template = self.cfg.web_url.format_map(values)
            if "{start_line}" in template or "{end_line}" in template:
                page = template.split("#", 1)[0] if "{" not in template.split("#", 1)[0] else (
                    template.replace("{start_line}", "1").replace("{end_line}", "1"))
                return page, template
            return template, ""
        if "://" in self.remote:
            return f"{self.remote.rstrip('/')}/{quote(path, safe='/')}", ""
        return f"{self.remote.rstrip('/')}/{path}", ""

    def close(self) -> None:
        with self._read_lock:
            self._close_reader()
