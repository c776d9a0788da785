"""Wiring: build the store, model, chunker, connectors and engine from a Config."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from connectors.base import Connector, ConnectorContext
from syncd.chunking import CHUNKER_VERSION, Chunker
from syncd.config import Config, ConnectorConfig
from syncd.errors import SyncdError
from syncd.metrics import Metrics
from syncd.pipeline import Engine
from syncd.registry import connector_class
from syncd.state import StateDir
from syncd.store import Store

log = structlog.get_logger("syncd.runtime")


class WriterLocked(SyncdError):
    """Another syncd process is writing this store."""


def signature(config: Config, model_id: str, dim: int) -> str:
    """Everything that changes vectors or chunk boundaries: a change means a rebuild."""
    data = {"model": model_id, "dim": dim, "max_tokens": config.chunking.max_tokens,
            "overlap_tokens": config.chunking.overlap_tokens, "chunker": CHUNKER_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_connector(config: Config, cc: ConnectorConfig, state: StateDir) -> Connector:
    cls = connector_class(cc.type)
    context = ConnectorContext(state_dir=state.connector_dir(cc.name), base_dir=config.base_dir, limits=config.limits)
    return cls(cc, context)


def build_embedder(config: Config, *, backend: str | None = None) -> Any:
    """The embedder for ``config`` on ``backend``; by default the backend ``choose_backend`` gives, which is
    the one a Runtime of the same config resolved in this process (the service's second, /search model)."""
    from syncd.embedding import from_config

    return from_config(config, backend=backend or choose_backend(config).backend)


def make_chunker(config: Config, embedder: Any) -> Chunker:
    """The chunker for ``config``, measuring with ``embedder``'s own tokenizer (the cluster reindex's read
    tasks build theirs with it too, so chunk boundaries and hashes are the same everywhere)."""
    return Chunker(embedder.token_counter(), max_tokens=config.chunking.max_tokens,
                   overlap_tokens=config.chunking.overlap_tokens, model_id=embedder.model_id)


@dataclass(frozen=True, kw_only=True)
class BackendChoice:
    """The embedding backend a store runs on and why (``/status`` → ``embedding``, ``syncd status``)."""

    backend: str
    """torch, onnx or onnx-int8."""
    reason: str
    configured: str
    """The config's ``[embedding] backend``: auto, or the backend it names."""
    signature: str = ""
    """The store signature this backend gives: a kept choice holds while the store's is this one (or none)."""
    export_seconds: float = 0.0
    """Time this call spent exporting the ONNX model (0: found in the cache, or not needed)."""

    def as_info(self) -> dict[str, str]:
        return {"backend": self.backend, "backend_reason": self.reason}


_CHOSEN: dict[tuple[str, ...], BackendChoice] = {}
_CHOSEN_LOCK = threading.Lock()

_WHY_ONNX = ("a new index on a CPU: ONNX int8 runs the same model faster than PyTorch at the same retrieval "
             "quality, and starts without importing torch")
_WHY_KEPT = ("the index was built with it: an existing index keeps its backend (set [embedding] backend to "
             "change it, which re-embeds everything)")


def choose_backend(config: Config, *, prepare: bool = True, announce: bool = True) -> BackendChoice:
    """The backend ``config``'s store runs on.

    An explicit ``[embedding] backend`` wins. With ``auto``, an existing index keeps the backend it was built
    with (its signature in the live table's schema metadata says which), so an upgrade never re-embeds silently; a new
    index (or one the settings force to rebuild anyway) gets ONNX int8 on a CPU, and PyTorch on a GPU or for a
    model the ONNX path cannot serve (not mean pooling, onnxruntime missing, a failed export), logged with the
    reason. With ``prepare`` (a writer's start, ``syncd model prepare``) the ONNX export the choice needs is
    done now, once per cache (file-locked); without it (status, verify) nothing is written or imported.
    A prepared choice is kept for the process, so every model built for the store runs the same backend.
    ``announce=False`` (the Python API, a library in someone else's process) logs nothing."""
    emb = config.embedding
    key = (str(config.state_dir), str(config.base_dir), emb.model, emb.backend, emb.device,
           str(config.chunking.max_tokens), str(config.chunking.overlap_tokens))
    stored = _stored_signature(config)
    with _CHOSEN_LOCK:
        kept = _CHOSEN.get(key)
    if kept is not None and stored in (None, kept.signature):
        return dataclasses.replace(kept, export_seconds=0.0)
    choice = _choose(config, stored, prepare=prepare, announce=announce)
    if prepare:
        with _CHOSEN_LOCK:
            _CHOSEN[key] = choice
    if prepare and announce:
        fallback = emb.backend == "auto" and choice.backend == "torch" and "the index was built" not in choice.reason
        (log.warning if fallback else log.info)(
            "embedding.backend_fallback" if fallback else "embedding.backend", backend=choice.backend,
            configured=emb.backend, reason=choice.reason)
    return choice


def _stored_signature(config: Config) -> str | None:
    from syncd.coordination import SharedFacts, shared_store
    from syncd.store import PointerFile, read_signature

    shared = shared_store(config) if config.store.is_object_store else None
    facts = SharedFacts(shared) if shared is not None else PointerFile(config.state_dir / "store.json")
    return read_signature(config.store_uri, config.store.table, facts=facts,
                          storage_options=shared.options if shared is not None else None)


def _choose(config: Config, stored: str | None, *, prepare: bool, announce: bool) -> BackendChoice:
    from syncd.embedding import BACKENDS, cuda_device, model_dim, model_id, onnx_unsupported, resolve_model_path

    emb = config.embedding
    path = resolve_model_path(emb.model, base_dir=config.base_dir)
    dim = model_dim(path)

    def make(backend: str, reason: str) -> BackendChoice:
        return BackendChoice(backend=backend, reason=reason, configured=emb.backend,
                             signature=signature(config, model_id(emb.model, path, backend), dim))

    if emb.backend != "auto":
        choice = make(emb.backend, "set in the config ([embedding] backend)")
        return _prepared(config, choice, announce=announce) if prepare else choice
    rebuild = ""
    if stored is not None:
        for backend in BACKENDS:
            choice = make(backend, _WHY_KEPT)
            if choice.signature == stored:
                problem = onnx_unsupported(path) if backend == "torch" else None
                if problem:
                    return make(backend, f"{problem} (the index was built with it)")
                # The index's backend is kept even if its export fails now: never a silent re-embedding.
                return _prepared(config, choice, announce=announce) if prepare else choice
        rebuild = "the index is rebuilt for changed settings, so it is new: "
    if cuda_device(emb.device):
        return make("torch", f"{rebuild}a GPU device ({emb.device}): int8 quantisation is a CPU optimisation")
    problem = onnx_unsupported(path)
    if problem is not None:
        return make("torch", rebuild + problem)
    choice = make("onnx-int8", rebuild + _WHY_ONNX)
    if not prepare:
        return choice
    try:
        return _prepared(config, choice, announce=announce)
    except (SyncdError, OSError) as exc:
        return make("torch", f"{rebuild}the ONNX export failed: {exc}")


def _prepared(config: Config, choice: BackendChoice, *, announce: bool) -> BackendChoice:
    """``choice`` with the ONNX export it needs done (a visible, one-time step: logged when it runs)."""
    if choice.backend == "torch":
        return choice
    from syncd.embedding import OnnxEmbedder, from_config

    embedder = from_config(config, backend=choice.backend)
    assert isinstance(embedder, OnnxEmbedder)
    if embedder.exported:
        return choice
    if announce:
        log.info("model.exporting", model=config.embedding.model, backend=choice.backend,
                 cache=str(embedder.cache_dir),
                 note="a one-time step (tens of seconds); every later start of this install reuses it")
    embedder.export()
    if embedder.export_seconds and announce:
        log.info("model.exported", path=str(embedder.onnx_path), seconds=round(embedder.export_seconds, 2))
    return dataclasses.replace(choice, export_seconds=embedder.export_seconds)


class StoreFolderLocked(SyncdError):
    """Another syncd process, with another state folder, writes this local store folder."""


class WriterLock:
    """An exclusive flock on ``<state>/writer.lock``: one writer per store. The kernel drops it on crash.

    ``store_folder``: the lock a local store folder itself holds (``<store>/.syncd-writer.lock``), so two
    daemons with different state folders cannot both write one folder (a local folder has no leases)."""

    def __init__(self, state_dir: Path, *, store_folder: Path | None = None) -> None:
        self.store_folder = store_folder
        self.path = store_folder / ".syncd-writer.lock" if store_folder is not None else state_dir / "writer.lock"
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        from syncd.errors import ConfigError

        key = "store.uri" if self.store_folder is not None else "state.dir"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # the first write to the folder: a file there, or read-only
            raise ConfigError(f"{key}: cannot write {self.path}: {exc.strerror or exc}", key=key) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "?"
            os.close(fd)
            if self.store_folder is not None:
                pid, _, state = holder.partition(" ")
                raise StoreFolderLocked(
                    f"store.uri: another syncd process (pid {pid}, state folder {state or '?'}) writes the store "
                    f"folder {self.store_folder}; a local folder takes one daemon (several daemons share an "
                    "object store: s3://, gs://, az://)") from None
            raise WriterLocked(
                f"another syncd process (pid {holder}) is writing this store; stop it or use `syncd status`"
            ) from None
        os.ftruncate(fd, 0)
        record = str(os.getpid()) if self.store_folder is None else f"{os.getpid()} {self.state_dir}"
        os.write(fd, record.encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Runtime:
    """The engine and everything it needs, built from a config."""

    def __init__(self, config: Config, *, embedder: Any | None = None, lock: bool = True,
                 metrics: Metrics | None = None, prepare: bool | None = None) -> None:
        """``prepare`` (default: ``lock``, i.e. for writers) does the ONNX export the backend needs now;
        readers (status, verify) never export or import a model library."""
        from syncd.coordination import Heartbeat, Leases, shared_store, store_kwargs

        self.config = config
        self.state = StateDir(config.state_dir)
        self.lock = WriterLock(config.state_dir) if lock else None
        self.folder_lock: WriterLock | None = None
        self.leases: Leases | None = None
        self.heartbeat: Heartbeat | None = None
        self.stopping = threading.Event()
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.shared = shared_store(config)
            """The store's ``_syncd/`` folder on an object store (None for a local folder)."""
            if lock and self.shared is None:
                self.folder_lock = WriterLock(config.state_dir, store_folder=Path(config.store_uri))
                self.folder_lock.acquire()
            if lock and self.shared is not None:
                self._take_leases(config)
            if embedder is None:
                self.backend = choose_backend(config, prepare=lock if prepare is None else prepare)
                embedder = build_embedder(config, backend=self.backend.backend)
            else:
                self.backend = BackendChoice(backend=str(getattr(embedder, "backend", "custom")),
                                             reason="an embedder given by the caller", configured="custom")
            self.embedder = embedder
            self.embedding_info = self.backend.as_info()
            """``/status`` → ``embedding``: the backend in use and why."""
            if metrics is not None:
                metrics.model_export_seconds.set(self.backend.export_seconds)
                metrics.embedding_backend.labels(backend=self.backend.backend,
                                                 configured=self.backend.configured).set(1)
                if hasattr(embedder, "on_load"):
                    embedder.on_load = metrics.model_load_seconds.set
            self.signature = signature(config, self.embedder.model_id, self.embedder.dim)
            self.store = Store(config.store_uri, config.state_dir, base_table=config.store.table,
                               dim=self.embedder.dim, signature=self.signature, **store_kwargs(config, self.shared))
            if metrics is not None:
                self.store.on_commit_retry = metrics.commit_retries.inc
            self.chunker = make_chunker(config, self.embedder)
            self.connectors = {cc.name: build_connector(config, cc, self.state) for cc in config.connectors}
            self.engine = Engine(store=self.store, embedder=self.embedder, chunker=self.chunker,
                                 connectors=self.connectors, state=self.state, limits=config.limits,
                                 max_batch_docs=config.sync.max_batch_docs,
                                 max_delete_fraction=config.sync.max_delete_fraction, metrics=metrics)
            if self.shared is not None:
                # The table holds other daemons' connectors too: this engine sees and writes only its own,
                # and the change journal's repair describes only theirs.
                self.engine.only_own_connectors = True
                self.store.journal.own = frozenset(self.connectors)
            if self.leases is not None:
                self.engine.write_guard = self._may_write
        except BaseException:
            self.close()
            raise

    def _take_leases(self, config: Config) -> None:
        """Object store: reachable, honouring conditional writes, and this config's connectors owned here."""
        from syncd.coordination import Heartbeat, Leases

        assert self.shared is not None
        import syncd.redact as redact_mod

        redact_mod.register_environment()
        self.shared.check()
        if not config.store.concurrent_writers:
            return
        leases = Leases(self.shared, ttl=config.store.lease_ttl)
        self.shared.check_conditional_writes(leases.daemon_id)
        leases.acquire_connectors([cc.name for cc in config.connectors], stopping=self.stopping)
        self.leases = leases
        leases.acquire("maintenance", wait=False)
        leases.write_heartbeat()
        log.info("store.leases", daemon=leases.daemon_id, connectors=leases.connectors(),
                 maintenance=leases.maintainer, ttl_s=config.store.lease_ttl)
        self.heartbeat = Heartbeat(leases, self.stopping)
        self.heartbeat.start()

    def _may_write(self, connector: str) -> None:
        """Before a commit for ``connector``: this daemon still owns it (its lease renewed within the TTL)."""
        from syncd.coordination import LeaseLost

        if self.leases is not None and not self.leases.holds_connector(connector):
            holder = self.leases.lost.get(f"connector-{connector}", "")
            raise LeaseLost(f"connector {connector!r}: this daemon's lease is not renewed"
                            + (f" (daemon {holder} holds it now)" if holder else " (the store did not answer)"))

    def add_connector_lease(self, name: str) -> None:
        """A connector added by a reload: owned here first (``ConnectorHeld`` if another daemon has it)."""
        if self.leases is not None:
            self.leases.acquire(f"connector-{name}", stopping=self.stopping)
        if self.shared is not None:
            self.store.journal.own = frozenset({*(self.store.journal.own or ()), name})

    def drop_connector_lease(self, name: str) -> None:
        if self.leases is not None:
            self.leases.release(f"connector-{name}")
        if self.shared is not None:
            self.store.journal.own = frozenset(self.store.journal.own or ()) - {name}

    def daemons(self) -> list[dict[str, Any]] | None:
        """The store's live daemons (``store.daemons``); None for a local folder."""
        from syncd.coordination import live_daemons

        if self.shared is None:
            return None
        return live_daemons(self.shared)

    def open(self, *, load_index: bool = True) -> bool:
        """Open the store; returns True when the index settings changed and a rebuild is needed.

        ``load_index=False`` skips reading the engine's view of the indexed documents (a full reindex
        builds a new table without it, and the view of a large index is costly while being read)."""
        stored = self.store.stored_signature()
        self.store.open(create=True)
        wrong = self.store.foreign_schema()
        if load_index and wrong:
            from syncd.errors import StoreError

            raise StoreError(f"the table {self.store.table_name} in {self.store.uri} was overwritten by another "
                             f"program (columns {', '.join(wrong)} are missing or changed); `syncd reindex` rebuilds "
                             "it from the sources")
        if self.lock is not None and not wrong:
            # A crash between a commit and its change journal entries is repaired here, from the table's
            # versions, before anything else is written.
            self.store.journal.catch_up()
        if load_index:
            self.engine.load_index()
        needs_rebuild = stored is not None and stored != self.signature
        if needs_rebuild:
            log.warning("index.settings_changed", stored=stored, current=self.signature,
                        action="rebuilding the index so vectors are never mixed")
        return needs_rebuild

    @property
    def model_load_seconds(self) -> float:
        """The fixed start cost this process paid for the model so far: the ONNX export, when this start did
        it, plus loading (imports and weights, or the ONNX session); 0 while the model was never needed."""
        return self.backend.export_seconds + float(getattr(self.embedder, "load_seconds", 0.0))

    def close(self) -> None:
        for connector in getattr(self, "connectors", {}).values():
            connector.close()
        if getattr(self, "state", None) is not None:
            self.state.save()
        self.stopping.set()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.leases is not None:
            self.leases.close()  # after the last commit: a successor takes the connectors at once
            self.leases = None
        if self.folder_lock is not None:
            self.folder_lock.release()
        if self.lock is not None:
            self.lock.release()
