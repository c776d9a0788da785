"""``syncd reindex --ray``: a full rebuild spread over a Ray cluster.

The driver (this process) lists every connector's documents, streaming, a batch at a time; the cluster
does the rest with the same stage functions as ``Engine.rebuild`` (``syncd.pipeline``):

* a read task per batch (``_prepare``) reads, extracts and chunks its documents. Where every node can read
  the source itself (a filesystem connector: the path mounted on every node) the task reads it; otherwise
  (git mirrors, wikis: the driver holds the mirror, the session, the rate limit) the driver reads the
  documents and ships their bytes with the task;
* an actor pool (``_EmbedWriter``), one model per actor, loaded offline from the packaged model on the
  backend the driver chose (``syncd.runtime.choose_backend``), embeds each prepared batch and writes its
  rows as Lance data files into the live table's folder, uncommitted (``syncd.store_build``);
* the driver collects the fragments, the fingerprint cache and the failures, and commits once
  (``store_build.replace_content``), replaying what daemons committed meanwhile.

Ray retries a read task, or restarts an actor and retries its call, when a worker dies; a retried call
writes its files again and the first attempt's are swept as orphans. A failed or cancelled build commits
nothing: the live table is untouched, and the files it wrote are removed (the ones it knows of at once,
the rest by the next build's sweep).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import structlog

from syncd.config import Config
from syncd.errors import ConfigError, DocumentError, DocumentGone, DocumentSkipped, SyncdError
from syncd.models import SourceDocument, SyncSummary

log = structlog.get_logger("syncd.cluster")

WORKER_READABLE = frozenset({"filesystem"})
"""Connector types whose sources the cluster's nodes read themselves (a path mounted on every node). The
others hold a mirror or a session on the driver (git, MediaWiki, Confluence): the driver ships their bytes."""

CONNECT_TIMEOUT_S = 5.0
"""How long the driver tries to reach the cluster's head before it gives up (exit 2)."""


class ClusterUnavailable(ConfigError):
    """The Ray cluster cannot be reached or joined (a usage error: exit 2)."""


class ClusterBuildFailed(SyncdError):
    """A batch failed on the cluster after Ray's retries: nothing was committed."""


@dataclass(frozen=True, kw_only=True)
class _Job:
    """What every task and actor of one build needs, shipped once (``ray.put``)."""

    build_id: str
    config: Config
    backend: str
    dataset: str
    storage_options: dict[str, str]
    dim: int
    signature: str
    data_storage_version: str | None
    threads: int


@dataclass
class NodeFigures:
    """Per node: what its read tasks and actors did (the JSON summary's ``nodes``)."""

    node: str
    host: str
    docs_read: int = 0
    read_seconds: float = 0.0
    chunks_embedded: int = 0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    model_load_seconds: float = 0.0
    actors: set[int] = field(default_factory=set)
    peak_rss_mb: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "host": self.host, "docs_read": self.docs_read,
                "read_seconds": round(self.read_seconds, 3), "chunks_embedded": self.chunks_embedded,
                "embed_seconds": round(self.embed_seconds, 3), "write_seconds": round(self.write_seconds, 3),
                "model_load_seconds": round(self.model_load_seconds, 3), "actors": len(self.actors),
                "peak_rss_mb": round(self.peak_rss_mb, 1)}


# -- on the workers -----------------------------------------------------------------------------------------
class _WorkerContext:
    """Per worker process and build: the chunker and the connectors that read on the workers."""

    def __init__(self, job: _Job) -> None:
        from syncd.embedding import from_config
        from syncd.runtime import make_chunker

        self.job = job
        self.chunker = make_chunker(job.config, from_config(job.config, backend=job.backend))
        self._connectors: dict[str, Any] = {}

    def connector(self, name: str) -> Any:
        if name not in self._connectors:
            import tempfile

            from connectors.base import ConnectorContext
            from syncd.registry import connector_class

            cc = self.job.config.connector(name)
            # Reading needs no state of its own; the driver's state folder need not exist on this node.
            context = ConnectorContext(state_dir=Path(tempfile.mkdtemp(prefix=f"syncd-{name}-")),
                                       base_dir=self.job.config.base_dir, limits=self.job.config.limits)
            self._connectors[name] = connector_class(cc.type)(cc, context)
        return self._connectors[name]


_CONTEXTS: dict[str, _WorkerContext] = {}


def _context(job: _Job) -> _WorkerContext:
    key = job.build_id
    if key not in _CONTEXTS:
        _CONTEXTS.clear()  # one build at a time per worker process
        _CONTEXTS[key] = _WorkerContext(job)
    return _CONTEXTS[key]


def _where() -> tuple[str, str]:
    import ray

    return ray.get_runtime_context().get_node_id(), socket.gethostname()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prepare(job: _Job, name: str, doc_ids: list[str], shipped: dict[str, SourceDocument] | None,
             problems: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """A read task: read (or take the shipped bytes of), extract and chunk one batch."""
    from syncd.pipeline import document_acl, prepare_batch

    started = time.monotonic()
    ctx = _context(job)
    read = ctx.connector(name).read if shipped is None else shipped.__getitem__
    wanted = [d for d in doc_ids if d not in problems and (shipped is None or d in shipped)]
    cfg = job.config.connector(name)
    # The ACL as the single-process build stores it (empty, readable by nobody, when nothing says who may).
    batch = prepare_batch(read, wanted, ctx.chunker, job.config.limits,
                          acl_for=lambda doc: document_acl(cfg, doc)[0] or ())
    # The content has been chunked: the actor needs only the citation fields.
    for plan in batch.planned.values():
        plan.doc = dataclasses.replace(plan.doc, content=b"")
    batch.problems = {**problems, **batch.problems}
    node, host = _where()
    return {"batch": batch, "seen": len(doc_ids), "node": node, "host": host,
            "seconds": time.monotonic() - started, "rss_mb": _peak_rss_mb()}


class _EmbedWriter:
    """An actor: one model, loaded once; embeds prepared batches and writes their rows as fragments."""

    def __init__(self, job: _Job) -> None:
        from syncd.embedding import MODEL_CACHE_ENV, from_config

        self.job = job
        if MODEL_CACHE_ENV not in os.environ and not (job.config.state_dir / "models").is_dir():
            # A node without the driver's state folder exports (once, file-locked) into a cache of its own.
            import tempfile

            os.environ[MODEL_CACHE_ENV] = str(Path(tempfile.gettempdir()) / "syncd-models")
        config = job.config.model_copy(update={
            "embedding": job.config.embedding.model_copy(update={"threads": job.threads})})
        self.embedder = from_config(config, backend=job.backend)
        started = time.monotonic()
        if hasattr(self.embedder, "load"):
            self.embedder.load()
        self.load_seconds = time.monotonic() - started
        self.node, self.host = _where()

    def run(self, prepared: dict[str, Any], name: str) -> dict[str, Any]:
        from syncd.pipeline import batch_records, embed_isolated
        from syncd.store import make_rows
        from syncd.store_build import write_fragments

        batch = prepared["batch"]
        started = time.monotonic()
        vectors, failed = embed_isolated(self.embedder, batch.texts, batch.planned) if batch.texts else ({}, {})
        embedded_at = time.monotonic()
        records = batch_records(name, batch.planned, vectors, failed, dt.datetime.now(dt.UTC))
        fragments = (write_fragments(make_rows(records, self.job.dim, self.job.signature), self.job.dataset,
                                     storage_options=self.job.storage_options,
                                     data_storage_version=self.job.data_storage_version) if records else [])
        load, self.load_seconds = self.load_seconds, 0.0  # counted once, with the actor's first batch
        return {"name": name, "fragments": fragments, "problems": batch.problems, "failed": failed,
                "added": batch.fingerprints(failed), "seen": prepared["seen"], "chunks_embedded": len(vectors),
                "rows": len(records), "read": {k: prepared[k] for k in ("node", "host", "seconds", "rss_mb")},
                "node": self.node, "host": self.host, "actor": os.getpid(), "model_load_seconds": load,
                "embed_seconds": embedded_at - started, "write_seconds": time.monotonic() - embedded_at,
                "rss_mb": _peak_rss_mb()}


# -- on the driver ------------------------------------------------------------------------------------------
def check_reachable(address: str) -> None:
    """A HOST:PORT head that does not answer is a clear error at once (``ray.init`` would wait long)."""
    if address in ("", "auto") or address.startswith(("ray://", "local")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailable(f"reindex.address: {address!r} is not HOST:PORT of a Ray head", key="reindex.address")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                                 key="reindex.address") from None


def connect(address: str) -> Any:
    """Join the cluster at ``address`` (ClusterUnavailable when it cannot be reached or joined)."""
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable("reindex --ray needs Ray: pip install 'syncd[ray]'", key="reindex.engine") from None
    check_reachable(address)
    # The job's workers write to the store as the driver does: its SYNCD_* settings and its object-store
    # credentials (the standard AWS_* variables) travel with the job, so the nodes need none of their own.
    env = {k: v for k, v in os.environ.items()
           if (k.startswith("SYNCD_") and k != "SYNCD_CONFIG") or k.startswith("AWS_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")})
    try:
        ray.init(address=address or "auto", logging_level=logging.ERROR, log_to_driver=False,
                 runtime_env={"env_vars": env}, ignore_reinit_error=True)
    except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError...
        raise ClusterUnavailable(f"cannot join the Ray cluster at {address or 'auto'}: {exc}",
                                 key="reindex.address") from None
    return ray


def check_resources(available: Mapping[str, float], rc: Any) -> None:
    """The actors hold their CPUs (or GPUs) for the whole build, and the read tasks need room beside them:
    a cluster too small for both would wait for ever, so it is a config error at once."""
    cpus = rc.actors * rc.cpus_per_actor + rc.read_cpus
    gpus = rc.actors * rc.gpus_per_actor
    have_cpus, have_gpus = float(available.get("CPU", 0)), float(available.get("GPU", 0))
    if have_cpus < cpus or have_gpus < gpus:
        raise ClusterUnavailable(
            f"reindex.actors: {rc.actors} actors of {rc.cpus_per_actor:g} CPUs and {rc.gpus_per_actor:g} GPUs, plus "
            f"{rc.read_cpus:g} CPUs for read tasks, need {cpus:g} CPUs and {gpus:g} GPUs; the cluster has "
            f"{have_cpus:g} CPUs and {have_gpus:g} GPUs", key="reindex.actors")


class ClusterReindex:
    """One cluster build, driven from this process (``Runtime`` gives the store, state and connectors)."""

    def __init__(self, runtime: Any, *, address: str, only: str | None = None, progress: bool = False) -> None:
        self.rt = runtime
        self.config: Config = runtime.config
        self.rc = self.config.reindex
        self.address = address
        self.only = only
        self.progress = progress
        self.summary = SyncSummary()
        self.nodes: dict[str, NodeFigures] = {}
        self.fragments: list[str] = []
        self.extra: dict[str, Any] = {}
        self._bar: Any = None
        self._chunks = 0
        self._started = time.monotonic()

    # -- the build ------------------------------------------------------------------------------------------
    def run(self) -> SyncSummary:
        from syncd import store_build

        started = time.monotonic()
        ray = connect(self.address)
        check_resources(ray.cluster_resources(), self.rc)
        store = self.rt.store
        options = dict(store.storage_options)
        uri = store_build.dataset_uri(store)
        previous = self._sweep_previous(uri, options)
        read_version = int(store_build._dataset(uri, options).version)
        record = store_build.begin_build(self.config.state_dir, dataset=uri, read_version=read_version,
                                         previous=previous)
        job = _Job(build_id=f"{socket.gethostname()}-{os.getpid()}-{record['started_at']}", config=self.config,
                   backend=self.rt.backend.backend, dataset=uri, storage_options=options,
                   dim=store.dim, signature=store.signature, threads=max(1, int(self.rc.cpus_per_actor)),
                   data_storage_version=getattr(store_build._dataset(uri, options), "data_storage_version", None))
        names = [n for n in self.rt.connectors if self.only is None or n == self.only]
        inflight: dict[Any, Any] = {}
        actors: list[Any] = []
        try:
            job_ref = ray.put(job)
            prepare = ray.remote(_prepare).options(num_cpus=self.rc.read_cpus, max_retries=5)
            actor_cls = ray.remote(_EmbedWriter).options(
                num_cpus=self.rc.cpus_per_actor, num_gpus=self.rc.gpus_per_actor, max_restarts=5,
                max_task_retries=5, scheduling_strategy="SPREAD")
            actors = [actor_cls.remote(job_ref) for _ in range(self.rc.actors)]
            load: dict[int, int] = dict.fromkeys(range(len(actors)), 0)
            limit = self.rc.in_flight or 3 * len(actors)
            total = sum(sum(1 for _ in self.rt.connectors[n].list_documents()) for n in names) if self.progress else 0
            self._bar = _progress_bar(total, self.progress)
            self._carry_other_connectors(uri, options, read_version)
            for name in names:
                cstate = self.rt.state.connector(name)
                cstate.spill_fingerprints()
                cstate.failures.clear()
                cstate.acl_policy = self.rt.engine.acl_policy(name)
                connector = self.rt.connectors[name]
                on_workers = connector.type_name in WORKER_READABLE
                refs: Iterator[Any] = iter(connector.list_documents())
                while batch := [r.doc_id for r in islice(refs, self.rc.batch_docs)]:
                    if on_workers:
                        prepared = prepare.remote(job_ref, name, batch, None, {})
                    else:
                        shipped, problems = _read_on_driver(connector, batch)
                        prepared = prepare.remote(job_ref, name, batch, shipped, problems)
                    which = min(load, key=lambda i: load[i])
                    load[which] += 1
                    inflight[actors[which].run.remote(prepared, name)] = which
                    while len(inflight) >= limit:
                        self._collect(ray, inflight, load)
            while inflight:
                self._collect(ray, inflight, load)
            if self._bar is not None:
                self._bar.close()
            replaced = store_build.replace_content(store, self.fragments, read_version=read_version,
                                                   storage_options=options)
        except BaseException as exc:
            self._abandon(ray, inflight, actors, uri, options, record, exc)
            raise
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
        if getattr(self.rt.engine, "journal_enabled", False):
            try:
                # As after the single-process reindex: the change journal records, at the new version, the
                # documents whose content differs from what the table held before.
                store.journal.catch_up()
            except SyncdError as exc:
                log.error("journal.catch_up_failed", error=str(exc), action="retried at the next start")
        # What a killed earlier build, or a retried call of this one, wrote and no version names.
        store_build.sweep_orphans(uri, since=float(record["sweep_since"]), until=time.time(),
                                  since_version=int(record["sweep_version"]), storage_options=options)
        store_build.end_build(self.config.state_dir)
        self.rt.state.save(only_dirty=False)
        self.extra = {"engine": "ray", "address": self.address or "auto", "actors": self.rc.actors,
                      "fragments": len(self.fragments), "table_version": replaced.final_version,
                      "replayed_docs": replaced.replayed_docs, "driver_peak_rss_mb": round(_peak_rss_mb(), 1),
                      "nodes": [n.as_dict() for n in sorted(self.nodes.values(), key=lambda n: n.node)]}
        self.summary.model_load_seconds = max((n.model_load_seconds for n in self.nodes.values()), default=0.0)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _collect(self, ray: Any, inflight: dict[Any, int], load: dict[int, int]) -> None:
        from syncd.pipeline import account_rebuilt

        done, _ = ray.wait(list(inflight), num_returns=1)
        ref = done[0]
        which = inflight.pop(ref)
        load[which] -= 1
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a task that failed after Ray's retries fails the build
            raise ClusterBuildFailed(f"a batch failed on the cluster after retries: {exc}") from exc
        self.fragments.extend(result["fragments"])
        name = result["name"]
        account_rebuilt(self.rt.state.connector(name), self.summary, name, seen=result["seen"],
                        problems=result["problems"], failed=result["failed"], added=result["added"],
                        chunks_embedded=result["chunks_embedded"])
        read = result["read"]
        reader = self._node(read["node"], read["host"])
        reader.docs_read += result["seen"]
        reader.read_seconds += read["seconds"]
        reader.peak_rss_mb = max(reader.peak_rss_mb, read["rss_mb"])
        embedder = self._node(result["node"], result["host"])
        embedder.chunks_embedded += result["chunks_embedded"]
        embedder.embed_seconds += result["embed_seconds"]
        embedder.write_seconds += result["write_seconds"]
        embedder.model_load_seconds = max(embedder.model_load_seconds, result["model_load_seconds"])
        embedder.actors.add(result["actor"])
        embedder.peak_rss_mb = max(embedder.peak_rss_mb, result["rss_mb"])
        self._chunks += result["chunks_embedded"]
        if self._bar is not None:
            self._bar.update(result["seen"])
            elapsed = max(1e-6, time.monotonic() - self._started)
            self._bar.set_postfix_str(f"{self._chunks / elapsed:.0f} chunks/s, {len(self.nodes)} nodes", refresh=False)

    def _node(self, node: str, host: str) -> NodeFigures:
        if node not in self.nodes:
            self.nodes[node] = NodeFigures(node=node, host=host)
        return self.nodes[node]

    def _carry_other_connectors(self, uri: str, options: Mapping[str, str], read_version: int) -> None:
        """The rows this build does not rebuild (``carry_filter``: the other connectors' with ``--connector``,
        other daemons' on a shared store) are carried over unchanged, as fragments of the same commit, as the
        single-process rebuild copies them."""
        from syncd import store_build
        from syncd.pipeline import carry_filter

        carried = carry_filter(self.rt.store, list(self.rt.connectors), self.only)
        if carried is None:
            return
        ds = store_build._dataset(uri, options, read_version)
        scanner = ds.scanner(filter=carried, batch_size=8192)
        reader = scanner.to_reader()
        import pyarrow as pa

        schema = store_build.new_schema(self.rt.store)
        batches = (b.cast(schema) if b.schema != schema else b for b in reader)
        first = next(batches, None)
        if first is None:
            return
        import itertools

        stream = pa.RecordBatchReader.from_batches(schema, itertools.chain([first], batches))
        self.fragments.extend(store_build.write_fragments(stream, uri, storage_options=options,
                                                          data_storage_version=ds.data_storage_version))

    def _sweep_previous(self, uri: str, options: Mapping[str, str]) -> dict[str, Any] | None:
        """A build that never committed (its driver was killed) left data files: remove them now (those
        younger than the grace are removed at the end of this build). Returns its record."""
        from syncd import store_build

        previous = store_build.pending_build(self.config.state_dir)
        if previous is None or previous.get("dataset") != uri:
            return None
        removed = store_build.sweep_orphans(uri, since=float(previous["sweep_since"]), until=time.time(),
                                            since_version=int(previous["sweep_version"]), storage_options=options)
        log.warning("reindex.previous_build_swept", files=len(removed), started_at=previous["started_at"],
                    pid=previous.get("pid"))
        return previous

    def _abandon(self, ray: Any, inflight: Mapping[Any, int], actors: list[Any], uri: str,
                 options: Mapping[str, str], record: Mapping[str, Any], exc: BaseException) -> None:
        """Nothing was committed: stop the cluster's work, remove what it wrote that we know of, and leave
        the record so the next build sweeps the rest (files a call still had under way)."""
        from syncd import store_build

        if self._bar is not None:
            self._bar.close()
        for ref in inflight:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001, S110 - best effort: the actors are killed next
                pass
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110
                pass
        try:
            store_build.sweep_orphans(uri, since=float(record["started_at"]), until=0.0,
                                      since_version=int(record["read_version"]),
                                      delete=store_build.fragment_files(self.fragments), storage_options=options)
        except Exception as sweep_exc:  # noqa: BLE001 - the next build sweeps again
            log.warning("reindex.sweep_failed", error=str(sweep_exc))
        for name in self.rt.connectors:
            self.rt.state.connector(name).drop_spill()
        log.error("reindex.abandoned", reason=f"{type(exc).__name__}: {exc}"[:300], committed=False)


def _read_on_driver(connector: Any, doc_ids: list[str]) -> tuple[dict[str, SourceDocument],
                                                                  dict[str, tuple[str, bool]]]:
    """Read a batch on the driver for a connector the workers cannot read (its bytes go with the task)."""
    shipped: dict[str, SourceDocument] = {}
    problems: dict[str, tuple[str, bool]] = {}
    for doc_id in doc_ids:
        try:
            shipped[doc_id] = connector.read(doc_id)
        except DocumentGone:
            continue
        except DocumentSkipped as exc:
            problems[doc_id] = (exc.describe(), True)
        except DocumentError as exc:
            problems[doc_id] = (exc.describe(), False)
        except Exception as exc:  # noqa: BLE001 - one bad document must not fail a reindex
            problems[doc_id] = (f"extract-failed: {type(exc).__name__}", False)
    return shipped, problems


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="reindex (cluster)", unit="doc")


def reindex(runtime: Any, *, address: str, only: str | None = None,
            progress: bool = False) -> tuple[SyncSummary, dict[str, Any]]:
    """Run a cluster reindex; returns the summary and the cluster's figures for the JSON summary."""
    build = ClusterReindex(runtime, address=address, only=only, progress=progress)
    # Ray's driver prints the cluster's error messages (a killed worker's task being retried) to stdout from
    # a thread of its own: they go to stderr, so stdout holds only what syncd prints (the --json summary).
    with contextlib.redirect_stdout(sys.stderr):
        try:
            summary = build.run()
        finally:
            ray = sys.modules.get("ray")  # absent when Ray is not installed (a clear error already)
            if ray is not None and ray.is_initialized():
                ray.shutdown()
    return summary, build.extra
