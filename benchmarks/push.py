"""Push-triggered freshness: how long a git push or a wiki edit takes to be queryable.

`python -m benchmarks.push [--pushes 20] [--poll-pushes 8] [--poll-interval 20] [--edits 10] [--checks 100]`

Three runs of `syncd run` (the real model, the default backend), each on its own state:

1. **git, hook**: a bare repository with the shipped ``deploy/hooks/post-receive``; the connector polls
   hourly, so only the hook can make a push queryable. Each push writes a new file with unique words; the
   time runs from the start of ``git push`` to the first ``/search`` answer that returns the file.
2. **git, poll**: the same without the hook, polling every ``--poll-interval`` seconds; pushes come at
   random moments of the interval, so the wait is the remaining interval plus the work.
3. **wiki, check**: the tests' real MediaWiki (``tests/mediawiki_server.py``), an hourly poll and the
   default ``check_interval`` (5 s); the time runs from the edit's API call to the ``/search`` answer.

Then what the check costs the wiki: ``--checks`` check requests (one recentchanges row) timed against the
full poll's request (the whole 5-minute overlap window). Writes ``benchmarks/results/push-<timestamp>/``
and the "Push" section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from benchmarks.common import HERE, REPO, Daemon, LoadSampler, log, machine, summarize, update_readme_section, wait_for

HOOK = REPO / "deploy" / "hooks" / "post-receive"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com", "GIT_CONFIG_NOSYSTEM": "1"}
SYLLABLES = ("ka", "zu", "mi", "ro", "te", "qua", "xo", "li", "ven", "dor", "pha", "ny", "gri", "sol")
BEGIN, END = "<!-- push:begin -->", "<!-- push:end -->"


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args], cwd=cwd,
                          capture_output=True, text=True, env=GIT_ENV, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def words(rng: random.Random, n: int = 4) -> str:
    """Made-up words no other document holds, so the full-text leg finds exactly the new one."""
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(4)) for _ in range(n))


def found(daemon: Daemon, query: str, doc_id: str) -> bool:
    return any(r["doc_id"] == doc_id for r in daemon.search(query, k=5))


def write_config(folder: Path, connector: dict[str, Any]) -> Path:
    data = {"store": {"uri": "./index"}, "state": {"dir": "./state"}, "http": {"bind": "127.0.0.1:0"},
            "logging": {"level": "info", "format": "json"}, "connectors": [connector]}
    path = folder / "syncd.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def freshness_metric(daemon: Daemon, connector: str) -> dict[str, float]:
    """The daemon's own syncd_freshness_seconds{connector}: count and mean."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = daemon.get("/metrics")
    out = {"count": 0.0, "sum": 0.0}
    if code != 200:
        return out
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("connector") == connector and s.name == "syncd_freshness_seconds_count":
                out["count"] = s.value
            if s.labels.get("connector") == connector and s.name == "syncd_freshness_seconds_sum":
                out["sum"] = s.value
    return {"count": out["count"], "mean_s": out["sum"] / out["count"] if out["count"] else float("nan")}


# -- git ------------------------------------------------------------------------------------------------
def git_run(work: Path, *, pushes: int, hook: bool, poll_interval: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    remote, clone = work / "remote.git", work / "clone"
    git(work, "init", "--bare", "--quiet", str(remote))
    clone.mkdir()
    git(clone, "init", "--quiet", "-b", "main")
    git(clone, "remote", "add", "origin", str(remote))
    (clone / "README.md").write_text("# Notes\n\nWhere the team writes things down.\n")
    git(clone, "add", "-A")
    git(clone, "commit", "--quiet", "-m", "start")
    git(clone, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    connector: dict[str, Any] = {"name": "docs", "type": "git", "url": remote.as_uri(), "branch": "main",
                                 "poll_interval": "1h" if hook else f"{poll_interval}s"}
    if hook:
        secret = work / "secret"
        secret.write_text(os.urandom(16).hex())
        connector["webhook_secret_file"] = str(secret)
    daemon = Daemon(write_config(work, connector)).start()
    try:
        if hook:
            shutil.copy(HOOK, remote / "hooks" / "post-receive")
            (remote / "hooks" / "post-receive").chmod(0o755)
            git(remote, "config", "syncd.url", daemon.url)
            git(remote, "config", "syncd.connector", "docs")
            git(remote, "config", "syncd.secretFile", str(work / "secret"))
        latencies: list[float] = []
        push_s: list[float] = []
        for i in range(pushes):
            if not hook:
                time.sleep(rng.uniform(0, poll_interval))  # a push lands at a random moment of the interval
            text = words(rng)
            doc_id = f"notes/push-{i:03d}.md"
            (clone / "notes").mkdir(exist_ok=True)
            (clone / doc_id).write_text(f"# Push {i}\n\nToday's note: {text}.\n")
            git(clone, "add", "-A")
            git(clone, "commit", "--quiet", "-m", f"push {i}")
            started = time.monotonic()
            git(clone, "push", "--quiet", "origin", "HEAD:refs/heads/main")
            push_s.append(time.monotonic() - started)
            wait_for(lambda q=text, d=doc_id: found(daemon, q, d), timeout=poll_interval * 3 + 120, interval=0.02,
                     what=f"push {i} searchable")
            latencies.append(time.monotonic() - started)
            log(f"git {'hook' if hook else 'poll'} push {i}: {latencies[-1]:.2f} s")
            if hook:
                time.sleep(rng.uniform(0.5, 1.5))
        return {"latency_s": summarize(latencies), "git_push_s": summarize(push_s), "raw": latencies,
                "poll_interval_s": None if hook else poll_interval,
                "freshness_metric": freshness_metric(daemon, "docs")}
    finally:
        daemon.stop()


# -- the wiki -------------------------------------------------------------------------------------------
def wiki_run(work: Path, *, edits: int, checks: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    import httpx
    import mediawiki_server

    rng = random.Random(seed)
    wiki = mediawiki_server._start(work / "wiki")
    try:
        client = wiki.client()
        ns, prefix = wiki.new_namespace()
        client.edit(f"{prefix}:Start", "The first page of the wiki.")
        connector = {"name": "wiki", "type": "mediawiki", "api_url": wiki.api_url, "namespaces": [ns],
                     "poll_interval": "1h", "request_rate": 0}
        daemon = Daemon(write_config(work, connector)).start()
        latencies: list[float] = []
        try:
            for i in range(edits):
                time.sleep(rng.uniform(0, 5))  # an edit lands at a random moment of the check interval
                text = words(rng)
                title = f"{prefix}:Edit {i}"
                started = time.monotonic()
                client.edit(title, f"== Edit {i} ==\nToday's note: {text}.\n")
                wait_for(lambda q=text, d=title: found(daemon, q, d), timeout=300, interval=0.02,
                         what=f"edit {i} searchable")
                latencies.append(time.monotonic() - started)
                log(f"wiki edit {i}: {latencies[-1]:.2f} s")
            metric = freshness_metric(daemon, "wiki")
        finally:
            daemon.stop()
        # What a check costs the wiki, against what a poll asks for.
        base = {"action": "query", "format": "json", "formatversion": "2", "list": "recentchanges"}
        check = {**base, "rcdir": "older", "rclimit": "1", "rctype": "edit|new|log", "rcprop": "ids|timestamp",
                 "rcnamespace": str(ns)}
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300))
        poll = {**base, "rcdir": "newer", "rcstart": since, "rclimit": "max", "rctype": "edit|new|log",
                "rcprop": "title|ids|timestamp|loginfo", "curtimestamp": "1"}
        cost: dict[str, Any] = {}
        with httpx.Client(timeout=30) as http:
            for name, params in (("check", check), ("poll", poll)):
                times, sizes = [], []
                for _ in range(checks):
                    started = time.monotonic()
                    response = http.get(wiki.api_url, params=params)
                    times.append(time.monotonic() - started)
                    sizes.append(len(response.content))
                rows = len(response.json()["query"]["recentchanges"])
                cost[name] = {"request_s": summarize(times), "bytes": statistics.median(sizes), "rows": rows}
        client.close()
        return {"latency_s": summarize(latencies), "raw": latencies, "check_interval_s": 5.0, "cost": cost,
                "freshness_metric": metric}
    finally:
        mediawiki_server._stop(wiki)


# -- the report -----------------------------------------------------------------------------------------
def _s(value: float | None) -> str:
    return "–" if value is None else (f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Run `{results['command']}` at {results['started']} (git {m['git_commit']}), {m['cpus_usable']} "
             f"CPUs, 1-minute load average {results['load']['mean']:.1f} mean / {results['load']['max']:.1f} max "
             "(above the CPU count the machine was shared).", "",
             "| change → queryable | n | p50 | p95 | max | syncd_freshness_seconds mean |", "|---|---|---|---|---|---|"]
    for key, label in (("git_hook", "git push, post-receive hook (poll hourly)"),
                       ("git_poll", f"git push, poll every {results.get('git_poll', {}).get('poll_interval_s')} s "
                                    "(no hook)"),
                       ("wiki", "MediaWiki edit, check every 5 s (poll hourly)")):
        r = results.get(key)
        if not r:
            continue
        lat, fm = r["latency_s"], r["freshness_metric"]
        lines.append(f"| {label} | {lat['n']} | {_s(lat['median'])} | {_s(lat['p95'])} | {_s(lat['max'])} | "
                     f"{_s(fm.get('mean_s'))} |")
    cost = (results.get("wiki") or {}).get("cost")
    if cost:
        lines += ["", "What the MediaWiki check costs the wiki (the test wiki: PHP's built-in server, SQLite), "
                  "per request, against the poll's request over its 5-minute overlap window:", "",
                  "| request | rows | bytes | p50 | p95 |", "|---|---|---|---|---|"]
        for name, label in (("check", "check (`rclimit=1`, ids and timestamp)"),
                            ("poll", "poll (`rcstart` = 5 min ago, `rclimit=max`)")):
            c = cost[name]
            lines.append(f"| {label} | {c['rows']} | {c['bytes']:.0f} | {_s(c['request_s']['median'])} | "
                         f"{_s(c['request_s']['p95'])} |")
    return "\n".join(lines) + "\n"


def update_readme(md: str) -> None:
    update_readme_section(BEGIN, END, md, heading='Push',
                          intro='`python -m benchmarks.push` (`benchmarks/push.py`)'
                                ': a push or an edit until `/search` returns it, through the daemon with the real model.')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.push")
    p.add_argument("--pushes", type=int, default=20)
    p.add_argument("--poll-pushes", type=int, default=8)
    p.add_argument("--poll-interval", type=float, default=20.0)
    p.add_argument("--edits", type=int, default=10)
    p.add_argument("--checks", type=int, default=100)
    p.add_argument("--only", default="git_hook,git_poll,wiki")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    results: dict[str, Any] = {"command": "python -m benchmarks.push " + " ".join(argv or sys.argv[1:]),
                               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    out = HERE / "results" / time.strftime("push-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with LoadSampler() as load, tempfile.TemporaryDirectory(prefix="syncd-push-") as tmp:
        root = Path(tmp)
        if "git_hook" in only:
            (root / "hook").mkdir()
            results["git_hook"] = git_run(root / "hook", pushes=args.pushes, hook=True, poll_interval=0,
                                          seed=args.seed)
        if "git_poll" in only:
            (root / "poll").mkdir()
            results["git_poll"] = git_run(root / "poll", pushes=args.poll_pushes, hook=False,
                                          poll_interval=args.poll_interval, seed=args.seed + 1)
        if "wiki" in only:
            (root / "wiki").mkdir()
            results["wiki"] = wiki_run(root / "wiki", edits=args.edits, checks=args.checks, seed=args.seed + 2)
    results["load"] = {"mean": statistics.fmean(load.samples), "max": max(load.samples)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = markdown(results)
    (out / "report.md").write_text(md)
    if not args.no_readme:
        update_readme(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
