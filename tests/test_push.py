"""Push-triggered sync end to end: `syncd run` as a real subprocess with the real model, a real bare
repository whose real `post-receive` hook (deploy/hooks/post-receive, as shipped) calls the daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, write_config
from gitrepo import GitRepo, git

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "deploy" / "hooks" / "post-receive"


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            out.append(entry)
    return out


def install_hook(repo: GitRepo, *, url: str, connector: str, secret_file: Path) -> None:
    target = repo.remote / "hooks" / "post-receive"
    shutil.copy(HOOK, target)
    target.chmod(0o755)
    git(repo.remote, "config", "syncd.url", url)
    git(repo.remote, "config", "syncd.connector", connector)
    git(repo.remote, "config", "syncd.secretFile", str(secret_file))


def test_git_push_through_the_post_receive_hook_is_searchable_long_before_the_poll(
        tmp_path: Path, daemon_factory: Any) -> None:
    assert shutil.which("curl"), "the shipped post-receive hook needs curl"
    repo = GitRepo(tmp_path / "repo")
    repo.write("guide/intro.md", "# Introduction\n\nThe guide starts here and explains the basics.\n")
    repo.commit("first")
    repo.push()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(os.urandom(16).hex() + "\n")
    secret_file.chmod(0o600)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "git", "url": repo.url, "branch": "main",
                                   "poll_interval": "1h", "webhook_secret_file": str(secret_file),
                                   "acl": ["everyone"]}])  # a repository has no permissions of its own
    d = daemon_factory(cfg).start()
    install_hook(repo, url=d.url, connector="docs", secret_file=secret_file)
    assert [r["doc_id"] for r in d.search("guide basics", k=1)] == ["guide/intro.md"]

    repo.write("guide/deploy.md", "# Deploying\n\nRoll out with the blue-green switch: drain the amber pool "
                                  "first, then flip the router to the cobalt pool.\n")
    repo.commit("deploy notes")
    pushed = time.monotonic()
    repo.push()  # runs the hook, which POSTs the pushed refs to /hooks/docs
    hits = wait_for(lambda: [r for r in d.search("blue-green switch amber cobalt pool", k=3)
                             if r["doc_id"] == "guide/deploy.md"], timeout=120, what="the pushed text searchable")
    waited = time.monotonic() - pushed
    assert waited < 3600 / 10, f"found after {waited:.1f} s: the push, not the hourly poll, did it"
    assert hits[0]["revision"] == repo.remote_head()
    assert [e["sender"] for e in events(d.log_path, "hook.accepted")] == ["plain"]

    # A push to another branch goes through the same hook and is ignored.
    git(repo.work, "push", "--quiet", "origin", "HEAD:refs/heads/draft")
    ignored = wait_for(lambda: events(d.log_path, "hook.ignored"), what="the draft push ignored")
    assert "refs/heads/draft" in ignored[0]["reason"]
    assert len(events(d.log_path, "hook.accepted")) == 1

    # The poll would have found the same: a full comparison of the index with the branch finds no drift.
    proc = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "verify", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["checked_docs"] == 2 and not report["missing"] and not report["stale"]
    assert d.stop() == 0
