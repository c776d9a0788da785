"""One-shot commands as whole processes (issue 23): what a user waits for, process start included.

For ``[embedding] backend = "torch"`` and for the default (``auto``, which gives a new index ONNX int8 on a
CPU), on a generated corpus: ``syncd sync`` after one edit, after the standard change set (10 edits,
5 deletes, 5 renames, 5 adds) and with nothing changed, ``syncd query``, ``syncd status`` (no daemon),
``syncd --help``, and ``syncd run`` from start to ``/readyz`` (its RSS then); wall time and peak RSS of each
process (``ru_maxrss`` from ``wait4``), medians over ``--repeat`` runs, the two backends alternating so the
machine's load drift hits both. The sync rows also give ``model_load_seconds`` from the JSON summary (the
model's fixed start cost, part of ``seconds``). The one-time export (``syncd model prepare`` on an empty
cache) is timed once.

    python -m benchmarks.oneshot --docs 5000 --repeat 3     # the table in benchmarks/README.md
    python -m benchmarks.oneshot --python /path/to/venv/bin/python   # the processes run by another install
    python -m benchmarks.oneshot --report benchmarks/results/oneshot-<timestamp>   # render a run again

The indexes are built once (cached in ``benchmarks/.cache/oneshot-*``) with the stand-in embedder
(``benchmarks/probe.py``: the packaged model's ids and tokenizer, vectors from a hash of the text) under each
backend's model id, so the real model opens them without a rebuild; every timed run embeds with the real
model. Results go to ``benchmarks/results/oneshot-<timestamp>/`` and the table into the README.

In the same run, on the default config: the daemon's freshness (``benchmarks/freshness.py``: idle, and
20 writes a second) on the default column's folder, and the retrieval quality of both backends on the
labelled queries (``benchmarks/onnx_backend.py``). ``--python`` names the interpreter of every measured
process (syncd's commands, its daemon, the import timings): an install made as the README's quick start
makes it has syncd's dependencies only, where a development venv with the test extra also has pandas,
which pyarrow imports with LanceDB whenever it is installed. The report names the interpreter and whether
it has pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchmarks.common
from benchmarks.common import CACHE, PY, REPO, corpus_key, log, machine, maintain, workspace, write_config
from benchmarks.corpus import write_corpus
from benchmarks.incremental import _edit_paragraph, apply_change_set

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
START, END = "<!-- oneshot:start -->", "<!-- oneshot:end -->"
BACKENDS = {"torch": {"backend": "torch"}, "default": {}}
"""Each column's ``[embedding]`` section: torch named explicitly; the default names nothing (auto)."""
QUERY = "how do I promote the replica after a failover"
IMPORTS = {"import_lancedb": "lancedb", "import_rest_client": "lance_namespace_urllib3_client",
           "import_torch": "torch, sentence_transformers", "import_onnx": "onnxruntime, tokenizers"}
"""Imports timed alone, each in a fresh interpreter: the parts of a one-shot command's fixed cost."""


def built(seed: int, n: int, column: str) -> Path:
    """A cached folder (docs, index, state, syncd.toml) indexed for ``column``'s backend."""
    backend = "torch" if column == "torch" else "onnx-int8"  # what auto gives a new index on a CPU
    folder = CACHE / f"oneshot-{corpus_key(seed, n)}-{backend}"
    if (folder / "build.json").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"generating {n} documents (seed {seed}) in {folder}/docs")
    write_corpus(folder / "docs", seed, n)
    sections = {"embedding": BACKENDS[column]} if BACKENDS[column] else {}
    config = write_config(folder, **sections)
    log(f"indexing them with the stand-in embedder under the {backend} model id (cached for later runs)")
    from benchmarks.probe import StandInEmbedder
    from syncd import config as config_mod
    from syncd.runtime import Runtime

    started = time.monotonic()
    rt = Runtime(config_mod.load(config), embedder=StandInEmbedder(backend))
    try:
        rt.open(load_index=False)
        summary = rt.engine.rebuild(reload_index=False)
        rt.state.save(only_dirty=False)
    finally:
        rt.close()
    maintain(config)
    (folder / "build.json").write_text(json.dumps({"docs": n, "chunks": summary.chunks_embedded,
                                                   "seconds": time.monotonic() - started}))
    return folder


# Peak RSS is the kernel's ru_maxrss of the command, read by a small launcher that waits for it: a child's
# ru_maxrss starts from the high-water mark of the process it was forked from, and this harness holds
# LanceDB and a built index (~340 MiB), which would floor every figure.
_LAUNCHER = ("import resource, subprocess, sys, time; t = time.monotonic(); r = subprocess.run(sys.argv[1:]); "
             "w = time.monotonic() - t; sys.stderr.write(f'\\nONESHOT {w} "
             "{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n'); sys.exit(r.returncode)")


PYTHON = PY
"""The interpreter of the measured processes (``--python``)."""


def run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> dict[str, Any]:
    """One whole process: wall time, peak RSS and its JSON output (the last JSON line on stdout)."""
    proc = subprocess.run([PY, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=3600)
    if check and proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    wall, maxrss_kib = proc.stderr.rsplit("ONESHOT ", 1)[1].split()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    output = json.loads(lines[-1]) if lines else None
    return {"wall_s": float(wall), "peak_rss_mib": int(maxrss_kib) / 1024, "rc": proc.returncode, "output": output}


def syncd(config: Path, *args: str) -> list[str]:
    return [PYTHON, "-m", "syncd", "--config", str(config), *args]


def daemon_start(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``syncd run`` from exec to ``/readyz`` 200 (its catch-up of an unchanged folder included), and the
    RSS of the process then."""
    import urllib.request

    import psutil

    state = config.parent / "state"
    (state / "daemon.json").unlink(missing_ok=True)
    log_file = open(config.parent / "daemon.log", "ab")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen(syncd(config, "run"), stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = started + 600
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            if url is None and (state / "daemon.json").exists():
                try:
                    url = json.loads((state / "daemon.json").read_text())["url"]
                except (ValueError, KeyError):
                    url = None
            if url is not None:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.02)
        else:
            raise RuntimeError(f"syncd run never became ready: {(config.parent / 'daemon.log').read_text()[-3000:]}")
        ready = time.monotonic() - started
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log_file.close()
    return {"wall_s": ready, "rss_mib": rss}


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=5000, help="documents in the generated folder (default 5000)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-readme", action="store_true", help="do not write the table into benchmarks/README.md")
    p.add_argument("--python", default=PY, help="the interpreter of the measured processes (default: this one)")
    p.add_argument("--processes-only", action="store_true",
                   help="skip the daemon's freshness and the retrieval quality of both backends")
    p.add_argument("--report", metavar="DIR", help="only render an earlier run's results.json (its folder) into "
                   "report.md and the README")
    p.add_argument("--resume", metavar="DIR", help="run only the daemon phases for an earlier run whose process "
                   "timings are in DIR/results.json (a run stopped in them), then render it")
    args = p.parse_args(argv)
    global PYTHON
    if args.resume:
        folder = Path(args.resume)
        data = json.loads((folder / "results.json").read_text())
        PYTHON = benchmarks.common.PY = data.get("python", {}).get("path", args.python)
        shutil.rmtree(folder / "freshness", ignore_errors=True)
        data["freshness"], data["quality"] = daemon_phases(args, folder, {"SYNCD_MODEL_CACHE": str(CACHE / "models")})
        data["daemon_phases"] = {"git_commit": machine()["git_commit"], "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "load_avg": os.getloadavg()}
        (folder / "results.json").write_text(json.dumps(data, indent=1))
        args.report = str(folder)
    if args.report:
        folder = Path(args.report)
        table = report(json.loads((folder / "results.json").read_text()), folder.name.removeprefix("oneshot-"))
        (folder / "report.md").write_text(table)
        print(table)
        if not args.no_readme:
            write_readme(table)
        return 0

    PYTHON = benchmarks.common.PY = args.python  # syncd() and the daemon harness (benchmarks.common.Daemon)
    has_pandas = subprocess.run([PYTHON, "-c", "import importlib.util, sys; "
                                 "sys.exit(importlib.util.find_spec('pandas') is None)"], check=False).returncode == 0
    python = {"path": PYTHON, "pandas": has_pandas}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = HERE / "results" / f"oneshot-{stamp}"
    out_dir.mkdir(parents=True)
    info = machine()
    models = CACHE / "models"  # one export shared by the runs (as by every process of an install)
    env = {**os.environ, "SYNCD_MODEL_CACHE": str(models)}
    configs = {col: workspace(built(args.seed, args.docs, col), out_dir / col) for col in BACKENDS}

    fresh = out_dir / "fresh-models"
    log("the one-time export: `syncd model prepare` on an empty cache")
    export = run(syncd(configs["default"], "model", "prepare", "--json"), {**env, "SYNCD_MODEL_CACHE": str(fresh)})
    shutil.rmtree(fresh, ignore_errors=True)
    run(syncd(configs["default"], "model", "prepare", "--json"), env)  # the shared cache, as an install has it

    results: dict[str, dict[str, list[dict[str, Any]]]] = {col: {} for col in BACKENDS}
    loads: list[float] = []
    for col, config in configs.items():  # settle: the copy changed every inode the fingerprints hold
        log(f"{col}: settling sync")
        run(syncd(config, "sync", "--json"), env)
    rng = random.Random(args.seed)
    for r in range(args.repeat):
        for col in (BACKENDS if r % 2 == 0 else reversed(list(BACKENDS))):
            config = configs[col]
            docs = config.parent / "docs"
            rows = results[col]
            loads.append(os.getloadavg()[0])
            log(f"round {r + 1}/{args.repeat}, {col}")
            pages = sorted(p for p in docs.rglob("*.md") if not p.name.startswith("moved-"))
            _edit_paragraph(rng.choice(pages), rng)
            rows.setdefault("one_edit", []).append(run(syncd(config, "sync", "--json"), env))
            apply_change_set(docs, args.seed, args.docs + 10 * r, rng)  # a round's adds are new pages
            rows.setdefault("change_set", []).append(run(syncd(config, "sync", "--json"), env))
            rows.setdefault("no_change", []).append(run(syncd(config, "sync", "--json"), env))
            rows.setdefault("query", []).append(run(syncd(config, "query", QUERY, "-k", "5", "--json"), env))
            rows.setdefault("status", []).append(run(syncd(config, "status", "--json"), env))
            rows.setdefault("help", []).append(run(syncd(config, "--help"), env))
            rows.setdefault("run", []).append(daemon_start(config, env))
            for name, modules in IMPORTS.items():  # what the fixed start cost is made of
                rows.setdefault(name, []).append(run([PYTHON, "-c", f"import {modules}"], env))
    data = {"docs": args.docs, "repeat": args.repeat, "seed": args.seed, "machine": info, "load_avg": loads,
            "export": export, "results": results, "python": python}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1))  # kept if a daemon phase fails
    if not args.processes_only:
        data["freshness"], data["quality"] = daemon_phases(args, out_dir, env)
    (out_dir / "results.json").write_text(json.dumps(data, indent=1))
    table = report(data, stamp)
    (out_dir / "report.md").write_text(table)
    print(table)
    if not args.no_readme:
        write_readme(table)
    return 0


def daemon_phases(args: argparse.Namespace, out_dir: Path, env: dict[str, str]) -> tuple[Any, Any]:
    """The daemon's freshness on the default config (idle, then 20 writes a second) on the default column's
    folder, and nDCG@10 of both backends on the labelled queries."""
    from benchmarks import freshness, onnx_backend

    os.environ["SYNCD_MODEL_CACHE"] = env["SYNCD_MODEL_CACHE"]  # the daemon shares the install's export
    # The default column's folder as the timed commands left it, synced by this code and then maintained, so
    # the phases time a settled daemon: a cached index from an older version is upgraded at its first open
    # (ACLs written, schema migrated), and that one-time rewrite and its compaction are not freshness.
    source = out_dir / "default"
    run(syncd(source / "syncd.toml", "sync", "--json"), env)
    maintain(source / "syncd.toml")
    log("freshness of the daemon on the default config")
    fresh = freshness.run(source, out_dir / "freshness", quick=False, backend="auto")
    log("retrieval quality of both backends on the labelled queries")
    quality = onnx_backend.run(docs=150, queries=100, repeat=1, seed=args.seed, out=out_dir / "quality")
    return fresh, quality


def write_readme(table: str) -> None:
    """The table between the oneshot markers of benchmarks/README.md (appended with them the first time)."""
    text = README.read_text()
    if START in text:
        text = text[: text.index(START)] + START + "\n" + table + END + text[text.index(END) + len(END):]
    else:
        text += f"\n{START}\n{table}{END}\n"
    README.write_text(text)


def report(data: dict[str, Any], stamp: str) -> str:
    res = data["results"]

    def cell(col: str, key: str) -> str:
        rows = res[col][key]
        if key == "run":
            return f"{median(rows, 'wall_s'):.2f} s | {median(rows, 'rss_mib'):.0f} MiB"
        return f"{median(rows, 'wall_s'):.2f} s | {median(rows, 'peak_rss_mib'):.0f} MiB"

    def model(col: str, key: str) -> str:
        rows = [r["output"] for r in res[col][key]]
        load = statistics.median(o["model_load_seconds"] for o in rows)
        work = statistics.median(o["seconds"] for o in rows)
        embedded = statistics.median(o["chunks_embedded"] for o in rows)
        return f"{load:.2f} s of {work:.2f} s, {embedded:.0f} chunks"

    versions = data["machine"]["versions"]
    loads = data["load_avg"]
    lines = [
        f"Run `oneshot-{stamp}` (`python -m benchmarks.oneshot --docs {data['docs']} --repeat {data['repeat']}`), "
        f"git {data['machine']['git_commit']}: {data['docs']:,} generated documents, medians of {data['repeat']} "
        f"runs of each whole process; load average {min(loads):.1f}–{max(loads):.1f} on "
        f"{data['machine']['cpus_usable']} CPUs; torch {versions.get('torch')}, onnxruntime "
        f"{versions.get('onnxruntime')}.",
        "",
        "| whole process | `backend = \"torch\"` wall | peak RSS | default (`auto` → onnx-int8) wall | peak RSS |",
        "|---|---|---|---|---|",
        f"| `syncd sync` after one edit | {cell('torch', 'one_edit')} | {cell('default', 'one_edit')} |",
        f"| `syncd sync`, the change set (10 edits, 5 deletes, 5 renames, 5 adds) | {cell('torch', 'change_set')} | "
        f"{cell('default', 'change_set')} |",
        f"| `syncd sync`, nothing changed | {cell('torch', 'no_change')} | {cell('default', 'no_change')} |",
        f"| `syncd query TEXT` (no daemon) | {cell('torch', 'query')} | {cell('default', 'query')} |",
        f"| `syncd status` (no daemon) | {cell('torch', 'status')} | {cell('default', 'status')} |",
        f"| `syncd --help` | {cell('torch', 'help')} | {cell('default', 'help')} |",
        f"| `syncd run`: start to `/readyz` 200, RSS then | {cell('torch', 'run')} | {cell('default', 'run')} |",
        "",
        "What the fixed start cost is made of: imports alone, each in a fresh interpreter (the model's in its "
        "column; LanceDB's, which every command that opens the store pays, in both):",
        "",
        "| whole process | torch wall | peak RSS | default (onnx-int8) wall | peak RSS |",
        "|---|---|---|---|---|",
        f"| `import lancedb` | {cell('torch', 'import_lancedb')} | {cell('default', 'import_lancedb')} |",
        f"| `import lance_namespace_urllib3_client` (inside `import lancedb`) | {cell('torch', 'import_rest_client')} | "
        f"{cell('default', 'import_rest_client')} |",
        f"| the model's libraries: `import torch, sentence_transformers` / `import onnxruntime, tokenizers` | "
        f"{cell('torch', 'import_torch')} | {cell('default', 'import_onnx')} |",
        "",
        "`model_load_seconds` of `seconds` in the sync summaries (the model's fixed start cost against the "
        "whole run's work, chunks embedded):",
        "",
        "| sync | torch | default (onnx-int8) |",
        "|---|---|---|",
        f"| after one edit | {model('torch', 'one_edit')} | {model('default', 'one_edit')} |",
        f"| the change set | {model('torch', 'change_set')} | {model('default', 'change_set')} |",
        "",
        f"The one-time export (`syncd model prepare` on an empty cache: PyTorch → ONNX, then int8 quantisation): "
        f"{data['export']['wall_s']:.1f} s wall, peak RSS {data['export']['peak_rss_mib']:.0f} MiB.",
        "",
    ]
    python = data.get("python")
    if python:
        lines[0] += (f" The processes ran on `{python['path']}`, "
                     + ("which has pandas (the test extra's; pyarrow then imports it with LanceDB)." if python["pandas"]
                        else "an install with syncd's own dependencies only (no pandas), as the quick start makes it."))
    fresh, quality = data.get("freshness"), data.get("quality")
    if fresh:
        def ms(phase: str, key: str) -> str:
            return f"{1000 * fresh[phase]['latency_s'][key]:.0f} ms"

        resumed = data.get("daemon_phases")
        when = (f"run again with `--resume` on git {resumed['git_commit']} ({resumed['at']}, load "
                f"{resumed['load_avg'][0]:.1f})" if resumed else "same run")

        def stage(phase: str, key: str) -> str:
            found = fresh[phase].get("breakdown", {}).get(key)
            if not found:
                return "–"
            return f"{found['p95']:.0f}" if key == "batch_docs" else f"{1000 * found['p95']:.0f} ms"

        lines += [
            f"The daemon on the default config, {when} ({fresh['docs']:,} documents; a write → `/search` "
            "returns it, `benchmarks/freshness.py`; the last three columns split the p95: the wait for the "
            "writer, the documents a batch, and commit → the poller's `/search` showing it):",
            "",
            "| phase | p50 | p95 | writes | lost | queue p95 | batch p95 | commit → answer p95 |",
            "|---|---|---|---|---|---|---|---|",
            *(f"| {name} | {ms(phase, 'median')} | {ms(phase, 'p95')} | {fresh[phase]['writes']} | "
              f"{fresh[phase]['lost']} | {stage(phase, 'queue')} | {stage(phase, 'batch_docs')} | "
              f"{stage(phase, 'query')} |" for phase, name in (("idle", "idle, a write every 300 ms"),
                                                              ("load", "20 writes a second")) if phase in fresh),
            "",
        ]
        searches = fresh.get("load", {}).get("search_stages")
        if searches:
            lines += ["The poller's `/search` under load, mean ms a search by stage (`syncd_search_seconds`): "
                      + ", ".join(f"{k} {1000 * v['mean_s']:.1f}" for k, v in searches.items()) + ".", ""]
        legs = fresh.get("load", {}).get("vector_legs")
        if legs and legs.get("rows_held") is not None:
            lines += [f"Vector legs under load answered from the vectors the daemon holds (`[search] vector_cache_mb`): "
                      f"{legs['served']} of {legs['served'] + legs['passed']} (the rest by LanceDB's scan); "
                      f"{legs['rows_held']:,} rows held at the end, {legs['bytes_held'] / 2**20:.0f} MiB.", ""]
    if quality:
        lines += [
            f"Retrieval quality, {'with the daemon phases' if data.get('daemon_phases') else 'same run'}: "
            f"nDCG@10 on {quality['queries']} labelled queries over "
            f"{quality['chunks']:,} chunks, PyTorch {quality['ndcg10_torch']:.4f}, ONNX int8 "
            f"{quality['ndcg10_onnx_int8']:.4f} (mean cosine to PyTorch's vectors {quality['cosine_mean']:.4f}); "
            f"embedding rate {quality['torch_chunks_per_s']:.1f} vs {quality['onnx_int8_chunks_per_s']:.1f} "
            f"chunks/s ({quality['ratio']:.2f}×).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
