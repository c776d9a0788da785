"""Several daemons, one store: commit latency, freshness and the commit-retry rate of 1, 2 and 4 `syncd run`
processes on one S3 table (SeaweedFS on loopback), against one daemon on a local folder, in the same run.

`python -m benchmarks.multi_daemon [--edits 12] [--docs 20] [--out FILE]`

Each daemon owns one filesystem connector with ``--docs`` small documents. Once every daemon is ready, the
edits are made in rounds: in each round every daemon's folder gets one edit at the same moment (so the
daemons' commits race), and a poller per daemon queries that daemon's ``/search`` for the edit's unique
marker until it comes back (freshness: file written → ``/search`` sees it). Commit latency comes from each
daemon's ``syncd_commit_seconds`` histogram (median and 95th percentile interpolated in its buckets, and
the mean), the retry rate from ``syncd_commit_retries_total`` / ``syncd_store_commits_total``. The report
goes to stdout as Markdown and, with ``--readme``, into benchmarks/README.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import tomli_w

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
from seaweedfs_server import start_seaweedfs, stop_seaweedfs  # noqa: E402

BEGIN = "<!-- multi-daemon:begin -->"
END = "<!-- multi-daemon:end -->"


class Daemon:
    def __init__(self, folder: Path, store: dict[str, Any], env: dict[str, str], name: str, docs: int) -> None:
        self.folder = folder
        self.name = name
        self.src = folder / "src"
        self.src.mkdir(parents=True)
        for i in range(docs):
            (self.src / f"{name}-{i}.md").write_text(f"# {name} {i}\n\nBaseline text of {name} document {i}.\n")
        config = {"store": store, "state": {"dir": "./state"}, "http": {"bind": "127.0.0.1:0"},
                  "logging": {"level": "warning", "format": "json"},
                  "connectors": [{"name": name, "type": "filesystem", "path": str(self.src)}]}
        self.config = folder / "syncd.toml"
        self.config.write_text(tomli_w.dumps(config))
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        log = open(self.folder / "daemon.log", "wb")  # noqa: SIM115 - kept for the process's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(self.config), "run"],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        info = self.folder / "state" / "daemon.json"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited: {(self.folder / 'daemon.log').read_text()[-2000:]}")
            if info.exists() and not self.url:
                self.url = json.loads(info.read_text())["url"]
            if self.url and self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"daemon {self.name} not ready")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def found(self, marker: str) -> bool:
        # A result's text, not the answer's body (which repeats the query), and at any relevance: a lone
        # marker word is far in meaning from every chunk, and the question is only whether it is visible.
        code, body = self.get(f"/search?q={urllib.parse.quote(marker)}&k=5&min_relevance=0")
        if code != 200:
            return False
        return any(marker in r["text"] for r in json.loads(body)["results"])

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _metric(text: str, name: str) -> float:
    """The sum of every series of ``name`` (a family labelled by connector has one per connector)."""
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in values)


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative bucket counts of histogram ``name``, summed over its other labels (the connector)."""
    out: dict[float, float] = {}
    for labels, value in re.findall(rf"^{re.escape(name)}_bucket{{([^}}]*)}} ([0-9.e+-]+)$", text, re.M):
        le = re.search(r'le="([^"]+)"', labels)
        if le is None:
            continue
        bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
        out[bound] = out.get(bound, 0.0) + float(value)
    return sorted(out.items())


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the quantile."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_le, prev_count = le, count
    return None


def run_setup(label: str, root: Path, store: dict[str, Any], env: dict[str, str], daemons: int, edits: int,
              docs: int) -> dict[str, Any]:
    folder = root / label
    fleet = [Daemon(folder / f"d{i}", store, env, f"c{i}", docs) for i in range(daemons)]
    try:
        for d in fleet:
            d.start()
        for d in fleet:
            d.wait_ready()
        before = [(d.metrics()) for d in fleet]
        freshness: list[float] = []
        lost = 0
        for round_ in range(edits):
            markers = []
            for d in fleet:
                marker = f"mk{uuid.uuid4().hex[:10]}"
                (d.src / f"{d.name}-{round_ % docs}.md").write_text(
                    f"# {d.name} {round_}\n\nRound {round_} writes the marker {marker} here.\n")
                markers.append((d, marker, time.monotonic()))
            results: list[float | None] = [None] * len(markers)

            def wait(i: int, d: Daemon, marker: str, start: float, results: list[float | None] = results) -> None:
                deadline = start + 120
                while time.monotonic() < deadline:
                    if d.found(marker):
                        results[i] = time.monotonic() - start
                        return
                    time.sleep(0.01)

            threads = [threading.Thread(target=wait, args=(i, *m)) for i, m in enumerate(markers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            freshness += [r for r in results if r is not None]
            lost += sum(1 for r in results if r is None)
        commits = retries = 0.0
        lat_buckets: dict[float, float] = {}
        lat_sum = lat_count = 0.0
        for d, start in zip(fleet, before, strict=True):
            text = d.metrics()
            commits += _metric(text, "syncd_store_commits_total") - _metric(start, "syncd_store_commits_total")
            retries += _metric(text, "syncd_commit_retries_total") - _metric(start, "syncd_commit_retries_total")
            lat_sum += _metric(text, "syncd_commit_seconds_sum") - _metric(start, "syncd_commit_seconds_sum")
            lat_count += _metric(text, "syncd_commit_seconds_count") - _metric(start, "syncd_commit_seconds_count")
            old = dict(_buckets(start, "syncd_commit_seconds"))
            for le, count in _buckets(text, "syncd_commit_seconds"):
                lat_buckets[le] = lat_buckets.get(le, 0.0) + count - old.get(le, 0.0)
        merged = sorted(lat_buckets.items())
        freshness.sort()
        return {
            "setup": label, "daemons": daemons, "edits": edits * daemons, "not_found": lost,
            "commit_p50_ms": _ms(_quantile(merged, 0.5)), "commit_p95_ms": _ms(_quantile(merged, 0.95)),
            "commit_mean_ms": _ms(lat_sum / lat_count if lat_count else None),
            "freshness_p50_s": round(statistics.median(freshness), 3) if freshness else None,
            "freshness_p95_s": round(freshness[int(0.95 * (len(freshness) - 1))], 3) if freshness else None,
            "commits": int(commits), "retries": int(retries),
            "retry_rate": round(retries / commits, 3) if commits else None,
        }
    finally:
        for d in fleet:
            d.stop()


def stress_child(uri: str, options: str, name: str, commits: int, rows: int) -> None:
    """One writer of the stress phase: ``commits`` merges of ``rows`` chunks of its own connector through
    ``Store.apply`` (the daemon's commit path, with its replays), as fast as it can; prints its figures."""
    import numpy as np

    from syncd.coordination import SharedFacts, SharedStore
    from syncd.store import Store, chunk_id, doc_key

    opts = json.loads(options)
    shared = SharedStore(uri, opts)
    store = Store(uri, Path(tempfile.mkdtemp()), base_table="chunks", dim=384, signature="stress",
                  storage_options=opts, facts=SharedFacts(shared))
    store.open()
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    latencies = []
    failed = 0
    for i in range(commits):
        doc = f"doc-{i % 20}"
        records = []
        for j in range(rows):
            vec = rng.standard_normal(384).astype(np.float32)
            records.append({"chunk_id": chunk_id(name, doc, j), "doc_key": doc_key(name, doc), "doc_id": doc,
                            "connector": name, "text": f"{name} {doc} {i} {j}", "vector": vec / np.linalg.norm(vec),
                            "uri": doc, "title": doc, "revision": str(i), "chunk_index": j, "heading_path": [],
                            "start_line": 1, "end_line": 1, "content_hash": uuid.uuid4().hex, "updated_at": None,
                            "doc_identity": str(i), "modified_at": None, "metadata": "{}"})
        started = time.monotonic()
        try:
            store.apply(store.make_rows(records), [doc_key(name, doc)])
        except Exception:  # noqa: BLE001 - counted: a commit that failed after every replay
            failed += 1
            continue
        latencies.append(time.monotonic() - started)
    print(json.dumps({"latencies": latencies, "retries": store.commit_retries, "failed": failed}))


def run_stress(root: Path, server: Any, writers: int, commits: int, rows: int) -> dict[str, Any]:
    """``writers`` processes committing back to back into one S3 table: the contention a fleet's steady
    state never reaches, to see where replays start."""
    uri = server.uri(f"stress-{writers}")
    env = {**os.environ, **server.env}
    options = json.dumps(server.storage_options)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.multi_daemon", "--stress-child", uri, options,
                               f"w{i}", str(commits), str(rows)], stdout=subprocess.PIPE, env=env, cwd=REPO)
             for i in range(writers)]
    started = time.monotonic()
    outs = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
    wall = time.monotonic() - started
    lat = sorted(x for o in outs for x in o["latencies"])
    done = len(lat)
    retries = sum(o["retries"] for o in outs)
    return {"writers": writers, "commits": done, "failed": sum(o["failed"] for o in outs), "retries": retries,
            "retry_rate": round(retries / max(done, 1), 3),
            "p50_ms": _ms(statistics.median(lat)) if lat else None,
            "p95_ms": _ms(lat[int(0.95 * (len(lat) - 1))]) if lat else None,
            "commits_per_s": round(done / wall, 1)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [BEGIN, "",
             f"`python -m benchmarks.multi_daemon --edits {meta['edits']} --docs {meta['docs']}` "
             f"({meta['date']}, {meta['cpus']} CPUs shared with other work, SeaweedFS {meta['weed']} on loopback, "
             "the default ONNX int8 model; each daemon owns one folder, every round edits one file in every "
             "folder at once):", "",
             "| setup | daemons | edits | commit p50 / p95 / mean (ms) | freshness p50 / p95 (s) | commits | "
             "retries (rate) | not found |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['setup']} | {r['daemons']} | {r['edits']} | {r['commit_p50_ms']} / {r['commit_p95_ms']} / "
                     f"{r['commit_mean_ms']} | {r['freshness_p50_s']} / {r['freshness_p95_s']} | {r['commits']} | "
                     f"{r['retries']} ({r['retry_rate']}) | {r['not_found']} |")
    if meta.get("stress"):
        lines += ["", f"Stress: writer processes committing {meta['stress_commits']} merges of {meta['stress_rows']} "
                  "chunks each back to back through `Store.apply` (no model), one table:", "",
                  "| writers | commits | p50 / p95 (ms) | commits/s (all writers) | replays (rate) | failed |",
                  "|---|---|---|---|---|---|"]
        for r in meta["stress"]:
            lines.append(f"| {r['writers']} | {r['commits']} | {r['p50_ms']} / {r['p95_ms']} | {r['commits_per_s']} | "
                         f"{r['retries']} ({r['retry_rate']}) | {r['failed']} |")
    lines += ["", "Commit percentiles are interpolated in the `syncd_commit_seconds` histogram's buckets "
              "(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1 s...), so read them as ranges; the mean is exact.",
              "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multi_daemon")
    parser.add_argument("--edits", type=int, default=12, help="rounds of edits (one per daemon per round)")
    parser.add_argument("--docs", type=int, default=20, help="documents per daemon's folder")
    parser.add_argument("--fleet", default="1,2,4", help="daemon counts on S3")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--readme", action="store_true", help="replace the section in benchmarks/README.md")
    parser.add_argument("--stress", default="1,2,4,8", help="writer counts of the stress phase (empty: none)")
    parser.add_argument("--stress-commits", type=int, default=30, help="commits per stress writer")
    parser.add_argument("--stress-rows", type=int, default=10, help="chunks per stress commit")
    parser.add_argument("--stress-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stress_child:
        uri, options, name, commits, rows = args.stress_child
        stress_child(uri, options, name, int(commits), int(rows))
        return
    root = Path(tempfile.mkdtemp(prefix="syncd-multi-daemon-"))
    os.environ.setdefault("SYNCD_MODEL_CACHE", str(root / "model-cache"))
    prep = root / "prepare"
    prep.mkdir()
    (prep / "syncd.toml").write_text(tomli_w.dumps({"state": {"dir": "./state"}, "connectors": []}))
    subprocess.run([sys.executable, "-m", "syncd", "--config", str(prep / "syncd.toml"), "model", "prepare"],
                   check=True, capture_output=True)
    (root / "weed").mkdir()
    server, proc = start_seaweedfs(root / "weed")
    results = []
    stress: list[dict[str, Any]] = []
    try:
        results.append(run_setup("local folder", root, {"uri": str(root / "local-index")}, {}, 1, args.edits,
                                 args.docs))
        for n in (int(x) for x in args.fleet.split(",")):
            store = {"uri": server.uri(f"bench-{n}"), "storage_options": server.storage_options}
            results.append(run_setup(f"S3 ({n})", root, store, server.env, n, args.edits, args.docs))
            print(json.dumps(results[-1]), flush=True)
        for n in (int(x) for x in args.stress.split(",") if x):
            stress.append(run_stress(root, server, n, args.stress_commits, args.stress_rows))
            print(json.dumps(stress[-1]), flush=True)
    finally:
        stop_seaweedfs(proc)
    weed = subprocess.run([str(Path(sys.executable).parent / "weed"), "version"], capture_output=True,
                          text=True).stdout
    found = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", weed)
    meta = {"edits": args.edits, "docs": args.docs, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
            "weed": found.group(1) if found else "?", "stress": stress, "stress_commits": args.stress_commits,
            "stress_rows": args.stress_rows}
    text = report(results, meta)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.readme:
        readme = HERE / "README.md"
        body = readme.read_text()
        if BEGIN in body:
            body = body[:body.index(BEGIN)] + text + body[body.index(END) + len(END):]
        else:
            body += "\n" + text + "\n"
        readme.write_text(body)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
