"""SIGTERM -> process exit of `syncd run`, split at the daemon's own `daemon.stopped` log line: how long the
service takes to stop, and how long the process lingers after it has (the interpreter's teardown of native
thread pools, which `syncd run` skips once everything is committed and saved).

    python benchmarks/diagnostics/stop_latency.py [RUNS]

Prints the median of each part over RUNS starts (default 5) on a small folder.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(work: Path) -> tuple[float, float]:
    log = work / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(work / "syncd.toml"), "run"],
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while b"daemon.ready" not in log.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the daemon did not get ready: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        exited = time.time()
    stopped = next(json.loads(line)["timestamp"] for line in log.read_text().splitlines()
                   if line.startswith("{") and '"daemon.stopped"' in line)
    import datetime as dt

    stopped_at = dt.datetime.fromisoformat(stopped.replace("Z", "+00:00")).timestamp()
    return stopped_at - sent, exited - stopped_at


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="stop-latency-"))
    (work / "docs").mkdir()
    for i in range(20):
        (work / "docs" / f"note-{i}.md").write_text(f"# Note {i}\n\nSome words about note {i}.\n")
    (work / "syncd.toml").write_text('[store]\nuri = "./index"\n[state]\ndir = "./state"\n[http]\n'
                                     'bind = "127.0.0.1:0"\n[logging]\nformat = "json"\n[[connectors]]\n'
                                     'name = "docs"\ntype = "filesystem"\npath = "./docs"\n')
    parts = [one(work) for _ in range(runs)]
    stop = statistics.median(p[0] for p in parts)
    linger = statistics.median(p[1] for p in parts)
    print(f"{runs} runs: SIGTERM -> daemon.stopped median {stop:.3f} s; daemon.stopped -> exit median {linger:.3f} s")


if __name__ == "__main__":
    main()
