"""`syncd reindex --ray` on a real two-node Ray cluster (tests/raycluster.py), into a real local LanceDB.

The cluster build must give the very table the single-process reindex gives for the same sources (row for
row; vectors within float tolerance), the fingerprint cache a daemon needs, and must survive a killed
worker, leave the live index untouched when its driver is interrupted or killed, and keep what a daemon
wrote meanwhile. Ray is a hard requirement here: without it the module fails to import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray  # noqa: F401 - a missing Ray is a failure of this module, never a skip

from tests.conftest import DaemonProcess, wait_for, write_config
from tests.corpus import markdown_doc
from tests.raycluster import RayCluster, free_ports

pytestmark = pytest.mark.timeout(2400)  # the session cluster and the model export are set up inside the first test

DOCS = 48
ACTOR = "ray::_EmbedWriter"


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    cluster = RayCluster(head_cpus=2, worker_cpus=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "docs"
    (root / "team").mkdir(parents=True)
    for i in range(DOCS):
        folder = root / "team" if i % 5 == 0 else root
        (folder / f"page-{i:03d}.md").write_text(markdown_doc(i, sections=3, paras=2))
    (root / "notes.txt").write_text("Plain text notes about the failover runbook.\n\nSecond paragraph here.\n")
    (root / "empty.md").write_text("")  # skipped with a reason, by both builds alike
    return root


def make_config(folder: Path, docs: Path, **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    reindex = {"batch_docs": 8, "actors": 2, **sections.pop("reindex", {})}
    # fp32 ONNX: the same vectors whatever the batch (int8 scales activations per batch).
    return write_config(folder, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        embedding={"backend": "onnx"}, reindex=reindex, **sections)


def syncd(config: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # SIGINT's default action in the child, as in a terminal: a pytest-xdist worker ignores SIGINT, and an
    # ignored signal stays ignored across exec (Python then installs no KeyboardInterrupt handler).
    return subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def dataset_path(config: Path) -> Path:
    """The live table's Lance folder (the table the store's pointer names, else the base name)."""
    pointer = config.parent / "state" / "store.json"
    name = json.loads(pointer.read_text()).get("table", "chunks") if pointer.exists() else "chunks"
    return config.parent / "index" / f"{name}.lance"


def table_of(config: Path, store: Path | None = None) -> pa.Table:
    import lance

    path = dataset_path(config) if store is None else store
    return lance.dataset(str(path)).to_table().sort_by("chunk_id")


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    assert got.num_rows == want.num_rows
    assert len(set(got.column("chunk_id").to_pylist())) == got.num_rows, "duplicate chunk ids"
    for name in want.column_names:
        if name in ("updated_at", "vector"):
            continue
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    a = np.array(got.column("vector").to_pylist(), dtype=np.float32)
    b = np.array(want.column("vector").to_pylist(), dtype=np.float32)
    assert np.abs(a - b).max() < 1e-4


def referenced(path: Path) -> set[str]:
    import lance

    ds = lance.dataset(str(path))
    names = set()
    for v in ds.versions():
        for frag in lance.dataset(str(path), version=v["version"]).get_fragments():
            names.update(f.path for f in frag.metadata.files)
    return names


def data_files(path: Path) -> set[str]:
    return {p.name for p in (path / "data").glob("*.lance")}


def wait_for_new_files(path: Path, before: set[str], proc: subprocess.Popen[str], count: int = 1) -> None:
    wait_for(lambda: len(data_files(path) - before) >= count or proc.poll() is not None, timeout=300,
             interval=0.1, what="the build's first fragments")
    assert proc.poll() is None, proc.communicate()[1][-3000:]


@pytest.fixture(scope="module")
def single(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The single-process reindex of the corpus: what every cluster build is compared with."""
    config = make_config(tmp_path_factory.mktemp("single"), corpus)
    return config, summary_of(syncd(config, "reindex", "--json"))


@pytest.fixture(scope="module")
def clustered(corpus: Path, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory,
              single: Any) -> tuple[Path, dict[str, Any]]:
    """A cluster reindex of the corpus into a new store, chosen by the config ([reindex] engine, address)."""
    config = make_config(tmp_path_factory.mktemp("cluster"), corpus,
                         reindex={"engine": "ray", "address": ray_cluster.address})
    return config, summary_of(syncd(config, "reindex", "--json", env=ray_cluster.env))


def copy_store(src: Path, dst: Path, docs: Path, **sections: Any) -> Path:
    """A new config over a copy of ``src``'s store and state (the same live index, without building it)."""
    config = make_config(dst, docs, **sections)
    shutil.copytree(src.parent / "index", dst / "index")
    shutil.copytree(src.parent / "state", dst / "state", ignore=shutil.ignore_patterns("writer.lock"))
    return config


# -- equality ---------------------------------------------------------------------------------------------------
def test_cluster_reindex_equals_the_single_process_reindex(single: Any, clustered: Any) -> None:
    (single_config, want), (cluster_config, got) = single, clustered
    assert got["engine"] == "ray"
    for key in ("docs_seen", "docs_added", "docs_skipped", "docs_failed", "chunks_embedded"):
        assert got[key] == want[key], key
    assert want["docs_added"] == DOCS + 1 and want["docs_skipped"] == 1
    assert [(f["doc_id"], f["reason"]) for f in got["failures"]] == [(f["doc_id"], f["reason"]) for f in want["failures"]]
    assert_same_rows(table_of(cluster_config), table_of(single_config))
    # Both nodes took part: read tasks and actors on each.
    assert len(got["nodes"]) == 2, got["nodes"]
    assert sum(n["docs_read"] for n in got["nodes"]) == got["docs_seen"]
    assert sum(n["chunks_embedded"] for n in got["nodes"]) == got["chunks_embedded"]
    assert all(n["actors"] >= 1 and n["peak_rss_mb"] > 0 for n in got["nodes"])
    assert got["driver_peak_rss_mb"] > 0
    # The fingerprint cache a daemon starts from is the same too.
    cache = [json.loads((c.parent / "state" / "connectors" / "docs.json").read_text())
             for c in (single_config, cluster_config)]
    assert cache[0]["fingerprints"] == cache[1]["fingerprints"]
    assert cache[0]["failures"] == cache[1]["failures"]
    assert not (cluster_config.parent / "state" / "reindex-build.json").exists()


def test_a_daemon_after_a_cluster_reindex_embeds_nothing_and_answers_the_same(single: Any, clustered: Any) -> None:
    (single_config, _), (cluster_config, _) = single, clustered
    daemon = DaemonProcess(cluster_config).start()
    try:
        wait_for(lambda: _state(daemon) == "idle", timeout=120,
                 what="the daemon's catch-up")
        metrics = daemon.get("/metrics")[1]
        embedded = [line for line in metrics.splitlines() if line.startswith("syncd_chunks_embedded_total")]
        assert embedded and all(float(line.split()[-1]) == 0 for line in embedded), embedded
        for query in ("rotate the certificate on the replica", "escalate the incident to the owner"):
            served = [(h["doc_id"], h["chunk_index"]) for h in daemon.search(query, k=5)]
            reference = json.loads(syncd(single_config, "query", query, "-k", "5", "--json").stdout)
            assert served == [(h["doc_id"], h["chunk_index"]) for h in reference["results"]]
    finally:
        daemon.stop()


# -- faults -----------------------------------------------------------------------------------------------------
def test_unreachable_cluster_is_a_clear_error(single: Any) -> None:
    config, _ = single
    port = free_ports(1)[0]
    done = syncd(config, "reindex", "--ray", f"127.0.0.1:{port}", timeout=120)
    assert done.returncode == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr


def test_a_cluster_too_small_for_the_actors_is_a_clear_error(single: Any, ray_cluster: RayCluster,
                                                            tmp_path: Path, corpus: Path) -> None:
    config = make_config(tmp_path / "small", corpus, reindex={"actors": 64})
    done = syncd(config, "reindex", "--ray", ray_cluster.address, env=ray_cluster.env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "reindex.actors: 64 actors" in done.stderr


def test_a_worker_killed_mid_build_is_retried(single: Any, ray_cluster: RayCluster, tmp_path: Path,
                                              corpus: Path) -> None:
    single_config, want = single
    config = copy_store(single_config, tmp_path / "killed-worker", corpus, reindex={"batch_docs": 4})
    live = dataset_path(config)
    before = data_files(live)
    proc = start(config, "reindex", "--json", "--ray", ray_cluster.address, env=ray_cluster.env)
    wait_for_new_files(live, before, proc)
    actors = [pid for pid in ray_cluster.pids() if _cmdline(pid).startswith(ACTOR)]
    assert actors, "no embedding actor found"
    os.kill(actors[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["docs_added"] == want["docs_added"] and got["chunks_embedded"] == want["chunks_embedded"]
    assert_same_rows(table_of(config), table_of(single_config))


def test_an_interrupted_or_killed_driver_leaves_the_live_index_untouched(single: Any, ray_cluster: RayCluster,
                                                                         tmp_path: Path, corpus: Path) -> None:
    import lance

    single_config, _ = single
    config = copy_store(single_config, tmp_path / "killed-driver", corpus, reindex={"batch_docs": 4})
    live = dataset_path(config)
    version = lance.dataset(str(live)).version
    state_file = config.parent / "state" / "connectors" / "docs.json"
    state_before = state_file.read_text()
    for sig in (signal.SIGINT, signal.SIGKILL):
        before = data_files(live)
        proc = start(config, "reindex", "--json", "--ray", ray_cluster.address, env=ray_cluster.env)
        # At the build's first fragment: most of it is still to come, so the signal lands mid-build even when
        # the driver is inside a long native call (Python raises KeyboardInterrupt only once it returns).
        wait_for_new_files(live, before, proc, count=1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err[-3000:]
        assert lance.dataset(str(live)).version == version, "the live table was committed to"
        assert_same_rows(table_of(config), table_of(single_config))
        assert state_file.read_text() == state_before
    assert (config.parent / "state" / "reindex-build.json").exists()
    assert data_files(live) - referenced(live), "the killed build left no files to sweep (the test proves nothing)"
    # The next build sweeps what the killed one left, and succeeds.
    summary_of(syncd(config, "reindex", "--json", "--ray", ray_cluster.address, env=ray_cluster.env))
    assert_same_rows(table_of(config), table_of(single_config))
    assert data_files(live) <= referenced(live), "files of the failed builds are left behind"
    assert not (config.parent / "state" / "reindex-build.json").exists()


def test_a_daemon_writing_during_the_cluster_reindex_keeps_its_edits(ray_cluster: RayCluster, tmp_path: Path,
                                                                     s3_store: Any) -> None:
    """One S3 store (SeaweedFS), two configs as on two machines: a daemon owning connector `notes` keeps
    writing while a cluster build of connector `docs` runs from another state folder. The daemon's rows from
    before the build are carried over, what it commits during the build is replayed onto the new content,
    and it keeps writing to the rebuilt table afterwards."""
    import lance

    from syncd.store_build import _data_files

    docs, notes = tmp_path / "docs", tmp_path / "notes"
    docs.mkdir()
    notes.mkdir()
    for i in range(20):
        (docs / f"page-{i:03d}.md").write_text(markdown_doc(1000 + i, sections=2, paras=2))
    for i in range(3):
        (notes / f"note-{i}.md").write_text(markdown_doc(2000 + i, sections=1, paras=2))
    store = s3_store.store_section()
    (tmp_path / "daemon").mkdir()
    daemon_config = write_config(tmp_path / "daemon", [{"name": "notes", "type": "filesystem", "path": str(notes)}],
                                 embedding={"backend": "onnx"}, store=store)
    build_config = make_config(tmp_path / "build", docs, store=store, reindex={"batch_docs": 2, "in_flight": 1})
    live = s3_store.uri.rstrip("/") + "/chunks.lance"

    def files() -> set[str]:
        return {name for name, _ in _data_files(live, s3_store.storage_options)}

    def rows() -> pa.Table:
        return lance.dataset(live, storage_options=s3_store.storage_options).to_table()

    daemon = DaemonProcess(daemon_config).start()
    try:
        wait_for(lambda: _state(daemon, "notes") == "idle", timeout=300, what="the daemon's first sync")
        before = files()
        proc = start(build_config, "reindex", "--json", "--ray", ray_cluster.address, env=ray_cluster.env)
        wait_for(lambda: len(files() - before) >= 1 or proc.poll() is not None, timeout=300, interval=0.2,
                 what="the build's first fragments")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        (notes / "note-0.md").write_text("# Quokka\n\nThe quokka protocol governs every failover drill.\n")
        wait_for(lambda: any("quokka" in h["text"] for h in daemon.search("quokka protocol failover drill", k=3)),
                 timeout=120, what="the daemon's edit")
        assert proc.poll() is None, "the build ended before the daemon's edit: the test proves nothing"
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["replayed_docs"] >= 1 and got["docs_added"] == 20
        table = rows()
        assert len(set(table.column("chunk_id").to_pylist())) == table.num_rows, "duplicate chunk ids"
        by_doc: dict[tuple[str, str], list[str]] = {}
        for c, d, t in zip(*(table.column(k).to_pylist() for k in ("connector", "doc_id", "text")), strict=True):
            by_doc.setdefault((c, d), []).append(t)
        assert {d for c, d in by_doc if c == "docs"} == {f"page-{i:03d}.md" for i in range(20)}
        assert {d for c, d in by_doc if c == "notes"} == {f"note-{i}.md" for i in range(3)}, "the daemon's rows"
        assert any("quokka" in t for t in by_doc[("notes", "note-0.md")]), "the daemon's edit was lost"
        assert all(table.column("acl").to_pylist())
        # The daemon keeps writing to the replaced table.
        (notes / "note-1.md").write_text("# Wombat\n\nThe wombat checklist closes the drill.\n")
        wait_for(lambda: any("wombat" in h["text"] for h in daemon.search("wombat checklist", k=3)),
                 timeout=120, what="the daemon's edit after the reindex")
    finally:
        daemon.stop()


def _state(daemon: DaemonProcess, connector: str = "docs") -> str | None:
    code, status = daemon.get("/status")
    if code != 200:
        return None
    return next((c["state"] for c in status["connectors"] if c["name"] == connector), None)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_config_section_defaults_keep_the_single_process_reindex(tmp_path: Path, corpus: Path) -> None:
    from syncd import config as config_mod

    cfg = config_mod.load(make_config(tmp_path / "defaults", corpus))
    assert cfg.reindex.engine == "local"
    plain = config_mod.parse({}, base_dir=tmp_path, source="t")
    assert plain.reindex.engine == "local" and plain.reindex.address == "auto"
