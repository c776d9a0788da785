"""The store's side of a distributed rebuild (``syncd reindex --ray``): Lance fragments written by many
workers, committed once by the driver.

This is part of the store, apart from ``store.py`` because the cluster's workers import it: it needs only
Lance's own Python API (pylance) and Arrow, never LanceDB, so a worker writes its fragment without opening a
LanceDB connection. ``store.py`` stays the only module that imports lancedb.

* ``write_fragments`` (a worker): one batch's rows as Lance data files in the live table's folder, not yet
  part of any version; readers never see them.
* ``replace_content`` (the driver): one commit that makes those fragments the live table's whole content,
  then replays what other writers committed to the table after the build's snapshot.
* ``sweep_orphans``: data files a build wrote but never committed (the driver was killed, a worker was
  retried after writing) are removed by the next build.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog

from syncd.state import read_json, write_json_atomic
from syncd.store import REPLACE_PROPERTY, Store, sql_string

log = structlog.get_logger("syncd.store_build")

ORPHAN_GRACE_S = 10.0
"""A data file younger than this that no version names may belong to another writer's commit under way
(a daemon's merge writes its files, then commits): it is left for the next sweep."""

DIFF_KEYS_PER_QUERY = 512
"""Documents per filter when comparing two versions of the table."""

DIFF_COLUMNS = ("doc_key", "chunk_id", "content_hash", "revision", "doc_identity")


def write_fragments(rows: pa.Table | pa.RecordBatchReader, dataset_uri: str, *,
                    storage_options: Mapping[str, str] | None = None, max_rows_per_file: int = 1 << 20,
                    data_storage_version: str | None = None) -> list[str]:
    """Write ``rows`` as data files of the dataset at ``dataset_uri`` without committing them; returns the
    fragments' metadata as JSON (small, and plain text across processes)."""
    import lance

    fragments = lance.fragment.write_fragments(rows, dataset_uri, schema=rows.schema, mode="append",
                                               max_rows_per_file=max_rows_per_file,
                                               data_storage_version=data_storage_version,
                                               storage_options=dict(storage_options or {}) or None)
    return [json.dumps(f.to_json()) for f in fragments]


def fragment_files(fragments: Iterable[str]) -> list[str]:
    """The data file paths (relative to the dataset's ``data`` folder) of fragments given as JSON."""
    out = []
    for text in fragments:
        for f in json.loads(text).get("files", []):
            out.append(str(f["path"]))
    return out


@dataclass(frozen=True, kw_only=True)
class Replaced:
    """What ``replace_content`` committed."""

    version: int
    """The table version holding the rebuilt content (before any replay)."""
    replayed_docs: int
    """Documents another writer changed after the build's snapshot, whose rows were carried over."""
    final_version: int


def _dataset(uri: str, storage_options: Mapping[str, str] | None, version: int | None = None) -> Any:
    import lance

    return lance.dataset(uri, version=version, storage_options=dict(storage_options or {}) or None)


def _fragment_keys(ds: Any) -> dict[int, tuple[tuple[str, ...], str]]:
    """Each fragment's identity in a version: its data files and deletion file."""
    out = {}
    for frag in ds.get_fragments():
        meta = frag.metadata
        deletion = meta.deletion_file
        out[frag.fragment_id] = (tuple(str(f.path) for f in meta.files),
                                 "" if deletion is None else str(deletion.path(frag.fragment_id)))
    return out


def changed_docs(uri: str, before: int, after: int, *, storage_options: Mapping[str, str] | None = None) -> set[str]:
    """The ``doc_key`` of every document whose rows differ between versions ``before`` and ``after``.

    Only fragments that differ between the two versions are read for candidates (a commit writes new
    fragments or deletion files; a compaction rewrites fragments, whose documents are then compared and
    found equal), so the cost follows what was written in between, not the table's size."""
    if before == after:
        return set()
    old, new = _dataset(uri, storage_options, before), _dataset(uri, storage_options, after)
    old_frags, new_frags = _fragment_keys(old), _fragment_keys(new)
    candidates: set[str] = set()
    for ds, frags, other in ((new, new_frags, old_frags), (old, old_frags, new_frags)):
        for frag in ds.get_fragments():
            if other.get(frag.fragment_id) != frags[frag.fragment_id]:
                candidates.update(frag.to_table(columns=["doc_key"]).column("doc_key").to_pylist())
    changed: set[str] = set()
    keys = sorted(candidates)
    for start in range(0, len(keys), DIFF_KEYS_PER_QUERY):
        part = keys[start:start + DIFF_KEYS_PER_QUERY]
        where = "doc_key IN (" + ", ".join(sql_string(k) for k in part) + ")"
        rows_old = _doc_rows(old.to_table(columns=list(DIFF_COLUMNS), filter=where))
        rows_new = _doc_rows(new.to_table(columns=list(DIFF_COLUMNS), filter=where))
        changed.update(k for k in part if rows_old.get(k) != rows_new.get(k))
    return changed


def _doc_rows(table: pa.Table) -> dict[str, set[tuple[Any, ...]]]:
    out: dict[str, set[tuple[Any, ...]]] = {}
    columns = [table.column(c).to_pylist() for c in DIFF_COLUMNS]
    for values in zip(*columns, strict=True):
        out.setdefault(values[0], set()).add(values[1:])
    return out


def replace_content(store: Store, fragments: Sequence[str], *, read_version: int,
                    storage_options: Mapping[str, str] | None = None) -> Replaced:
    """Make ``fragments`` the live table's whole content in one commit, then carry over what other writers
    committed after ``read_version`` (the build's snapshot).

    The commit is an ``Update`` that removes every fragment of the latest version and adds the new ones: one
    manifest write, so readers see the old content or the new, never a mix, and the table keeps its name and
    its indexes (rows they do not cover yet are searched without them until the service folds them in). A
    live table whose schema differs from the build's is replaced with an ``Overwrite`` instead, and its
    full-text index made again.

    A daemon that wrote during the build committed its documents to versions after ``read_version``; the
    build read those sources before or after the edit. Its rows are the newer truth (the daemon commits only
    after reading the source), so for every document whose rows changed between ``read_version`` and the
    version replaced, the daemon's rows are written over the rebuilt ones right after the replacement, in
    one more commit through the store (``Store.apply``). A daemon whose next commit meets the replacement
    retries it on the new version, as after any concurrent commit.
    """
    import lance
    from lance.fragment import FragmentMetadata

    uri = dataset_uri(store)
    new_fragments = [FragmentMetadata.from_json(text) for text in fragments]
    while True:
        latest = _dataset(uri, storage_options)
        base = latest.version
        same_schema = latest.schema.equals(new_schema(store), check_metadata=True)
        operation: Any
        if same_schema:
            operation = lance.LanceOperation.Update(
                removed_fragment_ids=[f.fragment_id for f in latest.get_fragments()], updated_fragments=[],
                new_fragments=new_fragments)
        else:
            operation = lance.LanceOperation.Overwrite(new_schema(store), new_fragments)
        try:
            # Marked as syncd's own content replacement, as ``Store.replace_contents`` marks its commits.
            committed = lance.LanceDataset.commit(uri, lance.Transaction(
                read_version=base, operation=operation, transaction_properties={REPLACE_PROPERTY: "replace_contents"}),
                storage_options=dict(storage_options or {}) or None)
        except OSError as exc:
            # Another writer committed between our look at the latest version and the commit, in a way
            # Lance cannot rebase onto (it touched fragments we remove): look again and retry.
            if "conflict" in str(exc).lower() or "concurrent" in str(exc).lower() or "retry" in str(exc).lower():
                log.info("reindex.commit_retry", reason=str(exc)[:200])
                continue
            raise
        if committed.version != base + 1:
            # A commit slipped in between and Lance rebased ours onto it (an append that touched nothing we
            # removed): its rows were kept beside ours. Replay from there too.
            log.warning("reindex.commit_rebased", base=base, committed=committed.version)
        break
    if not same_schema:
        store.table.checkout_latest()
        store._rebuild_indexes(store.table)
    replayed = _replay(store, uri, read_version=read_version, replaced=committed.version - 1,
                       storage_options=storage_options)
    final = _dataset(uri, storage_options).version
    log.info("reindex.committed", version=committed.version, replayed_docs=replayed, final_version=final)
    return Replaced(version=committed.version, replayed_docs=replayed, final_version=final)


def _replay(store: Store, uri: str, *, read_version: int, replaced: int,
            storage_options: Mapping[str, str] | None) -> int:
    keys = changed_docs(uri, read_version, replaced, storage_options=storage_options)
    if not keys:
        return 0
    source = _dataset(uri, storage_options, replaced)
    store.table.checkout_latest()
    ordered = sorted(keys)
    for start in range(0, len(ordered), DIFF_KEYS_PER_QUERY):
        part = ordered[start:start + DIFF_KEYS_PER_QUERY]
        where = "doc_key IN (" + ", ".join(sql_string(k) for k in part) + ")"
        rows = source.to_table(filter=where).cast(new_schema(store))
        store.apply(rows, part)
    return len(keys)


def new_schema(store: Store) -> pa.Schema:
    from syncd.store import schema

    return schema(store.dim, store.signature)


def dataset_uri(store: Store) -> str:
    """The Lance dataset behind the store's live table."""
    return str(store.table.to_lance().uri)


# -- a build's record, and the sweep of what a failed build left -----------------------------------------------
def marker_path(state_dir: Path) -> Path:
    return state_dir / "reindex-build.json"


def begin_build(state_dir: Path, *, dataset: str, read_version: int,
                previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record a build under way (read by the next build's sweep if this one never commits). The window to
    sweep reaches back to an earlier build that never committed (``previous``), until one build ends."""
    now = time.time()
    record = {"dataset": dataset, "read_version": read_version, "started_at": now, "pid": os.getpid(),
              "host": socket.gethostname(), "sweep_since": now - 1.0, "sweep_version": read_version}
    if previous is not None:
        record["sweep_since"] = min(now - 1.0, float(previous.get("sweep_since", now)))
        record["sweep_version"] = min(read_version, int(previous.get("sweep_version", read_version)))
    write_json_atomic(marker_path(state_dir), record)
    return record


def end_build(state_dir: Path) -> None:
    marker_path(state_dir).unlink(missing_ok=True)


def pending_build(state_dir: Path) -> dict[str, Any] | None:
    data = read_json(marker_path(state_dir))
    return data if isinstance(data, dict) and "dataset" in data else None


def referenced_files(uri: str, since_version: int, *, storage_options: Mapping[str, str] | None = None) -> set[str]:
    """Data files (relative to ``data/``) named by any version from ``since_version`` on."""
    ds = _dataset(uri, storage_options)
    names: set[str] = set()
    for entry in ds.versions():
        version = int(entry["version"])
        if version < since_version:
            continue
        for frag in _dataset(uri, storage_options, version).get_fragments():
            names.update(str(f.path) for f in frag.metadata.files)
    return names


def _data_files(uri: str, storage_options: Mapping[str, str] | None) -> list[tuple[str, float]]:
    """(name, modification time) of every file in the dataset's ``data`` folder, local or on an object store."""
    from syncd.coordination import is_object_store, obstore_options

    if not is_object_store(uri):
        folder = Path(uri.removeprefix("file://")) / "data"
        try:
            return [(e.name, e.stat().st_mtime) for e in os.scandir(folder) if e.is_file()]
        except FileNotFoundError:
            return []
    import obstore
    from obstore.store import from_url

    config, client = obstore_options(uri, dict(storage_options or {}))
    store = from_url(uri.rstrip("/") + "/data", config=config, client_options=client)  # type: ignore[call-overload]
    return [(str(meta["path"]).rsplit("/", 1)[-1], meta["last_modified"].timestamp())
            for page in obstore.list(store) for meta in page]


def _delete_data_file(uri: str, name: str, storage_options: Mapping[str, str] | None) -> None:
    from syncd.coordination import is_object_store, obstore_options

    if not is_object_store(uri):
        (Path(uri.removeprefix("file://")) / "data" / name).unlink(missing_ok=True)
        return
    import obstore
    from obstore.store import from_url

    config, client = obstore_options(uri, dict(storage_options or {}))
    obstore.delete(from_url(uri.rstrip("/") + "/data", config=config, client_options=client), name)  # type: ignore[call-overload]


def sweep_orphans(uri: str, *, since: float, until: float, since_version: int, delete: Iterable[str] = (),
                  storage_options: Mapping[str, str] | None = None, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Delete the data files of ``uri`` written between ``since`` and ``until`` (a failed build's time) that
    no version from ``since_version`` on names, and are older than ``grace_s``; plus the files in ``delete``
    (a build's own, known uncommitted) that no version names. Returns the removed names."""
    referenced = referenced_files(uri, since_version, storage_options=storage_options)
    now = time.time()
    explicit = set(delete)
    removed = []
    for name, mtime in _data_files(uri, storage_options):
        if name in referenced:
            continue
        in_window = since <= mtime <= until and mtime <= now - grace_s
        if name in explicit or in_window:
            try:
                _delete_data_file(uri, name, storage_options)
                removed.append(name)
            except Exception as exc:  # noqa: BLE001 - the next build sweeps again
                log.warning("reindex.sweep_failed", file=name, error=str(exc)[:200])
    if removed:
        log.info("reindex.swept", files=len(removed), dataset=uri)
    return removed
