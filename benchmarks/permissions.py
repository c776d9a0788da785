"""Permission-aware retrieval: what the ACL prefilter costs a query, and how soon a revoked permission hides
a document.

`python -m benchmarks.permissions [--docs 10000] [--queries 200] [--rounds 5] [--revocations 20] [--no-readme]`

1. **Prefilter latency.** The cached index of ``--docs`` pages (``built_index``; the default is the query
   benchmark's largest corpus, the chunk count is reported from the table) is copied once more, and each
   page's ACL is rewritten (``Store.rows_with_acl``, the path a permission change takes, no vector touched)
   to ``group:all``, plus ``group:half`` on a random half of the pages and ``group:one`` on a random
   hundredth; the service's maintenance then rebuilds its indexes (the ``acl`` label-list index, the ANN
   index). Cached like the index it comes from. The same labelled queries then run through the search
   stages (``syncd.search.search``: both legs, fusion, dedup, with query vectors computed beforehand, so the
   model's time does not hide the filter's) as ``group:one`` (1% of the corpus readable), ``group:half``
   (50%) and ``group:all`` (100%), and **unfiltered**: the same search with the ACL condition taken out of
   the prefilter. The four alternate query by query in every round, so a change of the machine's load hits
   them alike. Reported: p50 and p95 of each, and their ratio to the unfiltered query's (goal: p95 at most
   1.25×); each restricted answer is checked to hold only readable chunks and k of them.
2. **Revocation → invisible.** `syncd run` on a copy of the cached index (files readable by others, so
   every page is ``everyone``'s). ``--revocations`` pages get a marker sentence before the daemon starts;
   once `/search` finds each by its marker, each page in turn is ``chmod o-r``: the time from the chmod's
   return until an anonymous `/search` for its marker no longer returns the page (polled back to back).
   Median and p95, next to the freshness figures.

Writes ``benchmarks/results/permissions-<timestamp>/`` and the "Permissions" section of
``benchmarks/README.md`` (``--no-readme``: neither the README, for a trial run at a small size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import stat
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE,
    HERE,
    Daemon,
    LoadSampler,
    built_index,
    corpus_key,
    log,
    machine,
    maintain,
    summarize,
    update_readme_section,
    wait_for,
    workspace,
)
from benchmarks.corpus import labelled_queries

BEGIN, END = "<!-- permissions:begin -->", "<!-- permissions:end -->"
PRINCIPALS = {"1%": "group:one", "50%": "group:half", "100%": "group:all"}
BATCH_DOCS = 200
"""Documents whose rows are rewritten per commit while the ACLs are laid out."""


def _open_store(config: Path, *, create: bool = False) -> Any:
    from syncd import config as config_mod
    from syncd.store import Store

    cfg = config_mod.load(config)
    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=384, signature="")
    store.open(create=create)
    return store


def acl_index(seed: int, docs: int) -> Path:
    """A copy of ``built_index(seed, docs)`` whose pages carry the benchmark's ACLs (see the module
    docstring), maintained as the service keeps an index; built once and cached."""
    folder = CACHE / f"acl-{corpus_key(seed, docs)}"
    done = folder / "acl.json"
    if done.exists():
        return folder
    config = workspace(built_index(seed, docs), folder)
    store = _open_store(config, create=True)  # a writer adds the acl column to an index from before it
    keys = sorted(set(store.scan(["doc_key"]).column("doc_key").to_pylist()))
    rng = random.Random(seed)
    order = keys[:]
    rng.shuffle(order)
    half = set(order[:len(order) // 2])
    one = set(order[:max(1, len(order) // 100)])
    started = time.monotonic()
    log(f"permissions: writing the ACLs of {len(keys)} documents")
    for i in range(0, len(keys), BATCH_DOCS):
        part = keys[i:i + BATCH_DOCS]
        acls = {k: tuple(sorted({"group:all", *(["group:half"] if k in half else []),
                                 *(["group:one"] if k in one else [])})) for k in part}
        store.apply(store.rows_with_acl(acls), part, covers_all_rows=True)
    rewrite_s = time.monotonic() - started
    maintenance_s = maintain(config)
    done.write_text(json.dumps({"docs": len(keys), "one": len(one), "half": len(half), "rewrite_s": rewrite_s,
                                "maintenance_s": maintenance_s, "rows": store.count_rows()}, indent=1))
    return folder


@contextlib.contextmanager
def _unfiltered() -> Iterator[None]:
    """The search without its ACL condition: the first of ``filter_conditions`` is always the ACL's."""
    from syncd import search as search_mod

    original = search_mod.filter_conditions
    search_mod.filter_conditions = lambda options: original(options)[1:]
    try:
        yield
    finally:
        search_mod.filter_conditions = original


def prefilter(seed: int, docs: int, *, queries: int, rounds: int) -> dict[str, Any]:
    from benchmarks.probe import StandInEmbedder
    from syncd import search as search_mod

    folder = acl_index(seed, docs)
    store = _open_store(folder / "syncd.toml")
    built = json.loads((folder / "acl.json").read_text())
    qs = [q for q, _ in labelled_queries(seed, docs, n=queries)]
    vectors = StandInEmbedder().encode(qs)
    indexes = sorted(f"{idx.columns[0]}:{idx.index_type}" for idx in store.table.list_indices())
    variants = ["unfiltered", *PRINCIPALS]
    latencies: dict[str, list[float]] = {v: [] for v in variants}
    short: dict[str, int] = dict.fromkeys(variants, 0)

    def once(variant: str, q: str, vec: Any) -> float:
        principal = PRINCIPALS.get(variant)
        options = search_mod.options_from_kwargs(k=10, min_relevance=0, dedup=True,
                                                 principals=[principal] if principal else None)
        started = time.perf_counter()
        if principal is None:
            with _unfiltered():
                answer = search_mod.search(store, lambda: vec, q, options)
        else:
            answer = search_mod.search(store, lambda: vec, q, options)
        took = time.perf_counter() - started
        if len(answer.results) < 10:
            short[variant] += 1
        return took

    # The rows' ACLs, to check the restricted answers: they must hold only readable chunks.
    acl_of = {r["chunk_id"]: set(r["acl"] or ()) for r in store.scan(["chunk_id", "acl"]).to_pylist()}
    for q, vec in zip(qs[:10], vectors[:10], strict=True):  # warm-up, and the correctness check
        for variant, principal in PRINCIPALS.items():
            options = search_mod.options_from_kwargs(k=10, min_relevance=0, principals=[principal])
            for r in search_mod.search(store, lambda v=vec: v, q, options).results:
                if principal not in acl_of.get(r["chunk_id"], set()):
                    raise RuntimeError(f"a search as {principal} ({variant}) returned {r['doc_id']}, not readable")
        for variant in variants:
            once(variant, q, vec)
    short = dict.fromkeys(variants, 0)
    for r in range(rounds):
        for i, (q, vec) in enumerate(zip(qs, vectors, strict=True)):
            shift = (i + r) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                latencies[variant].append(once(variant, q, vec))
        log(f"permissions prefilter: round {r + 1}/{rounds}")
    out: dict[str, Any] = {"docs": docs, "rows": store.count_rows(), "queries": len(qs), "rounds": rounds,
                           "indexes": indexes, "acl_layout": built, "short_answers": short}
    base = summarize(latencies["unfiltered"])
    out["unfiltered"] = base
    for variant in PRINCIPALS:
        s = summarize(latencies[variant])
        out[variant] = {**s, "ratio_p50": s["median"] / base["median"], "ratio_p95": s["p95"] / base["p95"]}
        log(f"permissions prefilter {variant}: p50 {s['median'] * 1000:.1f} ms, p95 {s['p95'] * 1000:.1f} ms, "
            f"p95 ratio {out[variant]['ratio_p95']:.2f}")
    return out


def revocation(seed: int, docs: int, work: Path, *, count: int, timeout: float = 300.0) -> dict[str, Any]:
    config = workspace(built_index(seed, docs), work)
    root = work / "docs"
    doc_ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
    rng = random.Random(seed + 19)
    chosen = rng.sample(doc_ids, min(count, len(doc_ids)))
    markers = {d: f"zr{seed % 100:02d}{i:04d}x{rng.randrange(16**6):06x}" for i, d in enumerate(chosen)}
    for d, marker in markers.items():
        path = root / d
        path.chmod(path.stat().st_mode | stat.S_IROTH)
        with open(path, "a") as fh:
            fh.write(f"\nPermission check {marker} was appended to this page by the benchmark.\n")
    daemon = Daemon(config).start()
    out: dict[str, Any] = {"docs": len(doc_ids), "revocations": len(chosen)}
    latencies: list[float] = []
    lost: list[str] = []
    try:
        def found(doc_id: str) -> bool:
            # No relevance floor: the page is returned (its marker found by the full-text leg) until it is not
            # readable, whatever the stand-in vectors of its other chunks make of the query.
            q = urllib.parse.quote(markers[doc_id])
            code, answer = daemon.get(f"/search?q={q}&k=10&min_relevance=0")
            if code != 200:
                raise RuntimeError(f"/search answered {code}: {answer}")
            return any(r["doc_id"] == doc_id for r in answer["results"])

        for d in chosen:
            wait_for(lambda d=d: found(d), timeout=timeout, what=f"{d} searchable by its marker")
        before = _counters(daemon)
        for d in chosen:
            path = root / d
            path.chmod(path.stat().st_mode & ~stat.S_IROTH)
            revoked = time.monotonic()
            while found(d):
                if time.monotonic() - revoked > timeout:
                    lost.append(d)
                    break
            else:
                latencies.append(time.monotonic() - revoked)
        after = _counters(daemon)
        out["docs_permissions"] = after["permissions"] - before["permissions"]
        out["chunks_embedded"] = after["embedded"] - before["embedded"]
    finally:
        daemon.stop()
    out["latency_s"] = summarize(latencies)
    out["lost"] = lost
    log(f"permissions revocation: p50 {out['latency_s']['median']}, p95 {out['latency_s']['p95']}, lost {len(lost)}")
    return out


def _counters(daemon: Daemon) -> dict[str, float]:
    """Documents whose rows only got a new ACL, and chunks embedded, so far (the daemon's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = daemon.get("/metrics")
    out = {"permissions": 0.0, "embedded": 0.0}
    for family in text_string_to_metric_families(text if code == 200 and isinstance(text, str) else ""):
        for sample in family.samples:
            if sample.name == "syncd_docs_synced_total" and sample.labels.get("action") == "permissions":
                out["permissions"] += sample.value
            elif sample.name == "syncd_chunks_embedded_total":
                out["embedded"] += sample.value
    return out


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.1f} ms"


def markdown(r: dict[str, Any]) -> str:
    p = r["prefilter"]
    lines = [f"Run {r['started']} on {r['machine']['cores_logical']} cores (load mean {r['load']['mean']:.2f}, max "
             f"{r['load']['max']:.2f}), `{r['command']}`.", "",
             f"**ACL prefilter**: {p['rows']:,} chunks of {p['docs']:,} documents, {p['queries']} queries × "
             f"{p['rounds']} rounds, k = 10, the four variants alternating query by query; indexes "
             f"{', '.join(p['indexes'])}.", "",
             "| caller may read | p50 | p95 | p50 / unfiltered | p95 / unfiltered |", "|---|---|---|---|---|",
             f"| unfiltered (no ACL condition) | {_ms(p['unfiltered']['median'])} | {_ms(p['unfiltered']['p95'])} | 1 | 1 |"]
    for variant in PRINCIPALS:
        v = p[variant]
        lines.append(f"| {variant} of the corpus (`{PRINCIPALS[variant]}`) | {_ms(v['median'])} | {_ms(v['p95'])} | "
                     f"{v['ratio_p50']:.2f}× | {v['ratio_p95']:.2f}× |")
    rv = r["revocation"]
    lat = rv["latency_s"]
    lines += ["", f"**Revocation → invisible** (`chmod o-r` with `syncd run` watching {rv['docs']:,} documents): "
              f"{rv['revocations']} revocations, median {_ms(lat['median'])}, p95 {_ms(lat['p95'])}, max "
              f"{_ms(lat['max'])}; {len(rv['lost'])} still returned after the timeout; "
              f"{rv.get('docs_permissions', 0):.0f} documents rewritten for their ACL alone, "
              f"{rv.get('chunks_embedded', 0):.0f} chunks embedded meanwhile."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.permissions")
    p.add_argument("--docs", type=int, default=10000, help="corpus pages (the cached index of that size)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--revocations", type=int, default=20)
    p.add_argument("--no-readme", action="store_true", help="write no README section (a trial run)")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"command": "python -m benchmarks.permissions " + " ".join(argv or sys.argv[1:]),
                               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    out = HERE / "results" / time.strftime("permissions-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with LoadSampler() as load, tempfile.TemporaryDirectory(prefix="syncd-permissions-") as tmp:
        results["prefilter"] = prefilter(args.seed, args.docs, queries=args.queries, rounds=args.rounds)
        results["revocation"] = revocation(args.seed, args.docs, Path(tmp) / "revocation", count=args.revocations)
        shutil.rmtree(Path(tmp) / "revocation", ignore_errors=True)
    results["load"] = {"mean": statistics.fmean(load.samples), "max": max(load.samples)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = markdown(results)
    (out / "report.md").write_text(md)
    if not args.no_readme:
        update_readme_section(BEGIN, END, md, heading="Permissions: the ACL prefilter and revocation",
                              intro="`python -m benchmarks.permissions` (`benchmarks/permissions.py`): query "
                                    "latency with the ACL prefilter against the same search unfiltered, and "
                                    "the time from `chmod o-r` until `/search` no longer returns the page.")
    print(md)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
