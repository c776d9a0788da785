"""What the daemons sharing one object store agree on, kept in the store itself under ``<uri>/_syncd/``.

::

    _syncd/store.json                  (earlier versions) the live table and the signature; migrated and deleted
    _syncd/leases/connector-NAME.json  who owns connector NAME, until when
    _syncd/leases/maintenance.json     who compacts and folds indexes
    _syncd/daemons/ID.json             each live daemon's heartbeat (``/status`` → ``store.daemons``)

A lease is an object written with conditional PUTs: created with ``If-None-Match: *`` (exactly one of
several racing creators wins), renewed and taken over with ``If-Match: <etag>`` (a stale writer loses).
Its holder renews it every third of ``[store] lease_ttl``; a lease not renewed by its ``expires_at`` (wall
clock: the daemons' clocks must agree to well under the TTL, as NTP gives) may be taken over. A daemon whose
renewal failed for a whole TTL stops writing: by then another may hold the connector.

A store that ignores conditional PUTs would let two daemons hold one connector and lose Lance commits too:
``check_conditional_writes`` finds such a store at start-up and syncd refuses concurrent mode on it.

This module talks to the store through obstore (the Python binding of the same ``object_store`` crate Lance
uses, so one set of storage options serves both); it never imports lancedb.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from syncd.errors import ConfigError, StoreError, SyncdError
from syncd.redact import redact

if TYPE_CHECKING:
    from syncd.config import Config

log = structlog.get_logger("syncd.coordination")

META_DIR = "_syncd"
_CLIENT_OPTIONS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout", "proxy_url",
                   "proxy_ca_certificate", "proxy_excludes", "user_agent", "http1_only", "http2_only",
                   "pool_idle_timeout", "pool_max_idle_per_host", "http2_keep_alive_interval",
                   "http2_keep_alive_timeout", "http2_keep_alive_while_idle", "default_content_type"}
"""Storage options of the HTTP client (the rest configure the store)."""
_LANCE_ONLY = {"client_max_retries", "client_retry_timeout", "download_retry_count", "max_retries",
               "retry_timeout", "expires_at_millis", "use_opendal", "use_constant_size_upload_parts",
               "new_table_data_storage_version", "new_table_enable_v2_manifest_paths", "aws_s3_express"}
"""Options Lance reads for itself, not the object store's."""
_PREFIX = {"s3": "aws_", "s3a": "aws_", "gs": "google_"}
"""Prefixes of the store's config keys (Azure's take Lance's bare spelling as it is: ``account_name``,
``endpoint``; ``azure_account_name`` is no key of its)."""


class StoreSetupError(ConfigError):
    """The object store cannot be used as configured (unreachable, no bucket, refused credentials, no
    conditional writes): a start-up error, exit 2."""


class ConnectorHeld(ConfigError):
    """Another live daemon owns a connector this daemon is configured with."""

    def __init__(self, message: str, *, connector: str, holder: str) -> None:
        super().__init__(message, key="connectors")
        self.connector = connector
        self.holder = holder


class LeaseLost(StoreError):
    """This daemon no longer holds a connector's lease (its renewal failed for a whole TTL, or another
    daemon took it over): its writes for that connector stop."""


def is_object_store(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def obstore_options(uri: str, options: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """``[store.storage_options]`` (Lance's spelling: ``endpoint``, ``region``, ``allow_http``) as obstore's
    store config and client options."""
    prefix = _PREFIX.get(_scheme(uri), "")
    config: dict[str, str] = {}
    client: dict[str, Any] = {}
    for key, value in options.items():
        low = key.lower()
        if low in _CLIENT_OPTIONS:
            client[low] = value.lower() == "true" if value.lower() in ("true", "false") else value
        elif low in _LANCE_ONLY:
            continue
        elif prefix and not low.startswith(prefix):
            config[prefix + low] = value
        else:
            config[low] = value
    return config, client


def _now() -> float:
    return time.time()


@dataclass(frozen=True, kw_only=True)
class Versioned:
    """A JSON object read from the store with its ETag (for a conditional replace)."""

    doc: dict[str, Any]
    etag: str


class SharedStore:
    """The ``_syncd/`` folder of an object store: JSON objects, plain or written conditionally."""

    def __init__(self, uri: str, options: dict[str, str], *, max_retries: int = 3, retry_timeout_s: float = 10.0) -> None:
        from obstore.store import from_url

        self.uri = uri.rstrip("/")
        self.options = options
        config, client = obstore_options(uri, options)
        client.setdefault("timeout", "30s")
        client.setdefault("connect_timeout", "5s")
        retry = {"max_retries": max_retries, "retry_timeout": dt.timedelta(seconds=retry_timeout_s),
                 "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2),
                             "base": 2.0}}
        try:
            self._store = from_url(f"{self.uri}/{META_DIR}", config=config, client_options=client,
                                   retry_config=retry)  # type: ignore[call-overload]
        except Exception as exc:  # noqa: BLE001 - obstore raises ValueError or its own errors for bad options
            raise StoreSetupError(f"store.storage_options: {redact(str(exc))}", key="store.storage_options") from None

    @property
    def endpoint(self) -> str:
        return self.options.get("endpoint") or self.options.get("aws_endpoint") or "the provider's default endpoint"

    # -- plain and conditional objects -----------------------------------------------------------------
    def get(self, key: str) -> Versioned | None:
        import obstore

        try:
            result = obstore.get(self._store, key)
            data = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "NotFoundError":
                return None
            raise self._error(f"reading {key}", exc) from None
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        return Versioned(doc=doc if isinstance(doc, dict) else {}, etag=str(result.meta.get("e_tag") or ""))

    def put(self, key: str, doc: dict[str, Any]) -> None:
        import obstore

        try:
            obstore.put(self._store, key, json.dumps(doc, sort_keys=True).encode())
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"writing {key}", exc) from None

    def create(self, key: str, doc: dict[str, Any]) -> str | None:
        """Write ``key`` only if it does not exist (``If-None-Match: *``): its ETag, or None if it exists."""
        return self._conditional(key, doc, "create")

    def replace(self, key: str, doc: dict[str, Any], etag: str) -> str | None:
        """Write ``key`` only if it is still at ``etag`` (``If-Match``): the new ETag, or None if it moved."""
        return self._conditional(key, doc, {"e_tag": etag})

    def _conditional(self, key: str, doc: dict[str, Any], mode: Any) -> str | None:
        import obstore

        try:
            result = obstore.put(self._store, key, json.dumps(doc, sort_keys=True).encode(), mode=mode)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ in ("AlreadyExistsError", "PreconditionError", "NotModifiedError"):
                return None
            if type(exc).__name__ == "NotFoundError" and mode != "create":
                return None
            raise self._error(f"writing {key}", exc) from None
        return str(result.get("e_tag") or "")

    def delete(self, key: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, key)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ != "NotFoundError":
                raise self._error(f"deleting {key}", exc) from None

    def list(self, prefix: str) -> list[str]:
        import obstore

        try:
            return [str(meta["path"]) for page in obstore.list(self._store, prefix) for meta in page]
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"listing {prefix}", exc) from None

    def _error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"store {self.uri}: {what} failed: {describe(exc, self.endpoint, self.uri)}")

    # -- start-up checks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Reach the store and read from it: an unreachable endpoint, a missing bucket or refused credentials
        is a ``StoreSetupError`` naming the cause."""
        import obstore

        try:
            next(iter(obstore.list(self._store, None, chunk_size=1)), None)
        except Exception as exc:  # noqa: BLE001
            raise StoreSetupError(f"store.uri: cannot use {self.uri}: {describe(exc, self.endpoint, self.uri)}",
                                  key="store.uri") from None

    def check_conditional_writes(self, daemon_id: str) -> None:
        """Create one object twice with ``If-None-Match: *`` and replace it with a stale ``If-Match``: a store
        that lets either through ignores conditional writes, and concurrent writers on it lose data."""
        key = f"probe/{daemon_id}.json"
        try:
            first = self.create(key, {"probe": 1})
            second = self.create(key, {"probe": 2})
            stale = self.replace(key, {"probe": 3}, '"0-stale-etag"')
        finally:
            try:
                self.delete(key)
            except StoreError:
                pass
        if first is None or second is not None or stale is not None:
            raise StoreSetupError(
                f"store.uri: {self.uri} ignores conditional writes (If-None-Match / If-Match): several daemons "
                "writing it would silently lose each other's commits, so syncd refuses to share it. Use a store "
                "that honours them, or set [store] concurrent_writers = false if this daemon is its only writer",
                key="store.uri")


_CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", "s3a": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                "gs": "GOOGLE_SERVICE_ACCOUNT / GOOGLE_SERVICE_ACCOUNT_KEY",
                "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY"}
"""The standard variables each scheme's client reads its credentials from, named in errors."""


def describe(exc: BaseException, endpoint: str, uri: str = "s3://") -> str:
    """An object-store error as its cause in a few words, then the library's first line (redacted)."""
    scheme = _scheme(uri)
    variables = _CREDENTIALS.get("az" if scheme in ("abfs", "abfss") else scheme, _CREDENTIALS["s3"])
    text = redact(str(exc))
    first = text.splitlines()[0] if text else type(exc).__name__
    low = text.lower()
    name = type(exc).__name__
    if "nosuchbucket" in low or ("bucket" in low and "not" in low and "exist" in low):
        cause = "the bucket does not exist"
    elif "containernotfound" in low or ("container" in low and "not" in low and "exist" in low):
        cause = "the container does not exist"
    elif name in ("PermissionDeniedError", "UnauthenticatedError") or any(
            s in low for s in ("signaturedoesnotmatch", "invalidaccesskeyid", "accessdenied", "403 forbidden",
                               "401 unauthorized", "expiredtoken")):
        cause = f"the credentials were refused (check {variables} or the *_env keys)"
    elif "missing" in low and ("credential" in low or "access key" in low):
        cause = f"no credentials found (set {variables}, or the *_env keys)"
    elif any(s in low for s in ("error sending request", "connection refused", "dns error", "timed out",
                                "tcp connect", "connect error", "operation timed out")):
        cause = f"cannot reach the endpoint {endpoint}"
    else:
        cause = "the store answered with an error"
    return f"{cause} ({first[:300]})"


class SharedFacts:
    """The pointer earlier versions kept (live table, signature) as ``_syncd/store.json`` in the store
    (``store.PointerFile`` is the local folder's): read once by the migration, then deleted. The signature now
    lives in the live table's schema metadata, the same for every daemon sharing the store."""

    KEY = "store.json"

    FRESH_S = 1.0
    """A read answers from memory this long: readers look at the pointer before every query."""

    def __init__(self, shared: SharedStore) -> None:
        self.shared = shared
        self._cached: tuple[float, dict[str, Any] | None] | None = None

    def read(self) -> dict[str, Any] | None:
        if self._cached is not None and time.monotonic() - self._cached[0] < self.FRESH_S:
            return self._cached[1]
        found = self.shared.get(self.KEY)
        doc = found.doc if found is not None and found.doc else None
        self._cached = (time.monotonic(), doc)
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        self.shared.put(self.KEY, doc)
        self._cached = None

    def create(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` unless a pointer exists (two daemons creating the store at once: the first wins)."""
        self.shared.create(self.KEY, doc)
        self._cached = None

    def delete(self) -> None:
        self.shared.delete(self.KEY)

    def claim(self, doc: dict[str, Any]) -> bool:
        """Of several daemons starting on an empty store, exactly one creates its table: the one whose
        conditional create of the pointer wins (two table creations would end in an Overwrite, which drops
        whatever the first creator committed meanwhile)."""
        return self.shared.create("created.json", doc) is not None


def shared_store(config: Config, **kwargs: Any) -> SharedStore | None:
    """The ``_syncd/`` folder of the config's object store (None for a local folder)."""
    if not config.store.is_object_store:
        return None
    # A request that does not get through within a lease's time is of no use to the lease.
    kwargs.setdefault("retry_timeout_s", max(1.0, min(10.0, config.store.lease_ttl)))
    return SharedStore(config.store_uri, config.store.resolved_storage_options(), **kwargs)


def store_kwargs(config: Config, shared: SharedStore | None) -> dict[str, Any]:
    """``Store`` keyword arguments for ``config``: cache limits, storage options, where the pointer lives."""
    kwargs: dict[str, Any] = dict(config.store.cache_limits())
    if shared is not None:
        kwargs["storage_options"] = shared.options
        kwargs["facts"] = SharedFacts(shared)
    return kwargs


# -- leases --------------------------------------------------------------------------------------------
def new_daemon_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class _Held:
    etag: str
    valid_until: float
    """Monotonic time until which this daemon may act on the lease (its last renewal's start plus the TTL)."""


@dataclass
class Leases:
    """This daemon's leases in a ``SharedStore``: its connectors, maybe maintenance, and its heartbeat."""

    shared: SharedStore
    ttl: float
    daemon_id: str = field(default_factory=new_daemon_id)
    on_lost: Callable[[str, str], None] | None = None
    """Called with (lease name, new holder or "") when a held lease is lost."""
    held: dict[str, _Held] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=_now)
    renewals: int = 0
    renewal_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def key(name: str) -> str:
        return f"leases/{name}.json"

    def _record(self, name: str) -> dict[str, Any]:
        now = _now()
        return {"holder": self.daemon_id, "host": socket.gethostname(), "pid": os.getpid(), "lease": name,
                "heartbeat_at": now, "expires_at": now + self.ttl, "ttl": self.ttl}

    # -- taking ----------------------------------------------------------------------------------------
    def acquire(self, name: str, *, wait: bool = True, stopping: threading.Event | None = None) -> bool:
        """Take lease ``name``. Held by a live daemon: with ``wait``, raise ``ConnectorHeld`` naming it (a
        holder is live when its lease is renewed while this one watches it, at most a third of the TTL);
        not renewed by its expiry, it is taken over. Without ``wait``, False at once when it is held."""
        watched: str | None = None
        while True:
            started = time.monotonic()
            current = self.shared.get(self.key(name))
            if current is None:
                etag = self.shared.create(self.key(name), self._record(name))
                if etag is not None:
                    self._hold(name, etag, started)
                    return True
                continue
            doc = current.doc
            expires = float(doc.get("expires_at", 0) or 0)
            if doc.get("holder") == self.daemon_id or expires <= _now():
                etag = self.shared.replace(self.key(name), self._record(name), current.etag)
                if etag is not None:
                    if doc.get("holder") not in (None, self.daemon_id) and expires > 0:
                        log.warning("lease.taken_over", lease=name, previous_holder=doc.get("holder"),
                                    expired_s_ago=round(_now() - expires, 1))
                    self._hold(name, etag, started)
                    return True
                continue
            if not wait:
                return False
            if watched is not None and current.etag != watched:
                holder = str(doc.get("holder", "?"))
                raise ConnectorHeld(
                    f"connector {name.removeprefix('connector-')!r} is held by daemon {holder} "
                    f"(host {doc.get('host', '?')}, pid {doc.get('pid', '?')}), which renewed its lease just now; "
                    "a connector is owned by one daemon at a time: remove it from this daemon's config or stop "
                    "the other one", connector=name.removeprefix("connector-"), holder=holder)
            if watched is None:
                log.info("lease.waiting", lease=name, holder=doc.get("holder"),
                         expires_in_s=round(expires - _now(), 1),
                         note="taken over if its holder does not renew it before then")
            watched = current.etag
            pause = min(self.ttl / 6, max(0.05, expires - _now()) + 0.05)
            if stopping is not None and stopping.wait(pause):
                return False
            if stopping is None:
                time.sleep(pause)

    def _hold(self, name: str, etag: str, started: float) -> None:
        with self._lock:
            self.held[name] = _Held(etag=etag, valid_until=started + self.ttl)
            self.lost.pop(name, None)

    def acquire_connectors(self, names: list[str], stopping: threading.Event | None = None) -> None:
        """Every connector's lease, or none: on a refusal the ones taken are given back."""
        try:
            for name in names:
                self.acquire(f"connector-{name}", stopping=stopping)
        except BaseException:
            self.release_all()
            raise

    # -- keeping ---------------------------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        """This daemon may act on lease ``name`` now (held, and renewed within the TTL)."""
        with self._lock:
            held = self.held.get(name)
        return held is not None and time.monotonic() < held.valid_until

    def holds_connector(self, connector: str) -> bool:
        return self.holds(f"connector-{connector}")

    @property
    def maintainer(self) -> bool:
        return self.holds("maintenance")

    def renew(self) -> None:
        """Renew every held lease (``If-Match`` its last ETag); try for maintenance; write the heartbeat."""
        for name in list(self.held):
            started = time.monotonic()
            with self._lock:
                held = self.held.get(name)
            if held is None:
                continue
            try:
                etag = self.shared.replace(self.key(name), self._record(name), held.etag)
            except StoreError as exc:
                self.renewal_failures += 1
                log.warning("lease.renew_failed", lease=name, error=str(exc),
                            valid_for_s=round(held.valid_until - time.monotonic(), 1))
                if time.monotonic() >= held.valid_until:
                    self._lose(name, "")
                continue
            if etag is None:
                current = self.shared.get(self.key(name))
                self._lose(name, str(current.doc.get("holder", "")) if current else "")
                continue
            self.renewals += 1
            with self._lock:
                if name in self.held:
                    self.held[name] = _Held(etag=etag, valid_until=started + self.ttl)
        if "maintenance" not in self.held:
            try:
                self.acquire("maintenance", wait=False)
            except StoreError as exc:
                log.warning("lease.maintenance_failed", error=str(exc))
        try:
            self.write_heartbeat()
        except StoreError as exc:
            log.warning("daemon.heartbeat_failed", error=str(exc))

    def _lose(self, name: str, holder: str) -> None:
        with self._lock:
            self.held.pop(name, None)
            self.lost[name] = holder
        log.error("lease.lost", lease=name, new_holder=holder or None,
                  action="this daemon stops writing what the lease covered")
        if self.on_lost is not None:
            self.on_lost(name, holder)

    def connectors(self) -> list[str]:
        with self._lock:
            return sorted(n.removeprefix("connector-") for n in self.held if n.startswith("connector-"))

    def write_heartbeat(self) -> None:
        now = _now()
        self.shared.put(f"daemons/{self.daemon_id}.json", {
            "id": self.daemon_id, "host": socket.gethostname(), "pid": os.getpid(), "connectors": self.connectors(),
            "maintenance": self.maintainer, "heartbeat_at": now, "expires_at": now + self.ttl,
            "started_at": self.started_at})

    def release(self, name: str) -> None:
        """Give lease ``name`` back: marked expired (``If-Match``), so a successor takes it at once."""
        with self._lock:
            held = self.held.pop(name, None)
        if held is None:
            return
        try:
            self.shared.replace(self.key(name), {**self._record(name), "expires_at": 0, "released_at": _now()},
                                held.etag)
        except StoreError as exc:
            log.warning("lease.release_failed", lease=name, error=str(exc), note="it expires by itself")

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)

    def close(self) -> None:
        self.release_all()
        try:
            self.shared.delete(f"daemons/{self.daemon_id}.json")
        except StoreError:
            pass


def live_daemons(shared: SharedStore) -> list[dict[str, Any]]:
    """The daemons whose heartbeat has not expired, with what they hold (``store.daemons``)."""
    out = []
    now = _now()
    for path in shared.list("daemons/"):
        key = path.split(f"{META_DIR}/", 1)[-1] if f"{META_DIR}/" in path else path
        record = shared.get(key)
        if record is None:
            continue
        doc = record.doc
        if float(doc.get("expires_at", 0) or 0) <= now:
            continue
        out.append({"id": doc.get("id"), "host": doc.get("host"), "connectors": list(doc.get("connectors") or []),
                    "maintenance": bool(doc.get("maintenance")),
                    "heartbeat_at": dt.datetime.fromtimestamp(float(doc.get("heartbeat_at", 0)), dt.UTC)
                    .strftime("%Y-%m-%dT%H:%M:%SZ")})
    return sorted(out, key=lambda d: str(d["id"]))


def foreign_connectors(shared: SharedStore, own: str) -> set[str]:
    """Connectors whose lease another daemon holds now (their documents are not this daemon's business)."""
    out = set()
    now = _now()
    for path in shared.list("leases/"):
        name = path.rsplit("/", 1)[-1].removesuffix(".json")
        if not name.startswith("connector-"):
            continue
        record = shared.get(f"leases/{name}.json")
        if record and record.doc.get("holder") != own and float(record.doc.get("expires_at", 0) or 0) > now:
            out.add(name.removeprefix("connector-"))
    return out


class Heartbeat:
    """The thread that renews this daemon's leases every third of the TTL."""

    def __init__(self, leases: Leases, stopping: threading.Event) -> None:
        self.leases = leases
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name="syncd-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.leases.ttl / 3):
            try:
                self.leases.renew()
            except SyncdError as exc:  # renew() logs each failure; nothing else may end this thread
                log.warning("lease.renew_failed", error=str(exc))

    def stop(self) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout=self.leases.ttl)
