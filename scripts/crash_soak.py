#!/usr/bin/env python3
"""Crash harness: `syncd run` on a folder a writer process keeps changing, killed with SIGKILL at random
moments (during start-up, mid-batch, and the instant a commit's data file appears, before its manifest),
restarted each time. At the end the writer stops, the daemon catches up, and `syncd verify` must report
no drift while LanceDB opens and answers queries cleanly.

    python scripts/crash_soak.py --kills 200            # the long run
    python scripts/crash_soak.py writer ROOT SEED       # the writer process alone (used by the harness)

tests/test_crash.py runs the short version (20+ kills) in CI with the same code.
"""

# ruff: noqa: S310, S311 - urls are the local daemon's; random drives the test writer, not cryptography
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu sync index vector chunk").split()
FOLDERS = ("", "a", "a/deep", "b", "b/c/d")
MAX_FILES = 60


# -- the writer --------------------------------------------------------------------------------------------
def _text(rng: random.Random) -> str:
    paras = []
    for _ in range(rng.randint(1, 4)):
        paras.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) + ".")
    return f"# {rng.choice(WORDS).title()} {rng.randint(0, 10**6)}\n\n" + "\n\n".join(paras) + "\n"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def writer(root: Path, seed: int) -> None:
    """Create, edit, delete and rename files, in bursts, until SIGTERM."""
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(seed)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    counter = 0
    while not stop:
        files = _files(root)
        action = rng.choices(["create", "edit", "delete", "rename", "burst", "rewrite"],
                             weights=[3 if len(files) < MAX_FILES else 0, 4 if files else 0,
                                      2 if files else 0, 2 if files else 0,
                                      1 if len(files) < MAX_FILES else 0, 2 if files else 0])[0]
        if action in ("create", "burst"):
            for _ in range(1 if action == "create" else rng.randint(5, 15)):
                counter += 1
                ext = rng.choice([".md", ".txt"])
                (root / rng.choice(FOLDERS) / f"f{seed}_{counter}{ext}").write_text(_text(rng))
        elif action == "edit":
            with open(rng.choice(files), "a") as fh:
                fh.write("\n" + _text(rng))
        elif action == "rewrite":
            rng.choice(files).write_text(_text(rng))
        elif action == "delete":
            rng.choice(files).unlink()
        elif action == "rename":
            src = rng.choice(files)
            counter += 1
            src.rename(root / rng.choice(FOLDERS) / f"r{seed}_{counter}{src.suffix}")
        time.sleep(rng.uniform(0.0, 0.15))


# -- the harness -------------------------------------------------------------------------------------------
def write_config(work: Path, root: Path) -> Path:
    cfg = work / "syncd.toml"
    cfg.write_text(f"""
[store]
uri = "./index"
[state]
dir = "./state"
[http]
bind = "127.0.0.1:0"
[embedding]
threads = 1
[logging]
level = "info"
format = "json"
[sync]
verify_interval = "0s"
max_batch_docs = 8
# The writer deletes faster than any real share changes; the guard has its own tests (tests/test_guard.py).
max_delete_fraction = 1.0
[[connectors]]
name = "docs"
type = "filesystem"
path = {json.dumps(str(root))}
include = ["**/*.md", "**/*.txt"]
watch = "events"
""")
    return cfg


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _data_files(index: Path) -> set[str]:
    out: set[str] = set()
    for sub in ("data", "_versions", "_transactions"):
        for table in index.glob("*.lance"):
            folder = table / sub
            if folder.is_dir():
                out.update(str(p) for p in folder.iterdir())
    return out


class Harness:
    """Runs the writer and kills/restarts the daemon; ``run()`` returns a summary dict."""

    def __init__(self, work: Path, *, seed: int = 0, log: Any = None) -> None:
        self.work = work
        self.root = work / "docs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg = write_config(work, self.root)
        self.state = work / "state"
        self.rng = random.Random(seed)
        self.seed = seed
        self.log = log or (lambda msg: None)
        self.kills: list[dict[str, Any]] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.writer: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def _spawn(self) -> subprocess.Popen[bytes]:
        try:
            (self.state / "daemon.json").unlink()
        except FileNotFoundError:
            pass
        logf = open(self.work / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(self.cfg), "run"],
                                    stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        finally:
            logf.close()

    def _url(self) -> str | None:
        try:
            return str(json.loads((self.state / "daemon.json").read_text())["url"])
        except (OSError, ValueError, KeyError):
            return None

    def _alive_or_fail(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            tail = (self.work / "daemon.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"daemon exited on its own with {proc.returncode}:\n{tail}")

    def _wait_serving(self, proc: subprocess.Popen[bytes], timeout: float = 180) -> str:
        def serving() -> str | None:
            self._alive_or_fail(proc)
            return self._url()

        return str(_wait(serving, timeout, "daemon.json"))

    def kill_once(self, mode: str) -> dict[str, Any]:
        """Start the daemon and SIGKILL it: ``startup`` at a random moment after spawn, ``random`` at a random
        moment once it serves, ``commit`` the instant a new LanceDB data/manifest file appears."""
        started = time.monotonic()
        proc = self._spawn()
        detail: dict[str, Any] = {"mode": mode}
        if mode == "startup":
            deadline = started + self.rng.uniform(0.3, 7.0)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            self._alive_or_fail(proc)
        else:
            self._wait_serving(proc)
            if mode == "random":
                time.sleep(self.rng.uniform(0.0, 2.5))
            else:
                index = self.work / "index"
                before = _data_files(index)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and proc.poll() is None:
                    if _data_files(index) - before:
                        detail["hit"] = True
                        break
                    time.sleep(0.001)
            self._alive_or_fail(proc)
        proc.kill()
        proc.wait()
        detail["after_s"] = round(time.monotonic() - started, 2)
        self.kills.append(detail)
        self.log(f"kill {len(self.kills)}: {detail}")
        return detail

    def start_writer(self) -> None:
        self.writer = subprocess.Popen([sys.executable, __file__, "writer", str(self.root), str(self.seed)],
                                       env=self.env)

    def stop_writer(self) -> None:
        if self.writer is not None and self.writer.poll() is None:
            self.writer.send_signal(signal.SIGTERM)
            self.writer.wait(timeout=60)

    def converge(self) -> dict[str, Any]:
        """Final start: the writer stops, the daemon catches up and goes idle; then it is stopped cleanly."""
        proc = self._spawn()
        self.daemon = proc
        url = self._wait_serving(proc)
        self.stop_writer()
        _wait(lambda: (self._alive_or_fail(proc), _get(url + "/readyz")[0] == 200)[1], 300, "/readyz")
        last: dict[str, Any] = {}

        def idle() -> bool:
            code, status = _get(url + "/status")
            if code != 200:
                return False
            busy = any(c["backlog"] or c["state"] not in ("idle",) for c in status["connectors"])
            key = {"version": status["store"]["table_version"], "docs": status["store"]["docs"]}
            settled = not busy and key == last.get("key")
            last["key"] = key
            last["status"] = status
            return settled

        _wait(idle, 300, "the daemon to go idle", interval=0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        self.daemon = None
        if code != 0:
            raise AssertionError(f"daemon did not stop cleanly: exit {code}")
        return last["status"]

    def check(self) -> dict[str, Any]:
        """`syncd verify` must be clean; LanceDB must open and answer vector and full-text queries."""
        out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(self.cfg), "verify", "--json"],
                             capture_output=True, text=True, env=self.env, timeout=600)
        report = json.loads(out.stdout)
        # A file the writer truncated when it was stopped may be empty: such a file is skipped, not indexed.
        listing = {p.relative_to(self.root).as_posix() for p in _files(self.root) if p.read_bytes().strip()}
        import lancedb

        db = lancedb.connect(str(self.work / "index"))
        table = db.open_table("chunks")  # one name for life
        rows = table.search().select(["doc_id", "chunk_index", "chunk_id"]).limit(None).to_arrow().to_pylist()
        by_doc: dict[str, list[int]] = {}
        for r in rows:
            by_doc.setdefault(r["doc_id"], []).append(r["chunk_index"])
        torn = sorted(d for d, idx in by_doc.items() if sorted(idx) != list(range(len(idx))))
        dup_ids = len(rows) - len({r["chunk_id"] for r in rows})
        vector_hits = table.search([0.05] * 384).limit(5).to_list()
        fts_hits = table.search("alpha", query_type="fts").limit(5).to_list()
        return {"verify_rc": out.returncode, "verify": report, "source_docs": len(listing),
                "indexed_docs": len(by_doc), "index_equals_source": set(by_doc) == listing, "torn": torn,
                "duplicate_chunk_ids": dup_ids, "rows": len(rows), "vector_hits": len(vector_hits),
                "fts_hits": len(fts_hits)}

    def run(self, kills: int, modes: list[str] | None = None) -> dict[str, Any]:
        started = time.monotonic()
        modes = modes or ["startup", "random", "commit"]
        self.start_writer()
        try:
            for i in range(kills):
                self.kill_once(modes[i % len(modes)])
            final = self.converge()
        finally:
            self.stop_writer()
            if self.daemon is not None and self.daemon.poll() is None:
                self.daemon.kill()
                self.daemon.wait()
        result = self.check()
        result.update({"kills": len(self.kills), "commit_kills_hit": sum(1 for k in self.kills if k.get("hit")),
                       "seconds": round(time.monotonic() - started, 1),
                       "final_status_docs": final["store"]["docs"]})
        return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "writer":
        writer(Path(argv[1]), int(argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = p.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="syncd-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(work, seed=args.seed, log=lambda m: sys.stderr.write(m + "\n"))
    result = harness.run(args.kills)
    result["workdir"] = str(work)
    result["seed"] = args.seed
    sys.stdout.write(json.dumps(result) + "\n")
    ok = (result["verify_rc"] == 0 and result["verify"]["ok"] and result["index_equals_source"]
          and not result["torn"] and not result["duplicate_chunk_ids"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
