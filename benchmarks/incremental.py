"""(2) Incremental cost: a no-change sync (stat-only fast path) and the change set of 10 one-paragraph
edits, 5 deletes, 5 renames and 5 adds over an indexed corpus.

Runs the engine in this process exactly as `syncd sync` does (``Runtime`` + ``engine.reconcile`` +
``state.save``), with the real model loaded beforehand, so the wall time excludes the model load. The CLI
is also timed as a subprocess for the no-change pass (wall time including Python start and imports).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.common import log, run_syncd, summarize, workspace
from benchmarks.corpus import _Writer, page


def _runtime(config: Path, embedder: Any) -> Any:
    from syncd import config as config_mod
    from syncd.runtime import Runtime

    rt = Runtime(config_mod.load(config), embedder=embedder)
    rt.open()
    return rt


def _sync(rt: Any) -> tuple[dict[str, Any], float]:
    """What `syncd sync` does for a filesystem connector; returns (summary, wall seconds)."""
    from syncd.models import SyncSummary

    started = time.monotonic()
    summary = SyncSummary()
    for name in rt.connectors:
        summary.merge(rt.engine.reconcile(name))
    rt.state.save(only_dirty=False)
    return summary.as_dict(), time.monotonic() - started


def _edit_paragraph(path: Path, rng: random.Random) -> None:
    blocks = path.read_text().split("\n\n")
    candidates = [i for i, b in enumerate(blocks) if b and b[0].isalpha() and "\n" not in b.strip()]
    i = rng.choice(candidates) if candidates else len(blocks) - 1
    w = _Writer(rng, ["edited", "revision"])
    blocks[i] = w.paragraph()
    path.write_text("\n\n".join(blocks))


def apply_change_set(root: Path, seed: int, n_docs: int, rng: random.Random) -> dict[str, list[str]]:
    """10 edits, 5 deletes, 5 renames, 5 adds; returns the doc ids touched, by kind."""
    docs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
    picked = rng.sample(docs, 20)
    edits, deletes, renames = picked[:10], picked[10:15], picked[15:20]
    for d in edits:
        _edit_paragraph(root / d, rng)
    for d in deletes:
        (root / d).unlink()
    renamed = []
    for d in renames:
        new = d.replace("page-", "moved-page-")
        os.rename(root / d, root / new)
        renamed.append(new)
    adds = []
    for j in range(5):
        p = page(seed, n_docs + 1000 + j)
        (root / p.rel_path).parent.mkdir(parents=True, exist_ok=True)
        (root / p.rel_path).write_text(p.text)
        adds.append(p.rel_path)
    return {"edits": edits, "deletes": deletes, "renames_from": renames, "renames_to": renamed, "adds": adds}


def expected_new_chunks(rt: Any, root: Path, doc_ids: list[str]) -> int:
    """Chunk texts of the edited and added pages that the store does not hold yet."""
    from syncd.extract import extract

    hashes = set()
    for d in doc_ids:
        extracted = extract((root / d).read_bytes(), "markdown", size_limit=None)
        hashes.update(c.content_hash for c in rt.chunker.chunk(extracted.blocks))
    have = rt.store.vectors_for(hashes)
    return len(hashes - set(have))


def run(index_folder: Path, work: Path, *, n_docs: int, seed: int, repeat: int, embedder: Any,
        cli: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"docs": n_docs, "runs": []}
    nochange, change_wall, cli_walls = [], [], []
    for r in range(repeat):
        config = workspace(index_folder, work)
        root = work / "docs"
        rt = _runtime(config, embedder)
        try:
            settle, settle_s = _sync(rt)  # copying changed every inode: this pass re-reads each file once
            log(f"incremental[{n_docs}] run {r}: settle pass {settle_s:.1f} s ({settle['docs_unchanged']} unchanged)")
            passes = [_sync(rt)[1] for _ in range(3)]
            nochange += passes
            rng = random.Random(seed * 31 + r)
            touched = apply_change_set(root, seed, n_docs, rng)
            expected = expected_new_chunks(rt, root, touched["edits"] + touched["adds"])
            summary, wall = _sync(rt)
            change_wall.append(wall)
            out["runs"].append({"summary": summary, "wall_s": wall, "expected_new_chunks": expected,
                                "no_change_s": passes, "settle_s": settle_s})
            log(f"incremental[{n_docs}] run {r}: change set {wall:.2f} s, embedded {summary['chunks_embedded']} "
                f"(expected {expected}), no-change {min(passes):.3f} s")
        finally:
            rt.close()
        if cli and r == 0:
            for _ in range(2):
                run = run_syncd(config, "sync")
                cli_walls.append(run.wall_s)
    first = out["runs"][0]
    out["no_change_s"] = summarize(nochange)
    out["change_set_s"] = summarize(change_wall)
    out["cli_no_change_wall_s"] = summarize(cli_walls)
    out["chunks_embedded"] = [x["summary"]["chunks_embedded"] for x in out["runs"]]
    out["expected_new_chunks"] = [x["expected_new_chunks"] for x in out["runs"]]
    out["exact"] = all(x["summary"]["chunks_embedded"] == x["expected_new_chunks"] for x in out["runs"])
    out["counts"] = {k: first["summary"][k] for k in ("docs_changed", "docs_added", "docs_deleted", "docs_renamed",
                                                      "chunks_embedded", "chunks_reused", "chunks_deleted")}
    return out


def run_no_change_only(index_folder: Path, work: Path, *, n_docs: int, embedder: Any) -> dict[str, Any]:
    """The no-change pass alone (for the 100k corpus, where the change set adds nothing new)."""
    config = workspace(index_folder, work)
    rt = _runtime(config, embedder)
    try:
        _, settle_s = _sync(rt)
        passes = [_sync(rt)[1] for _ in range(3)]
    finally:
        rt.close()
    return {"docs": n_docs, "settle_s": settle_s, "no_change_s": summarize(passes)}
