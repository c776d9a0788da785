"""RSS over time of `syncd reindex` (stand-in embedder) on a copy of the cached N-document index, under
extra environment settings: ``python benchmarks/diagnostics/reindex_rss.py 10000 MALLOC_ARENA_MAX=2``.
Prints the RSS every tenth of the run and the peak."""
import os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import psutil
from benchmarks.common import PY, REPO, _rss_tree, workspace

n = int(sys.argv[1])
env = dict(a.split("=", 1) for a in sys.argv[2:])
src = Path(__file__).resolve().parents[1] / ".cache" / f"idx-s7-n{n}-g1-c1"
work = Path(tempfile.mkdtemp(prefix="reindex-rss-"))
config = workspace(src, work / "w")
proc = subprocess.Popen([PY, "-m", "benchmarks.probe", "--config", str(config), "reindex", "--json"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                        env={**os.environ, "BENCH_STANDIN": "1", **env})
ps = psutil.Process(proc.pid)
samples = []
t0 = time.monotonic()
while proc.poll() is None:
    try:
        samples.append((time.monotonic() - t0, _rss_tree(ps)))
    except psutil.Error:
        break
    time.sleep(0.05)
shutil.rmtree(work, ignore_errors=True)
step = max(1, len(samples) // 10)
print(env or "default", "exit", proc.returncode, "peak MiB", max(r for _, r in samples) >> 20,
      "timeline", [(round(t), r >> 20) for t, r in samples[::step]])
