"""The Markdown report (every figure with its target), the plot, and the copy into benchmarks/README.md."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

START = "<!-- figures:start -->"
END = "<!-- figures:end -->"


FRESHNESS_PHASES = ("idle", "load", "idle_threads_1", "idle_onnx_int8", "load_onnx_int8")

def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.0f} ms"


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


def _mib(v: float | None) -> str:
    return "—" if v is None else f"{v / 2**20:.0f} MiB"


def _ok(cond: bool | None) -> str:
    return "—" if cond is None else ("**holds**" if cond else "**misses**")


def _stat_ms(st: dict[str, Any] | None) -> str:
    if not st or st.get("median") is None:
        return "—"
    return (f"p50 {_ms(st['median'])}, p95 {_ms(st['p95'])} (min {_ms(st['min'])}, max {_ms(st['max'])}, "
            f"n={st['n']})")


def _stat_s(st: dict[str, Any] | None) -> str:
    if not st or st.get("median") is None:
        return "—"
    return f"median {_s(st['median'])} (min {_s(st['min'])}, max {_s(st['max'])}, n={st['n']})"


def _per_size(section: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-corpus-size entries of a section (skipping its run figures such as load_avg_1m)."""
    return {k: v for k, v in (section or {}).items() if isinstance(v, dict) and "docs" in v}


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, target, measured, holds)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    t = r.get("throughput")
    if t:
        ratio = t["ratio"]
        rows.append(("1. reindex chunks/s ÷ raw encode chunks/s", "≥ 0.90",
                     f"{ratio['median']:.3f} (min {ratio['min']:.3f}, max {ratio['max']:.3f}); "
                     f"{t['reindex_chunks_per_s']['median']:.1f} vs {t['raw_chunks_per_s']['median']:.1f} chunks/s, "
                     f"{t['chunks']} chunks", ratio["median"] >= 0.90))
    inc = _per_size(r.get("incremental"))
    for label, data in inc.items():
        if "change_set_s" in data:
            rows.append((f"2. change set on {label} docs: chunks embedded = new chunk texts", "exactly equal",
                         f"{data['chunks_embedded']} embedded vs {data['expected_new_chunks']} new "
                         f"(renamed {data['counts']['docs_renamed']}, reused {data['counts']['chunks_reused']})",
                         data["exact"]))
            cs = data["change_set_s"]
            rows.append((f"2. change set on {label} docs: wall time (model loaded)", "≤ 1.5 s", _stat_s(cs),
                         cs["median"] <= 1.5 if label.startswith("10k") else None))
            raw = (r.get("throughput") or {}).get("raw_chunks_per_s", {}).get("median")
            if raw and " " not in label:
                # The model alone, at the raw encode rate the throughput benchmark measured on this machine.
                floor = statistics.median(data["chunks_embedded"]) / raw
                rows.append((f"2. change set on {label} docs: the model's own time for those chunks", "(for scale)",
                             f"{floor:.2f} s ({statistics.median(data['chunks_embedded']):.0f} chunks at the raw "
                             f"encode rate, {raw:.1f} chunks/s)", None))
        nc = data["no_change_s"]
        if " " in label:  # a variant (another backend): the no-change pass embeds nothing either way
            continue
        limit = {"10k": 0.5, "100k": 5.0}.get(label)
        rows.append((f"2. no-change sync over {label} files", f"≤ {limit} s" if limit else "(for scale)",
                     _stat_s(nc), (nc["median"] <= limit) if limit else None))
        if data.get("cli_no_change_wall_s", {}).get("n"):
            rows.append((f"2. `syncd sync` process wall, no change, {label}", "(for scale)",
                         _stat_s(data["cli_no_change_wall_s"]), None))
    f = r.get("freshness")
    if f:
        for phase, p50, p95 in (("idle", 0.150, 0.250), ("load", None, 1.0), ("idle_threads_1", 0.150, 0.250),
                                ("idle_onnx_int8", 0.150, 0.250), ("load_onnx_int8", None, 1.0)):
            d = f.get(phase)
            if not d:
                continue
            lat = d["latency_s"]
            if p50 is not None:
                rows.append((f"3. freshness {phase} p50 ({f['docs']} docs)", f"≤ {_ms(p50)}", _ms(lat["median"]),
                             lat["median"] is not None and lat["median"] <= p50))
            rows.append((f"3. freshness {phase} p95 ({f['docs']} docs)", f"≤ {_ms(p95)}", _ms(lat["p95"]),
                         lat["p95"] is not None and lat["p95"] <= p95))
            rows.append((f"3. freshness {phase}: writes lost", "0", f"{d['lost']} of {d['writes']}", d["lost"] == 0))
        if f.get("idle_threads_1"):
            rows.append(("3. (idle_threads_1 = the idle phase with `[embedding] threads = 1`)", "", "", None))
        if f.get("idle_onnx_int8"):
            rows.append(("3. (*_onnx_int8 = both phases with `[embedding] backend = \"onnx-int8\"`)", "", "", None))
    q = _per_size(r.get("query"))
    for data in q.values():
        rows_n = data.get("rows", 0)
        for kind in ("flat", "ann", "flat_while_writing", "ann_while_writing"):
            st = data.get(kind)
            if not st:
                continue
            target = "≤ 50 ms p95" if kind == "ann" and rows_n >= 100_000 else "(for scale)"
            holds = st["p95"] <= 0.050 if target.startswith("≤") else None
            rows.append((f"4. /search {kind.replace('_', ' ')}, {rows_n} chunks", target, _stat_ms(st), holds))
    m = r.get("memory")
    if m:
        if m.get("real_model"):
            rm = m["real_model"]
            rows.append((f"5. peak RSS of `syncd reindex`, real model ({rm['chunks']} chunks)", "≤ 1.5 GB",
                         _mib(rm["peak_rss"]), rm["peak_rss"] <= 1.5e9))
        peaks = [(int(k), v["peak_rss"]) for k, v in m.get("stand_in", {}).items()]
        if peaks:
            peaks.sort()
            desc = ", ".join(f"{k} docs: {_mib(v)}" for k, v in peaks)
            flat = peaks[-1][1] <= peaks[0][1] * 1.25 if len(peaks) > 1 else None
            rows.append(("5. peak RSS of `syncd reindex` by corpus size (stand-in embedder)",
                         "flat: largest ≤ 1.25 × smallest", desc, flat))
    g = r.get("growth")
    if g:
        for label in ("without_maintenance", "with_maintenance"):
            d = g.get(label)
            if not d:
                continue
            rows.append((f"6. after {d.get('updates', g['updates'])} single-doc updates, {label.replace('_', ' ')}",
                         "(for scale)",
                         f"versions {d['versions_before']}→{d['versions_after']}, fragments {d['fragments_before']}"
                         f"→{d['fragments_after']}, "
                         + (f"rows {d['rows_before']}→{d['rows']}, " if d.get("rows_before") else "")
                         + f"query p50 {_ms(d['query_before_s']['median'])}→{_ms(d['query_after_s']['median'])}",
                         None))
        d = g.get("with_maintenance")
        pair, idle_pair = (d or {}).get("paired"), (d or {}).get("paired_after_idle")
        if pair and idle_pair:
            # Paired: the starting table and the updated one queried in alternation, in the same minute.
            rows.append(("6. query p50 change right after the last update (paired with the starting table)",
                         "(for scale)", f"{pair['change'] * 100:+.0f}% ({_ms(pair['baseline_p50_s'])} → "
                         f"{_ms(pair['p50_s'])})", None))
            rows.append(("6. query p50 change after the maintenance an idle writer runs (paired)", "≤ +20%",
                         f"{idle_pair['change'] * 100:+.0f}% ({_ms(idle_pair['baseline_p50_s'])} → "
                         f"{_ms(idle_pair['p50_s'])})", idle_pair["change"] <= 0.20))
            if d.get("rss_before") and d.get("rss_after"):
                rows.append((f"6. RSS of the writer process over the {d['updates']} updates", "(for scale)",
                             f"{_mib(d['rss_before'])} → {_mib(d['rss_after'])}", None))
        elif d and d.get("query_change") is not None:
            rows.append(("6. query latency change right after the last update (mid-way between maintenances)",
                         "(for scale)", f"{d['query_change'] * 100:+.0f}%", None))
        if d and not idle_pair and d.get("query_change_after_idle") is not None:
            rows.append(("6. query latency change after the maintenance (the full one an idle writer runs)",
                         "≤ +20%", f"{d['query_change_after_idle'] * 100:+.0f}% (p50 "
                         f"{_ms(d['query_after_idle_maintenance_s']['median'])})",
                         d["query_change_after_idle"] <= 0.20))
    return rows


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"Run `{r['started_at']}`{' (--quick)' if r['quick'] else ''}, sizes "
             f"{', '.join(str(s) for s in r['sizes'])} documents, seed {r['seed']}, {r['repeat']} repetition(s); "
             f"git {m.get('git_commit')}.", "",
             f"Machine: {m['cpus_usable']} usable CPUs ({m['cores_logical']} logical) — {m['cpu_model']}; "
             f"{m['ram_bytes'] / 2**30:.1f} GiB RAM; {m['platform']}; Python {m['python']}.", "",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", ""]
    for u in r.get("updated", []):
        lines += [f"Re-run into this folder at `{u['at']}` (git {u['machine'].get('git_commit')}): "
                  f"{', '.join(u['only'])}.", ""]
    loads = {k: v.get("load_avg_1m") for k, v in r.items() if isinstance(v, dict) and v.get("load_avg_1m")}
    if loads:
        lines.append("1-minute load average during each benchmark (max/mean; above the CPU count the machine was "
                     "shared and the figures are provisional): "
                     + "; ".join(f"{k} {v['max']:.1f}/{v['mean']:.1f}" for k, v in loads.items()) + ".")
        lines.append("")
    lines += ["| figure | target | measured | verdict |", "|---|---|---|---|"]
    for fig, target, measured, holds in targets(r):
        lines.append(f"| {fig} | {target} | {measured} | {_ok(holds)} |")
    lines.append("")
    f = r.get("freshness")
    if f:
        lines += [f"Freshness breakdown ({f['docs']} documents; per write, medians / p95):", "",
                  "| phase | event | queue | read+chunk | lookup | embed | commit | maintenance | query | docs per batch |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for phase in FRESHNESS_PHASES:
            d = f.get(phase)
            if not d:
                continue
            b = d["breakdown"]
            cells = []
            for k in ("event", "queue", "read_chunk", "lookup", "embed", "commit", "maintain", "query"):
                st = b.get(k) or {}
                cells.append(f"{_ms(st.get('median'))} / {_ms(st.get('p95'))}")
            cells.append(f"{b['batch_docs']['median']:.0f} / {b['batch_docs']['p95']:.0f}"
                         if b["batch_docs"]["n"] else "—")
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
        for phase in FRESHNESS_PHASES:
            d = f.get(phase)
            if d:
                lines.append(f"- {phase}: {d['writes']} writes at {d['achieved_rate']:.1f}/s, latency "
                             f"{_stat_ms(d['latency_s'])}; the poller's `/search` calls: {_stat_ms(d['query_latency_s'])}"
                             + (f", query vectors from the model {qv['model']}, from the cache {qv['cache']}."
                                if (qv := d.get("query_vectors")) else "."))
        lines.append("")
    inc = _per_size(r.get("incremental"))
    for label, data in inc.items():
        if "counts" in data:
            c = data["counts"]
            lines.append(f"- change set on {label}: {c['docs_changed']} changed, {c['docs_added']} added, "
                         f"{c['docs_deleted']} deleted, {c['docs_renamed']} renamed; {c['chunks_embedded']} chunks "
                         f"embedded, {c['chunks_reused']} reused, {c['chunks_deleted']} deleted.")
    if inc:
        lines.append("")
    if r.get("errors"):
        lines += ["Benchmarks that failed in this run:", ""]
        lines += [f"- {k}: `{v}`" for k, v in r["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    f = r.get("freshness") or {}
    for phase in FRESHNESS_PHASES:
        d = f.get(phase)
        if d and d["latency_s"]["n"]:
            st = d["latency_s"]
            ax.bar([f"{phase} p50", f"{phase} p95"], [st["median"] * 1000, st["p95"] * 1000])
    ax.axhline(150, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(250, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=7, labelrotation=20)
    ax.set_title("3. freshness: write → /search (ms, log scale; targets dashed)")
    ax = axes[0][1]
    if f:
        stages = ("event", "queue", "read_chunk", "lookup", "embed", "commit", "maintain", "query")
        phases = [p for p in FRESHNESS_PHASES if f.get(p)]
        bottom = [0.0] * len(phases)
        for s in stages:
            vals = [((f[p]["breakdown"].get(s) or {}).get("median") or 0) * 1000 for p in phases]
            ax.bar(phases, vals, bottom=bottom, label=s)
            bottom = [a + b for a, b in zip(bottom, vals, strict=True)]
        ax.legend(fontsize=7)
        ax.set_yscale("symlog", linthresh=100)
    ax.set_title("3. freshness breakdown, medians (ms, symlog)")
    ax = axes[1][0]
    q = _per_size(r.get("query"))
    labels, p50, p95 = [], [], []
    for data in q.values():
        for kind in ("flat", "ann", "flat_while_writing", "ann_while_writing"):
            if data.get(kind):
                labels.append(f"{data.get('rows')} rows\n{kind.replace('_while_writing', '+w')}")
                p50.append(data[kind]["median"] * 1000)
                p95.append(data[kind]["p95"] * 1000)
    if labels:
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p95, width=0.4, label="p95")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=6)
        ax.axhline(50, color="grey", linestyle="--", linewidth=0.8)
        ax.legend(fontsize=7)
    ax.set_title("4. /search latency (ms)")
    ax = axes[1][1]
    mem = (r.get("memory") or {}).get("stand_in") or {}
    if mem:
        pts = sorted((int(k), v["peak_rss"] / 2**20) for k, v in mem.items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="stand-in embedder")
        ax.set_xscale("log")
    rm = (r.get("memory") or {}).get("real_model")
    if rm:
        ax.axhline(rm["peak_rss"] / 2**20, color="C1", linestyle="--", label="real model, small corpus")
    ax.axhline(1.5e9 / 2**20, color="grey", linestyle=":", linewidth=0.8)
    ax.set_title("5. reindex peak RSS (MiB) by documents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme: Path, md: str, out_dir: Path) -> None:
    """Replace the figures section of the README and copy the plot next to it."""
    plot = out_dir / "plot.png"
    body = md
    if plot.exists():
        shutil.copyfile(plot, readme.parent / "latest.png")
        body += "\n![latest figures](latest.png)\n"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
