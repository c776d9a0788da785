"""Permission-aware retrieval on real files: owners, groups, modes and POSIX ACLs, checked against what the
users themselves can read (``runuser``). The suite runs as root (CI does), which may chown and setfacl."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.testing import HashEmbedder
from tests.conftest import write_config

USERS = {"syncd-acl-alice": ["syncd-acl-eng"], "syncd-acl-bob": ["syncd-acl-eng", "syncd-acl-ops"],
         "syncd-acl-carol": ["syncd-acl-ops"], "syncd-acl-dave": []}
GROUPS = ["syncd-acl-eng", "syncd-acl-ops"]
ALICE, BOB, CAROL, DAVE = USERS



def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def test_users() -> dict[str, list[str]]:
    """The test users and groups, created once (idempotently; a lock keeps parallel workers apart)."""
    assert os.geteuid() == 0, "these tests create users and chown files: run them as root (CI does)"
    assert shutil.which("setfacl"), "setfacl is missing: scripts/test.sh installs the acl package"
    with open("/tmp/syncd-acl-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for group in GROUPS:
            if _run("getent", "group", group).returncode != 0:
                subprocess.run(["groupadd", group], check=True)
        for user, groups in USERS.items():
            if _run("getent", "passwd", user).returncode != 0:
                subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                                *(["--groups", ",".join(groups)] if groups else []), user], check=True)
            else:
                for group in groups:
                    subprocess.run(["usermod", "-aG", group, user], check=True)
    return USERS


def principals_of(user: str) -> list[str]:
    """What a backend acting for ``user`` passes: the user and every group the system says it is in."""
    groups = _run("id", "-Gn", user).stdout.split()
    return [f"user:{user}"] + [f"group:{g}" for g in groups]


def can_read(user: str, path: Path) -> bool:
    return _run("runuser", "-u", user, "--", "cat", str(path)).returncode == 0


@pytest.fixture
def share(test_users: dict[str, list[str]]) -> Iterator[Path]:
    """A folder every user may reach (pytest's own temp folders are private to root)."""
    top = Path(tempfile.mkdtemp(prefix="syncd-acl-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "share"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    yield root
    shutil.rmtree(top)


def put(path: Path, text: str, owner: str, group: str, mode: int, *facl: str) -> None:
    path.write_text(f"# {path.stem}\n\n{text} shared words for every document\n")
    shutil.chown(path, owner, group)
    path.chmod(mode)
    for spec in facl:
        subprocess.run(["setfacl", "-m", spec, str(path)], check=True)


def build_tree(root: Path) -> None:
    put(root / "public.md", "public notes", ALICE, ALICE, 0o644)
    put(root / "private.md", "alice private diary", ALICE, ALICE, 0o600)
    put(root / "eng.md", "engineering design", BOB, "syncd-acl-eng", 0o640)
    # The owner has no read bit while everybody else does: the owner alone cannot read it.
    put(root / "not-owner.md", "owner locked out", ALICE, "syncd-acl-eng", 0o044)
    # Group without read, others with: members of the group cannot read it.
    put(root / "not-ops.md", "ops excluded", DAVE, "syncd-acl-ops", 0o604)
    put(root / "acl-carol.md", "carol granted by acl", BOB, BOB, 0o600, f"u:{CAROL}:r")
    put(root / "acl-ops.md", "ops granted by acl", DAVE, DAVE, 0o600, "g:syncd-acl-ops:r")
    # A named entry the mask takes back.
    put(root / "acl-masked.md", "masked acl entry", DAVE, DAVE, 0o600, f"u:{ALICE}:r", "m::---")
    eng_only = root / "engdir"
    eng_only.mkdir()
    shutil.chown(eng_only, "root", "syncd-acl-eng")
    eng_only.chmod(0o750)
    put(eng_only / "inside.md", "inside the engineering folder", DAVE, DAVE, 0o644)
    no_ops = root / "no-ops-dir"
    no_ops.mkdir()
    shutil.chown(no_ops, "root", "syncd-acl-ops")
    no_ops.chmod(0o705)
    put(no_ops / "inside.md", "folder closed to ops", DAVE, DAVE, 0o644)
    by_acl = root / "acl-dir"
    by_acl.mkdir(mode=0o700)
    by_acl.chmod(0o700)
    subprocess.run(["setfacl", "-m", f"u:{DAVE}:rx", str(by_acl)], check=True)
    put(by_acl / "inside.md", "folder opened to dave by acl", DAVE, DAVE, 0o644)


def search_ids(rt, principals: list[str] | None, k: int = 100) -> set[str]:
    emb = HashEmbedder()
    vec = emb.encode(["shared words for every document"])[0]
    return {r["doc_id"] for r in rt.store.search(vec, "shared words", k=k, principals=principals)}


def all_docs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))


def test_each_user_finds_exactly_what_the_system_lets_them_read(share: Path, tmp_path: Path, make_runtime) -> None:
    build_tree(share)
    rt = make_runtime(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(share)}]))
    rt.engine.reconcile("docs")
    docs = all_docs(share)
    assert rt.store.count_rows() >= len(docs)
    for user in USERS:
        expected = {d for d in docs if can_read(user, share / d)}
        assert search_ids(rt, principals_of(user)) == expected, user
    # The cases above must really differ from user to user, or the test proves little.
    assert can_read(BOB, share / "not-owner.md") and not can_read(ALICE, share / "not-owner.md")
    assert not can_read(CAROL, share / "not-ops.md") and can_read(ALICE, share / "not-ops.md")
    assert can_read(DAVE, share / "acl-dir/inside.md") and not can_read(ALICE, share / "acl-dir/inside.md")
    # A caller without principals (or a user unknown here) gets what "other" may read, nothing else.
    others = {d for d in docs if (share / d).stat().st_mode & 0o004 and _others_can_enter(share, d)}
    assert search_ids(rt, None) == others == search_ids(rt, ["user:nobody-known-here"])


def _others_can_enter(root: Path, doc_id: str) -> bool:
    folder = (root / doc_id).parent
    while folder != root.parent:
        if not folder.stat().st_mode & 0o001:
            return False
        folder = folder.parent
    return True


def test_chmod_o_r_hides_the_file_from_everyone_at_the_next_cycle_with_nothing_embedded(
        share: Path, tmp_path: Path, make_runtime) -> None:
    put(share / "a.md", "alpha report", ALICE, ALICE, 0o644)
    put(share / "b.md", "beta report", ALICE, ALICE, 0o644)
    emb = HashEmbedder()
    rt = make_runtime(write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(share)}]), emb)
    rt.engine.reconcile("docs")
    assert search_ids(rt, None) == {"a.md", "b.md"}
    embedded = emb.embedded
    (share / "a.md").chmod(0o640)
    s = rt.engine.reconcile("docs")
    assert s.docs_permissions == 1 and s.chunks_embedded == 0 and s.docs_changed == 0
    assert emb.embedded == embedded
    assert search_ids(rt, None) == {"b.md"}
    assert search_ids(rt, principals_of(ALICE)) == {"a.md", "b.md"}
    # The same through a watcher's hint (inotify reports the chmod as an attribute change).
    subprocess.run(["setfacl", "-m", f"u:{CAROL}:r", str(share / "a.md")], check=True)
    s = rt.engine.process({"docs": {"a.md": 0.0}})
    assert s.docs_permissions == 1 and s.chunks_embedded == 0
    assert "a.md" in search_ids(rt, [f"user:{CAROL}"])
    # A folder's permissions count for what lies under it.
    (share / "sub").mkdir(mode=0o755)
    put(share / "sub" / "c.md", "gamma report", ALICE, ALICE, 0o644)
    rt.engine.reconcile("docs")
    assert "sub/c.md" in search_ids(rt, None)
    (share / "sub").chmod(0o750)
    s = rt.engine.reconcile("docs", prefix="sub")
    assert s.docs_permissions == 1 and s.chunks_embedded == 0
    assert "sub/c.md" not in search_ids(rt, None)
    assert emb.embedded == embedded + len(rt.store.scan(["chunk_id"], "doc_id = 'sub/c.md'"))


def test_configured_acl_replaces_and_acl_add_extends_what_the_files_say(share: Path, tmp_path: Path,
                                                                      make_runtime) -> None:
    put(share / "secret.md", "secret plan", ALICE, ALICE, 0o600)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(share),
                                   "acl_add": ["group:auditors"], "principal_map": {f"user:{ALICE}": "user:alice@corp"}}])
    rt = make_runtime(cfg)
    rt.engine.reconcile("docs")
    acl = rt.store.scan(["acl"]).to_pylist()[0]["acl"]
    assert acl == ["group:auditors", "user:alice@corp"]
    assert search_ids(rt, ["group:auditors"]) == {"secret.md"}
    assert search_ids(rt, [f"user:{ALICE}"]) == set()
    rt.close()
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(share), "acl": ["everyone"]}])
    rt = make_runtime(cfg)
    s = rt.engine.reconcile("docs")
    assert s.docs_permissions == 1 and s.chunks_embedded == 0
    assert search_ids(rt, None) == {"secret.md"}
