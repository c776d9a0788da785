"""`syncd query` wall time with and without a running daemon.

`python -m benchmarks.query_cli [--docs 200] [--repeat 10] [--python PATH] [--no-readme]`

One small corpus, synced once with the default config (the default backend). Then, each ``--repeat`` times,
the whole `syncd query QUESTION -k 5 --json` process is timed from its start to its exit, with its peak
memory (the process's own maximum resident set, from ``wait4``):

1. **no daemon**: the CLI opens the index and loads the model itself;
2. **daemon running**: the CLI finds the daemon through the state folder and asks its ``/search`` (the
   daemon's search counter must grow by one per call, or the run fails);
3. ``/search`` alone, from this process (what the daemon's answer costs without a new Python process).

``--python`` names the interpreter of the measured processes (the CLI and the daemon): an install made
as the README's quick start makes it, rather than a development venv with the test extra.

Writes ``benchmarks/results/query-cli-<timestamp>/`` and the "`syncd query`" section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import tomli_w

import benchmarks.common
from benchmarks.common import HERE, REPO, Daemon, LoadSampler, log, machine, summarize, update_readme_section

PY = sys.executable
BEGIN, END = "<!-- query-cli:begin -->", "<!-- query-cli:end -->"
QUESTIONS = ("how do I rotate the database credentials", "who approves a production change",
             "what is the on-call escalation path", "where are backups kept and for how long",
             "how is a failover to the replica done")
TOPICS = ("credentials", "change approval", "on-call", "backups", "failover", "onboarding", "expenses",
          "incident review", "access requests", "release notes")


def corpus(folder: Path, docs: int) -> None:
    folder.mkdir(parents=True)
    for i in range(docs):
        topic = TOPICS[i % len(TOPICS)]
        body = "\n\n".join(f"## Step {s + 1}\n\nFor {topic} (note {i}), step {s + 1} says what the team does and "
                           f"who checks it: the owner of {topic} signs it off and records it in the log."
                           for s in range(4))
        (folder / f"note-{i:04d}.md").write_text(f"# {topic.title()} {i}\n\n{body}\n")


def write_config(folder: Path) -> Path:
    data = {"store": {"uri": "./index"}, "state": {"dir": "./state"}, "http": {"bind": "127.0.0.1:0"},
            "logging": {"level": "warning", "format": "json"},
            "connectors": [{"name": "handbook", "type": "filesystem", "path": "./docs"}]}
    path = folder / "syncd.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def timed_query(config: Path, question: str) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, peak RSS in MiB, the JSON answer) of one `syncd query` process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([PY, "-m", "syncd", "--config", str(config), "query", question, "-k", "5", "--json"],
                                stdout=out, stderr=err, cwd=REPO, env=dict(os.environ))
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, with the process's own resource usage
        wall = time.perf_counter() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"syncd query exited {code}: {err.read().decode(errors='replace')[-2000:]}")
        return wall, usage.ru_maxrss / 1024, json.loads(out.read())


def searches_served(daemon: Daemon) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    code, text = daemon.get("/metrics")
    if code != 200:
        raise RuntimeError(f"/metrics answered {code}")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "syncd_search_requests_total":
                total += sample.value
    return total


def run(root: Path, docs: int, repeat: int) -> dict[str, Any]:
    corpus(root / "docs", docs)
    config = write_config(root)
    started = time.perf_counter()
    sync = subprocess.run([PY, "-m", "syncd", "--config", str(config), "sync", "--json"], capture_output=True,
                          text=True, cwd=REPO, check=False)
    if sync.returncode != 0:
        raise RuntimeError(f"syncd sync failed: {sync.stderr[-2000:]}")
    setup_s = time.perf_counter() - started
    results: dict[str, Any] = {"docs": docs, "repeat": repeat, "sync_s": setup_s,
                               "chunks": json.loads(sync.stdout.strip().splitlines()[-1]).get("chunks_embedded")}
    log(f"synced {docs} docs in {setup_s:.1f} s; timing `syncd query` without a daemon")
    walls, rsses = [], []
    for i in range(repeat):
        wall, rss, answer = timed_query(config, QUESTIONS[i % len(QUESTIONS)])
        assert answer["results"], "no results without a daemon"
        walls.append(wall)
        rsses.append(rss)
    results["no_daemon"] = {"wall_s": summarize(walls), "peak_rss_mib": summarize(rsses)}
    log("starting the daemon")
    daemon = Daemon(config).start()
    try:
        walls, rsses, http = [], [], []
        for i in range(repeat):
            before = searches_served(daemon)
            wall, rss, answer = timed_query(config, QUESTIONS[i % len(QUESTIONS)])
            assert answer["results"], "no results through the daemon"
            if searches_served(daemon) != before + 1:
                raise RuntimeError("syncd query did not ask the running daemon")
            walls.append(wall)
            rsses.append(rss)
        for i in range(repeat):
            t0 = time.perf_counter()
            code, _ = daemon.get(f"/search?q={urllib.parse.quote(QUESTIONS[i % len(QUESTIONS)])}&k=5")
            http.append(time.perf_counter() - t0)
            assert code == 200
        results["daemon"] = {"wall_s": summarize(walls), "peak_rss_mib": summarize(rsses)}
        results["search_http_s"] = summarize(http)
    finally:
        daemon.stop()
    results["ratio_median"] = results["no_daemon"]["wall_s"]["median"] / results["daemon"]["wall_s"]["median"]
    return results


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def markdown(results: dict[str, Any]) -> str:
    m, r = results["machine"], results["run"]
    lines = [f"Run `{results['command']}` at {results['started']} (git {m['git_commit']}), {m['cpus_usable']} CPUs, "
             f"1-minute load average {results['load']['mean']:.1f} mean / {results['load']['max']:.1f} max (above the "
             f"CPU count the machine was shared). {r['docs']} documents ({r['chunks']} chunks), default backend, "
             f"{r['repeat']} calls each; the processes ran on `{results.get('python', PY)}`.", "",
             "| `syncd query … -k 5 --json`, whole process | median | p95 | min | max | peak RSS (median) |",
             "|---|---|---|---|---|---|"]
    for key, label in (("no_daemon", "no daemon: loads the index and the model itself"),
                       ("daemon", "daemon running: asks its `/search`")):
        w, rss = r[key]["wall_s"], r[key]["peak_rss_mib"]
        lines.append(f"| {label} | {_ms(w['median'])} | {_ms(w['p95'])} | {_ms(w['min'])} | {_ms(w['max'])} | "
                     f"{rss['median']:.0f} MiB |")
    s = r["search_http_s"]
    lines.append(f"| `/search` alone, from a running client | {_ms(s['median'])} | {_ms(s['p95'])} | {_ms(s['min'])} | "
                 f"{_ms(s['max'])} | — |")
    lines += ["", f"Through the daemon a query is {r['ratio_median']:.1f}× faster (median wall time); every call "
              "was checked to reach the daemon (its `syncd_search_requests_total` grew by one)."]
    return "\n".join(lines) + "\n"


def update_readme(md: str) -> None:
    update_readme_section(BEGIN, END, md, heading='`syncd query` with and without a running daemon',
                          intro='`python -m benchmarks.query_cli` (`benchmarks/query_cli.py`)'
                                ': the whole `syncd query` process, from its start to its exit.')


def main(argv: list[str] | None = None) -> int:
    global PY
    p = argparse.ArgumentParser(prog="python -m benchmarks.query_cli")
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--python", default=PY, help="the interpreter of the measured processes (default: this one)")
    args = p.parse_args(argv)
    PY = benchmarks.common.PY = args.python  # timed_query() and the daemon harness (benchmarks.common.Daemon)
    results: dict[str, Any] = {"command": "python -m benchmarks.query_cli " + " ".join(argv or sys.argv[1:]),
                               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                               "python": PY}
    out = HERE / "results" / time.strftime("query-cli-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with LoadSampler() as load, tempfile.TemporaryDirectory(prefix="syncd-query-cli-") as tmp:
        results["run"] = run(Path(tmp), args.docs, args.repeat)
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
