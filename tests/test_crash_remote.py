"""Crash consistency for the polled remote connectors: `syncd run` with the real packaged model follows a
git remote (``file://``) or the real MediaWiki while the test keeps changing it, and is killed with SIGKILL
at random moments: during start-up, right after a change reaches the remote, and the instant a LanceDB
commit's files appear. After the last restart the index reaches the source's head, `syncd verify` reports
no drift, and LanceDB opens and answers queries.

Expected values come from the source itself (``git ls-tree``, the wiki's own ``allpages``), never from
syncd's output.
"""

# ruff: noqa: S311 - random drives the test's changes and kill moments, not cryptography
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import REPO, wait_for, write_config
from mediawiki_server import Wiki, WikiClient
from mediawiki_server import wiki_pages as _wiki_pages

from tests.gitrepo import GitRepo, git

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu river meadow lantern harbor").split()
GIT_KILLS = 9
WIKI_KILLS = 6
MODES = ("startup", "push", "commit")


def _text(rng: random.Random, title: str) -> str:
    paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) + "." for _ in range(rng.randint(1, 3))]
    return f"# {title}\n\n" + "\n\n".join(paras) + "\n"


def _table_files(index: Path) -> set[str]:
    """Every data, version and transaction file of every LanceDB table under ``index``."""
    out: set[str] = set()
    for table in index.glob("*.lance"):
        for sub in ("data", "_versions", "_transactions"):
            folder = table / sub
            if folder.is_dir():
                out.update(str(p) for p in folder.iterdir())
    return out


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - the local daemon
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


class Killer:
    """Starts `syncd run` on ``config`` and kills it with SIGKILL in one of three ways."""

    def __init__(self, config: Path, rng: random.Random) -> None:
        self.config = config
        self.work = config.parent
        self.state = self.work / "state"
        self.index = self.work / "index"
        self.rng = rng
        self.kills: list[dict[str, Any]] = []
        self.env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def spawn(self) -> subprocess.Popen[bytes]:
        try:
            (self.state / "daemon.json").unlink()
        except FileNotFoundError:
            pass
        with open(self.work / "daemon.log", "ab") as logf:
            return subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(self.config), "run"],
                                    stdout=logf, stderr=subprocess.STDOUT, env=self.env)

    def alive(self, proc: subprocess.Popen[bytes]) -> None:
        """The daemon never exits on its own: fail with its log when it did."""
        if proc.poll() is not None:
            tail = (self.work / "daemon.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"the daemon exited on its own with {proc.returncode}:\n{tail}")

    def serving(self, proc: subprocess.Popen[bytes]) -> str:
        def url() -> str | None:
            self.alive(proc)
            try:
                return str(json.loads((self.state / "daemon.json").read_text())["url"])
            except (OSError, ValueError, KeyError):
                return None

        return str(wait_for(url, timeout=180, interval=0.05, what="daemon.json"))

    def kill_once(self, mode: str, change: Callable[[], None]) -> None:
        """``startup``: change the source, start, kill at a random moment of the start-up (model loading,
        first fetch, catch-up). ``push``: start, change the source once the daemon serves, kill within the
        next poll or two. ``commit``: start, change the source, kill the instant a new LanceDB file appears
        (mid-commit: data written, manifest maybe not)."""
        detail: dict[str, Any] = {"mode": mode}
        if mode == "startup":
            change()
        proc = self.spawn()
        started = time.monotonic()
        if mode == "startup":
            deadline = started + self.rng.uniform(0.5, 9.0)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
        else:
            self.serving(proc)
            before = _table_files(self.index)
            change()
            if mode == "push":
                time.sleep(self.rng.uniform(0.0, 1.5))  # a random kill moment, not a wait for a result
            else:
                deadline = time.monotonic() + 15.0
                while time.monotonic() < deadline and proc.poll() is None:
                    if _table_files(self.index) - before:
                        detail["hit"] = True
                        break
                    time.sleep(0.002)
        self.alive(proc)
        proc.kill()
        proc.wait()
        detail["after_s"] = round(time.monotonic() - started, 2)
        self.kills.append(detail)

    def final(self, reached: Callable[[], bool]) -> None:
        """Start once more, wait for readiness and for the index to reach the source, then stop cleanly."""
        proc = self.spawn()
        try:
            url = self.serving(proc)
            wait_for(lambda: (self.alive(proc), _get(url + "/readyz")[0] == 200)[1], timeout=180, what="/readyz")
            wait_for(lambda: (self.alive(proc), reached())[1], timeout=180, interval=0.2,
                     what="the index to reach the source's head")
            code, status = _get(url + "/status")
            assert code == 200
            assert all(c["failed_docs"] == 0 for c in status["connectors"]), status["connectors"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def verify(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(self.config), "verify", "--json"],
                             capture_output=True, text=True, env=self.env, timeout=600, check=False)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        report: dict[str, Any] = json.loads(out.stdout)
        return report


def _rows(work: Path) -> list[dict[str, Any]]:
    """Every row of the live table, read with LanceDB directly as a RAG application would."""
    import lancedb

    table = lancedb.connect(str(work / "index")).open_table("chunks")
    return list(table.search().select(["chunk_id", "connector", "doc_id", "chunk_index", "revision",
                                       "doc_identity"]).limit(None).to_arrow().to_pylist())


def _docs(rows: list[dict[str, Any]], connector: str) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        if r["connector"] == connector:
            entry = out.setdefault(r["doc_id"], {"identity": set(), "revision": set()})
            entry["identity"].add(r["doc_identity"])
            entry["revision"].add(r["revision"])
    return out


def _check_store(work: Path) -> list[dict[str, Any]]:
    """LanceDB opens; chunk ids are unique, every document's chunks sit at 0..n-1, and a vector query answers."""
    import lancedb

    rows = _rows(work)
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    positions: dict[str, list[int]] = {}
    for r in rows:
        positions.setdefault(f"{r['connector']}/{r['doc_id']}", []).append(r["chunk_index"])
    torn = {d: p for d, p in positions.items() if sorted(p) != list(range(len(p)))}
    assert not torn
    table = lancedb.connect(str(work / "index")).open_table("chunks")
    assert table.count_rows() == len(rows)
    hits = table.search([0.05] * 384).limit(5).to_list()
    assert len(hits) == min(5, len(rows))
    return rows


def _check_verify(report: dict[str, Any], docs: int) -> None:
    assert report["ok"] is True, report
    for kind in ("missing", "stale", "orphaned", "duplicated"):
        assert report[kind] == [], report
    assert report["checked_docs"] >= docs


def _config(work: Path, connector: dict[str, Any]) -> Path:
    return write_config(work, [connector], embedding={"threads": 1},
                        sync={"verify_interval": "0s", "max_batch_docs": 3, "max_delete_fraction": 1.0})


# -- git -------------------------------------------------------------------------------------------------
class GitChanger:
    """Adds, edits, deletes and renames files and pushes, sometimes rewriting the branch (force-push)."""

    FOLDERS = ("", "docs/", "docs/deep/")

    def __init__(self, repo: GitRepo, rng: random.Random) -> None:
        self.repo = repo
        self.rng = rng
        self.counter = 0
        self.commits = 0

    def files(self) -> list[str]:
        return sorted(p for p in git(self.repo.work, "ls-files", "-z").split("\0") if p)

    def _new(self) -> None:
        self.counter += 1
        name = f"{self.rng.choice(self.FOLDERS)}page{self.counter}{self.rng.choice(['.md', '.txt'])}"
        self.repo.write(name, _text(self.rng, f"Page {self.counter}"))

    def _step(self) -> None:
        docs = [f for f in self.files() if f.endswith((".md", ".txt"))]
        action = self.rng.choice(["add", "edit", "delete", "rename", "mixed"] if len(docs) > 4 else ["add", "mixed"])
        if action in ("add", "mixed"):
            for _ in range(self.rng.randint(1, 3)):
                self._new()
        if action in ("edit", "mixed") and docs:
            for path in self.rng.sample(docs, min(len(docs), self.rng.randint(1, 2))):
                self.repo.write(path, (self.repo.work / path).read_text() + "\n" + _text(self.rng, "More"))
        if action == "delete":
            self.repo.remove(self.rng.choice(docs))
        if action == "rename":
            src = self.rng.choice(docs)
            self.counter += 1
            self.repo.move(src, f"{self.rng.choice(self.FOLDERS)}moved{self.counter}{PurePosixPath(src).suffix}")
        self.commits += 1
        self.repo.commit(f"change {self.commits}: {action}")

    def __call__(self) -> None:
        """One push: a commit or two, or (one time in five) a rewritten tip pushed with --force."""
        if self.commits >= 2 and self.rng.random() < 0.2:
            git(self.repo.work, "reset", "--quiet", "--hard", "HEAD~1")
            self._step()
            self.repo.push(force=True)
            return
        for _ in range(self.rng.randint(1, 2)):
            self._step()
        self.repo.push()


def _git_expected(repo: GitRepo) -> dict[str, str]:
    """path -> blob sha of every indexable file at the remote branch head (git's own listing)."""
    head = repo.remote_head()
    return {path: sha for path, (mode, sha) in repo.files_at(head).items()
            if mode in ("100644", "100755") and PurePosixPath(path).suffix in (".md", ".txt", ".rst")}


def test_git_kill_9_while_pushing_converges_to_the_branch_head(tmp_path: Path) -> None:
    """9 SIGKILLs of a daemon polling a git remote that receives adds, edits, deletes, renames and
    force-pushes: afterwards the index holds exactly the files at the branch head, each built from a
    commit holding that content, and verify reports no drift."""
    rng = random.Random(20261201)
    repo = GitRepo(tmp_path / "git")
    change = GitChanger(repo, rng)
    for _ in range(6):
        change._new()
    repo.write("tool.py", "print('not a document')\n")
    repo.commit("initial")
    repo.push()
    work = tmp_path / "svc"
    work.mkdir()
    config = _config(work, {"name": "repo", "type": "git", "url": repo.url, "branch": repo.branch,
                            "poll_interval": "500ms", "retries": 0})
    killer = Killer(config, rng)
    for i in range(GIT_KILLS):
        killer.kill_once(MODES[i % len(MODES)], change)
    change()  # the last push, while no daemon runs
    expected = _git_expected(repo)

    def reached() -> bool:
        try:
            docs = _docs(_rows(work), "repo")
        except (OSError, ValueError):
            return False
        return {d: e["identity"] for d, e in docs.items()} == {p: {s} for p, s in expected.items()}

    killer.final(reached)
    (work / "kills.json").write_text(json.dumps(killer.kills))
    assert len(killer.kills) == GIT_KILLS
    assert [k["mode"] for k in killer.kills].count("commit") == GIT_KILLS // 3
    assert any(k.get("hit") for k in killer.kills), killer.kills  # at least one kill landed mid-commit
    _check_verify(killer.verify(), len(expected))
    rows = _check_store(work)
    docs = _docs(rows, "repo")
    assert {d: e["identity"] for d, e in docs.items()} == {p: {s} for p, s in expected.items()}
    for path, entry in docs.items():
        (revision,) = entry["revision"]
        # The revision is a commit (of the history, or of a rewritten tip) whose tree holds this content.
        listed = git(repo.work, "ls-tree", "--full-tree", revision, "--", path).split()
        assert listed[2] == expected[path], (path, revision)


# -- MediaWiki -------------------------------------------------------------------------------------------
class WikiChanger:
    """Creates, edits, deletes and moves pages of one namespace through the Action API."""

    def __init__(self, client: WikiClient, prefix: str, rng: random.Random) -> None:
        self.client = client
        self.prefix = prefix
        self.rng = rng
        self.pages: list[str] = []
        self.counter = 0

    def _create(self) -> None:
        self.counter += 1
        title = f"{self.prefix}:Page {self.counter}"
        self.client.edit(title, _text(self.rng, f"Page {self.counter}").replace("# ", "== ", 1).replace("\n", " ==\n", 1))
        self.pages.append(title)

    def __call__(self) -> None:
        action = self.rng.choice(["create", "edit", "delete", "move", "mixed"] if len(self.pages) > 3
                                 else ["create", "mixed"])
        if action in ("create", "mixed"):
            for _ in range(self.rng.randint(1, 3)):
                self._create()
        if action in ("edit", "mixed"):
            for title in self.rng.sample(self.pages, min(len(self.pages), self.rng.randint(1, 2))):
                self.client.edit(title, _text(self.rng, "Edited") + f" Edit {self.rng.randint(0, 10**9)}.")
        if action == "delete":
            title = self.rng.choice(self.pages)
            self.client.delete(title)
            self.pages.remove(title)
        if action == "move":
            title = self.rng.choice(self.pages)
            self.counter += 1
            new = f"{self.prefix}:Moved {self.counter}"
            self.client.move(title, new, redirect=self.rng.random() < 0.5)
            self.pages[self.pages.index(title)] = new




@pytest.mark.mediawiki
def test_mediawiki_kill_9_while_editing_converges_to_the_wiki(
        tmp_path: Path, mediawiki: Wiki, wiki_ns: tuple[int, str], wiki_client: WikiClient) -> None:
    """6 SIGKILLs of a daemon polling the real wiki while pages are created, edited, deleted and moved:
    afterwards the index holds exactly the wiki's pages at their latest revids, and verify reports no drift."""
    ns, prefix = wiki_ns
    rng = random.Random(20261202)
    change = WikiChanger(wiki_client, prefix, rng)
    for _ in range(5):
        change._create()
    config = _config(tmp_path, {"name": "wiki", "type": "mediawiki", "api_url": mediawiki.api_url,
                                "namespaces": [ns], "poll_interval": "500ms", "request_rate": 0})
    killer = Killer(config, rng)
    for i in range(WIKI_KILLS):
        killer.kill_once(MODES[i % len(MODES)], change)
    change()  # the last change, while no daemon runs
    expected = _wiki_pages(wiki_client, ns)

    def reached() -> bool:
        try:
            docs = _docs(_rows(tmp_path), "wiki")
        except (OSError, ValueError):
            return False
        return {d: e["revision"] for d, e in docs.items()} == {t: {r} for t, r in expected.items()}

    killer.final(reached)
    (tmp_path / "kills.json").write_text(json.dumps(killer.kills))
    assert len(killer.kills) == WIKI_KILLS
    assert any(k.get("hit") for k in killer.kills), killer.kills  # at least one kill landed mid-commit
    _check_verify(killer.verify(), len(expected))
    docs = _docs(_check_store(tmp_path), "wiki")
    assert {d: e["revision"] for d, e in docs.items()} == {t: {r} for t, r in expected.items()}
    assert _wiki_pages(wiki_client, ns) == expected
