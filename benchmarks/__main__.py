"""`python -m benchmarks run [--sizes 1k,10k] [--quick]`: run the harness, write JSON, Markdown and a plot
into ``benchmarks/results/<timestamp>/`` and copy the report into ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, HERE, LoadSampler, built_index, log, machine, parse_size, size_label

ALL = ("freshness", "incremental", "throughput", "memory", "query", "growth")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the benchmarks and write the reports")
    r.add_argument("--sizes", default="1k,10k", help="corpus sizes in documents (e.g. 1k,10k,100k)")
    r.add_argument("--quick", action="store_true", help="a short smoke run: 200 documents, few repetitions")
    r.add_argument("--only", default=",".join(ALL), help="comma-separated subset of: " + ", ".join(ALL))
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--repeat", type=int, default=3, help="repetitions of the timed runs")
    r.add_argument("--reindex-docs", type=int, default=200, help="corpus size of the real-model reindex runs")
    r.add_argument("--growth-updates", type=int, default=10_000, help="single-document updates in the growth run")
    r.add_argument("--growth-bare-updates", type=int, default=None,
                   help="updates in the growth run without maintenance (default: --growth-updates)")
    r.add_argument("--queries", type=int, default=100, help="queries per latency measurement")
    r.add_argument("--query-backend", default="onnx-int8", choices=("onnx-int8", "torch"),
                   help="the embedding backend of the query latency's index and daemon (default: the one "
                        "`backend = \"auto\"` takes on a CPU)")
    r.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="skip the freshness phases with the ONNX int8 backend (they build their own cached index)")
    r.add_argument("--out", help="results folder (default benchmarks/results/<timestamp>)")
    r.add_argument("--no-readme", action="store_true", help="do not copy the report into benchmarks/README.md")
    r.add_argument("--update", action="store_true",
                   help="with --out: keep the other benchmarks' results already in that folder, replace these")
    rep = sub.add_parser("report", help="re-render report.md and plot.png from a results folder")
    rep.add_argument("folder")
    rep.add_argument("--readme", action="store_true", help="also copy the report into benchmarks/README.md")
    return p


def render(results: dict[str, Any], out_dir: Path, readme: bool) -> str:
    from benchmarks import report

    md = report.markdown(results)
    (out_dir / "report.md").write_text(md)
    try:
        report.plot(results, out_dir / "plot.png")
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the figures
        log(f"plot failed: {exc}")
    if readme:
        report.update_readme(HERE / "README.md", md, out_dir)
    return md


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        folder = Path(args.folder)
        sys.stdout.write(render(json.loads((folder / "results.json").read_text()), folder, args.readme) + "\n")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from syncd.alloc import limit_malloc_arenas

    limit_malloc_arenas()  # in-process benchmarks run as the batch commands do (`syncd sync`, `syncd reindex`)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(ALL)
    if unknown:
        sys.stderr.write(f"unknown benchmark(s): {', '.join(sorted(unknown))}\n")
        return 2
    sizes = [200] if args.quick else sorted(parse_size(s) for s in args.sizes.split(","))
    repeat = 1 if args.quick else args.repeat
    reindex_docs = 30 if args.quick else args.reindex_docs
    growth_updates = 100 if args.quick else args.growth_updates
    queries = 20 if args.quick else args.queries
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else HERE / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    results: dict[str, Any] = {"started_at": stamp, "quick": args.quick, "sizes": sizes, "seed": args.seed,
                               "repeat": repeat, "machine": machine(), "errors": {}}
    if args.update and (out_dir / "results.json").exists():
        previous = json.loads((out_dir / "results.json").read_text())
        for name in only:
            previous.pop(name, None)
            previous.get("errors", {}).pop(name, None)
        previous.setdefault("updated", []).append({"at": stamp, "only": only, "machine": results["machine"]})
        results = {**previous, "errors": previous.get("errors", {})}
    log(f"results in {out_dir}")

    def save() -> None:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))

    def step(name: str, fn: Any) -> None:
        if name not in only:
            return
        log(f"== {name}")
        started = time.monotonic()
        with LoadSampler() as load:
            try:
                results[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failing benchmark must not lose the others
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed:\n{traceback.format_exc()}")
        if name in results and isinstance(results[name], dict):
            results[name]["load_avg_1m"] = {"max": max(load.samples), "mean": sum(load.samples) / len(load.samples)}
            results[name]["bench_seconds"] = time.monotonic() - started
        save()

    folders = {n: built_index(args.seed, n) for n in sizes}
    embedder = None

    def real_embedder() -> Any:
        nonlocal embedder
        if embedder is None:
            from syncd.embedding import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
            embedder.load()
            embedder.encode(["warm up"])
        return embedder

    fresh_size = max((n for n in sizes if n <= 10_000), default=sizes[0])

    def freshness() -> Any:
        from benchmarks import freshness as mod

        out = mod.run(folders[fresh_size], work / "freshness", quick=args.quick)
        # The same idle phase with one torch thread: what oversubscription costs a single-document update.
        out["idle_threads_1"] = mod.run(folders[fresh_size], work / "freshness", quick=args.quick, threads=1,
                                        phases=("idle",)).get("idle")
        if args.onnx:
            # Both phases again with `[embedding] backend = "onnx-int8"` on an index built for that backend.
            onnx = mod.run(built_index(args.seed, fresh_size, backend="onnx-int8"), work / "freshness",
                           quick=args.quick, backend="onnx-int8")
            out["idle_onnx_int8"], out["load_onnx_int8"] = onnx.get("idle"), onnx.get("load")
        return out

    def incremental() -> Any:
        from benchmarks import incremental as mod

        out = {}
        for n in sizes:
            if n > 10_000:
                out[size_label(n)] = mod.run_no_change_only(folders[n], work / "incremental", n_docs=n,
                                                            embedder=real_embedder())
            else:
                out[size_label(n)] = mod.run(folders[n], work / "incremental", n_docs=n, seed=args.seed,
                                             repeat=repeat, embedder=real_embedder())
            shutil.rmtree(work / "incremental", ignore_errors=True)
        if args.onnx and fresh_size in sizes:
            # The change set again with `[embedding] backend = "onnx-int8"`, on an index built for it.
            from syncd.embedding import OnnxEmbedder

            onnx = OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=CACHE / "models", quantize=True)
            onnx.load()
            onnx.encode(["warm up"])
            label = f"{size_label(fresh_size)} onnx-int8"
            out[label] = mod.run(built_index(args.seed, fresh_size, backend="onnx-int8"), work / "incremental",
                                 n_docs=fresh_size, seed=args.seed, repeat=repeat, embedder=onnx, cli=False)
            shutil.rmtree(work / "incremental", ignore_errors=True)
        return out

    def throughput() -> Any:
        from benchmarks import indexing

        return indexing.throughput(work / "throughput", seed=args.seed + 1, docs=reindex_docs, repeat=repeat,
                                   embedder=real_embedder())

    def memory() -> Any:
        from benchmarks import indexing

        cfg = results.get("throughput", {}).get("config")
        if not cfg or not Path(cfg).exists():  # throughput not run now (--only): the same corpus again
            from syncd.config import EmbeddingConfig

            cfg = indexing.prepare(work / "throughput", seed=args.seed + 1, docs=reindex_docs,
                                   batch_size=EmbeddingConfig().batch_size)
        return indexing.memory(Path(cfg), folders, work)

    def query() -> Any:
        from benchmarks import query as mod

        out = {}
        for n in sizes:
            if n > 10_000:
                continue
            index = folders[n] if args.query_backend == "torch" else built_index(args.seed, n, backend=args.query_backend)
            out[size_label(n)] = mod.latency(index, work / "query", seed=args.seed, n_docs=n, queries=queries)
            out[size_label(n)]["backend"] = args.query_backend
            shutil.rmtree(work / "query", ignore_errors=True)
        return out

    def growth() -> Any:
        from benchmarks import query as mod

        n = sizes[0]
        return mod.growth(folders[n], work / "growth", updates=growth_updates, queries=min(queries, 50),
                          bare_updates=args.growth_bare_updates,
                          seed=args.seed, n_docs=n)

    step("freshness", freshness)
    step("incremental", incremental)
    step("throughput", throughput)
    step("memory", memory)
    step("query", query)
    step("growth", growth)
    results["finished_at"] = time.strftime("%Y%m%d-%H%M%S")
    save()
    shutil.rmtree(work, ignore_errors=True)

    md = render(results, out_dir, not args.no_readme)
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
