"""A polite HTTP client for the remote connectors (MediaWiki, Confluence).

Politeness is the same for every remote source: a request rate, ``Retry-After`` honoured on 429 and 503,
exponential backoff with jitter on other 5xx answers, timeouts and dropped connections, and a bounded
number of attempts. Connectors translate ``RemoteUnavailable`` into their own errors at their edge.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx
import tenacity

from syncd.logs import get_logger

log = get_logger("syncd.http_client")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Retryable(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` (seconds) when the server said so."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 transport: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.transport = transport


class RemoteUnavailable(Exception):
    """Every attempt failed; ``transport`` is True when the server could not be reached at all."""

    def __init__(self, message: str, *, status: int | None = None, transport: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transport = transport


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), None when absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


class PoliteClient:
    """httpx.Client with a request rate, retries and Retry-After; safe to share between threads."""

    def __init__(self, *, name: str, headers: dict[str, str], rate: float, timeout: float, max_retries: int,
                 max_backoff: float, backoff: float = 0.5, max_retry_after: float = 600.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.client = httpx.Client(headers=headers, timeout=timeout, follow_redirects=True, transport=transport)
        self.min_interval = 1.0 / rate if rate > 0 else 0.0
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        """How waits happen; tests pass a recorder to see the waits without spending them."""
        self.requests = 0
        """Requests sent, retries included (for status and tests)."""
        self._lock = threading.Lock()
        self._next_at = 0.0

    def _throttle(self) -> None:
        if not self.min_interval:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next_at - now
            self._next_at = max(now, self._next_at) + self.min_interval
        if wait > 0:
            self.sleep(wait)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            # The server said how long: honour it (bounded, so a bogus header cannot stall us for days).
            return float(min(retry_after, self.max_retry_after))
        expo = tenacity.wait_exponential_jitter(initial=self.backoff, max=self.max_backoff)
        return float(expo(state))

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("http.retrying", connector=self.name, attempt=state.attempt_number,
                    wait_s=round(state.upcoming_sleep, 3), error=str(exc))

    def request(self, method: str, url: str, *, check: Callable[[httpx.Response], None] | None = None,
                **kwargs: Any) -> httpx.Response:
        """Send with retries. ``check`` may raise Retryable for answers that are errors in disguise
        (MediaWiki's maxlag). Non-retryable HTTP errors are returned for the caller to judge."""

        def attempt() -> httpx.Response:
            self._throttle()
            self.requests += 1
            try:
                response = self.client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise Retryable(f"timeout: {type(exc).__name__}", transport=True) from exc
            except httpx.TransportError as exc:
                raise Retryable(f"cannot reach {self.name}: {type(exc).__name__}: {exc}", transport=True) from exc
            if response.status_code in RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise Retryable(f"HTTP {response.status_code}", status=response.status_code,
                                retry_after=retry_after if response.status_code in (429, 503) else None)
            if check is not None:
                check(response)
            return response

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Retryable),
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            before_sleep=self._before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Retryable as exc:
            raise RemoteUnavailable(f"{exc} (after {self.max_retries + 1} attempts)", status=exc.status,
                                    transport=exc.transport) from exc

    def close(self) -> None:
        self.client.close()


_P = TypeVar("_P")


class ReadAhead(Generic[_P]):
    """Pages a connector fetched ahead of the engine's reads (the titles that follow in the listing's order):
    each served at most once, within ``ttl`` seconds, and never across a listing or a poll."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.epoch = 0
        """Bumped by every listing and poll; a page is served only in the epoch its fetch began."""
        self._pages: dict[str, tuple[float, int, _P]] = {}

    def forget(self) -> None:
        """Called once a listing's or a poll's answers are in: pages fetched ahead before then are never served.

        A page fetched ahead may predate an edit that this listing or poll reports; serving it would read as
        "unchanged", and the cursor would move past the edit. A fetch still in flight began in the old epoch,
        so it is not kept either; one that begins later was answered after this listing or poll, so it is
        at least as new as anything they reported.
        """
        self.epoch += 1
        self._pages.clear()

    def keep(self, key: str, page: _P, epoch: int) -> None:
        """Keep ``page``, fetched in ``epoch``, unless a listing or poll came since its fetch began."""
        if epoch == self.epoch:
            self._pages[key] = (time.monotonic(), epoch, page)

    def take(self, key: str) -> _P | None:
        """The page kept for ``key`` if it may still be served (then it is gone from the keep)."""
        entry = self._pages.pop(key, None)
        if entry is not None and entry[1] == self.epoch and time.monotonic() - entry[0] < self.ttl:
            return entry[2]
        return None

    def __contains__(self, key: str) -> bool:
        return key in self._pages

    def clear(self) -> None:
        self._pages.clear()
