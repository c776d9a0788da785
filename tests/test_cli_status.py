"""What the CLI reports: `syncd status` says what is true of a daemon that runs but refuses the token or does
not answer, and `syncd sync` fails only for real failures, not for documents skipped with a reason."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, write_config

from syncd.cli import _exit_code
from syncd.models import Failure, SyncSummary

TOKEN_ENV = "SYNCD_TEST_STATUS_TOKEN"


def syncd(config: Path, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI; ``env`` values of None remove the variable."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, env=full)


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_response(401)
        self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_daemon(tmp_path: Path) -> Iterator[str]:
    """A daemon.json naming a live process (this one) and a server that answers 401 to everything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("http", "env", "says"), [
    ({}, {}, "set http.token_env (or http.token_file)"),
    ({"token_env": TOKEN_ENV}, {TOKEN_ENV: None}, f"{TOKEN_ENV} is not set"),
    ({"token_env": TOKEN_ENV}, {TOKEN_ENV: ""}, f"{TOKEN_ENV} is empty"),
    ({"token_env": TOKEN_ENV}, {TOKEN_ENV: "not-the-token"}, f"the token from http.token_env (${TOKEN_ENV}) is not"),
])
def test_status_of_a_daemon_that_refuses_the_token_says_so_and_exits_2(
        tmp_path: Path, docs: Path, refusing_daemon: str, http: dict[str, str], env: dict[str, str | None],
        says: str) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], http=http)
    for args in (["status"], ["status", "--json"]):
        out = syncd(cfg, *args, env=env)
        assert out.returncode == 2, out.stderr
        assert f"the daemon at {refusing_daemon} runs but refused the request (HTTP 401)" in out.stderr
        assert "http.token_env" in out.stderr and says in out.stderr
        assert "not running" not in out.stdout + out.stderr and out.stdout == ""


def test_a_token_file_is_named_when_its_token_is_refused(tmp_path: Path, docs: Path, refusing_daemon: str) -> None:
    (tmp_path / "token").write_text("not-the-token\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"token_file": "./token"})
    out = syncd(cfg, "status")
    assert out.returncode == 2 and "http.token_file" in out.stderr and "not-the-token" not in out.stderr


def test_status_of_a_daemon_that_runs_but_does_not_answer_says_so_and_exits_1(tmp_path: Path, docs: Path) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    assert syncd(cfg, "sync").returncode == 0  # an empty index to read the figures from
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    (tmp_path / "state" / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
    out = syncd(cfg, "status")
    assert out.returncode == 1, out.stderr
    assert f"(pid {os.getpid()}) does not answer at {url}" in out.stdout and "not running" not in out.stdout
    assert "does not answer" in out.stderr
    data = json.loads(syncd(cfg, "status", "--json").stdout)
    assert data["daemon"] is None and "does not answer" in data["daemon_problem"]


def test_status_without_a_daemon_still_says_not_running(tmp_path: Path, docs: Path) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    assert syncd(cfg, "sync").returncode == 0
    (tmp_path / "state" / "daemon.json").write_text(json.dumps({"pid": 2**22 + 1, "url": "http://127.0.0.1:9"}))
    out = syncd(cfg, "status")
    assert out.returncode == 0 and "daemon not running" in out.stdout


@pytest.mark.e2e
def test_status_against_a_real_daemon_off_loopback_with_no_wrong_and_right_token(
        tmp_path: Path, docs: Path, daemon_factory: Any) -> None:
    """`syncd run` bound off loopback requires the token; status names the setting instead of "not running"."""
    token = "tok-" + os.urandom(12).hex()
    (docs / "a.md").write_text("# A\n\nSome words.\n")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                       http={"bind": "0.0.0.0:0", "token_env": TOKEN_ENV})
    d = daemon_factory(cfg, env={TOKEN_ENV: token})
    d.start(wait_ready=False)
    d.url = d.url.replace("0.0.0.0", "127.0.0.1")
    wait_for(lambda: d.get("/readyz", {"Authorization": f"Bearer {token}"})[0] == 200, timeout=300, what="ready")

    for env, says in (({TOKEN_ENV: None}, f"{TOKEN_ENV} is not set"), ({TOKEN_ENV: "wrong"}, "is not the daemon's")):
        out = syncd(cfg, "status", env=env)
        assert out.returncode == 2, out.stderr
        assert "runs but refused the request (HTTP 401)" in out.stderr and "http.token_env" in out.stderr
        assert says in out.stderr and "not running" not in out.stdout + out.stderr

    out = syncd(cfg, "status", "--json", env={TOKEN_ENV: token})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["daemon"].endswith(d.url.rsplit(":", 1)[1])
    assert d.stop(signal.SIGTERM, timeout=90) == 0
    assert token not in d.log_path.read_text()


# -- sync: skipped documents are not failures ----------------------------------------------------------------
def test_the_exit_code_counts_real_failures_only() -> None:
    skipped = Failure(connector="docs", doc_id="link.md", reason="symlink-outside-root: ...", skipped=True)
    failed = Failure(connector="docs", doc_id="x.md", reason="embedding-failed: ...")
    down = Failure(connector="docs", doc_id="", reason="root unavailable")
    assert _exit_code(SyncSummary(failures=[skipped])) == 0
    assert _exit_code(SyncSummary(failures=[skipped, failed])) == 1
    assert _exit_code(SyncSummary(failures=[down])) == 1
    assert _exit_code(SyncSummary()) == 0


@pytest.mark.e2e
def test_sync_with_only_skipped_documents_exits_0_and_lists_them_as_skipped(tmp_path: Path, docs: Path) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("# Outside\n\nNot under the root.\n")
    (docs / "good.md").write_text("# Good\n\nIndexed.\n")
    (docs / "link.md").symlink_to(outside)
    (docs / "empty.md").write_text("")
    (docs / "binary.md").write_bytes(b"# x\n\x00\x01\x02")
    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])

    out = syncd(cfg, "sync", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["docs_added"] == 1 and summary["docs_failed"] == 0 and summary["docs_skipped"] == 3
    assert {f["doc_id"]: f["skipped"] for f in summary["failures"]} == \
        {"link.md": True, "empty.md": True, "binary.md": True}

    (docs / "good.md").write_text("# Good\n\nIndexed again.\n")
    out = syncd(cfg, "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failed:" not in out.stdout
