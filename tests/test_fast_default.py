"""Fast by default (issue 23): `[embedding] backend = "auto"` gives a new index ONNX int8 on a CPU, keeps an
existing index's backend, falls back to PyTorch with the reason where ONNX cannot serve the model, exports
once per cache, and after the export no command imports torch or sentence-transformers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncd import config as config_mod
from syncd.embedding import MODEL_CACHE_ENV, resolve_model_path
from syncd.runtime import Runtime, choose_backend
from tests.conftest import wait_for, write_config

pytestmark = pytest.mark.e2e

HEAVY = ("torch", "sentence_transformers", "transformers")
REST_CLIENT_INIT = "lance_namespace_urllib3_client.api"
"""Imported only by the package ``__init__`` of LanceDB's REST namespace client, which syncd defers."""


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export for the tests that only need it to exist (under xdist, shared by the workers of this
    run; the export is file-locked). The first-export tests use a fresh cache of their own."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "fast-default-models"
    path.mkdir(exist_ok=True)
    return path


def _corpus(docs: Path, n: int = 6) -> None:
    for i in range(n):
        (docs / f"doc{i:02d}.md").write_text(f"# Note {i}\n\nThe failover runbook, part {i}: promote the replica "
                                             f"in zone {i} and repoint the service.\n")


def _config(tmp_path: Path, docs: Path, **embedding: Any) -> Path:
    sections: dict[str, Any] = {"embedding": embedding} if embedding else {}
    return write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], **sections)


def _cli(cfg: Path, *args: str, cache: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    """`syncd ARGS` as a fresh process, with the ONNX export cache at ``cache``."""
    environ = {**os.environ, MODEL_CACHE_ENV: str(cache), **env}
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=600, env=environ)


def _imported(stderr: str) -> set[str]:
    """The modules a process imported, from its `-X importtime` report (PYTHONPROFILEIMPORTTIME=1)."""
    return {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.+)$", stderr, re.M)}


def _log_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _cls_model(tmp_path: Path) -> Path:
    """The packaged model, but pooling by its CLS token: a model the ONNX path does not serve."""
    src = resolve_model_path("all-MiniLM-L6-v2")
    dst = tmp_path / "cls-model"
    for item in src.rglob("*"):
        if item.is_file():
            (dst / item.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / item.relative_to(src)).symlink_to(item)
    pooling = dst / "1_Pooling" / "config.json"
    data = json.loads(pooling.read_text())
    pooling.unlink()
    pooling.write_text(json.dumps({**data, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    return dst


def test_the_default_backend_is_auto() -> None:
    assert config_mod.EmbeddingConfig().backend == "auto"


def test_a_new_index_gets_onnx_int8_by_default(tmp_path: Path, docs: Path, shared_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_CACHE_ENV, str(shared_cache))
    _corpus(docs)
    rt = Runtime(config_mod.load(_config(tmp_path, docs)))
    try:
        assert rt.embedding_info["backend"] == "onnx-int8"
        assert "new index on a CPU" in rt.embedding_info["backend_reason"]
        assert rt.embedder.model_id == "all-minilm-l6-v2+onnx-int8"
        assert rt.open() is False
        summary = rt.engine.reconcile("docs")
        assert summary.docs_added == 6 and summary.chunks_embedded >= 6
        assert rt.store.stored_signature() == rt.signature
    finally:
        rt.close()


def test_an_existing_pytorch_index_keeps_pytorch_without_re_embedding(tmp_path: Path, docs: Path,
                                                                     shared_cache: Path) -> None:
    """The upgrade: an index built with PyTorch (the old default), reopened with the new default `auto`,
    stays on PyTorch (its signature says so) and embeds nothing; status says which backend and why."""
    _corpus(docs)
    rt = Runtime(config_mod.load(_config(tmp_path, docs, backend="torch")))
    try:
        rt.open()
        assert rt.engine.reconcile("docs").docs_added == 6
        built_with = rt.store.stored_signature()
    finally:
        rt.close()
    cfg = _config(tmp_path, docs)  # the upgraded install: no backend named, so "auto"
    out = _cli(cfg, "sync", "--json", cache=shared_cache)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["chunks_embedded"] == 0 and summary["docs_unchanged"] == 6 and summary["docs_added"] == 0
    out = _cli(cfg, "status", "--json", cache=shared_cache)
    assert out.returncode == 0, out.stderr
    embedding = json.loads(out.stdout)["embedding"]
    assert embedding["backend"] == "torch"
    assert "the index was built with it" in embedding["backend_reason"]
    # An edit is embedded by the index's backend, and the index is not rebuilt.
    (docs / "doc00.md").write_text("# Note 0\n\nA new paragraph about purple elephants.\n")
    out = _cli(cfg, "sync", "--json", cache=shared_cache)
    summary = json.loads(out.stdout)
    assert summary["docs_changed"] == 1 and summary["docs_unchanged"] == 5, out.stderr
    from syncd.runtime import _stored_signature

    assert _stored_signature(config_mod.load(cfg)) == built_with


def test_an_explicit_backend_wins(tmp_path: Path, docs: Path, shared_cache: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Named in the config, a backend is used whatever the index was built with (and a different one
    rebuilds it); on a new index too."""
    monkeypatch.setenv(MODEL_CACHE_ENV, str(shared_cache))
    _corpus(docs, 2)
    rt = Runtime(config_mod.load(_config(tmp_path, docs)))
    try:
        rt.open()
        rt.engine.reconcile("docs")
        assert rt.embedding_info["backend"] == "onnx-int8"
    finally:
        rt.close()
    rt = Runtime(config_mod.load(_config(tmp_path, docs, backend="torch")))
    try:
        assert rt.embedding_info == {"backend": "torch", "backend_reason": "set in the config ([embedding] backend)"}
        assert rt.open() is True, "another backend than the index's: a rebuild, never mixed vectors"
    finally:
        rt.close()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    choice = choose_backend(config_mod.load(_config(fresh, docs, backend="onnx")), prepare=False)
    assert (choice.backend, choice.configured) == ("onnx", "onnx")


def test_a_model_onnx_cannot_serve_falls_back_to_pytorch_with_the_reason(tmp_path: Path, docs: Path,
                                                                         shared_cache: Path) -> None:
    """A model pooling by its CLS token: `auto` builds the index with PyTorch, logs why, and status shows it."""
    _corpus(docs, 3)
    cfg = _config(tmp_path, docs, model=str(_cls_model(tmp_path)))
    out = _cli(cfg, "sync", "--json", cache=shared_cache)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["docs_added"] == 3
    fallbacks = [e for e in _log_events(out.stderr) if e.get("event") == "embedding.backend_fallback"]
    assert len(fallbacks) == 1, out.stderr
    assert fallbacks[0]["backend"] == "torch" and "pools by cls" in fallbacks[0]["reason"]
    out = _cli(cfg, "status", "--json", cache=shared_cache)
    embedding = json.loads(out.stdout)["embedding"]
    assert embedding["backend"] == "torch"
    assert "mean-pooling models only" in embedding["backend_reason"]
    out = _cli(cfg, "status", cache=shared_cache)
    assert "on torch: the model pools by cls" in out.stdout
    # Named explicitly, the ONNX backend is a config error naming the key (exit 2), not a fallback.
    cfg = _config(tmp_path, docs, model=str(_cls_model(tmp_path / "again")), backend="onnx-int8")
    out = _cli(cfg, "model", "prepare", cache=shared_cache)
    assert out.returncode == 2 and "embedding.backend" in out.stderr, out.stderr


def test_a_failed_export_falls_back_to_pytorch_and_an_explicit_backend_is_a_config_error(
        tmp_path: Path, docs: Path) -> None:
    """The export's cache cannot be written (a file where its folder should be): `auto` falls back to
    PyTorch with the reason; an explicit onnx-int8 exits 2 naming the setting."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    cfg = _config(tmp_path, docs)
    out = _cli(cfg, "model", "prepare", "--json", cache=blocked)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["backend"] == "torch" and result["exported"] is False
    assert result["backend_reason"].startswith("the ONNX export failed") and MODEL_CACHE_ENV in result["backend_reason"]
    assert any(e.get("event") == "embedding.backend_fallback" for e in _log_events(out.stderr))
    out = _cli(_config(tmp_path, docs, backend="onnx-int8"), "model", "prepare", cache=blocked)
    assert out.returncode == 2 and f"{MODEL_CACHE_ENV}: cannot write the ONNX model cache" in out.stderr


def test_concurrent_first_starts_export_once(tmp_path: Path, docs: Path) -> None:
    """Two `syncd model prepare` racing on an empty cache: one exports, the other waits for it and reuses
    its file."""
    cache = tmp_path / "models"
    cfg = _config(tmp_path, docs)
    environ = {**os.environ, MODEL_CACHE_ENV: str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(cfg), "model", "prepare", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
             for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert sorted(r["exported"] for r in results) == [False, True]
    assert {r["backend"] for r in results} == {"onnx-int8"}
    assert len({r["path"] for r in results}) == 1 and Path(results[0]["path"]).is_file()
    assert sorted(p.name for p in Path(results[0]["path"]).parent.glob("*.onnx")) == ["model.int8.onnx", "model.onnx"]


def test_after_the_export_sync_query_and_run_import_neither_torch_nor_sentence_transformers(
        tmp_path: Path, docs: Path, shared_cache: Path, daemon_factory: Any) -> None:
    """Fresh interpreters (their `-X importtime` report lists every module they import) running `sync`,
    `query` and `run` on the default backend load ONNX Runtime and never torch or sentence-transformers;
    the run reports the backend in /status and the model's load and export in /metrics."""
    _corpus(docs)
    cfg = _config(tmp_path, docs)
    assert _cli(cfg, "model", "prepare", cache=shared_cache).returncode == 0
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    out = _cli(cfg, "sync", "--json", cache=shared_cache, **profile)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["docs_added"] == 6
    imported = _imported(out.stderr)
    assert "onnxruntime" in imported and not imported & set(HEAVY)
    assert "lancedb" in imported and REST_CLIENT_INIT not in imported, "the REST client's __init__ is deferred"
    out = _cli(cfg, "query", "promote the replica", "--json", cache=shared_cache, **profile)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["results"]
    imported = _imported(out.stderr)
    assert "onnxruntime" in imported and not imported & set(HEAVY)
    assert "lancedb" in imported and REST_CLIENT_INIT not in imported
    out = _cli(cfg, "status", cache=shared_cache, **profile)
    assert out.returncode == 0 and not _imported(out.stderr) & {*HEAVY, "onnxruntime"}, "status loads no model"
    daemon = daemon_factory(cfg, env={MODEL_CACHE_ENV: str(shared_cache), **profile}).start()
    assert daemon.search("promote the replica")
    (docs / "doc01.md").write_text("# Note 1\n\nPurple elephants guard the backups.\n")
    wait_for(lambda: any(r["doc_id"] == "doc01.md" for r in daemon.search("purple elephants guard", k=1)),
             what="the edit searchable")
    code, status = daemon.get("/status")
    assert code == 200 and status["embedding"]["backend"] == "onnx-int8"
    code, metrics = daemon.get("/metrics")
    assert 'syncd_embedding_backend{backend="onnx-int8",configured="auto"} 1.0' in metrics
    load = re.search(r"^syncd_model_load_seconds (\S+)$", metrics, re.M)
    assert load is not None and float(load.group(1)) > 0
    assert re.search(r"^syncd_model_export_seconds 0\.0$", metrics, re.M), "the export was found in the cache"
    assert daemon.stop() == 0
    imported = _imported(daemon.log_path.read_text())
    assert "onnxruntime" in imported and not imported & set(HEAVY)


def test_model_load_seconds_is_reported_inside_seconds(tmp_path: Path, docs: Path, shared_cache: Path) -> None:
    """`sync` and `reindex` report the model's fixed start cost apart from the work, as part of `seconds`;
    a sync that embeds nothing never loads the model."""
    _corpus(docs)
    cfg = _config(tmp_path, docs)
    for args in (("sync", "--json"), ("reindex", "--json")):
        out = _cli(cfg, *args, cache=shared_cache)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert 0 < summary["model_load_seconds"] <= summary["seconds"], summary
    out = _cli(cfg, "sync", "--json", cache=shared_cache)
    summary = json.loads(out.stdout)
    assert summary["chunks_embedded"] == 0 and summary["model_load_seconds"] == 0
