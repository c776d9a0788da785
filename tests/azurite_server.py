"""A real Azure Blob Storage server for tests: Azurite (Microsoft's own emulator, from the npm registry), on
127.0.0.1 and a free port, one per test process, stopped by its PID at the end of the session.

``scripts/test.sh`` installs it into ``.cache/azurite`` (``npm install azurite``); ``$SYNCD_AZURITE`` names
another ``azurite-blob``. A missing binary fails the tests that need it, never skips them. Each test gets its
own prefix in one container (``az_store``), as ``s3_store`` does in the S3 bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from seaweedfs_server import S3Store, _free_ports
from seaweedfs_server import stop_seaweedfs as stop

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's one account and its published development key (Azurite accepts no other)."""
CONTAINER = "syncd-test"


def azurite_binary() -> str:
    named = os.environ.get("SYNCD_AZURITE")
    candidates = [Path(named)] if named else []
    candidates.append(REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob")
    for path in candidates:
        if path.exists():
            return str(path)
    which = shutil.which("azurite-blob")
    if which is None:
        pytest.fail("Azurite is not installed: scripts/test.sh runs `npm install --prefix .cache/azurite azurite` "
                    "(or set SYNCD_AZURITE to an azurite-blob binary)")
    return which


@dataclass
class Azurite:
    endpoint: str
    pid: int
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """The standard variable a daemon reads the account key from."""
        return {"AZURE_STORAGE_ACCOUNT_KEY": KEY}

    @property
    def storage_options(self) -> dict[str, str]:
        """The non-secret options a config's ``[store.storage_options]`` holds."""
        return {"endpoint": self.endpoint, "account_name": ACCOUNT, "allow_http": "true"}

    def uri(self, prefix: str) -> str:
        return f"az://{CONTAINER}/{prefix}"


def _create_container(server: Azurite, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={server.endpoint};")
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite-blob exited with {proc.returncode}: {server.log_path.read_text()[-2000:]}")
        try:
            BlobServiceClient.from_connection_string(conn).create_container(CONTAINER)
            return
        except ResourceExistsError:
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"Azurite did not come up: {last}")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    binary = azurite_binary()
    folder = Path(tempfile.mkdtemp(prefix="syncd-azurite-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(3):
            (port,) = _free_ports(1)
            log_path = folder / f"azurite-{attempt}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                                         str(folder / "data"), "--skipApiVersionCheck", "--disableTelemetry"],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            server = Azurite(endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}", pid=proc.pid, log_path=log_path)
            try:
                _create_container(server, time.monotonic() + 60, proc)
            except RuntimeError:
                stop(proc)
                if attempt == 2:
                    raise
                continue  # a port taken between the look-up and the bind: once more on another
            yield server
            return
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class AzureStore(S3Store):
    """One test's own place in the container (``env``, ``storage_options``, ``store_section`` as on S3)."""

    server: Azurite  # type: ignore[assignment]


@pytest.fixture
def az_store(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AzureStore:
    """A fresh prefix in the test container, with the account key in this process's environment."""
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)
    return AzureStore(server=azurite, uri=azurite.uri(f"t-{uuid.uuid4().hex[:12]}"))
