"""`syncd query` and ``open_index()`` answer through the running daemon (no model, no LanceDB in the calling
process) and load the model themselves only when no daemon runs; global flags work after the command too."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config

from syncd import config as config_mod
from syncd.cli import _parser
from syncd.testing import HashEmbedder

# Modules that only a process holding the model or the store imports.
HEAVY = ("torch", "onnxruntime", "sentence_transformers", "transformers", "lancedb", "lance")
# What else the way to a running daemon does without: numpy (the model's path check) and structlog with its
# console renderer (set up only when the query searches in this process).
NOT_ON_THE_DAEMON_PATH = (*HEAVY, "numpy", "structlog")

# Runs the real CLI entry point in a fresh interpreter and reports the modules it imported on stderr's last line.
RUN_AND_LIST_MODULES = (
    "import json, sys\n"
    "from syncd.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n')\n"
    "sys.exit(code)\n"
)


def cli(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, *args], capture_output=True, text=True,
                         timeout=600)
    last = out.stderr.rstrip().rsplit("\n", 1)[-1]
    assert last.startswith("MODULES "), out.stderr[-3000:]
    return out, {m.split(".")[0] for m in json.loads(last[len("MODULES "):])}


def metric(url: str, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def daemon_queries(url: str) -> float:
    """Searches the daemon answered: its query vectors, from the model or its cache."""
    return sum(metric(url, "syncd_query_vectors_total", {"source": s}) for s in ("model", "cache"))


def unversioned(result: dict[str, Any]) -> dict[str, Any]:
    """A search answer without the table version it came from: a maintenance commit between two searches
    moves the version, not the results."""
    return {**{k: v for k, v in result.items() if k != "table_version"},
            "results": [{k: v for k, v in r.items() if k != "table_version"} for r in result["results"]]}


def citations(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["connector"], r["doc_id"], r["uri"], r["revision"], r["start_line"], r["end_line"], r["text"])
            for r in result["results"]]


@pytest.mark.e2e
def test_query_asks_the_running_daemon_and_loads_no_model(tmp_path: Path, docs: Path, daemon_factory: Any) -> None:
    """With `syncd run` up, `syncd query --config X TEXT` (the flag after the command) is answered by the
    daemon: its query counter moves by one, the answer is its /search answer, and the CLI process imports
    no model library and not LanceDB. With the daemon stopped the same command loads the model itself and
    finds the same passages."""
    (docs / "elephants.md").write_text("# Zoo\n\n## Elephants\n\nThe purple elephants dance at noon.\n")
    (docs / "failover.md").write_text("# Operations\n\nThe database fails over to the standby.\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    # The one-time ONNX export first, so the daemon's start is only the start (the export is shared).
    prepare = subprocess.run([sys.executable, "-m", "syncd", "model", "prepare", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=900)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    daemon = daemon_factory(cfg).start()
    expected = {"query": "purple elephants", "results": daemon.search("purple elephants", k=2)}
    assert expected["results"][0]["doc_id"] == "elephants.md"

    before = daemon_queries(daemon.url)
    out, modules = cli("query", "--config", str(cfg), "--json", "-k", "2", "purple elephants")
    assert out.returncode == 0, out.stderr[-3000:]
    assert unversioned(json.loads(out.stdout)) == unversioned(expected)
    assert daemon_queries(daemon.url) == before + 1
    assert not modules & set(NOT_ON_THE_DAEMON_PATH), sorted(modules & set(NOT_ON_THE_DAEMON_PATH))

    # A query per line on stdin: one request each, one JSON line each.
    lines = subprocess.run([sys.executable, "-m", "syncd", "query", "--config", str(cfg), "-k", "2", "-"],
                           input="purple elephants\ndatabase standby\n", capture_output=True, text=True, timeout=300)
    assert lines.returncode == 0, lines.stderr[-3000:]
    answers = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [a["query"] for a in answers] == ["purple elephants", "database standby"]
    assert unversioned(answers[0]) == unversioned(expected) and answers[1]["results"][0]["doc_id"] == "failover.md"
    assert daemon_queries(daemon.url) == before + 3

    assert daemon.stop() == 0
    out, modules = cli("query", "--config", str(cfg), "--json", "-k", "2", "purple elephants")
    assert out.returncode == 0, out.stderr[-3000:]
    assert citations(json.loads(out.stdout)) == citations(expected)
    assert {"lancedb", "onnxruntime"} <= modules  # the test would see a model load: this one made it


def test_query_with_a_daemon_that_does_not_answer_searches_in_process(tmp_path: Path, docs: Path) -> None:
    """A daemon.json naming a live process whose address answers nothing: the query says so on stderr and
    answers from the store in this process."""
    import socket

    from syncd.state import write_json_atomic

    (docs / "a.md").write_text("# A\n\nThe purple elephants dance at noon.\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    sync = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "sync"], capture_output=True,
                          text=True, timeout=600)
    assert sync.returncode == 0, sync.stderr[-3000:]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    import os

    write_json_atomic(tmp_path / "state" / "daemon.json", {"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"})
    out, modules = cli("query", "--config", str(cfg), "--json", "purple elephants")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"does not answer at http://127.0.0.1:{port}" in out.stderr
    assert json.loads(out.stdout)["results"][0]["doc_id"] == "a.md"
    assert "lancedb" in modules


@pytest.mark.parametrize("argv", [
    ["--config", "x.toml", "query", "foo"],
    ["query", "--config", "x.toml", "foo"],
    ["query", "foo", "--config", "x.toml"],
    ["--config", "y.toml", "query", "--config", "x.toml", "foo"],
    ["--config", "x.toml", "model", "prepare"],
    ["model", "prepare", "--config", "x.toml"],
    ["status", "--config", "x.toml", "--json"],
])
def test_global_flags_are_accepted_after_the_command(argv: list[str]) -> None:
    assert _parser().parse_args(argv).config == "x.toml"


def test_a_global_flag_before_the_command_is_not_undone_by_the_command() -> None:
    assert _parser().parse_args(["--config", "x.toml", "query", "foo"]).config == "x.toml"
    assert _parser().parse_args(["query", "foo"]).config is None


def test_open_index_answers_through_the_daemon_and_falls_back_when_it_stops(tmp_path: Path, docs: Path) -> None:
    """``open_index(via="auto")`` with a daemon running answers from it (its query counter moves; the same
    results as /search); once the daemon has stopped the same handle searches in-process."""
    import syncd
    from syncd.remote import DaemonIndex
    from syncd.service import Service

    (docs / "a.md").write_text("# A\n\nThe purple elephants dance at noon.\n")
    (docs / "b.md").write_text("# B\n\nThe database fails over to the standby.\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    svc = Service(config_mod.load(cfg), embedder=HashEmbedder())
    svc.start()
    loop = threading.Thread(target=svc.run_forever, daemon=True)
    loop.start()
    try:
        wait_for(svc.ready, what="ready")
        index = syncd.open_index(str(cfg))
        assert isinstance(index, DaemonIndex)
        with urllib.request.urlopen(svc.http.url + f"/search?q={quote('purple elephants')}&k=2", timeout=30) as r:
            expected = json.loads(r.read())["results"]
        before = daemon_queries(svc.http.url)
        assert unversioned({"results": index.search("purple elephants", k=2)}) == unversioned({"results": expected})
        assert daemon_queries(svc.http.url) == before + 1
        assert index.document(doc_id="a.md")["text"] == "A\n\nThe purple elephants dance at noon."  # type: ignore[index]
        assert [s["name"] for s in index.sources()] == ["docs"]
        with pytest.raises(TypeError, match="no_such_option"):
            index.search("x", no_such_option=1)
        assert isinstance(syncd.open_index(str(cfg), via="local"), syncd.api.Index)
    finally:
        svc.stopping.set()
        loop.join(timeout=60)
    # The daemon is gone: the handle opens the store itself (its real model against the stand-in vectors
    # this test indexed with, hence no relevance floor; the full-text leg finds the passage).
    found = index.search("purple elephants", k=2, min_relevance=0)
    assert index.via == "local"
    assert [r["doc_id"] for r in found][0] == "a.md"
    from syncd.errors import SyncdError

    with pytest.raises(SyncdError, match="no syncd daemon runs"):
        syncd.open_index(str(cfg), via="daemon")
