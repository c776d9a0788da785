"""The HTTP server under abuse: idle connections cost no thread and are closed, heads are bounded in time and
size, a client that goes away is not an error, an unknown connector is a 400, stop() closes everything."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from syncd.http import Endpoints, HttpServer
from syncd.search import SearchOptions
from tests.conftest import wait_for


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _raw(server: HttpServer, data: bytes) -> socket.socket:
    """A client socket that has sent ``data`` and nothing more."""
    sock = socket.create_connection(server.address, timeout=30)
    sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (end of stream or reset); never blocks."""
    sock.setblocking(False)  # a socket with a timeout would wait for data even with MSG_DONTWAIT
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def _reset(sock: socket.socket) -> None:
    """Close abruptly (RST), as a client that crashed or gave up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Service:
    """Endpoint callables; search can be held on an event, metrics can be made huge."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.search_entered = threading.Event()
        self.searches: list[tuple[str, int, str | None]] = []
        self.metrics_body = b"syncd_up 1\n"

    def endpoints(self, connectors: list[str] | None = None) -> Endpoints:
        return Endpoints(healthy=lambda: True, ready=lambda: True, status=self.status,
                         metrics=lambda: self.metrics_body, search=self.search, page=lambda viewer=None: "<html></html>",
                         token=None, connectors=(lambda: connectors) if connectors is not None else None)

    def status(self, viewer=None) -> dict[str, Any]:
        raise RuntimeError("status exploded")

    def search(self, q: str, options: SearchOptions) -> dict[str, Any]:
        self.searches.append((q, options.k, options.connector))
        self.search_entered.set()
        if q == "hold":
            self.hold.wait(timeout=60)
        return {"query": q, "results": []}


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.hold.set()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog entry from any thread, debug level included, whatever an earlier test configured."""
    was_configured = structlog.is_configured()
    old_wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as entries:
            yield entries
    finally:
        if was_configured:
            structlog.configure(wrapper_class=old_wrapper)
        else:
            structlog.reset_defaults()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _server(service: Service, cls: type[HttpServer] = HttpServer, **limits: float) -> HttpServer:
    srv = cls("127.0.0.1", 0, service.endpoints())
    for name, value in limits.items():
        setattr(srv, name, value)
    srv.start()
    return srv


def test_a_flood_of_idle_connections_costs_no_thread_and_healthz_and_search_keep_answering(
        service: Service, sockets: list[socket.socket]) -> None:
    """300 sockets that send one header line and stop: the thread count stays at the pool's size, /healthz and
    /search answer throughout, the oldest past max_pending are closed at once and the rest at the head deadline."""
    threads_before = threading.active_count()
    srv = _server(service, head_timeout=600.0)
    try:
        for _ in range(300):
            sockets.append(_raw(srv, b"GET /healthz HTTP/1.1\r\n"))
        wait_for(lambda: srv.pending == srv.max_pending and srv.evicted == 300 - srv.max_pending,
                 what="every flood socket accepted")
        assert threading.active_count() <= threads_before + srv.workers + 2
        for _ in range(5):
            code, body = _get(srv.url + "/healthz")
            assert code == 200 and json.loads(body) == {"status": "ok"}
            code, body = _get(srv.url + "/search?q=x")
            assert code == 200 and json.loads(body) == {"query": "x", "results": []}
        assert threading.active_count() <= threads_before + srv.workers + 2
        # The first request found the pending list full and took the place of the oldest idle socket.
        assert srv.evicted == 300 - srv.max_pending + 1
        assert all(_closed_by_server(sock) for sock in sockets[:srv.evicted])
        assert not any(_closed_by_server(sock) for sock in sockets[srv.evicted:])

        srv.head_timeout = 0.5
        wait_for(lambda: all(_closed_by_server(sock) for sock in sockets), what="every slow socket closed")
        assert srv.closed_slow == 300 - srv.evicted
        assert srv.pending == 0
        assert _get(srv.url + "/healthz")[0] == 200
    finally:
        srv.stop()


def test_past_max_pending_the_oldest_waiting_connection_is_closed(
        service: Service, sockets: list[socket.socket]) -> None:
    srv = _server(service, max_pending=5)
    try:
        for n in range(1, 9):
            sockets.append(_raw(srv, b"GET / HTTP/1.0\r\n"))
            wait_for(lambda n=n: srv.pending + srv.evicted == n, what=f"connection {n} accepted")
        assert srv.pending == 5 and srv.evicted == 3
        wait_for(lambda: all(_closed_by_server(sock) for sock in sockets[:3]), what="the three oldest closed")
        assert not any(_closed_by_server(sock) for sock in sockets[3:])
        # A waiting connection that completes its head is still served.
        sockets[-1].settimeout(30)
        sockets[-1].sendall(b"\r\n")
        assert _read_all(sockets[-1]).startswith(b"HTTP/1.0 200 ")
    finally:
        srv.stop()


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.0\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\nX-Big: " + b"a" * 20_000,  # no end in sight
], ids=["complete", "unterminated"])
def test_an_oversized_head_gets_431_and_the_server_keeps_serving(service: Service, head: bytes) -> None:
    srv = _server(service)
    try:
        with _raw(srv, head) as sock:
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.0 431 "), answer[:100]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "request head too large"}
        assert srv.rejected == 1
        assert _get(srv.url + "/healthz")[0] == 200
    finally:
        srv.stop()


def test_a_head_split_across_many_packets_is_served(service: Service) -> None:
    srv = _server(service)
    try:
        with socket.create_connection(srv.address, timeout=30) as sock:
            for piece in (b"GET /search?q=split", b"&k=2 HTTP/1.0\r\n", b"Host: x\r\n", b"\r", b"\n"):
                sock.sendall(piece)
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.0 200 ")
        assert service.searches == [("split", 2, None)]
    finally:
        srv.stop()


def test_a_client_that_disconnects_mid_answer_is_logged_at_debug_without_traceback(
        service: Service, logs: list[dict[str, Any]]) -> None:
    srv = _server(service)
    try:
        sock = _raw(srv, b"GET /search?q=hold HTTP/1.0\r\n\r\n")
        assert service.search_entered.wait(timeout=30)
        _reset(sock)
        service.hold.set()  # the answer is now written to a connection the client has reset
        gone = wait_for(lambda: [e for e in logs if e["event"] == "http.client_gone"], what="http.client_gone")
        assert gone[0]["log_level"] == "debug"
        assert gone[0]["error"] in ("BrokenPipeError", "ConnectionResetError")
        assert _get(srv.url + "/healthz")[0] == 200
    finally:
        srv.stop()
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []
    assert [e for e in logs if "exc_info" in e] == []


def test_a_client_that_stops_reading_is_cut_off_after_io_timeout_and_frees_its_worker(
        service: Service, logs: list[dict[str, Any]]) -> None:
    class OneWorker(HttpServer):
        workers = 1

    service.metrics_body = b"x" * (64 * 1024 * 1024)  # far more than the socket buffers hold
    srv = _server(service, OneWorker, io_timeout=0.3)
    try:
        with _raw(srv, b"GET /metrics HTTP/1.0\r\n\r\n"):
            wait_for(lambda: any("timed out" in e.get("line", "") or e["event"] == "http.client_gone" for e in logs),
                     what="the stalled write given up")
            # The only worker is free again.
            assert _get(srv.url + "/healthz")[0] == 200
    finally:
        srv.stop()
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []


def test_out_of_file_descriptors_the_acceptor_waits_and_then_serves_the_connection(
        service: Service, logs: list[dict[str, Any]]) -> None:
    srv = _server(service)
    client = socket.socket()
    client.settimeout(30)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        # Fill every free descriptor number below the highest in use, then forbid any above it.
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        while (fd := os.open(os.devnull, os.O_RDONLY)) <= highest:
            fillers.append(fd)
        os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        client.connect(srv.address)  # the kernel completes it; the server's accept() gets EMFILE
        client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        wait_for(lambda: any(e["event"] == "http.accept_failed" for e in logs), what="http.accept_failed")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    try:
        with client:
            assert _read_all(client).startswith(b"HTTP/1.0 200 ")
        assert srv.thread.is_alive()
    finally:
        srv.stop()


def test_a_failing_endpoint_still_answers_500_and_logs_its_traceback(
        service: Service, logs: list[dict[str, Any]]) -> None:
    srv = _server(service)
    try:
        code, body = _get(srv.url + "/status")
    finally:
        srv.stop()
    assert code == 500 and json.loads(body) == {"error": "status exploded"}
    failed = [e for e in logs if e["event"] == "http.handler_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error" and failed[0]["exc_info"] is True


def test_an_unknown_connector_is_a_400_naming_it_and_a_known_one_is_passed_through(service: Service) -> None:
    srv = HttpServer("127.0.0.1", 0, service.endpoints(connectors=["docs", "wiki"]))
    srv.start()
    try:
        code, body = _get(srv.url + "/search?q=x&connector=nope")
        assert code == 400 and json.loads(body) == {"error": "no connector named 'nope'", "option": "connector"}
        assert service.searches == []
        code, body = _get(srv.url + "/search?q=x&k=3&connector=wiki")
        assert code == 200 and json.loads(body) == {"query": "x", "results": []}
        code, _ = _get(srv.url + "/search?q=y")
        assert code == 200
        assert service.searches == [("x", 3, "wiki"), ("y", 10, None)]
    finally:
        srv.stop()


def test_without_a_connector_list_any_connector_is_passed_through(service: Service) -> None:
    srv = _server(service)
    try:
        assert _get(srv.url + "/search?q=x&connector=anything")[0] == 200
        assert service.searches == [("x", 10, "anything")]
    finally:
        srv.stop()


def test_stop_closes_pending_and_in_flight_sockets_and_the_listener(
        service: Service, sockets: list[socket.socket]) -> None:
    srv = _server(service)
    for _ in range(5):
        sockets.append(_raw(srv, b"GET /healthz HTTP/1.0\r\n"))
    held = _raw(srv, b"GET /search?q=hold HTTP/1.0\r\n\r\n")
    sockets.append(held)
    wait_for(lambda: srv.pending == 5, what="five pending connections")
    assert service.search_entered.wait(timeout=30)
    srv.stop()
    assert not srv.thread.is_alive()
    wait_for(lambda: all(_closed_by_server(sock) for sock in sockets), what="every socket closed")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(srv.address, timeout=30).close()
    service.hold.set()


def test_healthz_answers_while_every_worker_is_held_inside_a_slow_search(service: Service) -> None:
    """Liveness has a worker of its own: with the whole pool inside endpoints that do not return, /healthz
    still answers (a service manager must not restart a daemon for being busy)."""
    srv = _server(service)
    held: list[threading.Thread] = []
    try:
        for _ in range(srv.workers):
            t = threading.Thread(target=_get, args=(srv.url + "/search?q=hold",), daemon=True)
            t.start()
            held.append(t)
        wait_for(lambda: len(service.searches) == srv.workers, what="every worker inside a search")
        assert _get(srv.url + "/healthz") == (200, b'{"status":"ok"}')
        assert len(service.searches) == srv.workers  # no worker was free for anything else
    finally:
        service.hold.set()
        for t in held:
            t.join(timeout=30)
        srv.stop()
