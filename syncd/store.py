"""The LanceDB store. This is the only module that imports lancedb.

One row per chunk (schema in INTERFACE.md). Every write is one ``merge_insert`` keyed on ``chunk_id``
with ``when_not_matched_by_source_delete`` scoped to the documents in the batch: all chunks of every
document in a batch are replaced, and deleted documents removed, in a single atomic commit.
Filters never contain raw document ids: they use ``doc_key``, a hex hash of (connector, doc_id).

The live table's name sits in ``<state>/store.json`` with the signature of the settings it was built
with (model, dimension, chunking). A reindex builds a new table aside and switches that pointer with an
atomic rename, so readers always open a complete table.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import structlog

from syncd.errors import StoreError, SyncdError
from syncd.lazy_imports import import_lancedb
from syncd.state import read_json, write_json_atomic

POINTER_VERSION = 1

log = structlog.get_logger("syncd.store")


def doc_key(connector: str, doc_id: str) -> str:
    """Filter-safe key of a document: hex only, whatever the id holds."""
    return hashlib.blake2b(f"{connector}\x00{doc_id}".encode(), digest_size=16).hexdigest()


def chunk_id(connector: str, doc_id: str, index: int) -> str:
    return hashlib.blake2b(f"{connector}\x00{doc_id}\x00{index}".encode(), digest_size=16).hexdigest()


def sql_string(value: str) -> str:
    """A SQL string literal for a LanceDB filter: single quotes doubled, NUL rejected."""
    if "\x00" in value:
        raise ValueError("NUL cannot appear in a filter value")
    return "'" + value.replace("'", "''") + "'"


_F = TypeVar("_F", bound=Callable[..., Any])


def translated(what: str) -> Callable[[_F], _F]:
    """The edge where library errors become syncd's: whatever LanceDB, Lance or Arrow raise inside the
    decorated method comes out as ``StoreError`` (transient: the batch is retried, the cursor holds), with
    ``what`` and the table named. syncd's own errors pass through unchanged."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except SyncdError:
                raise
            except Exception as exc:  # noqa: BLE001 - the one place a library error of any class is caught
                raise StoreError(f"{what} ({self.table_name} in {self.uri}) failed: {exc}") from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_key", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("connector", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
        pa.field("uri", pa.string()),
        pa.field("title", pa.string()),
        pa.field("revision", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("heading_path", pa.list_(pa.string())),
        pa.field("start_line", pa.int32()),
        pa.field("end_line", pa.int32()),
        pa.field("content_hash", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        # Extensions beyond INTERFACE.md:
        pa.field("doc_identity", pa.string()),  # content identity of the whole document (see SourceDocument)
        pa.field("modified_at", pa.timestamp("us", tz="UTC")),  # source's own modification time, when known
        pa.field("metadata", pa.string()),  # JSON object of source metadata: owner, mode, size, blob sha...
    ])


@dataclass(frozen=True, slots=True)
class IndexedDoc:
    """What the store holds of one document."""

    revision: str
    chunks: int
    identity: str = ""


RRF_K = 60
"""Reciprocal rank fusion constant (LanceDB's RRFReranker default)."""
_QUERY_POOL: Any = None


def _query_pool() -> Any:
    """Threads for the full-text leg of hybrid searches (created once, not per query)."""
    global _QUERY_POOL
    if _QUERY_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _QUERY_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="syncd-fts")
    return _QUERY_POOL


RESULT_COLUMNS = ["text", "doc_id", "connector", "uri", "title", "revision", "chunk_index", "heading_path",
                  "start_line", "end_line", "updated_at"]


class HashFilter:
    """The content hashes the live table may hold, in memory: 8 bytes per chunk.

    A superset of the table's hashes (every commit adds its rows' hashes, nothing is removed until the
    index is read again), so "absent" is certain and "present" is a hint that ``vectors_for`` checks. The
    writer uses it to start embedding the new chunks while the reusable vectors are still being read.
    """

    MERGE_AT = 65_536

    def __init__(self, hashes: Iterable[str] | pa.Array | pa.ChunkedArray) -> None:
        if isinstance(hashes, pa.Array) and pa.types.is_uint64(hashes.type):
            keys = hashes.to_numpy(zero_copy_only=False)
        elif isinstance(hashes, pa.ChunkedArray | pa.Array):
            keys = _hash_keys(hashes)
        else:
            keys = np.fromiter((_hash_key(h) for h in hashes), dtype=np.uint64)
        self._base = np.unique(keys)
        self._recent: set[int] = set()

    def add(self, hashes: Iterable[str]) -> None:
        self._recent.update(_hash_key(h) for h in hashes)
        if len(self._recent) >= self.MERGE_AT:
            self._base = np.union1d(self._base, np.fromiter(self._recent, dtype=np.uint64))
            self._recent = set()

    def __contains__(self, content_hash: str) -> bool:
        key = _hash_key(content_hash)
        if key in self._recent:
            return True
        i = int(np.searchsorted(self._base, np.uint64(key)))
        return i < len(self._base) and int(self._base[i]) == key

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _hash_keys(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``_hash_key`` of a whole Arrow string column without a Python string per row (at start-up the whole
    table's hashes pass through here)."""
    import pyarrow.compute as pc

    column = pc.drop_null(column)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        chunk = pc.cast(chunk, pa.string())
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        lengths = np.diff(offsets)
        if (lengths < 16).any():
            out.append(np.fromiter((_hash_key(h) for h in chunk.to_pylist()), dtype=np.uint64))
            continue
        nibbles = _HEX[data[offsets[:-1, None] + np.arange(16)]].astype(np.uint64)
        bad = (nibbles == 255).any(axis=1)
        keys = np.zeros(len(chunk), dtype=np.uint64)
        for i in range(16):
            keys = (keys << np.uint64(4)) | nibbles[:, i]
        keys[bad] = 0
        out.append(keys)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _hash_key(content_hash: str) -> int:
    """The first 64 bits of a hex content hash (anything else maps to 0, which only costs a lookup)."""
    try:
        return int(content_hash[:16], 16)
    except (TypeError, ValueError):
        return 0


class Store:
    """The chunk table. One process writes (the engine); any number read."""

    def __init__(self, uri: str, state_dir: Path, *, base_table: str, dim: int, signature: str,
                 read_consistency_interval: float | None = None, index_cache_mb: int = 1024,
                 metadata_cache_mb: int = 64) -> None:
        self.uri = uri
        self.index_cache_mb = index_cache_mb
        self.metadata_cache_mb = metadata_cache_mb
        self.state_dir = state_dir
        self.base_table = base_table
        self.dim = dim
        self.signature = signature
        self.read_consistency_interval = read_consistency_interval
        self._db: Any = None
        self.session: Any = None  # the LanceDB session (its caches) of the current connection
        self._table: Any = None
        self.table_name = base_table
        self.retired_retention_s = 900.0
        """How long a table replaced by a reindex is kept for readers that still hold it."""
        self.commits_since_maintenance = 0
        self.rows_since_indexed = 0
        """Rows written since the indexes were last brought up to date (queries scan these without them)."""
        self.last_commit_at = 0.0
        self.last_maintenance_at: float | None = None
        self.maintenance_runs = 0
        self.compactions = 0
        self.index_folds = 0
        self._fold_pending: list[str] = []
        self._fold_rows = 0
        self.maintenance_lock = threading.RLock()
        """Held by every step that rewrites the table's layout or indexes (fold, compaction, maintenance,
        a table switch): the service folds indexes on a thread of its own, next to the writer's commits."""
        self._rows_lock = threading.Lock()  # rows_since_indexed: the writer adds, a fold subtracts
        self._folded = False  # a fold committed since this handle last moved to the latest version
        self._commits_on_connection = 0
        self._opened_version: int | None = None  # a reader's: the version its connection first read
        self._refreshes = 0
        self.hash_filter: HashFilter | None = None
        """Set by ``indexed_docs`` for the live table; None while unknown (then every hash is looked up)."""

    # -- opening ---------------------------------------------------------------------------------------
    @property
    def pointer_path(self) -> Path:
        return self.state_dir / "store.json"

    def _connect(self) -> Any:
        # LanceDB's Rust logger warns on every hybrid query about a future change of projected score
        # columns; keep the service's logs to what an operator must read.
        os.environ.setdefault("LANCEDB_LOG", "error")
        lancedb = import_lancedb()

        if self._db is None:
            kwargs: dict[str, Any] = {}
            if self.read_consistency_interval is not None:
                kwargs["read_consistency_interval"] = dt.timedelta(seconds=self.read_consistency_interval)
            # Bounded caches: LanceDB's own defaults are sized for a short-lived process and let a
            # long-lived writer grow with every commit (benchmarks/diagnostics/lancedb_commit_memory.py).
            self.session = lancedb.Session(index_cache_size_bytes=self.index_cache_mb << 20,
                                           metadata_cache_size_bytes=self.metadata_cache_mb << 20)
            kwargs["session"] = self.session
            try:
                self._db = lancedb.connect(self.uri, **kwargs)
            except Exception as exc:  # noqa: BLE001 - lancedb raises OSError, ValueError, RuntimeError...
                raise StoreError(f"cannot open store {self.uri}: {exc}") from exc
        return self._db

    def pointer(self) -> dict[str, Any] | None:
        data = read_json(self.pointer_path)
        return data if isinstance(data, dict) else None

    def stored_signature(self) -> str | None:
        pointer = self.pointer()
        return None if pointer is None else str(pointer.get("signature"))

    def _table_names(self) -> list[str]:
        db = self._connect()
        result = db.list_tables()
        names = getattr(result, "tables", result)
        return list(names)

    def open(self, *, create: bool = True) -> None:
        """Open the live table (creating it, empty, when there is none and ``create`` is set)."""
        pointer = self.pointer()
        name = pointer["table"] if pointer else self._adopt_table()
        db = self._connect()
        try:
            if name in self._table_names():
                self._table = db.open_table(name)
            elif create:
                self._table = self._create(name)
                write_json_atomic(self.pointer_path, self._pointer_doc(name))
            else:
                raise StoreError(f"no index at {self.uri} (table {name!r}); run `syncd sync` first")
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"cannot open table {name!r} in {self.uri}: {exc}") from exc
        self.table_name = name
        self.hash_filter = None
        if pointer is None and create:
            write_json_atomic(self.pointer_path, self._pointer_doc(name))

    def _adopt_table(self) -> str:
        """With no pointer (a new store, or a lost state folder): the newest table built by syncd, else the
        base name. Nothing is ever dropped on a guess."""
        pattern = re.compile(rf"^{re.escape(self.base_table)}_\d{{14}}_\d{{3}}$")
        names = self._table_names()
        built = sorted(n for n in names if pattern.match(n))
        if built:
            log.warning("store.pointer_missing", adopted=built[-1], tables=names)
            return built[-1]
        return self.base_table

    def _pointer_doc(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"state_version": POINTER_VERSION, "table": name, "signature": self.signature,
                "dim": self.dim, "switched_at": time.time(), **extra}

    def _create(self, name: str) -> Any:
        from lancedb.index import FTS

        table = self._connect().create_table(name, schema=schema(self.dim), mode="overwrite")
        table.create_index("text", config=FTS(), replace=True)
        return table

    @property
    def table(self) -> Any:
        if self._table is None:
            self.open()
        return self._table

    def refresh(self) -> None:
        """Re-open by the pointer if a reindex switched tables (readers in other processes), and on a new
        connection once the table moved ``REOPEN_EVERY_COMMITS`` versions past the one this connection
        first read: a reader's connection keeps state for every version it reads, as a writer's does for
        every commit, so its memory would follow the commits made (``benchmarks/diagnostics/writer_rss.py``
        measures both). The first query on a new connection loads the indexes again, which is why it is not
        done more often (``benchmarks/diagnostics/reopen_cost.py``). A query in flight on another thread
        keeps the handle it started with."""
        pointer = self.pointer()
        if pointer and pointer["table"] != self.table_name:
            self._table = self._connect().open_table(pointer["table"])
            self.table_name = pointer["table"]
            self.hash_filter = None
            self._opened_version = None
        self._refreshes += 1
        if self._table is None or self._refreshes % VERSION_CHECK_EVERY:
            return  # reading the version looks for a newer one on disk: not before every query
        try:
            version = int(self._table.version)
        except Exception:  # noqa: BLE001 - the query that follows reports a broken table
            return
        if self._opened_version is None or version < self._opened_version:
            self._opened_version = version
        elif version - self._opened_version >= REOPEN_EVERY_COMMITS:
            self._reopen_live()

    # -- reading ---------------------------------------------------------------------------------------
    @translated("reading rows")
    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        query = self.table.search().select(list(columns))
        if where:
            query = query.where(where)
        return query.limit(None).to_arrow()

    @translated("reading the indexed documents")
    def indexed_docs(self) -> dict[tuple[str, str], IndexedDoc]:
        """Every document in the index, with its revision and chunk count; also reloads ``hash_filter``.

        Streamed in record batches and aggregated per document by Arrow, so memory follows the number of
        documents, not of chunks (no Python string per row)."""
        import pyarrow.compute as pc

        columns = ["connector", "doc_id", "revision", "doc_identity"]
        reader = self.table.search().select([*columns, "content_hash"]).limit(None).to_batches(batch_size=65_536)
        parts: list[pa.Table] = []
        keys: list[np.ndarray] = []
        for batch in reader:
            if batch.num_rows == 0:
                continue
            keys.append(_hash_keys(batch.column("content_hash")))
            part = pa.Table.from_batches([batch]).select(columns)
            parts.append(part.group_by(["connector", "doc_id"], use_threads=False).aggregate(
                [("revision", "max"), ("doc_identity", "max"), ([], "count_all")]))
        filter_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        self.hash_filter = HashFilter(pa.array(filter_keys, type=pa.uint64()))
        out: dict[tuple[str, str], IndexedDoc] = {}
        if not parts:
            return out
        merged = pa.concat_tables(parts)
        if len(parts) > 1:  # a document whose rows span two batches
            regrouped = merged.group_by(["connector", "doc_id"], use_threads=False).aggregate(
                [("revision_max", "max"), ("doc_identity_max", "max"), ("count_all", "sum")])
            merged = pa.table({"connector": regrouped["connector"], "doc_id": regrouped["doc_id"],
                               "revision_max": regrouped["revision_max_max"],
                               "doc_identity_max": regrouped["doc_identity_max_max"],
                               "count_all": regrouped["count_all_sum"]})
        identity = pc.if_else(pc.is_null(merged["doc_identity_max"]), merged["revision_max"], merged["doc_identity_max"])
        for connector, doc_id, revision, ident, count in zip(
            merged["connector"].to_pylist(), merged["doc_id"].to_pylist(), merged["revision_max"].to_pylist(),
            identity.to_pylist(), merged["count_all"].to_pylist(), strict=True
        ):
            out[(connector, doc_id)] = IndexedDoc(revision=revision, chunks=int(count), identity=ident or revision)
        return out

    @translated("reading stored vectors")
    def vectors_for(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Existing vectors by content hash (for reuse: unchanged chunks, renames, copies)."""
        wanted = sorted(set(hashes))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            where = "content_hash IN (" + ", ".join(sql_string(h) for h in part) + ")"
            data = self.scan(["content_hash", "vector"], where)
            if data.num_rows == 0:
                continue
            vectors = data["vector"].combine_chunks().flatten().to_numpy().reshape(-1, self.dim)
            for h, vec in zip(data["content_hash"].to_pylist(), vectors, strict=True):
                found.setdefault(h, vec)
        return found

    @translated("counting rows")
    def count_rows(self) -> int:
        return int(self.table.count_rows())

    # -- writing ---------------------------------------------------------------------------------------
    @translated("writing a batch")
    def apply(self, rows: pa.Table, replace_keys: Sequence[str], *, table: Any = None,
              covers_all_rows: bool = False) -> None:
        """Replace every chunk of the documents in ``replace_keys`` with ``rows`` in one commit.

        Three forms of the same atomic commit, cheapest first (``benchmarks/diagnostics/commit_forms.py``):
        no rows at all is a delete of those documents; ``covers_all_rows`` (the caller knows every existing
        row of those documents has a row with its chunk id in ``rows``: no document shrank, none is
        deleted) is an upsert on ``chunk_id`` that the BTree index serves; anything else needs the merge
        with ``when_not_matched_by_source_delete``, which scans the table for rows to drop.
        """
        target = table if table is not None else self.table
        if not replace_keys:
            return
        keys = sorted(set(replace_keys))
        where = "doc_key IN (" + ", ".join(sql_string(k) for k in keys) + ")"
        if rows.num_rows == 0:
            target.delete(where)
        elif covers_all_rows:
            target.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(rows)
        else:
            (target.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
             .when_not_matched_by_source_delete(where).execute(rows))
        self.commits_since_maintenance += 1
        if table is None:
            self._commits_on_connection += 1
            if self._commits_on_connection >= REOPEN_EVERY_COMMITS:
                self._reopen_live()
            with self._rows_lock:
                self.rows_since_indexed += rows.num_rows
            self.last_commit_at = time.monotonic()
        if table is None and self.hash_filter is not None and rows.num_rows:
            self.hash_filter.add(h for h in rows["content_hash"].to_pylist() if h)

    def _reopen_live(self) -> None:
        """The live table on a new connection (``REOPEN_EVERY_COMMITS``): not while a fold or a compaction
        works on the current handle (then at a later commit), and the current handle is kept if the new
        one cannot be opened."""
        if not self.maintenance_lock.acquire(blocking=False):
            return
        try:
            old_db = self._db
            self._db = None
            try:
                self._table = self._connect().open_table(self.table_name)
            except Exception as exc:  # noqa: BLE001 - the old handle still works; tried again later
                self._db = old_db
                self._commits_on_connection = 0  # next try after as many commits again
                log.warning("store.reopen_failed", table=self.table_name, error=str(exc))
                return
            self._commits_on_connection = 0
            self._opened_version = None
            self._folded = False  # the new handle is at the latest version
        finally:
            self.maintenance_lock.release()

    def make_rows(self, records: list[dict[str, Any]]) -> pa.Table:
        """An Arrow table in the store's schema; ``vector`` values may be numpy arrays."""
        sch = schema(self.dim)
        if not records:
            return sch.empty_table()
        matrix = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in records])
        columns = {}
        for f in sch:
            if f.name == "vector":
                columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), self.dim)
            else:
                columns[f.name] = pa.array([r[f.name] for r in records], type=f.type)
        return pa.Table.from_pydict(columns, schema=sch)

    # -- rebuilding ------------------------------------------------------------------------------------
    def create_rebuild_table(self) -> tuple[str, Any]:
        """A new table for a reindex. Its name is recorded first, so a crash mid-build leaves a table that
        is known to be abandoned (and dropped at the next start), never one that is guessed to be."""
        name = f"{self.base_table}_{time.strftime('%Y%m%d%H%M%S')}_{int(time.time() * 1000) % 1000:03d}"
        pointer = self.pointer() or self._pointer_doc(self.table_name)
        write_json_atomic(self.pointer_path, {**pointer, "building": name})
        return name, self._create(name)

    def reopen_table(self, name: str) -> Any:
        """Table ``name`` through a new connection. A LanceDB connection keeps state for every commit made
        through it, so a long series of commits (a reindex makes one per batch) reopens its table now and
        then to keep memory flat."""
        self._db = None
        try:
            return self._connect().open_table(name)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"cannot open table {name}: {exc}") from exc

    def switch_to(self, name: str) -> None:
        """Make ``name`` the live table (atomic pointer rename). The old table is kept for
        ``retired_retention_s`` so readers in other processes that still hold it finish their queries."""
        with self.maintenance_lock:  # not while a fold is under way on the old table
            old = self.table_name
            retired = [r for r in (self.pointer() or {}).get("retired", []) if r.get("table") != name]
            if old != name:
                retired.append({"table": old, "drop_after": time.time() + self.retired_retention_s})
            write_json_atomic(self.pointer_path, self._pointer_doc(name, retired=retired))
            self._table = self._connect().open_table(name)
            self.table_name = name
            self.hash_filter = None
            self._fold_pending = []
            self.drop_stale_tables()

    def drop_table(self, name: str) -> None:
        try:
            self._connect().drop_table(name)
        except Exception:  # noqa: BLE001, S110 - a table that is already gone needs no dropping
            pass

    def drop_stale_tables(self) -> list[str]:
        """Drop the table of a reindex that crashed before switching, and retired tables past their time.
        Only tables the pointer names are dropped."""
        pointer = self.pointer()
        if not pointer:
            return []
        dropped = []
        building = pointer.get("building")
        if building and building != self.table_name:
            self.drop_table(building)
            dropped.append(building)
        keep = []
        for entry in pointer.get("retired", []):
            if entry.get("table") == self.table_name:
                continue
            if entry.get("drop_after", 0) <= time.time():
                self.drop_table(entry["table"])
                dropped.append(entry["table"])
            else:
                keep.append(entry)
        if dropped or building:
            write_json_atomic(self.pointer_path, {**{k: v for k, v in pointer.items() if k != "building"},
                                                  "retired": keep})
        return dropped

    drop_abandoned_rebuilds = drop_stale_tables

    # -- searching -------------------------------------------------------------------------------------
    def search(self, vector: np.ndarray | Callable[[], np.ndarray], text: str, *, k: int = 10,
               connector: str | None = None) -> list[dict[str, Any]]:
        """Hybrid search: vector and full-text results fused by reciprocal rank (RRF, K = 60, as LanceDB's
        default reranker). ``vector`` may be a callable that embeds the query: the full-text leg then runs
        on another thread while the model works, so a query costs max(embed, FTS) + vector, not the sum."""
        where = f"connector = {sql_string(connector)}" if connector is not None else None
        columns = ["chunk_id", *RESULT_COLUMNS]
        table = self.table

        def fts() -> list[dict[str, Any]]:
            query = table.search(text, query_type="fts")
            if where:
                query = query.where(where, prefilter=True)
            return list(query.select(columns).limit(k).to_list())

        try:
            fts_future = _query_pool().submit(fts)
            try:
                query_vector = vector() if callable(vector) else vector
                query = table.search(np.asarray(query_vector, dtype=np.float32).tolist(), query_type="vector")
                if where:
                    query = query.where(where, prefilter=True)
                vector_rows = query.select(columns).limit(k).to_list()
            finally:
                fts_rows = fts_future.result()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"search failed: {exc}") from exc
        scores: dict[str, float] = {}
        by_id: dict[str, dict[str, Any]] = {}
        for ranked in (vector_rows, fts_rows):
            for rank, row in enumerate(ranked, 1):
                cid = row["chunk_id"]
                scores[cid] = scores.get(cid, 0.0) + 1.0 / (rank + RRF_K)
                by_id.setdefault(cid, row)
        order = sorted(scores, key=lambda cid: -scores[cid])[:k]
        rows = [{**by_id[cid], "_relevance_score": scores[cid]} for cid in order]
        results = []
        for row in rows:
            updated = row.get("updated_at")
            results.append({
                "score": float(row.get("_relevance_score", 0.0)),
                "text": row["text"], "doc_id": row["doc_id"], "connector": row["connector"], "uri": row["uri"],
                "title": row["title"], "revision": row["revision"], "chunk_index": int(row["chunk_index"]),
                "heading_path": list(row["heading_path"] or []),
                "start_line": int(row["start_line"]), "end_line": int(row["end_line"]),
                "updated_at": updated.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if updated else None,
            })
        return results

    # -- maintenance -----------------------------------------------------------------------------------
    @translated("reading the table's figures")
    def stats(self) -> dict[str, Any]:
        """Table version, fragments, rows not yet in every index, bytes on disk, indexes."""
        table = self.table
        stats = table.stats()
        indexes: dict[str, Any] = {}
        unindexed = 0
        for idx in table.list_indices():
            pending = int(getattr(idx, "num_unindexed_rows", 0) or 0)
            unindexed = max(unindexed, pending)
            indexes[idx.columns[0]] = {"type": str(idx.index_type), "unindexed_rows": pending}
        return {
            "uri": self.uri, "table": self.table_name, "table_version": int(table.version),
            "rows": int(stats["num_rows"]),
            "fragments": int(stats["fragment_stats"]["num_fragments"]),
            "small_fragments": int(stats["fragment_stats"].get("num_small_fragments", 0)),
            "unindexed_rows": unindexed,
            "bytes": int(stats["total_bytes"]),
            "indexes": indexes,
        }

    @translated("counting fragments")
    def fragment_count(self) -> int:
        """Fragments of the live table now (a round trip to the table)."""
        return int(self.table.stats()["fragment_stats"]["num_fragments"])

    @translated("listing indexes")
    def index_names(self) -> list[str]:
        """The table's indexes, cheapest to bring up to date first (the full-text index, a rewrite, last)."""
        order = {"BTree": 0, "IvfPq": 1, "FTS": 2}
        found = [(order.get(str(idx.index_type), 1), idx.name) for idx in self.table.list_indices()]
        return [name for _, name in sorted(found)]

    @translated("updating an index")
    def fold_index(self, name: str) -> None:
        """Bring one index up to date with the rows written since (a BTree is quick; the full-text index is
        rewritten, the slowest). Safe next to the writer's commits: an index update and a data commit
        are compatible in Lance, which rebases whichever commits second (the writer's handle then includes
        the new index), so the service runs this on a thread of its own."""
        import lance

        dataset = lance.dataset(self.table.to_lance().uri)
        dataset.optimize.optimize_indices(index_names=[name])
        self.index_folds += 1
        self._folded = True

    @translated("moving to the latest version")
    def adopt_folds(self) -> bool:
        """Move the table handle to the latest version if a fold committed since (writer thread only: the
        handle is the writer's; its next commit would move it too). True if it moved."""
        if not self._folded:
            return False
        self._folded = False
        self.table.checkout_latest()
        return True

    @property
    def folds_to_adopt(self) -> bool:
        return self._folded

    @property
    def fold_in_progress(self) -> bool:
        """A fold cycle has indexes left to bring up to date."""
        return bool(self._fold_pending)

    def fold_step(self) -> str | None:
        """The next step of a fold cycle: one index brought up to date (``index_names`` order). The rows
        written before the cycle began count as indexed once its last index is done. Returns the index.
        Holds ``maintenance_lock`` (a compaction or a table switch waits for it, never the commits)."""
        with self.maintenance_lock:
            if not self._fold_pending:
                self._fold_pending = self.index_names()
                self._fold_rows = self.rows_since_indexed
                if not self._fold_pending:
                    return None
            name = self._fold_pending.pop(0)
            try:
                self.fold_index(name)
            except StoreError:
                self._fold_pending = []
                raise
            if not self._fold_pending:
                with self._rows_lock:
                    self.rows_since_indexed = max(0, self.rows_since_indexed - self._fold_rows)
            return name

    @translated("compaction")
    def compact(self) -> dict[str, Any] | None:
        """Merge small fragments only (short): no index update, no version cleanup, deletions left in
        place. The writer runs this every few commits; ``maintain`` does the rest when rows pile up or the
        writer is idle. Lance remaps the indexes of the rows it moves, so no query loses them.

        Returns None, doing nothing, while a fold holds ``maintenance_lock`` (Lance can refuse a rewrite of
        fragments committed beside an index update on them); the commits that made it due still count, so
        the next commit tries again."""
        import lance

        if not self.maintenance_lock.acquire(blocking=False):
            return None
        try:
            dataset = lance.dataset(self.table.to_lance().uri)
            metrics = dataset.optimize.compact_files(materialize_deletions=False)
            self.table.checkout_latest()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"compaction failed: {exc}") from exc
        finally:
            self.maintenance_lock.release()
        self.commits_since_maintenance = 0
        self.compactions += 1
        return {"fragments_removed": int(metrics.fragments_removed), "fragments_added": int(metrics.fragments_added)}

    def _merge_vector_deltas(self) -> None:
        """``optimize()`` folds new rows into the ANN index as one more delta each time; a search visits
        every delta, so past ``MAX_VECTOR_DELTAS`` they are merged into one."""
        import lance

        dataset = lance.dataset(self.table.to_lance().uri)
        deltas = [idx for idx in dataset.list_indices() if list(idx.get("fields") or []) == ["vector"]]
        if len(deltas) > MAX_VECTOR_DELTAS:
            dataset.optimize.optimize_indices(index_names=[deltas[0]["name"]], num_indices_to_merge=len(deltas))
            self.table.checkout_latest()

    @translated("maintenance")
    def maintain(self, *, retention_s: float, ann_min_rows: int = 100_000) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the indexes, prune versions older than ``retention_s``.

        Keeps BTree indexes on ``doc_key``, ``doc_id`` and ``chunk_id`` (merges and deletes filter on them)
        and builds an ANN vector index once the table holds ``ann_min_rows`` rows. Queries never use
        index-only search, so rows not yet in the ANN index are still found by a flat scan.
        """
        with self.maintenance_lock:  # never next to a fold (see fold_step)
            self.drop_stale_tables()
            from lancedb.index import FTS, BTree, IvfPq

            table = self.table
            # Never 0 while readers exist, and never delete_unverified: a reader may still hold an old version.
            retention = dt.timedelta(seconds=max(retention_s, MIN_VERSION_RETENTION_S))
            created: list[str] = []
            try:
                table.optimize(cleanup_older_than=retention)
                existing = {idx.columns[0]: idx for idx in table.list_indices()}
                rows = int(table.count_rows())
                if rows > 0:
                    for column in SCALAR_INDEX_COLUMNS:
                        if column not in existing:
                            table.create_index(column, config=BTree())
                            created.append(column)
                    if "text" not in existing:
                        table.create_index("text", config=FTS(), replace=True)
                        created.append("text")
                    if "vector" not in existing and rows >= ann_min_rows:
                        table.create_index("vector", config=IvfPq())
                        created.append("vector")
                    if created:
                        # New indexes cover the rows present now; optimize() keeps folding later ones in.
                        table.optimize()
                self._merge_vector_deltas()
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"maintenance failed: {exc}") from exc
            self.commits_since_maintenance = 0
            self.rows_since_indexed = 0
            self._fold_pending = []  # every index is up to date
            self.last_maintenance_at = time.time()
            self.maintenance_runs += 1
        return {"indexes_created": created, "rows": rows}


SCALAR_INDEX_COLUMNS = ("doc_key", "doc_id", "chunk_id", "content_hash")
"""BTree-indexed: merges match on chunk_id, deletes and scoped merges filter on doc_key, lookups on doc_id,
vector reuse on content_hash."""
MAX_VECTOR_DELTAS = 4
"""ANN index deltas kept before maintenance merges them."""
REOPEN_EVERY_COMMITS = 256
"""Commits through one connection before the live table is opened on a new one. A LanceDB connection keeps
state for every commit made through it, so a long-lived writer's memory would follow its commits; the new
connection starts with empty caches (``benchmarks/diagnostics/writer_rss.py`` measures it; the figures are
in benchmarks/README.md)."""
VERSION_CHECK_EVERY = 16
"""A reader's refreshes between two looks at the table version (for ``REOPEN_EVERY_COMMITS``)."""
MIN_VERSION_RETENTION_S = 600.0
"""Old versions are kept at least 10 minutes whatever the config says: readers may still be on them."""
