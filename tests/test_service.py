"""`syncd run` as a real subprocess (the real packaged model): HTTP endpoints, sd_notify on a real
AF_UNIX datagram socket, SIGHUP reloads, SIGTERM during a large sync, the bearer token off loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

WORDS = ("alpha beta gamma delta river mountain archive ledger harbor lantern orchard meadow signal "
         "copper violet thunder granite willow compass beacon").split()


def write_docs(folder: Path, count: int, *, words: int = 12, prefix: str = "note") -> list[str]:
    names = []
    for i in range(count):
        body = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))
        name = f"{prefix}-{i:04d}.md"
        (folder / name).write_text(f"# {prefix.title()} {i}\n\nNumber {i}. {body}.\n")
        names.append(name)
    return names


def save_atomically(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NotifyListener:
    """A real AF_UNIX datagram socket, as systemd provides in $NOTIFY_SOCKET; collects every message."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # AF_UNIX paths must stay short
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.extend(data.decode().splitlines())

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    lst = NotifyListener()
    yield lst
    lst.close()


def metrics(d: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = d.get("/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def store_rows(index: Path, table: str) -> list[dict[str, Any]]:
    """The chunk rows, read straight from LanceDB as a RAG application would."""
    import lancedb

    data = lancedb.connect(str(index)).open_table(table).to_arrow()
    return data.select(["chunk_id", "doc_id", "connector", "chunk_index", "revision"]).to_pylist()


def assert_whole_documents(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Every document's chunks are 0..n-1 from one revision, and no chunk is there twice."""
    by_doc: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_doc.setdefault((row["connector"], row["doc_id"]), []).append(row)
    assert len({r["chunk_id"] for r in rows}) == len(rows), "duplicate chunk ids"
    for key, chunks in by_doc.items():
        assert sorted(c["chunk_index"] for c in chunks) == list(range(len(chunks))), key
        assert len({c["revision"] for c in chunks}) == 1, key
    return {key: len(chunks) for key, chunks in by_doc.items()}


def test_service_endpoints_notify_reload_and_stop(tmp_path: Path, docs: Path, daemon_factory: Any,
                                                   listener: NotifyListener) -> None:
    files = write_docs(docs, 40)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    d = daemon_factory(cfg, env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})
    d.start(wait_ready=False)

    # /readyz: 503 while catching up, then 200; never anything else.
    codes: list[int] = []
    wait_for(lambda: (codes.append(c := d.get("/readyz")[0]), c == 200)[1], timeout=300, what="/readyz 200")
    assert set(codes) <= {503, 200} and codes[-1] == 200
    assert d.get("/healthz") == (200, {"status": "ok"})

    # sd_notify: READY=1, progress in STATUS=, watchdog pings (WATCHDOG_USEC set, so every 0.5 s).
    wait_for(lambda: "READY=1" in listener.messages and "WATCHDOG=1" in listener.messages, what="notify")
    msgs = listener.messages
    assert msgs.index("STATUS=loading the embedding model") < msgs.index("READY=1")
    assert msgs.count("READY=1") == 1
    wait_for(lambda: "STATUS=catching up: 1/1 connector(s) done" in listener.messages, what="progress")
    wait_for(lambda: any(m.startswith("STATUS=idle; 40 docs") for m in listener.messages), what="idle STATUS")

    # /status figures match the folder and the store itself.
    code, status = d.get("/status")
    assert code == 200
    index = tmp_path / "index"
    rows = store_rows(index, status["store"]["table"])
    per_doc = assert_whole_documents(rows)
    assert {doc for _, doc in per_doc} == set(files)
    conn = status["connectors"][0]
    assert (conn["name"], conn["type"], conn["state"]) == ("docs", "filesystem", "idle")
    assert conn["docs"] == len(files) and conn["chunks"] == len(rows) and conn["failed_docs"] == 0
    assert conn["backlog"] == 0 and conn["lag_s"] == 0
    store = status["store"]
    assert store["uri"] == str(index) and store["docs"] == len(files) and store["chunks"] == len(rows)
    for key in ("table_version", "fragments", "unindexed_rows", "bytes"):
        assert isinstance(store[key], int) and store[key] >= 0, key
    assert store["bytes"] > 0 and store["fragments"] >= 1 and store["last_reconcile_at"]
    # The default backend on a new index on a CPU, and why.
    assert status["embedding"] == {"model": "all-MiniLM-L6-v2", "dim": 384, "backend": "onnx-int8",
                                   "backend_reason": status["embedding"]["backend_reason"]}
    assert "new index on a CPU" in status["embedding"]["backend_reason"]

    # /metrics parses, and its counters move when a file changes.
    before = metrics(d)
    assert sample(before, "syncd_docs_synced_total", connector="docs", action="added") == len(files)
    assert sample(before, "syncd_chunks_embedded_total") == len(rows)
    assert sample(before, "syncd_backlog", connector="docs") == 0
    assert sample(before, "syncd_connector_last_success_timestamp_seconds", connector="docs") > 0
    save_atomically(docs / files[0], "# Note 0\n\nRewritten: the lighthouse keeper logs every storm.\n")
    # The freshness observation follows the commit's counters (the journal entry is written in between).
    after = wait_for(lambda: (m := metrics(d)) and sample(
        m, "syncd_docs_synced_total", connector="docs", action="changed") == 1 and sample(
        m, "syncd_freshness_seconds_count", connector="docs") > 0 and m, what="changed counter and freshness")
    assert (sample(after, "syncd_freshness_seconds_count", connector="docs")
            == sample(before, "syncd_freshness_seconds_count", connector="docs") + 1)
    assert sample(after, "syncd_chunks_embedded_total") > sample(before, "syncd_chunks_embedded_total")
    assert d.search("lighthouse keeper storm", k=1)[0]["doc_id"] == files[0]

    # SIGHUP adds a connector without a restart.
    extra = tmp_path / "extra"
    extra.mkdir()
    extra_files = write_docs(extra, 3, prefix="extra")
    write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)},
                            {"name": "extra", "type": "filesystem", "path": str(extra)}])
    pid = d.proc.pid
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(c["name"] == "extra" and c["docs"] == len(extra_files) for c in d.get("/status")[1]["connectors"]),
             what="extra connector synced")
    wait_for(lambda: d.get("/readyz")[0] == 200, what="ready after reload")
    assert d.proc.pid == pid and d.proc.poll() is None

    # An invalid config is rejected with a logged error; the old one keeps running.
    cfg.write_text("[store\nthis is not toml")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config.reload_rejected" in d.log_path.read_text(), what="rejection logged")
    names = [c["name"] for c in d.get("/status")[1]["connectors"]]
    assert names == ["docs", "extra"]
    write_docs(docs, 1, prefix="late")
    wait_for(lambda: d.get("/status")[1]["connectors"][0]["docs"] == len(files) + 1, what="still syncing")
    assert d.get("/healthz")[0] == 200

    # SIGTERM: drain, exit 0, tell systemd.
    assert d.stop(signal.SIGTERM, timeout=90) == 0
    assert "STOPPING=1" in listener.messages
    assert not (d.state_dir / "daemon.json").exists()


def test_sigterm_during_a_large_sync_exits_0_and_a_restart_converges(tmp_path: Path, docs: Path,
                                                                       daemon_factory: Any) -> None:
    files = write_docs(docs, 400, words=120)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       sync={"max_batch_docs": 16})
    d = daemon_factory(cfg)
    d.start(wait_ready=False)
    wait_for(lambda: (d.get("/status")[1] or {}).get("store", {}).get("docs", 0) >= 16, timeout=300,
             what="first batches committed")
    assert d.get("/readyz")[0] == 503, "the sync finished before the test could interrupt it"
    assert d.stop(signal.SIGTERM, timeout=90) == 0
    log = d.log_path.read_text()
    assert "writer.cycle_failed" not in log and "Traceback" not in log

    # What was committed holds whole documents only.
    first = assert_whole_documents(store_rows(tmp_path / "index", "chunks"))
    assert 16 <= len(first) < len(files)

    # A restart finishes the job.
    d2 = daemon_factory(cfg).start(wait_ready=False)
    wait_for(lambda: d2.get("/readyz")[0] == 200, timeout=600, what="converged")
    code, status = d2.get("/status")
    final = assert_whole_documents(store_rows(tmp_path / "index", status["store"]["table"]))
    assert {doc for _, doc in final} == set(files)
    assert status["store"]["docs"] == len(files) and status["store"]["chunks"] == sum(final.values())
    assert status["connectors"][0]["failed_docs"] == 0
    assert d2.stop(signal.SIGTERM, timeout=90) == 0


def _run_once(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "run"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_a_non_loopback_bind_without_a_token_fails_fast(tmp_path: Path, docs: Path) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0"})
    proc = _run_once(cfg)
    assert proc.returncode == 2, proc.stderr
    assert "http.token_env" in proc.stderr
    assert not (tmp_path / "index").exists()  # it failed before opening anything

    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0", "token_env": "SYNCD_TEST_UNSET_TOKEN"})
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_TEST_UNSET_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "run"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "SYNCD_TEST_UNSET_TOKEN" in proc.stderr


def test_with_a_token_requests_without_it_get_401(tmp_path: Path, docs: Path, daemon_factory: Any) -> None:
    token = "tok-" + os.urandom(12).hex()
    write_docs(docs, 3)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0", "token_env": "SYNCD_TEST_HTTP_TOKEN"})
    d = daemon_factory(cfg, env={"SYNCD_TEST_HTTP_TOKEN": token})
    d.start(wait_ready=False)
    d.url = d.url.replace("0.0.0.0", "127.0.0.1")
    auth = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: d.get("/readyz", auth)[0] == 200, timeout=300, what="ready")
    assert d.get("/healthz") == (200, {"status": "ok"})
    for path in ("/readyz", "/status", "/metrics", "/search?q=note", "/"):
        assert d.get(path)[0] == 401, path
        assert d.get(path, {"Authorization": "Bearer not-the-token"})[0] == 401, path
        assert d.get(path, auth)[0] == 200, path
    assert d.stop(signal.SIGTERM, timeout=90) == 0
    assert token not in d.log_path.read_text()
