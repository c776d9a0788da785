"""Several real `syncd run` processes writing one table on a real S3 server (SeaweedFS; the union and the
lease tests also on a real Azure Blob server, Azurite): disjoint connectors churning, kill -9 at random
moments, connector leases (refusal, takeover), maintenance in one daemon only, credentials that never leak,
and the start-up errors of a bad store."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lancedb
import pytest
from conftest import DaemonProcess, wait_for, write_config

from syncd.testing import S3Proxy

TTL = "3s"


@pytest.fixture(scope="module", autouse=True)
def _model_prepared(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The ONNX export every daemon of this process shares (``SYNCD_MODEL_CACHE``), done once up front so a
    daemon's start-up is not the one that pays it."""
    folder = tmp_path_factory.mktemp("prepare")
    config = write_config(folder, [])
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), "model", "prepare"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]


def _config(folder: Path, s3_store: Any, connectors: list[tuple[str, Path]], *, store: dict[str, Any] | None = None,
            **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    section = s3_store.store_section(lease_ttl=TTL)
    section.update(store or {})
    return write_config(folder, [{"name": n, "type": "filesystem", "path": str(p)} for n, p in connectors],
                        store=section, **sections)


def _seed(folder: Path, tag: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{tag}-{i}.md").write_text(f"# {tag} {i}\n\nFirst words of {tag} document {i}.\n")


def _churn(folder: Path, tag: str, rng: random.Random, steps: int, stop: threading.Event | None = None) -> None:
    """Adds, edits, renames, deletes and bursts, with short pauses (a watcher sees them as they come)."""
    counter = 1000
    for _ in range(steps):
        if stop is not None and stop.is_set():
            return
        files = sorted(folder.glob("*.md"))
        op = rng.choice(["add", "edit", "edit", "rename", "delete", "burst"])
        if op == "add" or not files:
            counter += 1
            (folder / f"{tag}-n{counter}.md").write_text(f"# new {counter}\n\nAdded {tag} text {counter}.\n")
        elif op == "edit":
            f = rng.choice(files)
            f.write_text(f.read_text() + f"\nEdited {rng.randrange(10**6)} in {tag}.\n")
        elif op == "rename":
            f = rng.choice(files)
            counter += 1
            f.rename(folder / f"{tag}-r{counter}.md")
        elif op == "delete" and len(files) > 3:
            rng.choice(files).unlink()
        else:
            for _ in range(5):
                counter += 1
                (folder / f"{tag}-b{counter}.md").write_text(f"# burst {counter}\n\nBurst {tag} {counter}.\n")
        time.sleep(rng.uniform(0.0, 0.15))


def _table(s3_store: Any) -> Any:
    """The live table, by the name the store's shared facts give (a reindex may have switched it)."""
    from syncd.coordination import SharedStore

    pointer = SharedStore(s3_store.uri, s3_store.storage_options).get("store.json")
    name = pointer.doc.get("table", "chunks") if pointer is not None else "chunks"
    db = lancedb.connect(s3_store.uri, storage_options=s3_store.storage_options)
    return db.open_table(name)


def _indexed(s3_store: Any) -> tuple[dict[str, set[str]], int, int]:
    """(doc ids by connector, rows, duplicated chunk ids) of the live table now."""
    data = _table(s3_store).to_arrow().select(["chunk_id", "connector", "doc_id"]).to_pylist()
    out: dict[str, set[str]] = {}
    for row in data:
        out.setdefault(row["connector"], set()).add(row["doc_id"])
    dups = sum(1 for n in Counter(r["chunk_id"] for r in data).values() if n > 1)
    return out, len(data), dups


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.md")}


def _verify(config: Path, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), "verify", "--json"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert out.stdout.strip(), out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _converged(s3_store: Any, folders: dict[str, Path]) -> bool:
    indexed, _, _ = _indexed(s3_store)
    return all(indexed.get(name, set()) == _listing(folder) for name, folder in folders.items())


def _start(daemon_factory: Any, config: Path, env: dict[str, str], **kw: Any) -> DaemonProcess:
    return daemon_factory(config, env=env).start(**kw)


def _journal(s3_store: Any) -> list[dict[str, Any]]:
    """Every row of the store's change journal (changes and marks), read from the store itself, by seq."""
    db = lancedb.connect(s3_store.uri, storage_options=s3_store.storage_options)
    rows = db.open_table("chunks_changes").to_arrow().select(
        ["seq", "kind", "connector", "doc_id", "action", "repaired", "table_version"]).to_pylist()
    return sorted(rows, key=lambda r: r["seq"])


def _journal_caught_up(s3_store: Any) -> bool:
    """The journal describes the table's last commits: replayed in number order, its change entries give
    every document the revision the table holds and no document the table does not hold. (A daemon
    appends a commit's entries just after the commit, so the table converges a moment before its journal.)"""
    table = {(r["connector"], r["doc_id"]): r["revision"]
             for r in _table(s3_store).to_arrow().select(["connector", "doc_id", "revision"]).to_pylist()}
    db = lancedb.connect(s3_store.uri, storage_options=s3_store.storage_options)
    rows = db.open_table("chunks_changes").to_arrow().select(
        ["seq", "kind", "connector", "doc_id", "old_doc_id", "action", "revision"]).to_pylist()
    replayed: dict[tuple[str, str], str] = {}
    for r in sorted(rows, key=lambda r: r["seq"]):
        if r["kind"] != "change":
            continue
        if r["action"] == "renamed" and r["old_doc_id"]:
            replayed.pop((r["connector"], r["old_doc_id"]), None)
        if r["action"] == "deleted":
            replayed.pop((r["connector"], r["doc_id"]), None)
        elif r["action"] != "permissions":
            replayed[(r["connector"], r["doc_id"])] = r["revision"]
    return replayed == table


def _assert_journal_numbered(s3_store: Any) -> list[dict[str, Any]]:
    """The journal's numbers are 1..N, each once, whichever daemon appended."""
    rows = _journal(s3_store)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(rows) + 1)), [s for s, n in Counter(seqs).items() if n > 1][:20]
    return rows


class _Pager(threading.Thread):
    """A /changes client following the journal through one daemon, page after page, while others write."""

    def __init__(self, daemon: DaemonProcess, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.daemon_process = daemon
        self.stop = stop
        self.cursor = "0"
        self.seen: list[dict[str, Any]] = []
        self.pages = 0
        self.errors: list[Any] = []

    def page(self) -> int:
        code, body = self.daemon_process.get(f"/changes?cursor={self.cursor}&limit=7")
        if code != 200:
            self.errors.append((code, body))
            return 0
        self.seen.extend(body["changes"])
        self.cursor = body["next_cursor"]
        self.pages += 1
        return len(body["changes"])

    def run(self) -> None:
        while not self.stop.is_set():
            if self.page() == 0:
                self.stop.wait(0.05)

    def drain(self) -> None:
        """Page until caught up (the writes are over)."""
        while self.page():
            pass


@pytest.mark.slow
def test_two_daemons_with_disjoint_connectors_churning_make_the_union_without_duplicates(
        tmp_path: Path, object_store: Any, daemon_factory: Any) -> None:
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 6)
    _seed(fb, "beta", 6)
    ca = _config(tmp_path / "a", object_store, [("alpha", fa)])
    cb = _config(tmp_path / "b", object_store, [("beta", fb)])
    a = _start(daemon_factory, ca, object_store.env)
    b = _start(daemon_factory, cb, object_store.env)
    threads = [threading.Thread(target=_churn, args=(fa, "alpha", random.Random(1), 40)),
               threading.Thread(target=_churn, args=(fb, "beta", random.Random(2), 40))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: _converged(object_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to equal both folders")
    indexed, rows, dups = _indexed(object_store)
    assert set(indexed) == {"alpha", "beta"} and dups == 0 and rows > 0
    for config in (ca, cb):
        report = _verify(config, object_store.env)
        assert report["ok"] is True, json.dumps(report)
    # Both daemons see each other in /status, each holding its own connector; one maintains.
    code, status = a.get("/status")
    assert code == 200
    daemons = {d["id"]: d for d in status["store"]["daemons"]}
    assert len(daemons) == 2
    assert sorted(c for d in daemons.values() for c in d["connectors"]) == ["alpha", "beta"]
    assert sum(d["maintenance"] for d in daemons.values()) == 1
    # A search through either daemon finds the other's documents (one table).
    hits = a.search("Burst beta", k=20) + a.search("First words of beta", k=20)
    assert any(h["connector"] == "beta" for h in hits)
    assert a.stop() == 0 and b.stop() == 0


@pytest.mark.slow
def test_kill_9_of_either_daemon_at_random_moments_converges(tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 5)
    _seed(fb, "beta", 5)
    configs = {"alpha": _config(tmp_path / "a", s3_store, [("alpha", fa)]),
               "beta": _config(tmp_path / "b", s3_store, [("beta", fb)])}
    daemons = {name: _start(daemon_factory, c, s3_store.env) for name, c in configs.items()}
    rng = random.Random(20261130)
    stop = threading.Event()
    churners = [threading.Thread(target=_churn, args=(fa, "alpha", random.Random(3), 10**6, stop)),
                threading.Thread(target=_churn, args=(fb, "beta", random.Random(4), 10**6, stop))]
    for t in churners:
        t.start()
    kills = 0
    try:
        for _ in range(6):
            time.sleep(rng.uniform(0.3, 2.5))  # a random moment: mid-batch, mid-commit or idle
            victim = rng.choice(sorted(daemons))
            daemons[victim].kill()
            kills += 1
            # The new process has a new identity: it takes its connector over once the old lease expires.
            daemons[victim] = _start(daemon_factory, configs[victim], s3_store.env, wait_ready=False)
    finally:
        stop.set()
        for t in churners:
            t.join()
    for d in daemons.values():
        wait_for(lambda d=d: d.get("/readyz")[0] == 200, timeout=180, what="/readyz after the kills")
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to equal both folders after the kills")
    _, rows, dups = _indexed(s3_store)
    assert kills == 6 and dups == 0 and rows > 0
    for config in configs.values():
        report = _verify(config, s3_store.env)
        # Index and change journal alike: each daemon's repair at its restart described its own connectors'
        # commits a kill cut off from their entries, and nothing of the other daemon's.
        assert report["ok"] is True, json.dumps(report)
    _assert_journal_numbered(s3_store)


@pytest.mark.slow
def test_changes_pagers_following_two_churning_daemons_see_every_entry_once_with_unique_numbers(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    """Two daemons append to one journal at the same time; a /changes pager on each daemon, paging in small
    pages while they write, ends with exactly the journal's entries, each once, in one order, under numbers
    no other entry has."""
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 4)
    _seed(fb, "beta", 4)
    ca = _config(tmp_path / "a", s3_store, [("alpha", fa)])
    cb = _config(tmp_path / "b", s3_store, [("beta", fb)])
    a = _start(daemon_factory, ca, s3_store.env)
    b = _start(daemon_factory, cb, s3_store.env)
    stop = threading.Event()
    pagers = [_Pager(a, stop), _Pager(b, stop)]
    for pager in pagers:
        pager.start()
    churners = [threading.Thread(target=_churn, args=(fa, "alpha", random.Random(7), 40)),
                threading.Thread(target=_churn, args=(fb, "beta", random.Random(8), 40))]
    for t in churners:
        t.start()
    for t in churners:
        t.join()
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to equal both folders")
    wait_for(lambda: _journal_caught_up(s3_store), timeout=60, interval=0.5,
             what="the journal to describe the table's last commits")
    stop.set()
    for pager in pagers:
        pager.join(timeout=60)
        pager.drain()
    rows = _assert_journal_numbered(s3_store)
    changes = [r["seq"] for r in rows if r["kind"] == "change"]
    assert {r["connector"] for r in rows if r["kind"] == "change"} == {"alpha", "beta"}
    for pager in pagers:
        assert not pager.errors, pager.errors[:3]
        seen = [e["seq"] for e in pager.seen]
        assert len(set(seen)) == len(seen), [s for s, n in Counter(seen).items() if n > 1][:20]
        assert seen == changes  # every entry, once, in the journal's order
        assert pager.pages > 10  # it followed the writes page by page, not in one read at the end
    assert not any(r["repaired"] for r in rows)  # no daemon journaled the other's changes as its own
    for config in (ca, cb):
        report = _verify(config, s3_store.env)
        assert report["ok"] is True, json.dumps(report)
    assert a.stop() == 0 and b.stop() == 0


@pytest.mark.slow
def test_kill_9_between_commit_and_journal_append_while_another_daemon_writes_is_repaired_once(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    """Daemon B dies by SIGKILL right after its first commit and before that commit's journal entries,
    while daemon A keeps committing and journaling. B restarted finds its lost entries in the table's
    version history (among A's commits) and appends them once, marked repaired; A's changes are never
    journaled twice; `syncd verify` of each daemon is clean, the journal check included."""
    from syncd.testing import CRASH_ENV

    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 3)
    _seed(fb, "beta", 5)
    ca = _config(tmp_path / "a", s3_store, [("alpha", fa)])
    cb = _config(tmp_path / "b", s3_store, [("beta", fb)])
    a = _start(daemon_factory, ca, s3_store.env)
    stop = threading.Event()
    churner = threading.Thread(target=_churn, args=(fa, "alpha", random.Random(9), 10**6, stop))
    churner.start()
    try:
        crashed = subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(cb), "run"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **s3_store.env, CRASH_ENV: "journal-append"})
        _, err = crashed.communicate(timeout=300)
        assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, err[-3000:])
        indexed, _, _ = _indexed(s3_store)
        assert indexed.get("beta") == _listing(fb)  # the commit landed
        assert not [r for r in _journal(s3_store) if r["connector"] == "beta" and r["kind"] == "change"]
        b = _start(daemon_factory, cb, s3_store.env)  # takes the lease over once it expires, then repairs
        # A keeps writing while B repairs and after.
        wait_for(lambda: any(r["connector"] == "beta" for r in _journal(s3_store) if r["kind"] == "change"),
                 timeout=120, what="B's repaired entries")
    finally:
        stop.set()
        churner.join()
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to equal both folders")
    rows = _assert_journal_numbered(s3_store)
    beta = [r for r in rows if r["connector"] == "beta" and r["kind"] == "change"]
    assert Counter(r["doc_id"] for r in beta) == Counter(_listing(fb)), beta  # each lost entry, once
    assert all(r["action"] == "added" and r["repaired"] for r in beta), beta
    alpha = [r for r in rows if r["connector"] == "alpha" and r["kind"] == "change"]
    assert alpha and not any(r["repaired"] for r in alpha)  # A's own entries, none written by B's repair
    assert "journal.repaired" in b.log_path.read_text()
    for config in (ca, cb):
        report = _verify(config, s3_store.env)
        assert report["ok"] is True, json.dumps(report)
    # Once more after another restart of B: the repair is not repeated.
    assert b.stop() == 0
    b = _start(daemon_factory, cb, s3_store.env)
    after = [r for r in _journal(s3_store) if r["connector"] == "beta" and r["kind"] == "change"]
    assert len(after) == len(beta)
    assert a.stop() == 0 and b.stop() == 0


@pytest.mark.slow
def test_a_held_connector_is_refused_and_taken_over_after_its_holder_is_killed(
        tmp_path: Path, object_store: Any, daemon_factory: Any) -> None:
    docs = tmp_path / "docs"
    _seed(docs, "doc", 4)
    ca = _config(tmp_path / "a", object_store, [("docs", docs)])
    cb = _config(tmp_path / "b", object_store, [("docs", docs)])
    a = _start(daemon_factory, ca, object_store.env)
    holder = a.get("/status")[1]["store"]["daemon_id"]
    refused = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cb), "run"], capture_output=True,
                             text=True, env={**os.environ, **object_store.env}, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "'docs'" in refused.stderr and holder in refused.stderr
    a.kill()
    killed_at = time.monotonic()
    (docs / "doc-0.md").write_text("# doc 0\n\nChanged while no daemon ran.\n")
    (docs / "doc-9.md").write_text("# doc 9\n\nAdded while no daemon ran.\n")
    (docs / "doc-1.md").unlink()
    b = _start(daemon_factory, cb, object_store.env)
    assert time.monotonic() - killed_at >= 0  # b waited for the lease to expire (its log says so)
    assert "lease.taken_over" in b.log_path.read_text()
    wait_for(lambda: _converged(object_store, {"docs": docs}), timeout=120, interval=0.5, what="the takeover to converge")
    status = b.get("/status")[1]
    assert [d["connectors"] for d in status["store"]["daemons"]] == [["docs"]]
    assert status["store"]["daemon_id"] != holder
    assert _verify(cb, object_store.env)["ok"] is True


@pytest.mark.slow
def test_maintenance_runs_in_one_daemon_and_the_others_writes_survive_it(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 3)
    _seed(fb, "beta", 3)
    tuning = {"compact_every_commits": 2, "max_fragments": 4, "index_when_idle": "200ms", "fold_every_rows": 4}
    ca = _config(tmp_path / "a", s3_store, [("alpha", fa)], store=tuning, sync={"maintenance_interval": "2s"})
    cb = _config(tmp_path / "b", s3_store, [("beta", fb)], store=tuning, sync={"maintenance_interval": "2s"})
    a = _start(daemon_factory, ca, s3_store.env)
    b = _start(daemon_factory, cb, s3_store.env)
    threads = [threading.Thread(target=_churn, args=(fa, "alpha", random.Random(5), 30)),
               threading.Thread(target=_churn, args=(fb, "beta", random.Random(6), 30))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to equal both folders")
    sa, sb = a.get("/status")[1]["store"], b.get("/status")[1]["store"]
    maintainer, other = (sa, sb) if sa["maintainer"] else (sb, sa)
    assert maintainer["maintainer"] is True and other["maintainer"] is False

    def maintained() -> bool:
        s = (a if sa["maintainer"] else b).get("/status")[1]["store"]
        return bool(s["compactions"] + s["maintenance_runs"] > 0)

    wait_for(maintained, timeout=60, what="the maintainer to compact")
    other_now = (b if sa["maintainer"] else a).get("/status")[1]["store"]
    assert other_now["compactions"] == other_now["maintenance_runs"] == other_now["index_folds"] == 0
    # Compactions and index updates ran beside both daemons' merges, and nothing is lost.
    assert _converged(s3_store, {"alpha": fa, "beta": fb})
    _, _, dups = _indexed(s3_store)
    assert dups == 0
    for config in (ca, cb):
        assert _verify(config, s3_store.env)["ok"] is True


def _run_refused(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), "run"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def _assert_refused(tmp_path: Path, store: Any, docs: Path, cases: dict[str, tuple[dict[str, Any], dict[str, str], str]],
                    *, secrets: list[str]) -> None:
    """Each case (its ``[store]`` changes, its environment, the cause the error must name) exits 2 at start-up
    with that cause, and no secret in its output."""
    for name, (section, env, cause) in cases.items():
        config = _config(tmp_path / name, store, [("docs", docs)], store=section)
        out = _run_refused(config, {**store.env, **env})
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert cause in out.stderr, (name, out.stderr[-2000:])
        for secret in secrets:
            assert secret not in out.stderr + out.stdout


def test_bad_stores_are_refused_at_start_up_with_the_cause(tmp_path: Path, s3_store: Any) -> None:
    docs = tmp_path / "docs"
    _seed(docs, "doc", 1)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    wrong_secret = "wrong-secret-" + os.urandom(6).hex()
    cases = {
        "unreachable": ({"storage_options": {**s3_store.storage_options,
                                             "endpoint": f"http://127.0.0.1:{closed_port}"}}, {},
                        "cannot reach the endpoint"),
        "bucket": ({"uri": "s3://no-such-bucket-syncd/x"}, {}, "the bucket does not exist"),
        "credentials": ({}, {"AWS_SECRET_ACCESS_KEY": wrong_secret}, "the credentials were refused"),
    }
    _assert_refused(tmp_path, s3_store, docs, cases, secrets=[wrong_secret, s3_store.server.secret_key])


def test_bad_azure_stores_are_refused_at_start_up_with_the_cause(tmp_path: Path, az_store: Any) -> None:
    docs = tmp_path / "docs"
    _seed(docs, "doc", 1)
    wrong_key = base64.b64encode(os.urandom(64)).decode()
    cases = {
        "container": ({"uri": "az://no-such-container-syncd/x"}, {}, "the container does not exist"),
        "credentials": ({}, {"AZURE_STORAGE_ACCOUNT_KEY": wrong_key},
                        "the credentials were refused (check AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY"),
    }
    _assert_refused(tmp_path, az_store, docs, cases, secrets=[wrong_key, az_store.env["AZURE_STORAGE_ACCOUNT_KEY"]])


def test_a_store_that_ignores_conditional_writes_is_refused_for_concurrent_use(tmp_path: Path, s3_store: Any) -> None:
    docs = tmp_path / "docs"
    _seed(docs, "doc", 1)
    with S3Proxy(s3_store.server.endpoint) as proxy:
        proxy.mode = "ignore-conditional"
        options = {**s3_store.storage_options, "endpoint": proxy.endpoint}
        config = _config(tmp_path / "c", s3_store, [("docs", docs)], store={"storage_options": options})
        out = _run_refused(config, s3_store.env)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "ignores conditional writes" in out.stderr and "concurrent_writers = false" in out.stderr
        # The same proxy passing conditional writes through is accepted (it is the store, not the proxy).
        proxy.mode = "forward"
        from syncd.coordination import SharedStore

        shared = SharedStore(s3_store.uri, options)
        shared.check_conditional_writes("probe-test")


def test_the_store_credentials_never_appear_in_logs_status_metrics_or_errors(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    docs = tmp_path / "docs"
    _seed(docs, "doc", 2)
    (docs / "broken.md").write_bytes(b"\x00\x01binary")  # a failing document: its error is in /status
    secret = s3_store.server.secret_key
    access = s3_store.server.access_key
    with S3Proxy(s3_store.server.endpoint) as proxy:
        options = {**s3_store.storage_options, "endpoint": proxy.endpoint}
        config = _config(tmp_path / "a", s3_store, [("docs", docs)],
                         store={"storage_options": {**options, "aws_secret_access_key_env": "INDEX_SECRET"}},
                         logging={"level": "debug"})
        env = {**s3_store.env, "INDEX_SECRET": secret}
        env.pop("AWS_SECRET_ACCESS_KEY")
        d = _start(daemon_factory, config, env)
        texts = [json.dumps(d.get("/status")[1]), str(d.get("/metrics")[1]), json.dumps(d.search("doc"))]
        # The store goes away: renewals fail, the lease is lost, health fails with an error naming the cause.
        proxy.mode = "down"
        wait_for(lambda: d.get("/healthz")[0] == 503, timeout=60, what="/healthz to fail without the store")
        status = d.get("/status")[1]
        assert any("lease" in p for p in status["problems"]), status["problems"]
        texts += [json.dumps(status), str(d.get("/metrics")[1])]
        proxy.mode = "forward"
        d.stop(signal.SIGTERM)
    texts.append(d.log_path.read_text())
    for text in texts:
        assert secret not in text and access not in text
    assert "lease.renew_failed" in texts[-1]


@pytest.mark.slow
def test_an_overwrite_of_the_table_while_daemons_write_loses_nothing_they_committed(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    """A reindex replaces the table's content with one Overwrite commit made from what it read earlier:
    everything committed between its read and its commit is dropped by Lance (FACTS.md). Each daemon sees
    the Overwrite in the table's history, reads the table again and re-lists its connectors, so all it
    committed meanwhile (and every document changed during the rebuild) is synced again."""
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 4)
    _seed(fb, "beta", 4)
    ca = _config(tmp_path / "a", s3_store, [("alpha", fa)])
    cb = _config(tmp_path / "b", s3_store, [("beta", fb)])
    a = _start(daemon_factory, ca, s3_store.env)
    b = _start(daemon_factory, cb, s3_store.env)
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=120, interval=0.5, what="catch-up")
    table = _table(s3_store)
    snapshot = table.to_arrow()  # what the "reindex" read
    threads = [threading.Thread(target=_churn, args=(fa, "alpha", random.Random(7), 15)),
               threading.Thread(target=_churn, args=(fb, "beta", random.Random(8), 15))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=120, interval=0.5,
             what="the daemons' commits")
    import lance

    # The reindex's commit, after theirs: an Overwrite as `Store.replace_contents` makes it (marked as syncd's,
    # so verify does not report it as a foreign write).
    lance.write_dataset(snapshot, _table(s3_store).to_lance().uri, mode="overwrite",
                        storage_options=s3_store.storage_options,
                        transaction_properties={"syncd.operation": "replace_contents"})
    assert not _converged(s3_store, {"alpha": fa, "beta": fb})  # their commits are gone from the table now
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=120, interval=0.5,
             what="the daemons to sync again what the Overwrite dropped")
    for d in (a, b):
        assert "store.overwritten" in d.log_path.read_text()
    _, _, dups = _indexed(s3_store)
    assert dups == 0
    for config in (ca, cb):
        assert _verify(config, s3_store.env)["ok"] is True


@pytest.mark.slow
def test_a_reindex_while_another_daemon_writes_loses_nothing_it_committed(
        tmp_path: Path, s3_store: Any, daemon_factory: Any) -> None:
    """`syncd reindex` of one daemon's config runs while the other daemon keeps committing its own churn:
    afterwards the live table holds both folders exactly (what the writer committed during the rebuild, and
    what the rebuild did not copy, is synced again)."""
    fa, fb = tmp_path / "src-a", tmp_path / "src-b"
    _seed(fa, "alpha", 4)
    _seed(fb, "beta", 4)
    ca = _config(tmp_path / "a", s3_store, [("alpha", fa)])
    cb = _config(tmp_path / "b", s3_store, [("beta", fb)])
    a = _start(daemon_factory, ca, s3_store.env)
    b = _start(daemon_factory, cb, s3_store.env)
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=120, interval=0.5, what="catch-up")
    assert a.stop() == 0  # the reindex runs as a one-shot command of a's config
    stop = threading.Event()
    churn = threading.Thread(target=_churn, args=(fb, "beta", random.Random(9), 10**6, stop))
    churn.start()
    try:
        out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(ca), "reindex", "--json"],
                             capture_output=True, text=True, env={**os.environ, **s3_store.env}, timeout=600)
        # Either the replacement committed (and b re-syncs what it dropped), or it was refused because b
        # committed while it was built: never a commit of b's silently dropped.
        assert out.returncode == 0 or (out.returncode == 1 and "changed while it was being rebuilt" in out.stderr), \
            out.stderr[-3000:]
        time.sleep(1.0)  # b keeps writing after the reindex committed
    finally:
        stop.set()
        churn.join()
    wait_for(lambda: _converged(s3_store, {"alpha": fa, "beta": fb}), timeout=180, interval=0.5,
             what="the table to hold both folders after the reindex")
    _, _, dups = _indexed(s3_store)
    assert dups == 0
    assert _verify(cb, s3_store.env)["ok"] is True
    assert _verify(ca, s3_store.env)["ok"] is True
    assert b.get("/healthz")[0] == 200
