"""Shared fixtures: configs written to tmp_path, runtimes on real LanceDB, the real packaged model,
in-process and subprocess daemons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from syncd import config as config_mod
from syncd.runtime import Runtime
from syncd.testing import HashEmbedder

REPO = Path(__file__).resolve().parent.parent

# One ONNX export per test process, shared by every test and the daemons they start (the export is
# file-locked), instead of one per fresh state folder.
os.environ.setdefault("SYNCD_MODEL_CACHE", tempfile.mkdtemp(prefix="syncd-model-cache-"))

# The real servers: MediaWiki (mediawiki, wiki_ns, wiki_client), S3 (SeaweedFS: s3_store), Azure Blob
# Storage (Azurite: az_store).
pytest_plugins = ["mediawiki_server", "seaweedfs_server", "azurite_server"]


@pytest.fixture(params=["s3", "az"])
def object_store(request: pytest.FixtureRequest) -> Any:
    """The test once on S3 (SeaweedFS) and once on Azure Blob Storage (Azurite): the same guarantees through
    either URI scheme."""
    return request.getfixturevalue("s3_store" if request.param == "s3" else "az_store")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def write_config(folder: Path, connectors: list[dict[str, Any]], **sections: Any) -> Path:
    """A config file in ``folder`` with the store and state inside it and HTTP on a free port."""
    data: dict[str, Any] = {
        "store": {"uri": "./index"},
        "state": {"dir": "./state"},
        "http": {"bind": "127.0.0.1:0"},
        "logging": {"level": "info", "format": "json"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    data["connectors"] = connectors
    path = folder / "syncd.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    return root


@pytest.fixture
def fs_config(tmp_path: Path, docs: Path) -> Path:
    return write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., Runtime]]:
    """Build an opened Runtime (real LanceDB) from a config path; closed at teardown."""
    made: list[Runtime] = []

    def make(config_path: Path, embedder: Any | None = None) -> Runtime:
        rt = Runtime(config_mod.load(config_path), embedder=embedder if embedder is not None else HashEmbedder())
        made.append(rt)
        rt.open()
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture(scope="session")
def real_embedder() -> Any:
    """The real packaged all-MiniLM-L6-v2, loaded once per test process."""
    from syncd.embedding import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", threads=1)
    emb.load()
    return emb


class DaemonProcess:
    """`syncd run` as a real subprocess."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.state_dir = config_path.parent / "state"
        self.log_path = config_path.parent / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> DaemonProcess:
        try:
            (self.state_dir / "daemon.json").unlink()
        except FileNotFoundError:
            pass
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(self.config_path), "run"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(lambda: (self.state_dir / "daemon.json").exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 timeout=120, what="daemon.json")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        self.url = json.loads((self.state_dir / "daemon.json").read_text())["url"]
        if wait_ready:
            wait_for(lambda: self.get("/readyz")[0] == 200, timeout=120, what="/readyz")
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        except OSError:
            return 0, None
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode(errors="replace")

    def search(self, q: str, k: int = 10) -> list[dict[str, Any]]:
        from urllib.parse import quote

        code, data = self.get(f"/search?q={quote(q)}&k={k}")
        assert code == 200, data
        return list(data["results"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(config_path: Path, **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(config_path, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


class InProcessDaemon:
    """The Service in this process (HashEmbedder), for fast event-driven tests."""

    def __init__(self, config_path: Path, embedder: Any | None = None) -> None:
        from syncd.service import Service

        self.service = Service(config_mod.load(config_path), embedder=embedder or HashEmbedder())
        self.thread: threading.Thread | None = None

    def __enter__(self) -> InProcessDaemon:
        self.service.start()
        self.thread = threading.Thread(target=self.service.run_forever, daemon=True)
        self.thread.start()
        wait_for(self.service.ready, timeout=60, what="ready")
        return self

    def idle(self) -> bool:
        q = self.service.queue
        engine = self.service.runtime.engine
        with q.cond:
            busy = not q.empty() or any(q.in_flight.values())
        return not busy and not any(engine.held_deletes(n)[0] for n in engine.connectors)

    def wait_idle(self, timeout: float = 60) -> None:
        # Idle twice in a row with a pause: events may still be on their way from the observer.
        def settled() -> bool:
            if not self.idle():
                return False
            time.sleep(0.3)
            return self.idle()

        wait_for(settled, timeout=timeout, what="daemon idle")

    def __exit__(self, *exc: Any) -> None:
        self.service.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=60)


@pytest.fixture
def in_process_daemon() -> type[InProcessDaemon]:
    return InProcessDaemon
