"""Real git repositories for tests: a working clone that commits and pushes to a bare ``file://`` remote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C",
}


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    """Run git in ``cwd``; its stdout as text. Fails the test with git's message on error."""
    env = {**os.environ, **GIT_ENV}
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    proc = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args], cwd=cwd,
                          capture_output=True, env=env, input=input, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode(errors="surrogateescape")


class GitRepo:
    """A working repository at ``root / "work"`` pushing to the bare remote ``root / "remote.git"``."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.root = root
        self.work = root / "work"
        self.remote = root / "remote.git"
        self.branch = branch
        self.work.mkdir(parents=True)
        git(root, "init", "--bare", "--quiet", str(self.remote))
        git(self.work, "init", "--quiet", "-b", branch)
        git(self.work, "remote", "add", "origin", str(self.remote))

    @property
    def url(self) -> str:
        return self.remote.as_uri()

    def write(self, path: str, content: str | bytes) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        git(self.work, "add", "--", path)

    def remove(self, path: str) -> None:
        git(self.work, "rm", "--quiet", "--", path)

    def move(self, src: str, dst: str) -> None:
        (self.work / dst).parent.mkdir(parents=True, exist_ok=True)
        git(self.work, "mv", "--", src, dst)

    def commit(self, message: str = "change") -> str:
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD").strip()

    def push(self, rev: str = "HEAD", *, force: bool = False) -> None:
        git(self.work, "push", "--quiet", *(["--force"] if force else []), "origin", f"{rev}:refs/heads/{self.branch}")

    def remote_head(self) -> str:
        return git(self.remote, "rev-parse", f"refs/heads/{self.branch}").strip()

    def files_at(self, commit: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, object sha) of every entry of the commit's tree."""
        out: dict[str, tuple[str, str]] = {}
        for record in git(self.remote, "ls-tree", "-r", "-z", "--full-tree", commit).split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, _kind, sha = meta.split()
            out[path] = (mode, sha)
        return out

    def blob(self, sha: str) -> bytes:
        env = {**os.environ, **GIT_ENV}
        return subprocess.run(["git", "cat-file", "blob", sha], cwd=self.remote, capture_output=True, check=True,
                              env=env).stdout
