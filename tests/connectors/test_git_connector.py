"""The git connector against real repositories served through ``file://`` bare remotes.

After every sync the index must hold exactly the indexable files at the branch head, each at the commit
where its current content was first synced, and ``chunks_embedded`` must equal the number of chunk texts
at the head that the store did not hold before the sync. Expected values are computed here from the
repository with git itself and the runtime's own chunker, never copied from output.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from connectors.base import doc_id_from_name
from syncd.errors import ConfigError, ConnectorError, RootUnavailable
from syncd.extract import extract
from syncd.models import SyncSummary
from syncd.runtime import Runtime
from syncd.verify import verify
from tests.conftest import wait_for, write_config
from tests.corpus import markdown_doc, paragraph
from tests.gitrepo import GitRepo, git

NAME = "repo"
INDEXABLE = {".md": "markdown", ".txt": "text", ".rst": "rst"}
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


# -- helpers ---------------------------------------------------------------------------------------------
def git_config(tmp_path: Path, repo: GitRepo, **extra: Any) -> Path:
    sections = extra.pop("sections", {})
    connector = {"name": NAME, "type": "git", "url": repo.url, "branch": repo.branch, "poll_interval": "1s", **extra}
    return write_config(tmp_path, [connector], **sections)


def sync(rt: Runtime, *, allow_mass_delete: bool = False) -> SyncSummary:
    """One poll of the connector, applied the way `syncd sync` and the daemon apply it."""
    connector = rt.connectors[NAME]
    changes = list(connector.poll())
    if any(c.kind == "rescan" for c in changes) or allow_mass_delete:
        summary = rt.engine.reconcile(NAME, allow_mass_delete=allow_mass_delete)
    else:
        summary = rt.engine.process({NAME: {c.doc_id: 0.0 for c in changes}})
    if not any(f.connector == NAME and not f.doc_id for f in summary.failures):
        connector.commit_cursor()
    return summary


def indexable(repo: GitRepo, commit: str | None, *, too_large: int | None = None) -> dict[str, str]:
    """path -> blob sha of the files at ``commit`` that belong in the index (decided without syncd)."""
    if commit is None:
        return {}
    out = {}
    for path, (mode, sha) in repo.files_at(commit).items():
        if mode not in ("100644", "100755") or PurePosixPath(path).suffix not in INDEXABLE:
            continue
        # Not UTF-8 in the repository: indexed under its doc id, each such byte written %XX.
        path = doc_id_from_name(path)
        content = repo.blob(sha)
        if content.startswith(b"version https://git-lfs") or b"\0" in content or not content.strip():
            continue
        if too_large is not None and len(content) > too_large:
            continue
        out[path] = sha
    return out


def index_view(rt: Runtime) -> dict[str, dict[str, Any]]:
    """doc_id -> revisions, blob identities and chunk hashes in the store."""
    data = rt.store.scan(["doc_id", "connector", "revision", "doc_identity", "content_hash", "chunk_index"]).to_pylist()
    view: dict[str, dict[str, Any]] = {}
    for row in data:
        if row["connector"] != NAME:
            continue
        entry = view.setdefault(row["doc_id"], {"revisions": set(), "blobs": set(), "hashes": [], "positions": []})
        entry["revisions"].add(row["revision"])
        entry["blobs"].add(row["doc_identity"])
        entry["hashes"].append(row["content_hash"])
        entry["positions"].append(row["chunk_index"])
    return view


def store_hashes(rt: Runtime) -> set[str]:
    return set(rt.store.scan(["content_hash"])["content_hash"].to_pylist())


class Tracker:
    """Syncs and checks the index against the remote branch head after each sync."""

    def __init__(self, rt: Runtime, repo: GitRepo, *, too_large: int | None = None) -> None:
        self.rt = rt
        self.repo = repo
        self.too_large = too_large
        self.synced: dict[str, tuple[str, str]] = {}  # path -> (blob, commit of the sync that wrote it)

    def chunk_hashes(self, path: str, sha: str) -> list[str]:
        blocks = extract(self.repo.blob(sha), INDEXABLE[PurePosixPath(path).suffix]).blocks
        return [c.content_hash for c in self.rt.chunker.chunk(blocks)]

    def head(self) -> str | None:
        refs = git(self.repo.remote, "for-each-ref", "--format=%(objectname)", f"refs/heads/{self.repo.branch}")
        return refs.strip() or None

    def sync(self, **kwargs: Any) -> SyncSummary:
        head = self.head()
        files = indexable(self.repo, head, too_large=self.too_large)
        wanted = {path: self.chunk_hashes(path, sha) for path, sha in files.items()}
        before = store_hashes(self.rt)
        new_texts = {h for hashes in wanted.values() for h in hashes} - before
        summary = sync(self.rt, **kwargs)
        assert summary.chunks_embedded == len(new_texts), summary.as_dict()
        assert head is not None or not files
        self.synced = {path: (sha, self.synced[path][1] if self.synced.get(path, ("",))[0] == sha else str(head))
                       for path, sha in files.items()}
        view = index_view(self.rt)
        assert set(view) == set(files), (sorted(view), sorted(files))
        for path, (sha, commit) in self.synced.items():
            assert view[path]["revisions"] == {commit}, path
            assert view[path]["blobs"] == {sha}, path
            assert sorted(view[path]["positions"]) == list(range(len(wanted[path]))), path
            order = sorted(zip(view[path]["positions"], view[path]["hashes"], strict=True))
            assert [h for _, h in order] == wanted[path], path
        cursor = json.loads((self.rt.config.state_dir / "connectors" / NAME / "cursor.json").read_text())
        if not any(f.connector == NAME and not f.doc_id for f in summary.failures):
            assert cursor["commit"] == head
            report = verify(self.rt)
            assert report.ok and not report.errors, report.as_dict()
        return summary


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "git")


# -- the scenarios -------------------------------------------------------------------------------------
def test_add_modify_delete_and_rename_across_commits(tmp_path, repo, make_runtime):
    """Each commit re-embeds only what it changed; a pure rename re-embeds nothing and counts as renamed."""
    for i, path in enumerate(["guide/intro.md", "guide/setup.md", "notes.txt", "api.rst"]):
        repo.write(path, markdown_doc(i) if path.endswith(".md") else paragraph(random.Random(i), 5) + "\n")
    repo.write("logo.svg", "<svg/>")
    repo.commit("first")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    first = t.sync()
    assert first.docs_added == 4 and first.failures == []

    repo.write("guide/intro.md", markdown_doc(0) + "\n## Added\n\nA brand new closing paragraph about rollbacks.\n")
    repo.remove("guide/setup.md")
    repo.write("guide/new.md", markdown_doc(42))
    repo.commit("edit, delete, add")
    repo.push()
    second = t.sync()
    assert (second.docs_changed, second.docs_deleted, second.docs_added) == (1, 1, 1)
    assert second.chunks_reused > 0

    repo.move("notes.txt", "archive/notes-2024.txt")
    repo.move("api.rst", "reference/api.rst")
    repo.commit("renames")
    repo.push()
    third = t.sync()
    assert third.docs_renamed == 2 and third.chunks_embedded == 0
    assert (third.docs_added, third.docs_deleted, third.docs_changed) == (0, 0, 0)

    nothing = t.sync()
    assert nothing.docs_seen == 0 and nothing.chunks_embedded == 0


def test_many_commits_between_two_polls(tmp_path, repo, make_runtime):
    """Twenty commits pushed between polls are one tree diff: intermediate states never reach the index."""
    for i in range(6):
        repo.write(f"docs/page-{i}.md", markdown_doc(100 + i, sections=3))
    repo.commit("base")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    rng = random.Random(7)
    for step in range(20):
        repo.write(f"docs/page-{step % 6}.md", markdown_doc(200 + step, sections=3))
        if step == 5:
            repo.write("docs/transient.md", markdown_doc(999))
        if step == 9:
            repo.remove("docs/transient.md")
        if step == 12:
            repo.move("docs/page-5.md", "docs/moved/page-5.md")
        if step == 15:
            repo.write("docs/late.txt", paragraph(rng) + "\n")
        repo.commit(f"step {step}")
    repo.push()
    summary = t.sync()
    assert "docs/transient.md" not in index_view(rt)
    # page-5 moved at step 12 and was written again at step 17: the moved copy and late.txt are new.
    assert (summary.docs_added, summary.docs_deleted, summary.docs_changed) == (2, 0, 6)


def test_force_push_to_an_unrelated_history(tmp_path, repo, make_runtime):
    """A new root commit replaces the branch: the tree diff needs no common ancestor; equal blobs are kept."""
    repo.write("a.md", markdown_doc(1))
    repo.write("b.md", markdown_doc(2))
    repo.write("c.md", markdown_doc(3))
    repo.commit("old history")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    git(repo.work, "checkout", "--quiet", "--orphan", "rewritten")
    git(repo.work, "rm", "-r", "--quiet", "--cached", ".")
    for name in ("a.md", "b.md", "c.md"):
        (repo.work / name).unlink()
    repo.write("a.md", markdown_doc(1))  # same content, same path: unchanged
    repo.write("moved/b.md", markdown_doc(2))  # same content, new path: a rename
    repo.write("d.md", markdown_doc(4))
    repo.commit("unrelated root")
    repo.push(force=True)
    summary = t.sync()
    assert (summary.docs_unchanged, summary.docs_renamed, summary.docs_added, summary.docs_deleted) == (0, 1, 1, 1)
    assert index_view(rt)["a.md"]["revisions"] == {t.synced["a.md"][1]}


def test_mass_deletion_by_a_rewrite_waits_for_approval(tmp_path, repo, make_runtime):
    """A force-push that deletes most documents is held by the guard (cursor kept) until explicitly allowed."""
    for i in range(12):
        repo.write(f"old/{i}.md", markdown_doc(600 + i, sections=1))
    repo.commit("many")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    cursor_file = rt.config.state_dir / "connectors" / NAME / "cursor.json"
    before = json.loads(cursor_file.read_text())["commit"]
    git(repo.work, "rm", "-r", "--quiet", "old")
    repo.write("new.md", markdown_doc(700))
    repo.commit("wipe")
    repo.push(force=True)
    held = sync(rt)
    assert held.docs_deleted == 0 and any(f.reason.startswith("mass-delete-refused") for f in held.failures)
    assert json.loads(cursor_file.read_text())["commit"] == before and len(index_view(rt)) == 13
    allowed = t.sync(allow_mass_delete=True)
    assert allowed.docs_deleted == 12


def test_branch_deleted_then_recreated(tmp_path, repo, make_runtime):
    """While the branch is gone the poll fails and nothing is deleted; once recreated, the diff catches up."""
    repo.write("keep.md", markdown_doc(1))
    repo.write("drop.md", markdown_doc(2))
    first_commit = repo.commit("one")
    repo.write("later.md", markdown_doc(3))
    repo.commit("two")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    cursor_file = rt.config.state_dir / "connectors" / NAME / "cursor.json"
    cursor_before = cursor_file.read_text()

    git(repo.remote, "update-ref", "-d", f"refs/heads/{repo.branch}")
    git(repo.remote, "update-ref", "refs/heads/other", first_commit)
    with pytest.raises(RootUnavailable, match="branch 'main' does not exist"):
        rt.connectors[NAME].poll()
    assert cursor_file.read_text() == cursor_before
    assert set(index_view(rt)) == {"keep.md", "drop.md", "later.md"}

    git(repo.work, "reset", "--quiet", "--hard", first_commit)
    repo.remove("drop.md")
    repo.write("recreated.md", markdown_doc(4))
    repo.commit("recreated")
    repo.push(force=True)
    summary = t.sync()
    assert summary.docs_deleted == 2 and summary.docs_added == 1


def test_empty_repository_then_first_push(tmp_path, repo, make_runtime):
    """An empty repository syncs to an empty index without error; the first push is then picked up."""
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    summary = t.sync()
    assert summary.failures == [] and index_view(rt) == {}
    repo.write("first.md", markdown_doc(1))
    repo.commit("first")
    repo.push()
    assert t.sync().docs_added == 1


def test_lfs_pointer_binary_oversized_and_submodule_are_skipped_with_reasons(tmp_path, repo, make_runtime):
    """Unindexable entries are skipped with a structured reason shown in status; symlinks are not documents."""
    from syncd.service import build_status

    repo.write("ok.md", markdown_doc(1, sections=2))
    repo.write(".gitattributes", "*.psd filter=lfs diff=lfs merge=lfs -text\nbig.md filter=lfs\n")
    repo.write("big.md", LFS_POINTER)
    repo.write("data.txt", b"PK\x03\x04\x00\x00binary\x00payload" * 20)
    repo.write("huge.md", "# Huge\n\n" + "\n\n".join(paragraph(random.Random(i)) for i in range(80)))
    (repo.work / "link.md").symlink_to("ok.md")
    git(repo.work, "add", "link.md")
    sub = GitRepo(tmp_path / "sub")
    sub.write("README.md", "submodule content\n")
    sub_commit = sub.commit("sub")
    git(repo.work, "update-index", "--add", "--cacheinfo", f"160000,{sub_commit},vendor/theme")
    repo.commit("odd entries")
    repo.push()
    limit = 4000
    rt = make_runtime(git_config(tmp_path, repo, sections={"limits": {"markdown": limit}}))
    assert len((repo.work / "huge.md").read_bytes()) > limit
    t = Tracker(rt, repo, too_large=limit)
    summary = t.sync()
    reasons = {f.doc_id: f.reason.split(":")[0] for f in summary.failures}
    assert reasons == {"big.md": "lfs-pointer", "data.txt": "binary", "huge.md": "too-large",
                       "vendor/theme": "submodule"}
    status = build_status(rt)["connectors"][0]
    assert status["failed_docs"] == 4
    assert {f["doc_id"]: f["reason"].split(":")[0] for f in status["failures"]} == reasons
    report = verify(rt)
    assert report.ok and report.checked_docs == 5, report.as_dict()

    # Fixing a skipped file indexes it; the other skips are not re-read by the diff.
    repo.write("data.txt", "Now plain text about backups.\n")
    repo.commit("fix")
    repo.push()
    fixed = t.sync()
    assert fixed.docs_added == 1 and fixed.failures == []


def test_paths_with_spaces_quotes_and_unicode(tmp_path, repo, make_runtime):
    """Odd paths survive listing, diffing (add, rename, delete) and citations untouched."""
    odd = ["dir with space/it's \"quoted\".md", "Ünïcødé/naïve ☃ café.md", "tab\tand-newline\nname.md",
           "-leading-dash.md", "[brackets]*?.md"]
    for i, path in enumerate(odd):
        repo.write(path, markdown_doc(300 + i, sections=2))
    repo.write(os.fsdecode(b"latin-1 caf\xe9.md"), markdown_doc(399, sections=1))
    repo.commit("odd names")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    first = t.sync()
    assert first.docs_added == len(odd) + 1 and first.failures == []
    assert "latin-1 caf%E9.md" in rt.engine.docs(NAME)
    repo.move(odd[0], "dir with space/renamed \"again\" ü.md")
    repo.remove(odd[1])
    repo.write(odd[2], markdown_doc(400, sections=2))
    repo.commit("shuffle")
    repo.push()
    summary = t.sync()
    assert (summary.docs_renamed, summary.docs_deleted, summary.docs_changed) == (1, 1, 1)


def test_replay_history_commit_by_commit(tmp_path, repo, make_runtime):
    """Walk a generated history forwards (and back again) one commit per poll, checking after every step."""
    rng = random.Random(2024)
    live: list[str] = []
    commits = []
    for step in range(24):
        op = rng.choice(["add", "add", "edit", "edit", "delete", "rename", "copy", "noop"]) if live else "add"
        if op == "add" or not live:
            path = f"{rng.choice(['docs', 'docs/ops', 'guides'])}/page-{step}.{rng.choice(['md', 'md', 'txt', 'rst'])}"
            repo.write(path, markdown_doc(step, sections=rng.randint(1, 4)) if path.endswith(".md")
                       else "\n\n".join(paragraph(rng) for _ in range(rng.randint(1, 5))) + "\n")
            live.append(path)
        elif op == "edit":
            path = rng.choice(live)
            text = (repo.work / path).read_text().split("\n\n")
            text[rng.randrange(len(text))] = paragraph(rng)
            repo.write(path, "\n\n".join(text))
        elif op == "delete":
            path = live.pop(rng.randrange(len(live)))
            repo.remove(path)
        elif op == "rename":
            path = live.pop(rng.randrange(len(live)))
            new = f"moved/{step}-{PurePosixPath(path).name}"
            repo.move(path, new)
            live.append(new)
        elif op == "copy":
            path = rng.choice(live)
            new = f"copies/{step}-{PurePosixPath(path).name}"
            repo.write(new, (repo.work / path).read_bytes())
            live.append(new)
        commits.append(repo.commit(f"step {step}: {op}"))
    rt = make_runtime(git_config(tmp_path, repo, sections={"sync": {"max_delete_fraction": 1.0}}))
    t = Tracker(rt, repo)
    for commit in [*commits, commits[3], commits[-1], commits[0]]:
        repo.push(commit, force=True)
        t.sync()


def test_a_push_during_a_cycle_does_not_mix_commits(tmp_path, repo, make_runtime):
    """Reads use the head the poll pinned: a push landing mid-cycle waits for the next poll."""
    repo.write("a.md", markdown_doc(1))
    repo.commit("one")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    repo.write("a.md", markdown_doc(2))
    pinned = repo.commit("two")
    repo.push()
    connector = rt.connectors[NAME]
    changes = list(connector.poll())
    repo.write("a.md", markdown_doc(3))
    repo.write("b.md", markdown_doc(4))
    repo.commit("three")
    repo.push()
    rt.engine.process({NAME: {c.doc_id: 0.0 for c in changes}})
    connector.commit_cursor()
    assert index_view(rt)["a.md"]["revisions"] == {pinned}
    assert "b.md" not in index_view(rt)
    t.synced["a.md"] = (repo.files_at(pinned)["a.md"][1], pinned)
    t.sync()


def test_first_sync_resumes_after_a_crash(tmp_path, repo, make_runtime):
    """A first sync killed midway keeps its committed batches; the next run embeds only the rest."""
    for i in range(10):
        repo.write(f"docs/{i}.md", markdown_doc(500 + i, sections=2))
    repo.commit("big")
    repo.push()
    cfg = git_config(tmp_path, repo, sections={"sync": {"max_batch_docs": 2}})
    script = (
        "import os, sys\n"
        "from syncd import config\n"
        "from syncd.runtime import Runtime\n"
        "from syncd.testing import HashEmbedder\n"
        "class Crash(HashEmbedder):\n"
        "    def encode(self, texts):\n"
        "        if len(self.calls) == 2:\n"
        "            os._exit(3)\n"
        "        return super().encode(texts)\n"
        "rt = Runtime(config.load(sys.argv[1]), embedder=Crash())\n"
        "rt.open()\n"
        "assert [c.kind for c in rt.connectors['repo'].poll()] == ['rescan']\n"
        "rt.engine.reconcile('repo')\n"
        "os._exit(0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 3, proc.stderr
    assert not (tmp_path / "state" / "connectors" / NAME / "cursor.json").exists()
    rt = make_runtime(cfg)
    kept = index_view(rt)
    assert 0 < len(kept) < 10
    t = Tracker(rt, repo)
    summary = t.sync()
    assert summary.docs_added == 10 - len(kept)


@pytest.mark.parametrize("damage", ["objects-deleted", "head-garbled", "mirror-removed"])
def test_corrupt_mirror_is_recloned(tmp_path, repo, make_runtime, damage):
    """A damaged mirror is rebuilt from the remote on the next poll; the index ends up exact."""
    import shutil

    repo.write("a.md", markdown_doc(1))
    repo.write("b.md", markdown_doc(2))
    repo.commit("one")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    rt.connectors[NAME].close()
    mirror = rt.config.state_dir / "connectors" / NAME / "mirror.git"
    if damage == "objects-deleted":
        for folder in (mirror / "objects").iterdir():
            if folder.name not in ("info",):
                shutil.rmtree(folder)
    elif damage == "head-garbled":
        (mirror / "HEAD").write_bytes(b"\x00garbage")
    else:
        shutil.rmtree(mirror)
    repo.write("a.md", markdown_doc(3))
    repo.write("c.md", markdown_doc(4))
    repo.commit("two")
    repo.push()
    t.sync()
    assert (mirror / "HEAD").read_text().startswith("ref:")


def test_a_blob_lost_from_the_mirror_is_recovered(tmp_path, repo, make_runtime):
    """A missing object is found by the fetch (re-clone at once) or by a read (the document fails, the mirror is
    marked corrupt, and the next poll re-clones and retries it)."""
    repo.write("x.md", markdown_doc(1))
    repo.commit("one")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    t = Tracker(rt, repo)
    t.sync()
    connector = rt.connectors[NAME]
    mirror = rt.config.state_dir / "connectors" / NAME / "mirror.git"

    def lose(sha: str) -> None:
        connector.close()
        loose = mirror / "objects" / sha[:2] / sha[2:]
        assert loose.exists()
        loose.unlink()

    lose(repo.files_at(repo.head())["x.md"][1])
    repo.write("copy/y.md", markdown_doc(1))  # the same blob: a fetch does not send it again
    repo.commit("copy")
    repo.push()
    t.sync()

    repo.write("z.md", markdown_doc(2))
    repo.commit("three")
    repo.push()
    changes = list(connector.poll())
    lose(repo.files_at(repo.head())["z.md"][1])
    summary = rt.engine.process({NAME: {c.doc_id: 0.0 for c in changes}})
    assert [(f.doc_id, f.reason.split(":")[0]) for f in summary.failures] == [("z.md", "git-error")]
    connector.commit_cursor()
    healed = t.sync()
    assert healed.docs_added == 1 and healed.failures == []


def test_unreachable_remote_keeps_cursor_and_index(tmp_path, repo, make_runtime):
    """A vanished remote fails the poll (no deletions, cursor unchanged); when it is back, sync catches up."""
    repo.write("a.md", markdown_doc(1))
    repo.commit("one")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo, retries=0))
    t = Tracker(rt, repo)
    t.sync()
    cursor_file = rt.config.state_dir / "connectors" / NAME / "cursor.json"
    before = cursor_file.read_text()
    aside = repo.remote.with_name("moved-away.git")
    os.rename(repo.remote, aside)
    with pytest.raises(RootUnavailable, match="does not appear to be a git repository"):
        rt.connectors[NAME].poll()
    summary = rt.engine.reconcile(NAME)  # a full comparison fails the same way and deletes nothing
    assert summary.failures and summary.failures[0].doc_id == "" and summary.docs_deleted == 0
    assert rt.engine.status[NAME].last_error and rt.engine.status[NAME].state == "unavailable"
    assert cursor_file.read_text() == before and set(index_view(rt)) == {"a.md"}
    os.rename(aside, repo.remote)
    repo.write("b.md", markdown_doc(2))
    repo.commit("two")
    repo.push()
    t.sync()


def test_authentication_failure_is_reported_without_prompting(tmp_path, repo, make_runtime, httpserver):
    """A remote asking for credentials fails fast (prompts are off) with an error naming the problem."""
    from werkzeug import Response

    httpserver.expect_request("/org/repo.git/info/refs").respond_with_response(
        Response("auth required", status=401, headers={"WWW-Authenticate": 'Basic realm="git"'}))
    cfg = write_config(tmp_path, [{"name": NAME, "type": "git", "url": httpserver.url_for("/org/repo.git"),
                                   "retries": 0}])
    rt = make_runtime(cfg)
    with pytest.raises(ConnectorError) as info:
        rt.connectors[NAME].poll()
    assert not isinstance(info.value, RootUnavailable)
    assert "username" in str(info.value).lower() or "authentication" in str(info.value).lower()
    assert not (rt.config.state_dir / "connectors" / NAME / "cursor.json").exists()


def test_credentials_in_the_url_are_refused_at_start_up(tmp_path):
    from syncd import config as config_mod

    cfg = write_config(tmp_path, [{"name": NAME, "type": "git", "url": "https://bob:hunter2@git.example.com/r.git"}])
    with pytest.raises(ConfigError, match=r"connectors\[0\]\.url") as info:
        config_mod.load(cfg)
    assert "hunter2" not in str(info.value)


def test_web_url_template_gives_per_chunk_citations(tmp_path, repo, make_runtime):
    """The citation URI names the commit, the quoted path and each chunk's own line span."""
    repo.write("guide/on call.md", markdown_doc(5, sections=5))
    head = repo.commit("one")
    repo.push()
    template = "https://git.example.com/org/repo/blob/{revision}/{path}#L{start_line}-L{end_line}"
    rt = make_runtime(git_config(tmp_path, repo, web_url=template))
    Tracker(rt, repo).sync()
    rows = rt.store.scan(["uri", "start_line", "end_line", "revision"]).to_pylist()
    assert len(rows) > 1
    for row in rows:
        assert row["uri"] == (f"https://git.example.com/org/repo/blob/{head}/guide/on%20call.md"
                              f"#L{row['start_line']}-L{row['end_line']}")


def test_daemon_polls_and_shows_errors_in_status(tmp_path, repo, in_process_daemon):
    """Under the service, a push is indexed by the scheduled poll; a lost remote shows in status and heals."""
    repo.write("a.md", markdown_doc(1))
    first = repo.commit("one")
    repo.push()
    cfg = git_config(tmp_path, repo, retries=0)
    with in_process_daemon(cfg) as d:
        engine = d.service.runtime.engine
        # The catch-up at start is a poll: its cursor is saved, so the next poll is an incremental diff.
        assert json.loads((tmp_path / "state" / "connectors" / NAME / "cursor.json").read_text())["commit"] == first

        def status() -> dict[str, Any]:
            return dict(d.service.status()["connectors"][0])

        wait_for(lambda: "a.md" in engine.docs(NAME), what="a.md indexed")
        repo.write("b.md", markdown_doc(2))
        repo.commit("two")
        repo.push()
        wait_for(lambda: "b.md" in engine.docs(NAME), what="b.md indexed by a poll")
        aside = repo.remote.with_name("moved-away.git")
        os.rename(repo.remote, aside)
        failing = wait_for(lambda: (s := status())["last_error"] and s, what="error in status")
        assert "does not appear to be a git repository" in failing["last_error"]
        assert set(engine.docs(NAME)) == {"a.md", "b.md"}
        os.rename(aside, repo.remote)
        repo.write("c.md", markdown_doc(3))
        head = repo.commit("three")
        repo.push()
        wait_for(lambda: "c.md" in engine.docs(NAME) and status()["last_error"] is None, what="recovered")
        cursor = tmp_path / "state" / "connectors" / NAME / "cursor.json"
        wait_for(lambda: json.loads(cursor.read_text())["commit"] == head, what="cursor advanced")


@pytest.mark.e2e
def test_cli_sync_and_verify_with_the_real_model(tmp_path, repo, make_runtime):
    """`syncd sync --connector NAME --json` then `syncd verify` with the packaged model."""
    from syncd.chunking import embed_input

    def syncd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), *args], capture_output=True,
                              text=True, timeout=600)

    repo.write("runbooks/failover.md", "# Failover\n\n## Steps\n\nPromote the replica with pg_ctl promote, then "
                                       "repoint the pooler.\n")
    repo.write("expenses.txt", "Meals are reimbursed up to sixty euros per day while travelling.\n")
    head = repo.commit("docs")
    repo.push()
    cfg = git_config(tmp_path, repo, acl=["everyone"])  # a repository has no permissions of its own
    # Expected texts from a chunker with the same settings (the hash embedder shares the real tokenizer).
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    probe = make_runtime(write_config(probe_dir, []))
    texts = set()
    for path, sha in indexable(repo, head).items():
        blocks = extract(repo.blob(sha), INDEXABLE[PurePosixPath(path).suffix]).blocks
        texts |= {embed_input(c.text, c.heading_path) for c in probe.chunker.chunk(blocks)}

    out = syncd("sync", "--connector", NAME, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["docs_added"] == 2 and summary["chunks_embedded"] == len(texts) and summary["failures"] == []

    out = syncd("query", "how do I promote the database replica", "-k", "1", "--json")
    top = json.loads(out.stdout)["results"][0]
    assert (top["doc_id"], top["revision"]) == ("runbooks/failover.md", head)

    repo.move("expenses.txt", "policies/expenses.txt")
    repo.commit("move")
    repo.push()
    out = syncd("sync", "--connector", NAME, "--json")
    assert out.returncode == 0, out.stderr
    moved = json.loads(out.stdout)
    assert moved["docs_renamed"] == 1 and moved["chunks_embedded"] == 0

    out = syncd("verify", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["checked_docs"] == 2

    # A lost remote: one JSON summary naming the connector's error, exit 1, the index and cursor kept.
    cursor = (tmp_path / "state" / "connectors" / NAME / "cursor.json").read_text()
    os.rename(repo.remote, repo.remote.with_name("gone.git"))
    out = syncd("sync", "--connector", NAME, "--json")
    assert out.returncode == 1, out.stderr
    failed = json.loads(out.stdout)
    assert [(f["connector"], f["doc_id"]) for f in failed["failures"]] == [(NAME, "")]
    assert "does not appear to be a git repository" in failed["failures"][0]["reason"]
    assert (tmp_path / "state" / "connectors" / NAME / "cursor.json").read_text() == cursor
    status = json.loads(syncd("status", "--json").stdout)
    assert status["connectors"][0]["docs"] == 2


def test_a_document_the_model_failed_on_is_retried_by_later_polls(tmp_path, repo, in_process_daemon):
    """The cursor moves past a poll whose document the engine could not embed; the service's next polls
    retry it until it is indexed."""
    from syncd.testing import FaultyEmbedder, HashEmbedder

    repo.write("a.md", "# A\n\nplain document\n")
    repo.commit("a")
    repo.push()
    faulty = FaultyEmbedder(HashEmbedder(), raise_marker="POISON")
    with in_process_daemon(git_config(tmp_path, repo), embedder=faulty) as d:
        engine = d.service.runtime.engine
        repo.write("b.md", "# B\n\nPOISON in this one\n")
        head = repo.commit("b")
        repo.push()
        cursor = tmp_path / "state" / "connectors" / NAME / "cursor.json"
        wait_for(lambda: "b.md" in engine.state.connector(NAME).failures
                 and json.loads(cursor.read_text())["commit"] == head, what="b.md failed, cursor past it")
        assert set(engine.docs(NAME)) == {"a.md"}
        faulty.raise_marker = None
        wait_for(lambda: set(engine.docs(NAME)) == {"a.md", "b.md"}, what="b.md retried by a later poll")
        assert "b.md" not in engine.state.connector(NAME).failures


def test_a_hung_remote_never_stalls_the_other_connectors(tmp_path, repo, in_process_daemon):
    """The poll's fetch runs off the writer thread: while the git remote hangs, a file share keeps syncing."""
    import threading

    repo.write("a.md", markdown_doc(1))
    repo.commit("one")
    repo.push()
    share = tmp_path / "share"
    share.mkdir()
    cfg = write_config(tmp_path, [
        {"name": NAME, "type": "git", "url": repo.url, "branch": repo.branch, "poll_interval": "1s"},
        {"name": "share", "type": "filesystem", "path": str(share)},
    ])
    with in_process_daemon(cfg) as d:
        engine = d.service.runtime.engine
        connector = engine.connectors[NAME]
        entered, release = threading.Event(), threading.Event()
        real_poll = connector.poll

        def hanging_poll():  # stands in for a fetch from a remote that stopped answering
            entered.set()
            release.wait(120)
            return real_poll()

        connector.poll = hanging_poll
        assert entered.wait(30), "the scheduled poll started"
        (share / "note.md").write_text("# Note\n\nwritten while the remote hangs\n")
        wait_for(lambda: "note.md" in engine.docs("share"), what="the share syncs during the hang")
        assert not release.is_set()
        repo.write("b.md", markdown_doc(2))
        repo.commit("two")
        repo.push()
        release.set()
        wait_for(lambda: "b.md" in engine.docs(NAME), what="the remote catches up once it answers")


def test_a_head_partly_applied_before_a_failure_leaves_no_orphan(tmp_path, repo, make_runtime):
    """A poll's changes are partly committed, then the cycle fails (here: the process dies before the cursor
    moves). A file that head added and a later head removed again is in neither side of the next diff; the
    connector re-checks the paths of heads it attempted, so the index still converges to the new head."""
    from syncd import config as config_mod
    from syncd.runtime import Runtime
    from syncd.testing import HashEmbedder

    repo.write("keep.md", markdown_doc(1))
    repo.commit("one")
    repo.push()
    rt = make_runtime(git_config(tmp_path, repo))
    sync(rt)
    repo.write("transient.md", markdown_doc(2))
    repo.commit("two")
    repo.push()
    # Apply the poll's changes but never commit the cursor: what a kill -9 after the store commit leaves.
    changes = list(rt.connectors[NAME].poll())
    rt.engine.process({NAME: {c.doc_id: 0.0 for c in changes}})
    assert "transient.md" in rt.engine.docs(NAME)
    rt.close()
    git(repo.work, "rm", "--quiet", "transient.md")
    repo.write("later.md", markdown_doc(3))
    repo.commit("three")
    repo.push()
    rt2 = Runtime(config_mod.load(git_config(tmp_path, repo)), embedder=HashEmbedder())
    try:
        rt2.open()
        sync(rt2)
        assert set(rt2.engine.docs(NAME)) == {"keep.md", "later.md"}
        assert verify(rt2).ok
    finally:
        rt2.close()
