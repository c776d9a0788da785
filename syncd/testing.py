"""Test doubles shipped with the package.

* ``HashEmbedder`` stands in for the sentence-transformers model in unit tests, where loading torch for
  every test would make the suite slow: it is deterministic, normalised, and similar texts share words
  and therefore dimensions. It uses the real model's tokenizer for chunking. End-to-end tests use the
  real packaged model.
* ``FaultyEmbedder`` wraps an embedder and raises or returns NaN on chosen calls, to test that one bad
  batch fails only its own documents.
* ``SlowEmbedder`` wraps an embedder and takes a set time per text, or waits on a gate: it stands in for
  the real model on a large document (thousands of chunks, minutes on a CPU), which a test cannot afford
  to embed for real, so that work in flight can be observed, superseded and bounded.
* ``S3Proxy`` sits between syncd and a real S3 server (SeaweedFS in the tests) and stands in for the S3
  stores that cannot run here: one that ignores conditional writes (answers a refused ``If-None-Match`` /
  ``If-Match`` PUT with success, as a store without them does), and a store that stops answering.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from syncd.embedding import resolve_model_path


class HashEmbedder:
    """Deterministic bag-of-words embedder (feature hashing); counts the texts it embeds."""

    def __init__(self, dim: int = 384, model_id: str = "test-hash-embedder") -> None:
        self.dim = dim
        self.model_id = model_id
        self.calls: list[list[str]] = []

    @property
    def embedded(self) -> int:
        return sum(len(c) for c in self.calls)

    def token_counter(self) -> object:
        from syncd.chunking import HFTokenCounter

        return HFTokenCounter(str(resolve_model_path("all-MiniLM-L6-v2") / "tokenizer.json"))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = float(np.linalg.norm(out[i]))
            if norm == 0:
                out[i, 0] = 1.0
            else:
                out[i] /= norm
        return out


class SlowEmbedder:
    """Wraps an embedder: ``seconds_per_text`` of sleep per text, and, while ``gate`` is clear, every call
    waits for it. ``started`` is set at the first call; ``texts`` counts what was embedded."""

    def __init__(self, inner: HashEmbedder, *, seconds_per_text: float = 0.0) -> None:
        import threading

        self.inner = inner
        self.dim = inner.dim
        self.model_id = inner.model_id
        self.seconds_per_text = seconds_per_text
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.texts: list[str] = []

    def token_counter(self) -> object:
        return self.inner.token_counter()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import time

        self.started.set()
        self.gate.wait()
        time.sleep(self.seconds_per_text * len(texts))
        self.texts.extend(texts)
        return self.inner.encode(texts)


class FaultyEmbedder:
    """Wraps an embedder; ``fail_on`` texts containing a marker raise, ``nan_on`` ones return NaN."""

    def __init__(self, inner: HashEmbedder, *, raise_marker: str | None = None, nan_marker: str | None = None) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.model_id = inner.model_id
        self.raise_marker = raise_marker
        self.nan_marker = nan_marker

    def token_counter(self) -> object:
        return self.inner.token_counter()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.raise_marker and any(self.raise_marker in t for t in texts):
            raise RuntimeError("injected embedding failure")
        out = self.inner.encode(texts)
        if self.nan_marker:
            for i, t in enumerate(texts):
                if self.nan_marker in t:
                    out[i] = np.nan
        return out


class FaultyConnector:
    """Wraps a connector and injects its failures: a listing that raises after ``fail_listing_after``
    documents, and reads of chosen documents that raise (e.g. ``DocumentUnavailable("permission-denied")``,
    standing in for a file the daemon's user may not read, which cannot be staged when tests run as root).
    Everything else is the wrapped connector's own behaviour."""

    def __init__(self, inner: object, *, fail_listing_after: int | None = None,
                 listing_error: BaseException | None = None, fail_read: dict[str, BaseException] | None = None) -> None:
        self.inner = inner
        self.fail_listing_after = fail_listing_after
        self.listing_error = listing_error
        self.fail_read = dict(fail_read or {})

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def list_documents(self, *args: object) -> object:
        from syncd.errors import ConnectorError

        for n, ref in enumerate(self.inner.list_documents(*args)):  # type: ignore[attr-defined]
            if self.fail_listing_after is not None and n >= self.fail_listing_after:
                raise self.listing_error or ConnectorError("injected listing failure",
                                                           connector=self.inner.name)  # type: ignore[attr-defined]
            yield ref

    def read(self, doc_id: str) -> object:
        if doc_id in self.fail_read:
            raise self.fail_read[doc_id]
        return self.inner.read(doc_id)  # type: ignore[attr-defined]


CRASH_ENV = "SYNCD_TEST_CRASH_AT"
"""Names a crash point (``journal-append``: after a batch's commit, before its change journal entries)."""


def crash_point(name: str) -> None:
    """Stands in for a power cut or ``kill -9`` at an exact moment no outside signal can hit reliably: when
    ``$SYNCD_TEST_CRASH_AT`` names this point, the process kills itself with SIGKILL here (no clean-up, no
    flush, as a real crash). Called by the engine only when that variable is set."""
    import os
    import signal

    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class S3Proxy:
    """An HTTP proxy in front of an S3 endpoint, on 127.0.0.1 and a free port. ``mode``: ``"forward"`` (as the
    server answers), ``"ignore-conditional"`` (a conditional PUT the server refuses with 412 is answered 200:
    the client believes it won, which is what a store without conditional writes does), ``"down"`` (every
    request gets its connection closed, as an unreachable endpoint). Requests pass unchanged (the Host header
    too, so signatures hold)."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        self.upstream = urllib.parse.urlsplit(upstream)
        self.mode = "forward"
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.requests += 1
                if proxy.mode == "down":
                    self.close_connection = True
                    self.connection.close()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port,
                                                  timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                    conditional = "If-None-Match" in self.headers or "If-Match" in self.headers
                    if proxy.mode == "ignore-conditional" and self.command == "PUT" and conditional \
                            and resp.status == 412:
                        self.send_response(200)
                        self.send_header("ETag", '"' + hashlib.md5(body or b"").hexdigest() + '"')  # noqa: S324
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(resp.status)
                    for key, value in resp.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    # A HEAD answer says how long the object is (Lance sizes its reads by it), with no body.
                    head_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", head_length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
