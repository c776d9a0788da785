"""Wiring: build the store, model, chunker, connectors and engine from a Config."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
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


def build_embedder(config: Config) -> Any:
    from syncd.embedding import from_config

    return from_config(config)


class WriterLock:
    """An exclusive flock on ``<state>/writer.lock``: one writer per store. The kernel drops it on crash."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "writer.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        from syncd.errors import ConfigError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # the first write to the state folder: a file there, or read-only
            raise ConfigError(f"state.dir: cannot write {self.path}: {exc.strerror or exc}", key="state.dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WriterLocked(
                f"another syncd process (pid {holder}) is writing this store; stop it or use `syncd status`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Runtime:
    """The engine and everything it needs, built from a config."""

    def __init__(self, config: Config, *, embedder: Any | None = None, lock: bool = True,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.state = StateDir(config.state_dir)
        self.lock = WriterLock(config.state_dir) if lock else None
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.embedder = embedder if embedder is not None else build_embedder(config)
            self.signature = signature(config, self.embedder.model_id, self.embedder.dim)
            self.store = Store(config.store_uri, config.state_dir, base_table=config.store.table,
                               dim=self.embedder.dim, signature=self.signature, **config.store.cache_limits())
            self.store.retired_retention_s = config.sync.version_retention
            self.chunker = Chunker(self.embedder.token_counter(), max_tokens=config.chunking.max_tokens,
                                   overlap_tokens=config.chunking.overlap_tokens, model_id=self.embedder.model_id)
            self.connectors = {cc.name: build_connector(config, cc, self.state) for cc in config.connectors}
            self.engine = Engine(store=self.store, embedder=self.embedder, chunker=self.chunker,
                                 connectors=self.connectors, state=self.state, limits=config.limits,
                                 max_batch_docs=config.sync.max_batch_docs,
                                 max_delete_fraction=config.sync.max_delete_fraction, metrics=metrics)
        except BaseException:
            self.close()
            raise

    def open(self, *, load_index: bool = True) -> bool:
        """Open the store; returns True when the index settings changed and a rebuild is needed.

        ``load_index=False`` skips reading the engine's view of the indexed documents (a full reindex
        builds a new table without it; on 100k documents the view costs ~280 MB while being read)."""
        stored = self.store.stored_signature()
        self.store.open(create=True)
        self.store.drop_stale_tables()
        if load_index:
            self.engine.load_index()
        needs_rebuild = stored is not None and stored != self.signature
        if needs_rebuild:
            log.warning("index.settings_changed", stored=stored, current=self.signature,
                        action="rebuilding the index so vectors are never mixed")
        return needs_rebuild

    def close(self) -> None:
        for connector in getattr(self, "connectors", {}).values():
            connector.close()
        if getattr(self, "state", None) is not None:
            self.state.save()
        if self.lock is not None:
            self.lock.release()
