"""The LanceDB store. This is the only module that imports lancedb.

One row per chunk (schema in INTERFACE.md). Every write is one ``merge_insert`` keyed on ``chunk_id``
with ``when_not_matched_by_source_delete`` scoped to the documents in the batch: all chunks of every
document in a batch are replaced, and deleted documents removed, in a single atomic commit.
Filters never contain raw document ids: they use ``doc_key``, a hex hash of (connector, doc_id).

The live table keeps the name ``[store] table`` for life. The signature of the settings it was built with
(model, dimension, chunking) sits in its schema metadata, so content and signature change in one commit. A
reindex builds aside in a scratch table and then replaces the live table's content in one commit
(``Store.replace_contents``): a reader that opened the table sees the new index at its next read, and Lance
keeps the previous version for readers mid-query and for rollback.

The schema is one that LangChain's and LlamaIndex's LanceDB stores read as it is: ``id``, ``text``,
``vector`` and a struct ``metadata`` holding the citation fields.

``chunk_id`` is non-null and Lance's unenforced primary key: writers committing the same new keys at once
then cannot both insert them. Commits that lose a race with another writer's ("too many concurrent
writers", "incompatible transaction", "commit result unknown") are replayed on the latest version: a batch
is idempotent (merge on ``chunk_id``), and Lance leaves no partial rows of a failed commit.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import structlog

from syncd.acl import sql_string as sql_string
from syncd.errors import AsOfUnavailable, StoreError, SyncdError
from syncd.lazy_imports import import_lancedb
from syncd.redact import redact
from syncd.state import read_json, write_json_atomic
from syncd.vector_cache import VectorCache

SCHEMA_VERSION = "2"
"""Version 2: the ``id`` column, ``metadata`` as a struct of citation fields, ``source_metadata`` (JSON)."""
SIGNATURE_KEY = b"syncd.signature"
SCHEMA_KEY = b"syncd.schema"
SCRATCH_SUFFIX = ".rebuilding"
"""A reindex builds into ``<table>.rebuilding`` (a name no config can give: ``[store] table`` has no dot)."""
REPLACE_PROPERTY = "syncd.operation"
"""Transaction property syncd's own content replacements carry, so ``verify`` can tell them from others'."""

log = structlog.get_logger("syncd.store")


def doc_key(connector: str, doc_id: str) -> str:
    """Filter-safe key of a document: hex only, whatever the id holds."""
    return hashlib.blake2b(f"{connector}\x00{doc_id}".encode(), digest_size=16).hexdigest()


def chunk_id(connector: str, doc_id: str, index: int) -> str:
    return hashlib.blake2b(f"{connector}\x00{doc_id}\x00{index}".encode(), digest_size=16).hexdigest()


def metadata_condition(key: str, value: str) -> str:
    """A filter on the ``source_metadata`` column (the JSON object ``json.dumps(..., sort_keys=True,
    ensure_ascii=False)`` wrote) for ``key`` = ``value``: the pair's exact encoding between the object's
    delimiters. A quote inside a JSON string is always escaped, so ``, "key": "value"`` cannot occur inside a
    value; LIKE's own wildcards in the pair are escaped."""
    pair = json.dumps({key: value}, ensure_ascii=False)[1:-1]
    like = pair.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    patterns = ["{" + like + "}", "{" + like + ", %", "%, " + like + ", %", "%, " + like + "}"]
    return " OR ".join(f"source_metadata LIKE {sql_string(p)} ESCAPE '\\'" for p in patterns)


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
                raise StoreError(redact(f"{what} ({self.table_name} in {self.uri}) failed: {exc}")) from exc

        return wrapper  # type: ignore[return-value]

    return decorate


PRIMARY_KEY = {b"lance-schema:unenforced-primary-key": b"true"}
"""Field metadata marking ``chunk_id`` as the table's primary key (Lance then refuses a concurrent commit that
would insert a key another commit inserted, instead of keeping both)."""

RETRYABLE = ("too many concurrent writers", "incompatible transaction", "commit result", "commit conflict",
             "conflicting", "concurrent transaction")
"""Commit errors that mean another writer committed first (FACTS.md, "Beyond one machine"): replayed."""
COMMIT_ATTEMPTS = 10
"""Attempts of one commit before it fails as a transient store error (the batch is then retried later)."""


def retryable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in RETRYABLE)


class PointerFile:
    """Where earlier versions kept the live table's name and the signature (``<state>/store.json``): read
    once, to migrate such an install, then deleted."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any] | None:
        data = read_json(self.path)
        return data if isinstance(data, dict) else None

    def write(self, doc: dict[str, Any]) -> None:
        write_json_atomic(self.path, doc)

    def create(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` unless there is a pointer already."""
        if self.read() is None:
            self.write(doc)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def claim(self, doc: dict[str, Any]) -> bool:
        """Whether this process creates the store's first table (one process per local folder: always)."""
        return True



CITATION_FIELDS = (
    pa.field("connector", pa.string()),
    pa.field("doc_id", pa.string()),
    pa.field("chunk_id", pa.string()),
    pa.field("uri", pa.string()),
    pa.field("title", pa.string()),
    pa.field("revision", pa.string()),
    pa.field("chunk_index", pa.int32()),
    pa.field("heading_path", pa.list_(pa.string())),
    pa.field("start_line", pa.int32()),
    pa.field("end_line", pa.int32()),
)
"""The ``metadata`` struct: a chunk's citation, as the frameworks hand it on (their ``Document.metadata``)."""


def schema(dim: int, signature: str | None = None) -> pa.Schema:
    """The chunk table's schema; ``signature`` goes into its metadata (the settings the vectors were made with)."""
    meta = {SCHEMA_KEY: SCHEMA_VERSION.encode()}
    if signature is not None:
        meta[SIGNATURE_KEY] = signature.encode()
    return pa.schema([
        pa.field("chunk_id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
        pa.field("id", pa.string(), nullable=False),  # = chunk_id: the frameworks' id column (LlamaIndex needs it)
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
        pa.field("metadata", pa.struct(list(CITATION_FIELDS))),  # the citation, for LangChain / LlamaIndex
        pa.field("source_metadata", pa.string()),  # JSON object of source metadata: owner, mode, size, blob sha...
        ACL_FIELD,  # who may read the document (syncd.acl); null = never computed, readable by nobody
    ], metadata=meta)


def is_current_schema(sch: pa.Schema) -> bool:
    """Whether a table's schema is this version's (else it is migrated at a writer's start)."""
    names = set(sch.names)
    return ("id" in names and "source_metadata" in names and "metadata" in names
            and pa.types.is_struct(sch.field("metadata").type))


def upgrade_batch(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """A batch of an older schema in ``target``'s: ``id`` and the citation struct derived from the row's own
    columns, the old JSON ``metadata`` string kept as ``source_metadata``. Vectors are copied as they are."""
    columns: dict[str, pa.Array] = {}
    names = set(batch.schema.names)
    for f in target:
        if f.name == "id":
            columns[f.name] = batch.column("chunk_id")
        elif f.name == "metadata":
            columns[f.name] = citation_struct({c.name: batch.column(c.name) for c in CITATION_FIELDS}, len(batch))
        elif f.name == "source_metadata":
            old = batch.column("metadata") if "metadata" in names else None
            if old is not None and pa.types.is_string(old.type):
                columns[f.name] = old
            elif "source_metadata" in names:
                columns[f.name] = batch.column("source_metadata")
            else:
                columns[f.name] = pa.nulls(len(batch), pa.string())
        elif f.name in names:
            columns[f.name] = batch.column(f.name).cast(f.type)
        else:
            columns[f.name] = pa.nulls(len(batch), f.type)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in target], schema=target)


def citation_struct(columns: dict[str, Any], rows: int) -> pa.StructArray:
    """The ``metadata`` struct column from the citation columns (Arrow arrays or Python lists)."""
    arrays = []
    for f in CITATION_FIELDS:
        values = columns[f.name]
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        arrays.append(values.cast(f.type) if isinstance(values, pa.Array) else pa.array(values, type=f.type))
    assert all(len(a) == rows for a in arrays)
    return pa.StructArray.from_arrays(arrays, fields=list(CITATION_FIELDS))


def read_signature(uri: str, table: str, *, facts: Any, storage_options: dict[str, str] | None = None) -> str | None:
    """The signature of the index at ``uri`` (None when there is none yet), without a ``Store``: the live
    table's schema metadata, or what ``facts`` (``PointerFile``, ``SharedFacts``) hold for an install not yet
    migrated."""
    legacy = facts.read()
    if isinstance(legacy, dict) and "signature" in legacy:
        return str(legacy["signature"])
    os.environ.setdefault("LANCEDB_LOG", "error")
    lancedb = import_lancedb()
    try:
        kwargs = {"storage_options": storage_options} if storage_options else {}
        found = lancedb.connect(uri, **kwargs).open_table(table).schema.metadata or {}
    except Exception:  # noqa: BLE001 - no table (a new install) or no store: no signature
        return None
    value = found.get(SIGNATURE_KEY)
    return value.decode() if value else None


def _produced_by_syncd(row: dict[str, Any]) -> bool:
    """Whether a row's ids are the ones syncd derives from its connector, document and position."""
    cid, key, connector, doc, index = (row.get("chunk_id"), row.get("doc_key"), row.get("connector"),
                                       row.get("doc_id"), row.get("chunk_index"))
    if not (cid and key and connector and doc is not None and index is not None):
        return False
    if "id" in row and row["id"] != cid:
        return False
    return bool(key == doc_key(connector, doc) and cid == chunk_id(connector, doc, int(index)))


UNREADABLE_OP = "Unreadable"
"""The operation name given to a version whose transaction pylance cannot turn into Python objects (it
raises for some of Lance's own operations, e.g. a compaction that remapped an index a second time)."""


def read_transaction(dataset: Any, version: int) -> tuple[str, dict[str, str]] | None:
    """(operation name, transaction properties) of ``version``, None when Lance kept no transaction for it;
    ``UNREADABLE_OP`` with no properties when pylance cannot describe it. Every reader of the version history
    goes through here: one unreadable maintenance commit must not stop a start-up or a check."""
    try:
        tx = dataset.read_transaction(version)
    except (TypeError, ValueError):  # the binding builds the operation's Python object and fails
        return UNREADABLE_OP, {}
    if tx is None:
        return None
    return type(tx.operation).__name__, dict(getattr(tx, "transaction_properties", None) or {})


def _content_commits(dataset: Any, since: int) -> list[tuple[int, str]]:
    """(version, operation) of the commits after ``since`` that change content (index updates, compaction and
    other neutral operations left out)."""
    found = []
    for version in range(since + 1, int(dataset.latest_version) + 1):
        try:
            tx = dataset.read_transaction(version)
        except Exception:  # noqa: BLE001, S112 - pylance cannot describe a compaction (neutral)
            continue
        name = type(tx.operation).__name__ if tx is not None else "Unknown"
        if name not in CONTENT_NEUTRAL_OPS:
            found.append((version, name))
    return found


def _with_vector_type(sch: pa.Schema, vector_type: pa.DataType) -> pa.Schema:
    i = sch.get_field_index("vector")
    return sch.set(i, pa.field("vector", vector_type))


def make_rows(records: list[dict[str, Any]], dim: int, signature: str | None = None) -> pa.Table:
    """Records as an Arrow table in the store's schema (``vector`` values may be numpy arrays); ``id`` and the
    citation struct ``metadata`` are derived from the record's own fields. The cluster reindex's workers build
    their fragments with it too."""
    sch = schema(dim, signature)
    if not records:
        return sch.empty_table()
    matrix = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in records])
    columns: dict[str, Any] = {}
    for f in sch:
        if f.name == "vector":
            columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
        elif f.name == "id":
            columns[f.name] = pa.array([r["chunk_id"] for r in records], type=f.type)
        elif f.name == "metadata":
            columns[f.name] = citation_struct({c.name: [r[c.name] for r in records] for c in CITATION_FIELDS},
                                              len(records))
        else:
            columns[f.name] = pa.array([r.get(f.name) for r in records], type=f.type)
    return pa.Table.from_pydict(columns, schema=sch)


ACL_FIELD = pa.field("acl", pa.list_(pa.string()))


@dataclass(frozen=True, slots=True)
class IndexedDoc:
    """What the store holds of one document."""

    revision: str
    chunks: int
    identity: str = ""
    acl: tuple[str, ...] | None = None
    """The ACL its rows carry; None when the rows have none yet (an index from before permissions)."""


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
LEG_COLUMNS = ["chunk_id", "content_hash", "vector", "connector", "doc_id", "uri", "start_line", "end_line"]
"""What a search leg reads of each candidate: the vector (relevance), the hash (collapse) and the citation."""


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
                 metadata_cache_mb: int = 64, storage_options: dict[str, str] | None = None,
                 facts: Any = None) -> None:
        self.uri = uri
        self.vector_cache: VectorCache | None = None
        """A reader's copy of the vectors for exact vector search without an ANN index (``vector_cache.py``);
        the service's reader has one (``size_vector_cache``), a one-shot command none."""
        self.storage_options = dict(storage_options or {})
        self.facts = facts if facts is not None else PointerFile(state_dir / "store.json")
        """Where earlier versions kept the live table's name and the signature: ``PointerFile`` or, on an object
        store, ``coordination.SharedFacts``. Read by the migration of such an install, then deleted."""
        self.commit_retries = 0
        self.compaction_conflicts = 0
        """Compactions beside the writer that Lance refused because a commit touched their fragments first."""
        """Commits replayed because another writer committed first (``syncd_commit_retries_total``)."""
        self.on_commit_retry: Callable[[], None] | None = None
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
        self.commits_since_maintenance = 0
        self.rows_since_indexed = 0
        """Rows written since the indexes were last brought up to date (queries scan these without them)."""
        self.last_commit_at = 0.0
        self.last_maintenance_at: float | None = None
        self.maintenance_runs = 0
        self.compactions = 0
        self.index_folds = 0
        self.maintenance_lock = threading.RLock()
        """Held by every step that rewrites the table's layout or indexes (fold, compaction, maintenance,
        a table switch): the service folds indexes on a thread of its own, next to the writer's commits."""
        self._rows_lock = threading.Lock()  # rows_since_indexed: the writer adds, a fold subtracts
        self._folded = False  # a fold committed since this handle last moved to the latest version
        self._commits_on_connection = 0
        self._opened_version: int | None = None  # a reader's: the version its connection first read
        self._refreshes = 0
        self.versions_bytes: int | None = None
        """Bytes the live table's kept versions take on disk, as the last maintenance found (audit status)."""
        self.hash_filter: HashFilter | None = None
        """Set by ``indexed_docs`` for the live table; None while unknown (then every hash is looked up)."""
        self.fts_columns: list[str] | None = None
        """The columns the full-text leg searches (None: the ``text`` index); each needs its own FTS index."""

    # -- opening ---------------------------------------------------------------------------------------
    @property
    def scratch_name(self) -> str:
        return self.base_table + SCRATCH_SUFFIX

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
            if self.storage_options:
                kwargs["storage_options"] = self.storage_options
            try:
                self._db = lancedb.connect(self.uri, **kwargs)
            except Exception as exc:  # noqa: BLE001 - lancedb raises OSError, ValueError, RuntimeError...
                raise StoreError(redact(f"cannot open store {self.uri}: {exc}")) from exc
        return self._db

    def _legacy_pointer(self) -> dict[str, Any] | None:
        data = self.facts.read()
        return data if isinstance(data, dict) else None

    def stored_signature(self) -> str | None:
        """The signature of the settings the live index was built with (None: no index yet)."""
        legacy = self._legacy_pointer()
        if legacy is not None and "signature" in legacy:
            return str(legacy["signature"])
        if self._table is not None:
            value = (self._table.schema.metadata or {}).get(SIGNATURE_KEY)
            return value.decode() if value else None
        return read_signature(self.uri, self.base_table, facts=self.facts, storage_options=self.storage_options)

    def _table_names(self) -> list[str]:
        db = self._connect()
        result = db.list_tables()
        names = getattr(result, "tables", result)
        return list(names)

    def open(self, *, create: bool = True) -> None:
        """Open the live table. A writer (``create``) first finishes what an earlier process left: it drops a
        reindex's scratch table (a crash mid-build), migrates an index of an earlier version (a dated table
        named by ``store.json``, or the previous schema) and creates the table, empty, when there is none."""
        name = self.base_table
        db = self._connect()
        try:
            if create:
                self.drop_table(self.scratch_name)
                self._migrate()
            names = self._table_names()
            if name in names and not (legacy := self._legacy_pointer()):
                self._table = db.open_table(name)
                if create and ACL_FIELD.name not in self._table.schema.names:
                    self._add_acl_column(self._table)
            elif create:
                if self.facts.claim({"table": name, "claimed_at": time.time()}):
                    self._table = self._create(name, shared=True)
                else:
                    self._table = self._wait_for_table(name)
            elif legacy and legacy.get("table") in names:
                # An install not migrated yet (no writer has started since the upgrade): read where it points.
                self._table = db.open_table(legacy["table"])
            elif name in names:
                self._table = db.open_table(name)
            else:
                raise StoreError(f"no index at {self.uri} (table {name!r}); run `syncd sync` first")
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(redact(f"cannot open table {name!r} in {self.uri}: {exc}")) from exc
        self.table_name = name
        self.hash_filter = None
        if create and "chunk_id" in self._table.schema.names:
            self.ensure_primary_key()

    def _wait_for_table(self, name: str, timeout: float = 60.0) -> Any:
        """Another daemon claimed the creation of the store's table: open it once it is there (or create it
        after ``timeout``, should that daemon have died between its claim and the table)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # Listed before its first version is readable: opening is the test, not the listing.
                return self._connect().open_table(name)
            except Exception:  # noqa: BLE001 - not there yet (whatever class this version raises)
                time.sleep(0.2)
        log.warning("store.creation_claim_stale", table=name, action="creating it here")
        return self._create(name, shared=True)

    @translated("marking chunk_id as the primary key")
    def ensure_primary_key(self) -> bool:
        """A table made before ``chunk_id`` was the primary key gets the mark (one metadata commit; the column
        has always been non-null). True if it was added."""
        field = self._table.schema.field("chunk_id")
        if (field.metadata or {}).get(b"lance-schema:unenforced-primary-key") == b"true":
            return False
        if field.nullable:
            raise StoreError(f"table {self.table_name} in {self.uri} has a nullable chunk_id; run `syncd reindex`")
        self._dataset().update_field_metadata({"chunk_id": {"lance-schema:unenforced-primary-key": "true"}})
        self._table.checkout_latest()
        log.info("store.migrated", table=self.table_name, change="chunk_id marked as the primary key")
        return True


    def foreign_schema(self) -> list[str]:
        """Columns syncd writes that the live table lacks or holds with another type (an overwrite by another
        program); empty for syncd's own table."""
        current = self.table.schema
        return [f.name for f in schema(self.dim) if f.name not in current.names or (
            f.name != "vector" and not current.field(f.name).type.equals(f.type))]

    @staticmethod
    def _add_acl_column(table: Any) -> None:
        """An index built before permissions gains an ``acl`` column, null in every row: readable by nobody
        until the engine's first pass computes each document's ACL (without re-embedding anything)."""
        log.info("store.adding_acl_column", table=table.name)
        table.add_columns(ACL_FIELD)

    def has_acl(self) -> bool:
        """Whether the live table has the ``acl`` column (a reader of an index no writer upgraded yet)."""
        return ACL_FIELD.name in self.table.schema.names

    def _migrate(self) -> None:
        """Bring an index of an earlier version to this one, keeping every row and vector (nothing is embedded):
        the content of the table ``store.json`` named (a reindex's dated table) moves under ``[store] table``,
        and an older schema gains ``id``, the citation struct ``metadata`` and ``source_metadata``. One
        ``replace_contents`` commit; then the dated tables go, then ``store.json``. A crash at any point
        leaves something the next start migrates again from where it stopped."""
        legacy = self._legacy_pointer()
        names = self._table_names()
        source = self.base_table
        if legacy and legacy.get("table") in names:
            source = str(legacy["table"])
        if source in names:
            db = self._connect()
            table = db.open_table(source)
            current = table.schema
            if not {"chunk_id", "doc_key", "connector", "doc_id", "vector"} <= set(current.names):
                log.error("store.not_syncd_schema", table=source, columns=current.names,
                          action="not migrated; `syncd reindex` rebuilds the table from the sources")
            elif source != self.base_table or not is_current_schema(current):
                signature = (str(legacy["signature"]) if legacy and "signature" in legacy
                             else (current.metadata or {}).get(SIGNATURE_KEY, b"").decode() or None)
                target = schema(self.dim, signature)
                if current.field("vector").type != target.field("vector").type:
                    target = _with_vector_type(target, current.field("vector").type)
                rows = int(table.count_rows())
                log.warning("store.migrating", source=source, table=self.base_table, rows=rows,
                            note="the schema frameworks read (id, struct metadata) under one table name; "
                                 "nothing is embedded again")
                batches = (upgrade_batch(b, target) for b in table.to_lance().to_batches(batch_size=8192))
                self.replace_contents(pa.RecordBatchReader.from_batches(target, batches), signature=signature,
                                      target_schema=target)
                log.info("store.migrated", table=self.base_table, rows=rows)
        if legacy:
            dated = [legacy.get("table"), legacy.get("building"), *(r.get("table") for r in legacy.get("retired", []))]
            for old in dated:
                if old and old != self.base_table and old in names:
                    self.drop_table(str(old))
            self.facts.delete()

    def _create(self, name: str, *, shared: bool = False) -> Any:
        """A new empty table ``name``. ``shared``: the store's live table, which another daemon may be
        creating at the same moment; whoever loses that race opens the winner's table (an overwrite here
        would drop the other's commits)."""
        from lancedb.index import FTS

        db = self._connect()
        try:
            table = db.create_table(name, schema=schema(self.dim, self.signature), mode="create" if shared else "overwrite")
        except Exception as exc:  # noqa: BLE001 - "already exists" in whatever class this version raises
            if not shared or "exist" not in str(exc).lower():
                raise
            return db.open_table(name)
        table.create_index("text", config=FTS(), replace=True)
        return table

    @property
    def table(self) -> Any:
        if self._table is None:
            self.open()
        return self._table

    def refresh(self) -> None:
        """Reopen the live table on a new connection once it moved ``REOPEN_EVERY_COMMITS`` versions past the
        one this connection first read: a reader's connection keeps state for every version it reads, as a
        writer's does for every commit, so its memory would follow the commits made
        (``benchmarks/diagnostics/writer_rss.py`` measures both). The first query on a new connection loads
        the indexes again, which is why it is not done more often (``benchmarks/diagnostics/reopen_cost.py``).
        A reindex needs nothing here: it replaces the table's content under the same name, which a handle
        with a read consistency interval sees at its next read. A query in flight on another thread keeps
        the handle it started with."""
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
        with_acl = self.has_acl()
        reader = self.table.search().select([*columns, "content_hash", *(["acl"] if with_acl else [])]).limit(
            None).to_batches(batch_size=65_536)
        parts: list[pa.Table] = []
        keys: list[np.ndarray] = []
        for batch in reader:
            if batch.num_rows == 0:
                continue
            keys.append(_hash_keys(batch.column("content_hash")))
            part = pa.Table.from_batches([batch]).select(columns)
            # A document's rows all carry its ACL: one string per row ("\n" never appears in an entry) that
            # the aggregation can take the max of; null where the rows have none yet.
            acl_text = (pc.binary_join(batch.column("acl"), "\n") if with_acl
                        else pa.nulls(batch.num_rows, pa.string()))
            part = part.append_column("acl_text", acl_text)
            parts.append(part.group_by(["connector", "doc_id"], use_threads=False).aggregate(
                [("revision", "max"), ("doc_identity", "max"), ("acl_text", "max"), ([], "count_all")]))
        filter_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        self.hash_filter = HashFilter(pa.array(filter_keys, type=pa.uint64()))
        out: dict[tuple[str, str], IndexedDoc] = {}
        if not parts:
            return out
        merged = pa.concat_tables(parts)
        if len(parts) > 1:  # a document whose rows span two batches
            regrouped = merged.group_by(["connector", "doc_id"], use_threads=False).aggregate(
                [("revision_max", "max"), ("doc_identity_max", "max"), ("acl_text_max", "max"), ("count_all", "sum")])
            merged = pa.table({"connector": regrouped["connector"], "doc_id": regrouped["doc_id"],
                               "revision_max": regrouped["revision_max_max"],
                               "doc_identity_max": regrouped["doc_identity_max_max"],
                               "acl_text_max": regrouped["acl_text_max_max"],
                               "count_all": regrouped["count_all_sum"]})
        identity = pc.if_else(pc.is_null(merged["doc_identity_max"]), merged["revision_max"], merged["doc_identity_max"])
        acls: dict[str | None, tuple[str, ...] | None] = {None: None}  # one tuple per distinct ACL
        for connector, doc_id, revision, ident, acl_text, count in zip(
            merged["connector"].to_pylist(), merged["doc_id"].to_pylist(), merged["revision_max"].to_pylist(),
            identity.to_pylist(), merged["acl_text_max"].to_pylist(), merged["count_all"].to_pylist(), strict=True
        ):
            if acl_text not in acls:
                acls[acl_text] = tuple(acl_text.split("\n")) if acl_text else ()
            out[(connector, doc_id)] = IndexedDoc(revision=revision, chunks=int(count), identity=ident or revision,
                                                  acl=acls[acl_text])
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

    @translated("reading rows to update their ACL")
    def rows_with_acl(self, acls: dict[str, tuple[str, ...]]) -> pa.Table:
        """Every stored row of the documents in ``acls`` (by ``doc_key``) with ``acl`` replaced by that
        document's new ACL: a permission change is written like a content change, in the same commit as
        the rest of the batch, with every vector kept."""
        if not acls:
            return schema(self.dim).empty_table()
        keys = sorted(acls)
        parts = []
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            parts.append(self.scan(schema(self.dim).names, "doc_key IN (" + ", ".join(sql_string(k) for k in part) + ")"))
        rows = pa.concat_tables(parts).select(schema(self.dim).names).cast(schema(self.dim))
        acl = pa.array([list(acls[k]) for k in rows["doc_key"].to_pylist()], type=ACL_FIELD.type)
        return rows.set_column(rows.schema.get_field_index("acl"), ACL_FIELD, acl)

    @translated("counting rows")
    def count_rows(self) -> int:
        return int(self.table.count_rows())

    # -- writing ---------------------------------------------------------------------------------------
    @translated("writing a batch")
    def apply(self, rows: pa.Table, replace_keys: Sequence[str], *, table: Any = None,
              covers_all_rows: bool = False) -> int | None:
        """Replace every chunk of the documents in ``replace_keys`` with ``rows`` in one commit.

        Three forms of the same atomic commit, cheapest first (``benchmarks/diagnostics/commit_forms.py``):
        no rows at all is a delete of those documents; ``covers_all_rows`` (the caller knows every existing
        row of those documents has a row with its chunk id in ``rows``: no document shrank, none is
        deleted) is an upsert on ``chunk_id`` that the BTree index serves; anything else needs the merge
        with ``when_not_matched_by_source_delete``, which scans the table for rows to drop.
        """
        target = table if table is not None else self.table
        if not replace_keys:
            return None
        keys = sorted(set(replace_keys))
        # Scoped to the documents of this batch (doc_key hashes the connector too): a daemon never deletes
        # or replaces rows of another daemon's connectors.
        where = "doc_key IN (" + ", ".join(sql_string(k) for k in keys) + ")"

        def commit() -> Any:
            if rows.num_rows == 0:
                return target.delete(where)
            if covers_all_rows:
                return (target.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
                        .execute(rows))
            return (target.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(where).execute(rows))

        result = self.committing(commit, target)
        # The version this commit made (the change journal records it): the commit's own answer, not the
        # handle's, which a concurrent index update may already have moved past.
        version = getattr(result, "version", None)
        with self._rows_lock:
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
        return int(version) if version is not None else int(target.version)

    def committing(self, commit: Callable[[], Any], target: Any) -> Any:
        """Run ``commit``; when another writer committed first, move ``target`` to the latest version and
        replay it, with jittered exponential backoff (``COMMIT_ATTEMPTS`` in all). Lance itself retries a
        lost manifest race a few times; what reaches here outlived those."""
        import random

        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return commit()
            except Exception as exc:  # noqa: BLE001 - the class says nothing; the message says retryable
                if attempt == COMMIT_ATTEMPTS or not retryable(exc):
                    raise
                self.commit_retries += 1
                if self.on_commit_retry is not None:
                    self.on_commit_retry()
                delay = min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
                log.info("store.commit_retry", attempt=attempt, delay_s=round(delay, 3),
                         error=redact(str(exc).splitlines()[0][:200]))
                time.sleep(delay)
                try:
                    target.checkout_latest()
                except Exception as again:  # noqa: BLE001 - the replay reports what is still wrong
                    log.warning("store.checkout_failed", error=redact(str(again)[:200]))
        raise AssertionError("unreachable: the last attempt returns or raises")

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
        """An Arrow table in the store's schema; ``vector`` values may be numpy arrays. ``id`` and the
        citation struct ``metadata`` are derived from the record's own fields."""
        return make_rows(records, self.dim, self.signature)

    # -- rebuilding ------------------------------------------------------------------------------------
    def create_scratch(self) -> Any:
        """An empty scratch table for a reindex to build into, beside the live one. Any earlier scratch table
        is a build that crashed and is dropped first (a writer's start drops it too)."""
        self.drop_table(self.scratch_name)
        try:
            return self._connect().create_table(self.scratch_name, schema=schema(self.dim, self.signature))
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"cannot create {self.scratch_name} in {self.uri}: {exc}") from exc

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

    @translated("replacing the table's content")
    def replace_contents(self, source: Any, *, signature: str | None = None,
                         target_schema: pa.Schema | None = None, base_version: int | None = None) -> int:
        """Replace every row of the live table with ``source`` in one commit, under the same name.

        ``source`` is a LanceDB table (a reindex's scratch table, which is dropped afterwards) or an Arrow
        ``RecordBatchReader``; it is streamed, never held in memory whole. A reader sees either the old
        content or the new one, never a mix; a handle opened with a read consistency interval sees the new
        content at its next read without reopening, and Lance keeps the previous version (``[sync]
        version_retention``) for readers mid-query and for rollback. A crash before the commit leaves the
        live table untouched (data files written for it are unreferenced, and go with version clean-up).

        Two forms of that commit:

        - the schema, signature included, stays (a reindex): a Lance ``Update`` that removes every fragment
          and adds the new ones. The indexes stay; the new rows are searched without them (flat, the
          full-text leg too) until the next fold or maintenance, so search never pauses. The commit is
          checked against the version the replacement was prepared on: a data commit that landed meanwhile
          makes it fail (``StoreError``) instead of being dropped;
        - the schema or signature changes (a model or chunking change, a migration): a Lance ``Overwrite``
          carrying the new schema, whose metadata holds ``signature``, so content and signature change
          together. An Overwrite carries no index and silently drops what other writers committed before
          it: the indexes are built again right after (until the full-text one is back, ``search`` runs its
          vector leg alone).

        Either way the caller is the only writer of the live table while its content is rebuilt (the writer
        lock; in the service, the writer thread, whose queued changes are applied after this returns), and
        index updates (the folder) wait through ``maintenance_lock``. ``base_version`` (the live version when
        the rebuild began) makes that a checked precondition: if a commit that changes content (anything but
        index updates and compaction) landed since, nothing is committed and ``StoreError`` says which, so
        no one's commit is ever dropped. Both commits carry the transaction
        property ``syncd.operation=replace_contents`` (``foreign_writes`` tells them from others').
        Returns the new version."""
        import lance

        target = target_schema or schema(self.dim, self.signature if signature is None else signature)
        scratch = None
        if isinstance(source, pa.RecordBatchReader):
            reader = source
        else:
            scratch = source
            batches = source.to_lance().scanner(batch_size=8192).to_batches()
            reader = pa.RecordBatchReader.from_batches(
                target, (pa.RecordBatch.from_arrays(b.columns, schema=target) for b in batches))
        options = self.storage_options or None
        properties = {REPLACE_PROPERTY: "replace_contents"}
        with self.maintenance_lock:
            if self.base_table not in self._table_names():
                self._create(self.base_table, shared=True)
            live = self._connect().open_table(self.base_table)
            dataset: Any = lance.dataset(live.to_lance().uri, storage_options=options)
            if base_version is not None:
                changed = _content_commits(dataset, base_version)
                if changed:
                    raise StoreError(f"the content of {self.base_table} changed while it was being rebuilt (version "
                                     f"{changed[0][0]}: {changed[0][1]}); nothing was replaced, run the reindex again")
            in_place = dataset.schema.equals(target, check_metadata=True)
            if in_place:
                fragments = lance.fragment.write_fragments(reader, dataset, schema=dataset.schema,
                                                           data_storage_version=dataset.data_storage_version,
                                                           storage_options=options)
                operation = lance.LanceOperation.Update(
                    removed_fragment_ids=[f.fragment_id for f in dataset.get_fragments()],
                    updated_fragments=[], new_fragments=fragments)
                lance.LanceDataset.commit(dataset.uri, lance.Transaction(
                    read_version=dataset.version, operation=operation, transaction_properties=properties),
                    storage_options=options, max_retries=0)
            else:
                lance.write_dataset(reader, dataset.uri, schema=target, mode="overwrite", storage_options=options,
                                    data_storage_version=dataset.data_storage_version,
                                    transaction_properties=properties,
                                    commit_message="syncd: replace the table's content")
            live.checkout_latest()
            self._table = live
            self.table_name = self.base_table
            rows = int(live.count_rows())
            if not in_place:
                self._rebuild_indexes(live)
            self.hash_filter = None
            self._folded = False
            self.commits_since_maintenance = 0
            with self._rows_lock:
                self.rows_since_indexed = rows if in_place else 0
            self._opened_version = None
            version = int(live.version)
        if scratch is not None:
            self.drop_table(self.scratch_name)
        return version

    def _rebuild_indexes(self, table: Any) -> None:
        """The full-text index first (hybrid search needs it), then the scalar ones merges filter on. The ANN
        index, if the table is large enough for one, is left to ``maintain``."""
        from lancedb.index import FTS, BTree

        table.create_index("text", config=FTS(), replace=True)
        if table.count_rows() > 0:
            for column in SCALAR_INDEX_COLUMNS:
                table.create_index(column, config=BTree(), replace=True)

    def drop_table(self, name: str) -> None:
        try:
            self._connect().drop_table(name)
        except Exception:  # noqa: BLE001, S110 - a table that is already gone needs no dropping
            pass

    # -- foreign writes --------------------------------------------------------------------------------
    @translated("looking for writes by others")
    def foreign_writes(self, *, after_version: int = 0, examples: int = 5) -> list[dict[str, Any]]:
        """What someone other than syncd wrote into the live table (a framework's ``add_texts`` or
        ``mode="overwrite"`` pointed at it, a script): each finding is ``{"kind", "detail", ...}``.

        - ``schema``: a column syncd writes is gone or has another type (an overwrite with another schema);
        - ``rows``: rows syncd did not produce (no ``chunk_id``/``doc_key``, an ``id`` other than the chunk id,
          or ids that do not derive from the row's connector, document and position), with their count and a
          few of their ids;
        - ``version``: a table version Lance still keeps that another writer committed: an Append (syncd
          never appends to the live table) or an Overwrite after the table's creation without the transaction
          property ``replace_contents`` sets. Versions up to ``after_version`` (acknowledged by a repair), and
          versions before syncd's last ``replace_contents``, are not reported.
        """
        table = self.table
        found: list[dict[str, Any]] = []
        wrong = self.foreign_schema()
        if wrong:
            found.append({"kind": "schema", "columns": wrong,
                          "detail": "columns syncd writes are missing or of another type: " + ", ".join(wrong)})
        bad_rows, bad_ids = self._foreign_rows(examples)
        if bad_rows:
            found.append({"kind": "rows", "rows": len(bad_rows), "examples": bad_ids,
                          "detail": f"{len(bad_rows)} rows were not written by syncd"})
        dataset = table.to_lance()
        versions: list[dict[str, Any]] = []
        for entry in dataset.versions():
            version = int(entry["version"])
            if version <= after_version:
                continue
            try:
                tx = dataset.read_transaction(version)
            except Exception:  # noqa: BLE001, S112 - pylance cannot describe some of Lance's own operations (compaction)
                continue
            if tx is None:
                continue
            operation = type(tx.operation).__name__
            properties = getattr(tx, "transaction_properties", None) or {}
            if REPLACE_PROPERTY in properties:
                versions = []  # syncd replaced the whole content: what came before is gone
            elif operation == "Append" or (operation == "Overwrite" and version > 1):
                versions.append({"kind": "version", "version": version, "operation": operation,
                                 "detail": f"version {version} is an {operation} syncd did not make"})
        found.extend(versions)
        return found

    def _foreign_rows(self, examples: int) -> tuple[list[int], list[str]]:
        """Row ids of the rows syncd did not produce, and up to ``examples`` of their ids."""
        current = self.table.schema
        columns = [c for c in ("chunk_id", "id", "doc_key", "connector", "doc_id", "chunk_index") if c in current.names]
        rows: list[int] = []
        ids: list[str] = []
        for batch in self.table.to_lance().to_batches(columns=columns, with_row_id=True, batch_size=65_536):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                row = {c: data[c][i] for c in columns}
                if not _produced_by_syncd(row):
                    rows.append(int(data["_rowid"][i]))
                    if len(ids) < examples:
                        ids.append(str(row.get("id") or row.get("chunk_id")))
        return rows, ids

    @translated("deleting rows written by others")
    def delete_foreign_rows(self) -> int:
        """Delete the rows syncd did not produce (``foreign_writes`` kind ``rows``); returns how many."""
        rows, _ = self._foreign_rows(0)
        for start in range(0, len(rows), 1000):
            self.table.delete("_rowid IN (" + ", ".join(str(r) for r in rows[start:start + 1000]) + ")")
        return len(rows)

    # -- searching -------------------------------------------------------------------------------------
    def search(self, vector: np.ndarray | Callable[[], np.ndarray], text: str, *, k: int = 10,
               connector: str | None = None, version: int | None = None, **options: Any) -> list[dict[str, Any]]:
        """Hybrid search (``syncd.search``: RRF over a candidate pool, relevance, duplicates collapsed) with no
        relevance floor unless ``min_relevance`` is given; the interfaces apply the configured one.

        ``version`` searches the live table as that version held it (``version_as_of``). Every result
        carries ``table_version``, the version it came from: a search of the live table that a commit
        raced is run again on the version it ended at, so the answer is always one version's."""
        from syncd import search as search_mod

        options.setdefault("min_relevance", 0.0)
        opts = search_mod.SearchOptions(k=k, connector=connector, **options)
        return search_mod.search(self, vector, text, opts, version=version).results

    def table_version(self) -> int:
        """The live table's version now (a reader with interval 0 looks for a newer one)."""
        try:
            return int(self.table.version)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"reading the version of {self.table_name} failed: {exc}") from exc

    def search_legs(self, vector: np.ndarray | Callable[[], np.ndarray], text: str, *, limit: int,
                    where: str | None, version: int | None = None) -> Any:
        """The vector and the full-text leg, ``limit`` rows each, both prefiltered by ``where``, on the live
        table or on it as ``version`` held it. ``vector`` may be a callable that embeds the query: the
        full-text leg then runs on another thread while the model works, so a query costs max(embed, full
        text) + vector, not the sum. Rows carry what ranking and collapsing read (``LEG_COLUMNS``: the
        vector for the relevance, ``content_hash``, the citation); ``complete_rows`` adds the rest to the
        few that become results, since reading the text and the other columns of 100 candidates cost more
        than the ANN search. ``seconds`` has the embed, vector and fulltext stages."""
        from syncd.search import LegRows

        columns = LEG_COLUMNS
        table = self.table if version is None else self.table_at(version)
        seconds: dict[str, float] = {}
        if ACL_FIELD.name not in table.schema.names:
            # An index (or a version) from before permissions: nothing in it is readable by anyone.
            query_vector = np.asarray(vector() if callable(vector) else vector, dtype=np.float32)
            return LegRows(vector_rows=[], text_rows=[], query_vector=query_vector, seconds=seconds)

        def fts() -> list[dict[str, Any]]:
            t0 = time.perf_counter()
            query = table.search(text, query_type="fts", fts_columns=self.fts_columns)
            if where:
                query = query.where(where, prefilter=True)
            try:
                rows = self._leg_rows(query.select(columns).limit(limit).to_arrow())
            except ValueError as exc:
                if "INVERTED index" not in str(exc):
                    raise
                rows = []  # right after a replace_contents Overwrite, until its full-text index is built again
            seconds["fulltext"] = time.perf_counter() - t0
            return rows

        try:
            fts_future = _query_pool().submit(fts)
            try:
                t0 = time.perf_counter()
                query_vector = np.asarray(vector() if callable(vector) else vector, dtype=np.float32)
                seconds["embed"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                held = None if self.vector_cache is None else self.vector_cache.nearest(
                    table, query_vector, where, limit, columns)
                if held is None:
                    query = table.search(query_vector.tolist(), query_type="vector")
                    if where:
                        query = query.where(where, prefilter=True)
                    held = query.select(columns).limit(limit).to_arrow()
                vector_rows = self._leg_rows(held)
                seconds["vector"] = time.perf_counter() - t0
            finally:
                fts_rows = fts_future.result()
        except SyncdError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"search failed: {exc}") from exc
        return LegRows(vector_rows=vector_rows, text_rows=fts_rows, query_vector=query_vector, seconds=seconds)

    def _leg_rows(self, found: Any) -> list[dict[str, Any]]:
        """A leg's Arrow result as rows whose ``vector`` is a row of one float32 matrix: converting 50 vectors
        to Python lists of floats (``to_list``) and back to an array cost more than the rest of the rows."""
        if found.num_rows == 0:
            return []
        vectors = found["vector"].combine_chunks()
        if vectors.null_count:
            return list(found.to_pylist())
        matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(found.num_rows, -1)
        rows: list[dict[str, Any]] = found.drop_columns(["vector"]).to_pylist()
        for row, vector in zip(rows, matrix, strict=True):
            row["vector"] = vector
        return rows

    def size_vector_cache(self, mb: int) -> VectorCache | None:
        """Give the vector cache ``mb`` MiB (0: LanceDB's scan answers every vector leg)."""
        if self.vector_cache is None and mb > 0:
            self.vector_cache = VectorCache(mb << 20, self.dim)
        elif self.vector_cache is not None:
            self.vector_cache.resize(mb << 20)
        return self.vector_cache

    def warm_vectors(self) -> None:
        """Start reading the live table's vectors into the vector cache (the service's start), if it has one."""
        if self.vector_cache is None:
            return
        try:
            self.vector_cache.warm(self.table)
        except Exception as exc:  # noqa: BLE001 - searches read LanceDB's scan until the cache holds the table
            log.warning("vector_cache.warm_failed", error=str(exc))

    @translated("reading the results' rows")
    def complete_rows(self, chunk_ids: Sequence[str], hashes: Sequence[str], where: str | None,
                      version: int | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The result columns of the rows ``chunk_ids`` (by chunk id) and, for ``hashes``, every row holding
        one of them and meeting ``where`` (where else a result's text occurs), in the live table or in it as
        ``version`` held it. One query does both when the results' texts are looked up: a result is a row
        holding its own hash. The search passes the version its legs read, so every row is there."""
        from syncd.search import ALSO_IN_LIMIT, where_clause

        table = self.table if version is None else self.table_at(version)
        columns = ["chunk_id", "content_hash", *RESULT_COLUMNS]
        found: list[dict[str, Any]] = []
        if hashes:
            condition = "content_hash IN (" + ", ".join(sql_string(h) for h in hashes) + ")"
            query = table.search().where(where_clause([condition, where])).select(columns)
            found = list(query.limit(ALSO_IN_LIMIT * len(hashes) + len(hashes)).to_list())
        by_id = {row["chunk_id"]: row for row in found}
        # A text held by more rows than the lookup's limit may leave a result out of it.
        missing = [cid for cid in chunk_ids if cid not in by_id]
        if missing:
            condition = "chunk_id IN (" + ", ".join(sql_string(c) for c in missing) + ")"
            query = table.search().where(where_clause([condition, where])).select(columns)
            by_id.update((row["chunk_id"], row) for row in query.limit(len(missing)).to_list())
        return {cid: by_id[cid] for cid in chunk_ids if cid in by_id}, found

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
    def lacks_an_index(self, ann_min_rows: int) -> bool:
        """An index the full maintenance creates is missing: a scalar, label-list or full-text one on a table
        with rows, or the ANN index on a table of ``ann_min_rows`` rows or more (folds only update indexes)."""
        have = {idx.columns[0] for idx in self.table.list_indices()}
        rows = int(self.table.count_rows())
        if rows == 0:
            return False
        wanted = {*SCALAR_INDEX_COLUMNS, *LABEL_LIST_COLUMNS, "text"}
        return not wanted <= have or (rows >= ann_min_rows and "vector" not in have)

    @translated("listing indexes")
    def index_names(self) -> list[str]:
        """The table's indexes in a fixed order: the scalar ones, the vector index, the full-text index (a fold
        brings them all up to date in one commit; the order names them the same way every time)."""
        order = {"BTree": 0, "Bitmap": 0, "LabelList": 1, "FTS": 3}  # a vector index (any kind): 2
        found = [(order.get(str(idx.index_type), 2), idx.name) for idx in self.table.list_indices()]
        return [name for _, name in sorted(found)]

    @translated("updating the indexes")
    def fold_indexes(self, names: list[str]) -> None:
        """Bring the indexes up to date with the rows written since, in one commit (a BTree is quick; the
        full-text index is rewritten, the slowest). Safe next to the writer's commits: an index update and
        a data commit are compatible in Lance, which rebases whichever commits second (the writer's handle
        then includes the new indexes), so the service runs this on a thread of its own."""
        dataset = self._dataset()
        dataset.optimize.optimize_indices(index_names=names)
        self.index_folds += len(names)
        self._folded = True

    @translated("moving to the latest version")
    def adopt_folds(self) -> bool:
        """Move the table handle to the latest version if a fold or a compaction beside the writer committed
        since (writer thread only: the handle is the writer's; its next commit would move it too). True if it
        moved."""
        if not self._folded:
            return False
        self._folded = False
        self.table.checkout_latest()
        return True

    @property
    def folds_to_adopt(self) -> bool:
        return self._folded

    def fold_step(self) -> list[str]:
        """A fold: every index brought up to date in one commit, so each fragment is covered by every index
        or by none. Lance's compaction never merges fragments that different indexes cover (it would split
        an index's coverage), so indexes folded one at a time beside the commits left the fragments of each
        fold cycle in as many groups as there were indexes, each kept apart from the others until a
        compaction that remaps the full-text index. Returns the indexes folded (none on a table without).
        Holds ``maintenance_lock`` (a compaction or a table switch waits for it, never the commits)."""
        with self.maintenance_lock:
            names = self.index_names()
            if not names:
                return []
            rows = self.rows_since_indexed
            self.fold_indexes(names)
            with self._rows_lock:
                self.rows_since_indexed = max(0, self.rows_since_indexed - rows)
            return names

    @translated("compaction")
    def compact(self, *, beside_writer: bool = False, remap: Remap = "all") -> dict[str, Any] | None:
        """Merge small fragments only: those under ``SMALL_FRAGMENT_ROWS`` rows, into fragments of less than
        twice that size; no index update, no version cleanup, deletions left in place. The service runs this
        every few commits on the folder's thread (``beside_writer``: the writer's handle is left for the
        writer to move, as after a fold); ``maintain`` does the rest when rows pile up or the writer is idle.
        Lance remaps every index that covers a fragment it rewrites, so no query loses a row; the full-text
        and vector indexes are rewritten whole for it, most of a compaction's time whatever the number of
        rows moved (the scalar ones are quick). ``remap`` says which indexes it may remap: ``"all"``, or
        ``"quick"``, which leaves alone the fragments the full-text and vector indexes cover (Lance plans
        around them), so only the rows written since their last fold are merged (figures in
        benchmarks/README.md).

        Returns None, doing nothing, while a fold holds ``maintenance_lock`` (Lance can refuse a rewrite of
        fragments committed beside an index update on them), or when a commit of the writer deleted rows of
        the fragments being merged first (Lance refuses the rewrite; the writer's commits are never held
        back for it): the commits that made it due still count, so it is tried again."""
        if not self.maintenance_lock.acquire(blocking=False):
            return None
        seen = self.commits_since_maintenance  # commits made while it runs count towards the next one
        try:
            dataset = self._dataset()
            excluded = None if remap == "all" else sorted(_fragments_to_leave(dataset))
            metrics = dataset.optimize.compact_files(target_rows_per_fragment=SMALL_FRAGMENT_ROWS,
                                                     materialize_deletions=False,
                                                     excluded_fragment_ids=excluded)
            if beside_writer:
                self._folded = True
            else:
                self.table.checkout_latest()
        except Exception as exc:  # noqa: BLE001
            if beside_writer and retryable(exc):
                self.compaction_conflicts += 1
                return None
            raise StoreError(f"compaction failed: {exc}") from exc
        finally:
            self.maintenance_lock.release()
        with self._rows_lock:
            self.commits_since_maintenance = max(0, self.commits_since_maintenance - seen)
        self.compactions += 1
        return {"fragments_removed": int(metrics.fragments_removed), "fragments_added": int(metrics.fragments_added),
                "remap": remap}

    def _merge_vector_deltas(self) -> None:
        """``optimize()`` folds new rows into the ANN index as one more delta each time; a search visits
        every delta, so past ``MAX_VECTOR_DELTAS`` they are merged into one."""
        dataset = self._dataset()
        deltas = [idx for idx in dataset.list_indices() if list(idx.get("fields") or []) == ["vector"]]
        if len(deltas) > MAX_VECTOR_DELTAS:
            dataset.optimize.optimize_indices(index_names=[deltas[0]["name"]], num_indices_to_merge=len(deltas))
            self.table.checkout_latest()

    @translated("maintenance")
    def maintain(self, *, retention_s: float, ann_min_rows: int = 100_000,
                 keep_versions_for: float = 0.0) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the indexes, prune versions older than ``retention_s``.

        Keeps BTree indexes on ``doc_key``, ``doc_id`` and ``chunk_id`` (merges and deletes filter on them)
        and builds an ANN vector index once the table holds ``ann_min_rows`` rows. Queries never use
        index-only search, so rows not yet in the ANN index are still found by a flat scan.
        """
        with self.maintenance_lock:  # never next to a fold (see fold_step)
            from lancedb.index import FTS, BTree, IvfPq, LabelList

            table = self.table
            # Never 0 while readers exist, and never delete_unverified: a reader may still hold an old version.
            retention = dt.timedelta(seconds=max(retention_s, MIN_VERSION_RETENTION_S))
            created: list[str] = []
            tagged: dict[str, list[str]] = {}
            try:
                # Audit retention: the days' last versions are tagged before the clean-up, which keeps tagged
                # versions and, with retention on, every version of the last hour.
                tagged = self.tag_daily_versions(keep_versions_for)
                if keep_versions_for > 0:
                    retention = max(retention, dt.timedelta(seconds=RECENT_VERSIONS_S))
                self._optimize(table, retention)
                existing = {idx.columns[0]: idx for idx in table.list_indices()}
                rows = int(table.count_rows())
                if rows > 0:
                    for column in SCALAR_INDEX_COLUMNS:
                        if column not in existing:
                            table.create_index(column, config=BTree())
                            created.append(column)
                    for column in LABEL_LIST_COLUMNS:
                        if column not in existing:
                            table.create_index(column, config=LabelList())
                            created.append(column)
                    if "text" not in existing:
                        table.create_index("text", config=FTS(), replace=True)
                        created.append("text")
                    if "vector" not in existing and rows >= ann_min_rows:
                        table.create_index("vector", config=IvfPq())
                        created.append("vector")
                    if created:
                        # New indexes cover the rows present now; optimize() keeps folding later ones in.
                        self._optimize(table, retention)
                self._merge_vector_deltas()
                if self.journal.exists():
                    self.journal.maintain(retention_s=retention_s)
                self.versions_bytes = self._versions_bytes()
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"maintenance failed: {exc}") from exc
            self.commits_since_maintenance = 0
            self.rows_since_indexed = 0
            self.last_maintenance_at = time.time()
            self.maintenance_runs += 1
        return {"indexes_created": created, "rows": rows, "tags": tagged}

    def _optimize(self, table: Any, older_than: dt.timedelta) -> None:
        """``table.optimize``: compaction, index updates and the clean-up of versions older than
        ``older_than``. LanceDB's clean-up refuses to run while a tagged version is old enough to go
        (audit retention tags versions on purpose), so a tagged table takes Lance's own steps, whose
        clean-up passes tagged versions by instead."""
        if not any(True for _ in table.tags.list()):
            table.optimize(cleanup_older_than=older_than)
            return
        import lance

        dataset = lance.dataset(table.to_lance().uri, storage_options=self.storage_options or None)
        dataset.optimize.compact_files()
        dataset.optimize.optimize_indices()
        dataset = lance.dataset(table.to_lance().uri, storage_options=self.storage_options or None)
        dataset.cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
        table.checkout_latest()

    # -- history: the change journal, versions as of a time, audit retention ---------------------------------
    @property
    def journal(self) -> Journal:
        """The change journal beside the live table (one per store; survives a reindex)."""
        found: Journal | None = getattr(self, "_journal", None)
        if found is None:
            found = Journal(self)
            self._journal = found
        return found

    def _dataset(self, name: str | None = None, version: int | None = None) -> Any:
        import lance

        table = self.table if name in (None, self.table_name) else self._connect().open_table(name)
        uri = table.to_lance().uri
        # On an object store the dataset needs the store's options (endpoint, region...) as LanceDB had them.
        options = self.storage_options or None
        if version is not None:
            return lance.dataset(uri, version=version, storage_options=options)
        return lance.dataset(uri, storage_options=options)

    @translated("reading the table's versions")
    def versions(self, name: str | None = None) -> list[tuple[int, float]]:
        """(version, commit time) of every version of the table still kept, oldest first."""
        table = self.table if name in (None, self.table_name) else self._connect().open_table(name)
        return sorted((int(v["version"]), _epoch(v["timestamp"]) or 0.0) for v in table.list_versions())

    def version_time(self, name: str, version: int) -> float | None:
        for v, at in self.versions(name):
            if v == version:
                return at
        return None

    @translated("reading the table's transactions")
    def version_ops(self, first: int, last: int) -> list[tuple[int, str]]:
        """(version, Lance operation name) of the live table's versions ``first``..``last`` still kept."""
        dataset = self._dataset()
        kept = {v for v, _ in self.versions()}
        out = []
        for version in range(first, last + 1):
            if version not in kept:
                continue
            tx = read_transaction(dataset, version)
            out.append((version, tx[0] if tx is not None else "Unknown"))
        return out

    @translated("reading the table's transactions")
    def replacements(self, first: int, last: int) -> list[int]:
        """Versions ``first``..``last`` still kept that are syncd's own content replacements (a reindex's
        ``replace_contents``, whatever Lance operation carried it)."""
        dataset = self._dataset()
        kept = {v for v, _ in self.versions()}
        out = []
        for version in range(first, last + 1):
            if version not in kept:
                continue
            tx = read_transaction(dataset, version)
            properties = tx[1] if tx is not None else {}
            if properties.get(REPLACE_PROPERTY) == "replace_contents":
                out.append(version)
        return out

    @translated("reading a table version")
    def doc_states(self, name: str, version: int, *, connectors: Iterable[str] | None = None,
                   kept: Collection[int] | None = None) -> dict[tuple[str, str], DocState] | None:
        """Every document of table ``name`` at ``version`` (revision, identity, chunk hashes), of
        ``connectors`` only when given, or None when that table or version is no longer kept (``kept``: the
        versions known kept, when the caller listed them)."""
        if kept is None:
            if name not in self._table_names():
                return None
            kept = {v for v, _ in self.versions(name)}
        if version not in kept:
            return None
        table = self._connect().open_table(name)
        table.checkout(version)
        query = table.search()
        if connectors is not None:
            query = query.where("connector IN (" + ", ".join(sql_string(c) for c in sorted(connectors)) + ")")
        data = query.select(["connector", "doc_id", "revision", "doc_identity", "content_hash"]).limit(
            None).to_arrow()
        grouped: dict[tuple[str, str], list[Any]] = {}
        for conn, doc, rev, ident, h in zip(data["connector"].to_pylist(), data["doc_id"].to_pylist(),
                                            data["revision"].to_pylist(), data["doc_identity"].to_pylist(),
                                            data["content_hash"].to_pylist(), strict=True):
            entry = grouped.setdefault((conn, doc), [rev, ident or rev, 0, set()])
            entry[0] = max(entry[0] or "", rev or "")
            entry[2] += 1
            if h:
                entry[3].add(h)
        return {key: DocState(revision=v[0], identity=v[1] or v[0], chunks=v[2], hashes=frozenset(v[3]))
                for key, v in grouped.items()}

    def table_at(self, version: int) -> Any:
        """A read-only handle on the live table pinned at ``version`` (a few are kept, newest used last; every
        search pins the version it began on, from the HTTP server's threads at once)."""
        cache: dict[tuple[str, int], Any] = self.__dict__.setdefault("_pinned", {})
        lock: threading.Lock = self.__dict__.setdefault("_pinned_lock", threading.Lock())
        key = (self.table_name, int(version))
        with lock:
            handle = cache.pop(key, None)
        if handle is None:
            try:
                handle = self._connect().open_table(self.table_name)
                handle.checkout(int(version))
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"cannot open {self.table_name} at version {version}: {exc}") from exc
        with lock:
            cache[key] = handle
            while len(cache) > PINNED_HANDLES:
                cache.pop(next(iter(cache)))
        return handle

    def history_window(self) -> tuple[float | None, list[tuple[int, float]]]:
        """(the oldest time an as-of can answer, the versions kept from then on). The journal must describe
        every change since, so nothing older than its start for the live table counts."""
        versions = self.versions()
        start = self.journal.start_of(self.table_name) if self.journal.exists() else None
        if start is None:
            return None, []
        usable = [(v, at) for v, at in versions if v >= start[0]]
        return (usable[0][1] if usable else None), usable

    def version_as_of(self, when: float) -> int:
        """The kept version that holds exactly what the live table held at ``when`` (unix time).

        Exact or an error: the newest kept version committed at or before ``when`` answers only if the
        journal records no change committed after it and at or before ``when``; otherwise that moment's
        version was not kept (older than the hour of every version, and not a day's tagged end)."""
        oldest, versions = self.history_window()
        if oldest is None or not versions:
            raise AsOfUnavailable("no history is kept for this index yet (the change journal starts now)",
                                  oldest=None)
        if when < oldest:
            raise AsOfUnavailable(f"{_iso_z(when)} is before the oldest time available, {_iso_z(oldest)} "
                                  f"(versions are kept for [audit] keep_versions_for)", oldest=oldest)
        candidates = [(v, at) for v, at in versions if at <= when]
        version, _ = candidates[-1]
        if self.journal.changed_between(self.table_name, version, when):
            after = [at for v, at in versions if at > when]
            nearest = _iso_z(candidates[-1][1]) + (f" and {_iso_z(after[0])}" if after else "")
            raise AsOfUnavailable(
                f"the index as it was at {_iso_z(when)} is not kept: only the last hour keeps every version, older "
                f"days keep their last one; the nearest kept states are at {nearest} (the oldest time available is "
                f"{_iso_z(oldest)}; `syncd history` / /changes list what changed in between)", oldest=oldest)
        return version

    @translated("tagging daily versions")
    def tag_daily_versions(self, keep_for_s: float, *, now: float | None = None) -> dict[str, list[str]]:
        """Tag each past UTC day's last version (``syncd-day-YYYY-MM-DD``) within ``keep_for_s``, and delete
        the tags retention no longer covers, so that version clean-up keeps exactly those. A day is tagged
        only when the version after its last one is still kept (or there is none): then it is certainly the
        day's last."""
        now = time.time() if now is None else now
        table = self.table
        tags = table.tags.list()
        versions = self.versions()
        kept = {v for v, _ in versions}
        created: list[str] = []
        removed: list[str] = []
        horizon = now - keep_for_s
        for name in list(tags):
            if not name.startswith(AUDIT_TAG_PREFIX):
                continue
            try:
                day = dt.datetime.strptime(name[len(AUDIT_TAG_PREFIX):], "%Y-%m-%d").replace(tzinfo=dt.UTC)
            except ValueError:
                continue
            if keep_for_s <= 0 or (day + dt.timedelta(days=1)).timestamp() < horizon:
                table.tags.delete(name)
                removed.append(name)
        if keep_for_s <= 0 or not versions:
            return {"created": created, "removed": removed}
        today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day = max(dt.datetime.fromtimestamp(max(horizon, versions[0][1]), dt.UTC).replace(
            hour=0, minute=0, second=0, microsecond=0), today - dt.timedelta(days=int(keep_for_s // 86400) + 1))
        while day < today:
            end = (day + dt.timedelta(days=1)).timestamp()
            name = AUDIT_TAG_PREFIX + day.strftime("%Y-%m-%d")
            before = [v for v, at in versions if at < end]
            if name not in tags and before and (before[-1] + 1 in kept or before[-1] == versions[-1][0]):
                table.tags.create(name, before[-1])
                created.append(name)
            day += dt.timedelta(days=1)
        return {"created": created, "removed": removed}

    @translated("reading the audit retention")
    def audit_retention(self, keep_for_s: float) -> dict[str, Any]:
        """What /status shows under ``audit``: the journal's size, the kept versions and the oldest as-of time."""
        oldest, usable = self.history_window()
        tags = sorted(n for n in self.table.tags.list() if n.startswith(AUDIT_TAG_PREFIX))
        out: dict[str, Any] = {"keep_versions_for_s": keep_for_s, "oldest_available_at": oldest,
                               "versions_kept": len(usable), "daily_tags": len(tags),
                               "oldest_daily_tag": tags[0][len(AUDIT_TAG_PREFIX):] if tags else None,
                               "versions_bytes": self.versions_bytes if self.versions_bytes is not None
                               else self._versions_bytes()}
        if self.journal.exists():
            out["journal"] = self.journal.stats()
        return out

    def _versions_bytes(self) -> int | None:
        """Bytes the table's files take on disk (every kept version's data and indexes), local stores only."""
        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        root = Path(self.table.to_lance().uri.removeprefix("file://"))
        total = 0
        for path in root.rglob("*"):
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:
                continue
        return total


def _iso_z(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


PINNED_HANDLES = 4
"""Read-only handles on past versions kept open (as-of queries and provenance replays at the same version)."""


SCALAR_INDEX_COLUMNS = ("doc_key", "doc_id", "chunk_id", "content_hash")
"""BTree-indexed: merges match on chunk_id, deletes and scoped merges filter on doc_key, lookups on doc_id,
vector reuse on content_hash."""
LABEL_LIST_COLUMNS = ("acl",)
"""Label-list indexed: every search prefilters on ``array_has_any(acl, ...)``."""


QUICK_TO_REMAP = frozenset({"BTree", "Bitmap", "LabelList"})
"""Lance index types a compaction remaps quickly; the others (full-text, vector) are rewritten whole."""


Remap = Literal["all", "quick"]
"""Which indexes a compaction may remap (``Store.compact``)."""


def _fragments_to_leave(dataset: Any) -> set[int]:
    """Fragments a ``"quick"`` compaction leaves alone: those an index that is not ``QUICK_TO_REMAP`` covers
    (Lance's own system indexes aside)."""
    return {int(fid) for idx in dataset.list_indices()
            if idx.get("type") not in QUICK_TO_REMAP and not str(idx.get("name", "")).startswith("__")
            for fid in (idx.get("fragment_ids") or ())}


SMALL_FRAGMENT_ROWS = 4096
"""The writer's compaction merges fragments under this many rows only, so its cost is bounded whatever the
table's size. With Lance's default target (a million rows) every fragment of a smaller table counts as
small, and each compaction between two batches rewrote the whole table: under sustained writes that was
the writer's longest pause (benchmarks/README.md, daemon freshness). The full maintenance
(``maintain``, when the writer is idle or rows pile up) still merges everything."""
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


# -- the change journal and point-in-time reads --------------------------------------------------------------
# Every committed change of a document is one row of a second LanceDB table beside the chunks
# (``<table>_changes``): it travels with the index, and it holds no chunk text, so it may be kept far longer
# than the table versions it points at. Rows are numbered (``seq``) in the journal's commit order, with no gap;
# that number is the /changes paging cursor. On a local folder the one writer numbers them; on an object store
# several daemons append, and each append is a merge on ``seq`` (the primary key) that Lance refuses whole when
# another daemon committed one of its numbers first: the daemon renumbers from the new last entry and tries
# again. So a reader that has seen entry N has seen every entry below N, and every later entry gets a number
# above it. Besides document changes the journal holds marks (``kind="mark"``): where it started, and the
# table and version each reindex or repair brought it to (on a shared store, per connector: ``connector`` names
# it), so that the next start knows exactly which versions of the chunk table it has not described yet.

JOURNAL_SUFFIX = "_changes"
AUDIT_TAG_PREFIX = "syncd-day-"
"""Lance tags ``syncd-day-YYYY-MM-DD``: the version live at the end of that UTC day, kept for ``[audit]
keep_versions_for`` (version clean-up never removes a tagged version)."""
RECENT_VERSIONS_S = 3600.0
"""With audit retention on, every version of the last hour is kept (as-of answers at any moment in it)."""
CONTENT_NEUTRAL_OPS = frozenset({"Rewrite", "CreateIndex", "BaseOperation", "Project", "UpdateConfig",
                                 "ReserveFragments", "Restore"})
"""Lance operations that never change what the table holds (compaction, index updates): the repair skips
them. ``BaseOperation`` is how pylance shows an index commit."""
ACTIONS = ("added", "changed", "deleted", "renamed", "permissions")


def journal_schema() -> pa.Schema:
    return pa.schema([
        pa.field("seq", pa.int64(), nullable=False, metadata=PRIMARY_KEY),
        pa.field("kind", pa.string(), nullable=False),  # "change" or "mark"
        pa.field("connector", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("doc_key", pa.string()),
        pa.field("action", pa.string()),  # a change: ACTIONS; a mark: started, reindexed, repaired, gap
        pa.field("old_doc_id", pa.string()),
        pa.field("revision", pa.string()),
        pa.field("previous_revision", pa.string()),
        pa.field("identity", pa.string()),
        pa.field("previous_identity", pa.string()),
        pa.field("chunks_embedded", pa.int32()),
        pa.field("chunks_reused", pa.int32()),
        pa.field("chunks_deleted", pa.int32()),
        pa.field("chunks", pa.int32()),  # chunks the document has after the change
        pa.field("live_table", pa.string()),  # the chunk table the version belongs to
        pa.field("table_version", pa.int64()),
        pa.field("seen_at", pa.timestamp("us", tz="UTC")),
        pa.field("committed_at", pa.timestamp("us", tz="UTC")),
        pa.field("repaired", pa.bool_()),  # written at start-up from the table's version history
    ])


JOURNAL_COLUMNS = [f.name for f in journal_schema()]
APPEND_TIMEOUT_S = 60.0
"""How long one append to a shared journal keeps renumbering while other daemons take its numbers."""


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


def _epoch(value: Any) -> float | None:
    """Unix time of an Arrow/LanceDB timestamp (aware UTC, or naive local time as Lance's version list gives)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


@dataclass(frozen=True, slots=True)
class DocState:
    """A document as one table version holds it (what the repair compares)."""

    revision: str
    identity: str
    chunks: int
    hashes: frozenset[str]


class Journal:
    """The change journal table of a store (its writers append; any reader pages through it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.name = f"{store.base_table}{JOURNAL_SUFFIX}"
        self._table: Any = None
        self._next_seq: int | None = None
        self.appends = 0
        self.append_retries = 0
        self._keyed = False
        self.own: frozenset[str] | None = None
        """On a store several daemons share: the connectors this daemon owns. Its repair (``catch_up``)
        describes their changes only; the others' are their daemons' to journal. None: the only writer."""

    @property
    def concurrent(self) -> bool:
        """Whether other daemons may append at the same time (an object store)."""
        uri = self.store.uri
        return "://" in uri and not uri.startswith("file://")

    # -- opening ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._table is not None or self.name in self.store._table_names()

    def open(self, *, create: bool = True) -> Any:
        """The journal table; ``create`` (a writer): made if missing, and an earlier schema migrated."""
        if self._table is not None:
            if create and not self._keyed:
                self._ensure_key()
                self._keyed = True
            return self._table
        db = self.store._connect()
        try:
            if self.name in self.store._table_names():
                self._table = db.open_table(self.name)
                if create:
                    self._ensure_key()
                    self._keyed = True
            elif create:
                self._table = db.create_table(self.name, schema=journal_schema(), mode="create", exist_ok=True)
            else:
                raise StoreError(f"no change journal at {self.store.uri} (table {self.name!r})")
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"cannot open the change journal {self.name!r} in {self.store.uri}: {exc}") from exc
        return self._table

    @property
    def table(self) -> Any:
        """The journal table; created by the writer (``append``, ``catch_up``), never by a reader."""
        return self.open(create=False)

    def reopen(self) -> None:
        """Forget the handle (the store moved to a new connection); a writer's next open looks at the schema
        again."""
        self._table = None
        self._keyed = False

    def _ensure_key(self) -> None:
        """A journal made before ``seq`` was its primary key gets the mark (one metadata commit), so that two
        daemons appending the same number conflict instead of both keeping it."""
        field = self._table.schema.field("seq")
        if (field.metadata or {}).get(b"lance-schema:unenforced-primary-key") == b"true":
            return
        try:
            self._dataset().update_field_metadata({"seq": {"lance-schema:unenforced-primary-key": "true"}})
        except Exception as exc:  # noqa: BLE001 - another daemon migrating at the same moment: look again
            self._table.checkout_latest()
            if (self._table.schema.field("seq").metadata or {}).get(b"lance-schema:unenforced-primary-key") \
                    != b"true":
                raise StoreError(f"cannot mark seq as the key of the change journal {self.name!r}: {exc}") from exc
            return
        self._table.checkout_latest()
        log.info("store.migrated", table=self.name, change="seq marked as the change journal's primary key")

    def _dataset(self) -> Any:
        """The journal as a Lance dataset at its latest version."""
        import lance

        return lance.dataset(self.table.to_lance().uri, storage_options=self.store.storage_options or None)

    # -- writing ---------------------------------------------------------------------------------------
    def _max_seq(self) -> int:
        data = self.table.search().select(["seq"]).limit(None).to_arrow()
        if data.num_rows == 0:
            return 0
        import pyarrow.compute as pc

        return int(pc.max(data["seq"]).as_py())

    def append(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        """Append ``entries`` (journal columns; times as unix seconds) in one commit; returns their seqs."""
        if not entries:
            return []
        self.open()
        rows = []
        for entry in entries:
            row = {name: entry.get(name) for name in JOURNAL_COLUMNS}
            row["kind"] = entry.get("kind", "change")
            row["seen_at"] = _utc(entry.get("seen_at"))
            row["committed_at"] = _utc(entry.get("committed_at"))
            row["repaired"] = bool(entry.get("repaired", False))
            if row["doc_key"] is None and row["connector"] is not None and row["doc_id"] is not None:
                row["doc_key"] = doc_key(row["connector"], row["doc_id"])
            rows.append(row)
        if self.concurrent:
            return self._append_shared(rows)
        try:
            if self._next_seq is None:
                self._next_seq = self._max_seq() + 1
            first = self._next_seq
            for i, row in enumerate(rows):
                row["seq"] = first + i
            self.table.add(pa.Table.from_pylist(rows, schema=journal_schema()))
        except SyncdError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._next_seq = None  # read again: the commit may or may not have landed
            raise StoreError(f"appending to the change journal ({self.name} in {self.store.uri}) failed: {exc}") from exc
        self._next_seq = first + len(rows)
        self.appends += 1
        return list(range(first, first + len(rows)))

    def _append_shared(self, rows: list[dict[str, Any]]) -> list[int]:
        """Append ``rows`` after the journal's last entry as other daemons append too: numbered from the
        latest version's last seq and merged on ``seq`` without Lance's own retries, so that a daemon that
        committed one of these numbers first makes the whole append fail (nothing of it lands); it is then
        renumbered from the new last entry and tried again, with jittered backoff. The rows land together,
        in order, under numbers no one else has and above every number visible before."""
        import random

        import pyarrow.compute as pc

        delay = 0.02
        deadline = time.monotonic() + APPEND_TIMEOUT_S
        while True:
            try:
                dataset = self._dataset()
                seqs = dataset.to_table(columns=["seq"])["seq"]
                top = int(pc.max(seqs).as_py() or 0) if len(seqs) else 0
                batch = [{**row, "seq": top + 1 + i} for i, row in enumerate(rows)]
                data = pa.Table.from_pylist(batch, schema=journal_schema())
                # Not through the BTree index on seq: a merge joined through it records no inserted keys, and
                # two daemons' merges of the same numbers then both commit (measured: duplicates with it,
                # none without).
                result = (dataset.merge_insert("seq").when_not_matched_insert_all().conflict_retries(0)
                          .use_index(False).execute(data))
                inserted = int(result.get("num_inserted_rows", 0))
                failure: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - the class says nothing; the message says retryable
                if not retryable(exc):
                    raise StoreError(f"appending to the change journal ({self.name} in {self.store.uri}) failed: "
                                     f"{redact(str(exc))}") from exc
                inserted, failure = -1, exc
            if inserted == len(batch):
                break
            if failure is not None and "unknown" in str(failure).lower() and self._landed(batch):
                break  # "commit result unknown", and it did land
            if inserted > 0:
                raise StoreError(f"appending to the change journal ({self.name} in {self.store.uri}): "
                                 f"{inserted} of {len(batch)} entries landed")
            self.append_retries += 1
            if time.monotonic() > deadline:
                raise StoreError(f"appending to the change journal ({self.name} in {self.store.uri}): other "
                                 f"daemons kept taking its next numbers for {APPEND_TIMEOUT_S:.0f} s"
                                 + (f" ({redact(str(failure))[:200]})" if failure else ""))
            time.sleep(delay * random.uniform(1.0, 2.0))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 1.0)
        if self._table is not None:
            self._table.checkout_latest()
        self.appends += 1
        return [int(r["seq"]) for r in batch]

    def _landed(self, batch: list[dict[str, Any]]) -> bool:
        """Whether ``batch`` is in the journal under its numbers (an append whose result was unknown)."""
        lo, hi = batch[0]["seq"], batch[-1]["seq"]
        self.table.checkout_latest()
        found = {int(r["seq"]): r for r in self.table.search().where(f"seq >= {lo} AND seq <= {hi}").select(
            ["seq", "kind", "doc_key", "action", "table_version", "committed_at"]).limit(None).to_list()}
        for row in batch:
            have = found.get(int(row["seq"]))
            if have is None or any(have.get(k) != row.get(k) for k in ("kind", "doc_key", "action", "table_version")):
                return False
            if _epoch(have.get("committed_at")) != _epoch(row.get("committed_at")):
                return False
        return True

    # -- reading ---------------------------------------------------------------------------------------
    def _where(self, clauses: list[str]) -> str:
        return " AND ".join(f"({c})" for c in clauses)

    @translated("reading the change journal")
    def last(self) -> dict[str, Any] | None:
        """The newest row (a change or a mark), or None for an empty journal."""
        top = self._max_seq()
        if top == 0:
            return None
        rows = self.table.search().where(f"seq = {top}").select(JOURNAL_COLUMNS).limit(1).to_list()
        return _row_out(rows[0]) if rows else None

    @translated("reading the change journal")
    def read(self, *, after: int | None = None, before: int | None = None, since_time: float | None = None,
             since_version: int | None = None, connector: str | None = None, doc_id: str | None = None,
             limit: int = 100, newest_first: bool = False, kinds: Sequence[str] = ("change",)) -> list[dict[str, Any]]:
        """Rows in seq order (or newest first) after/before a seq, filtered. Reads windows of seq numbers, so
        a page costs about its own size however long the journal is."""
        if not self.exists():
            return []
        clauses = ["kind IN (" + ", ".join(sql_string(k) for k in kinds) + ")"]
        if since_time is not None:
            stamp = dt.datetime.fromtimestamp(since_time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            clauses.append(f"committed_at >= timestamp '{stamp}'")
        if since_version is not None:
            clauses.append(f"table_version > {int(since_version)}")
        if connector is not None:
            clauses.append(f"connector = {sql_string(connector)}")
        if doc_id is not None:
            if connector is not None:
                clauses.append(f"(doc_key = {sql_string(doc_key(connector, doc_id))} OR "
                               f"(connector = {sql_string(connector)} AND old_doc_id = {sql_string(doc_id)}))")
            else:
                clauses.append(f"(doc_id = {sql_string(doc_id)} OR old_doc_id = {sql_string(doc_id)})")
        top = self._max_seq()
        out: list[dict[str, Any]] = []
        window = max(limit, 64)
        if newest_first:
            hi = min(top, (before - 1) if before is not None else top)
            while hi >= 1 and len(out) < limit:
                lo = max(1, hi - window + 1)
                part = self._window(clauses, lo, hi)
                out.extend(sorted(part, key=lambda r: -r["seq"]))
                hi = lo - 1
                window *= 4
        else:
            lo = (after + 1) if after is not None else 1
            while lo <= top and len(out) < limit:
                hi = min(top, lo + window - 1)
                part = self._window(clauses, lo, hi)
                out.extend(sorted(part, key=lambda r: r["seq"]))
                lo = hi + 1
                window *= 4
        return [_row_out(r) for r in out[:limit]]

    def _window(self, clauses: list[str], lo: int, hi: int) -> list[dict[str, Any]]:
        where = self._where([*clauses, f"seq >= {lo}", f"seq <= {hi}"])
        return list(self.table.search().where(where).select(JOURNAL_COLUMNS).limit(None).to_list())

    @translated("reading the change journal")
    def first_seq_since(self, since: float) -> int:
        """The seq just before the first change committed at or after ``since`` (a /changes start point)."""
        stamp = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        data = self.table.search().where(f"committed_at >= timestamp '{stamp}'").select(["seq"]).limit(None).to_arrow()
        if data.num_rows == 0:
            return self._max_seq()
        import pyarrow.compute as pc

        return int(pc.min(data["seq"]).as_py()) - 1

    @translated("reading the change journal")
    def changed_between(self, table: str, version: int, when: float) -> bool:
        """Whether a change of ``table`` after ``version`` was committed at or before ``when``."""
        stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        rows = (self.table.search().where(f"kind = 'change' AND live_table = {sql_string(table)} AND "
                                          f"table_version > {int(version)} AND committed_at <= timestamp '{stamp}'")
                .select(["seq"]).limit(1).to_list())
        return bool(rows)

    def start_of(self, table: str) -> tuple[int, float] | None:
        """(version, time) from which the journal describes every change of ``table``: its first mark (kept
        for the process: a table's first mark never changes)."""
        cache: dict[str, tuple[int, float]] = self.__dict__.setdefault("_starts", {})
        if table not in cache:
            found = self._start_of(table)
            if found is None:
                return None
            cache[table] = found
        return cache[table]

    @translated("reading the change journal")
    def _start_of(self, table: str) -> tuple[int, float] | None:
        data = (self.table.search().where(f"kind = 'mark' AND live_table = {sql_string(table)}")
                .select(["seq", "table_version", "committed_at"]).limit(None).to_arrow())
        if data.num_rows == 0:
            return None
        rows = sorted(data.to_pylist(), key=lambda r: r["seq"])
        return int(rows[0]["table_version"]), _epoch(rows[0]["committed_at"]) or 0.0

    @translated("reading the change journal's figures")
    def stats(self) -> dict[str, Any]:
        table = self.table
        stats = table.stats()
        data = table.search().where("kind = 'change'").select(["committed_at"]).limit(None).to_arrow()
        oldest = None
        if data.num_rows:
            import pyarrow.compute as pc

            oldest = _epoch(pc.min(data["committed_at"]).as_py())
        return {"table": self.name, "entries": int(data.num_rows), "bytes": int(stats["total_bytes"]),
                "oldest_change_at": oldest}

    @translated("journal maintenance")
    def maintain(self, *, retention_s: float) -> None:
        """Merge the journal's small fragments (one per batch) and drop its own old versions: the journal's
        history is its rows, not its versions."""
        self.table.optimize(cleanup_older_than=dt.timedelta(seconds=max(retention_s, MIN_VERSION_RETENTION_S)))
        from lancedb.index import BTree

        existing = {idx.columns[0] for idx in self.table.list_indices()}
        if "seq" not in existing and self.table.count_rows() > 0:
            self.table.create_index("seq", config=BTree())

    # -- the repair ------------------------------------------------------------------------------------
    @translated("bringing the change journal up to date")
    def catch_up(self, *, until: int | None = None, reason: str = "repaired") -> list[dict[str, Any]]:
        """Describe every version of the live table the journal has not described yet (a crash between a
        commit and its journal append; a reindex): each data commit after the journal's last mark or change
        is compared with the version before it, and its document changes are appended, marked ``repaired``.
        Returns what was appended."""
        store = self.store
        self.open()
        if self.own is not None:
            return self._catch_up_own(until=until, reason=reason)
        live = store.table_name
        latest = int(store.table.version)
        if until is not None:
            latest = min(latest, until)
        last = self.last()
        now = time.time()
        if last is None:
            self.append([_mark("started", live, latest, now)])
            return []
        if last["live_table"] != live:
            # The live table was replaced (a reindex built it aside): what changed is the difference between
            # the table the journal described last and the new one.
            before = store.doc_states(last["live_table"], last["table_version"])
            after = store.doc_states(live, latest)
            if before is None or after is None:
                log.warning("journal.gap", table=last["live_table"], version=last["table_version"],
                            reason="the table the journal described last is gone; changes in between are unknown")
                self.append([_mark("gap", live, latest, now)])
                return []
            committed = store.version_time(live, latest) or now
            entries = diff_states(before, after, table=live, version=latest, committed_at=committed, repaired=False)
            self.append([*entries, _mark("reindexed", live, latest, now)])
            return entries
        start = int(last["table_version"])
        if start >= latest:
            return []
        ops = store.version_ops(start + 1, latest)
        data = [v for v, op in ops if op not in CONTENT_NEUTRAL_OPS]
        if not data:
            return []
        appended: list[dict[str, Any]] = []
        previous = store.doc_states(live, start)
        if previous is None:
            log.warning("journal.gap", table=live, version=start,
                        reason="the version the journal described last was cleaned up; changes since are unknown")
            self.append([_mark("gap", live, latest, now)])
            return []
        for version in data:
            current = store.doc_states(live, version)
            if current is None:
                continue
            committed = store.version_time(live, version) or now
            entries = diff_states(previous, current, table=live, version=version, committed_at=committed,
                                  repaired=reason == "repaired")
            previous = current
            appended.extend(entries)
        self.append([*appended, _mark(reason, live, latest, now)])
        if appended and reason == "repaired":
            log.warning("journal.repaired", entries=len(appended), versions=data,
                        reason="commits the journal had not recorded (a crash between a commit and its journal entry)")
        return appended

    def _catch_up_own(self, *, until: int | None, reason: str) -> list[dict[str, Any]]:
        """``catch_up`` on a store several daemons write: only this daemon's connectors (``own``), each from
        the version its own last entry or mark describes. The versions in between hold the other daemons'
        commits too; reading only these connectors' rows at each version leaves their changes out, so
        nothing of theirs is journaled here, and none of their entries is touched. A connector's rows
        change only through its owner's commits, each journaled right after it: versions where they did not
        change are passed over by halving (the rows are read at about log2(versions) points per change), so
        a change undone again before anything was journaled (two lost appends in a row) is not seen: the
        journal then still agrees with the index."""
        store = self.store
        live = store.table_name
        own = sorted(self.own or ())
        if not own:
            return []
        self.table.checkout_latest()
        store.table.checkout_latest()
        latest = int(store.table.version)
        if until is not None:
            latest = min(latest, until)
        now = time.time()
        condition = (f"live_table = {sql_string(live)} AND (kind = 'mark' OR connector IN ("
                     + ", ".join(sql_string(c) for c in own) + "))")
        rows = self.table.search().where(condition).select(["seq", "kind", "connector", "table_version"]).limit(
            None).to_list()
        marks = sorted((r for r in rows if r["kind"] == "mark"), key=lambda r: r["seq"])
        start_of_journal = int(marks[0]["table_version"]) if marks else None
        described: dict[str, int] = {}
        for r in rows:
            if r["connector"] in own and r["table_version"] is not None:
                described[r["connector"]] = max(described.get(r["connector"], -1), int(r["table_version"]))
        if start_of_journal is None and not described:
            self.append([_mark("started", live, latest, now, c) for c in own])
            return []
        groups: dict[int, list[str]] = {}
        for c in own:
            start = described.get(c, start_of_journal if start_of_journal is not None else min(described.values()))
            if start < latest:
                groups.setdefault(start, []).append(c)
        if not groups:
            return []
        kept_versions = store.versions()
        kept = {v for v, _ in kept_versions}
        times = dict(kept_versions)
        appended: list[dict[str, Any]] = []
        marks_out: list[dict[str, Any]] = []
        for start, connectors in sorted(groups.items()):
            before = store.doc_states(live, start, connectors=connectors, kept=kept)
            if before is None:
                log.warning("journal.gap", table=live, version=start, connectors=connectors,
                            reason="the version the journal described last was cleaned up; changes since are unknown")
                marks_out.extend(_mark("gap", live, latest, now, c) for c in connectors)
                continue
            points = [start, *(v for v in sorted(kept) if start < v <= latest)]
            states: dict[int, dict[tuple[str, str], DocState] | None] = {0: before}

            def state(i: int, connectors: list[str] = connectors, points: list[int] = points,
                      states: dict[int, dict[tuple[str, str], DocState] | None] = states
                      ) -> dict[tuple[str, str], DocState] | None:
                if i not in states:
                    states[i] = store.doc_states(live, points[i], connectors=connectors, kept=kept)
                return states[i]

            def walk(i: int, j: int, points: list[int] = points, state: Any = state) -> list[dict[str, Any]]:
                a, b = state(i), state(j)
                if a is None or b is None or a == b:
                    return []
                if j == i + 1:
                    return diff_states(a, b, table=live, version=points[j], committed_at=times.get(points[j], now),
                                       repaired=reason == "repaired")
                m = (i + j) // 2
                return walk(i, m) + walk(m, j)

            appended.extend(walk(0, len(points) - 1))
            marks_out.extend(_mark(reason, live, latest, now, c) for c in connectors)
        self.append([*appended, *marks_out])
        if appended and reason == "repaired":
            log.warning("journal.repaired", entries=len(appended), connectors=own,
                        versions=sorted({e["table_version"] for e in appended}),
                        reason="commits the journal had not recorded (a crash between a commit and its journal entry)")
        return appended


def _mark(action: str, table: str, version: int, at: float, connector: str | None = None) -> dict[str, Any]:
    return {"kind": "mark", "action": action, "live_table": table, "table_version": version, "committed_at": at,
            "connector": connector}


def _row_out(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("seen_at", "committed_at"):
        out[key] = _epoch(out.get(key))
    return out


def diff_states(before: dict[tuple[str, str], DocState], after: dict[tuple[str, str], DocState], *, table: str,
                version: int, committed_at: float, repaired: bool) -> list[dict[str, Any]]:
    """The journal entries that take a table from ``before`` to ``after`` (documents by (connector, doc_id)):
    added, changed, deleted, and renamed where a document left and one with the same content appeared."""
    known_hashes: set[str] = set()
    for state in before.values():
        known_hashes.update(state.hashes)
    gone = {key: state for key, state in before.items() if key not in after}
    new = {key: state for key, state in after.items() if key not in before}
    by_identity: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for key, state in gone.items():
        by_identity.setdefault((key[0], state.identity), []).append(key)
    base = {"kind": "change", "live_table": table, "table_version": version, "committed_at": committed_at,
            "repaired": repaired}
    entries: list[dict[str, Any]] = []

    def counts(state: DocState) -> dict[str, int]:
        embedded = sum(1 for h in state.hashes if h not in known_hashes)
        return {"chunks_embedded": embedded, "chunks_reused": state.chunks - embedded, "chunks": state.chunks}

    renamed_from: set[tuple[str, str]] = set()
    for key, state in sorted(new.items()):
        olds = by_identity.get((key[0], state.identity))
        if olds:
            old = olds.pop()
            renamed_from.add(old)
            entries.append({**base, "connector": key[0], "doc_id": key[1], "action": "renamed", "old_doc_id": old[1],
                            "revision": state.revision, "previous_revision": before[old].revision,
                            "identity": state.identity, "previous_identity": before[old].identity,
                            "chunks_embedded": 0, "chunks_reused": state.chunks,
                            "chunks_deleted": before[old].chunks, "chunks": state.chunks})
        else:
            entries.append({**base, "connector": key[0], "doc_id": key[1], "action": "added",
                            "revision": state.revision, "identity": state.identity, "chunks_deleted": 0,
                            **counts(state)})
    for key, state in sorted(after.items()):
        was = before.get(key)
        if was is not None and (was.identity != state.identity or was.hashes != state.hashes):
            entries.append({**base, "connector": key[0], "doc_id": key[1], "action": "changed",
                            "revision": state.revision, "previous_revision": was.revision,
                            "identity": state.identity, "previous_identity": was.identity,
                            "chunks_deleted": max(0, was.chunks - state.chunks), **counts(state)})
    for key, state in sorted(gone.items()):
        if key in renamed_from:
            continue
        entries.append({**base, "connector": key[0], "doc_id": key[1], "action": "deleted",
                        "previous_revision": state.revision, "previous_identity": state.identity,
                        "chunks_embedded": 0, "chunks_reused": 0, "chunks_deleted": state.chunks, "chunks": 0})
    return entries
