"""The vector leg's exact nearest neighbours from vectors held in memory, for a table without an ANN index.

Below ``[store] ann_min_rows`` the table has no vector index and LanceDB answers the vector leg by reading
every row's vector from the table's files at every search: the largest part of a search on a table of tens
of thousands of rows, and the part that grows with it (benchmarks/README.md, "Search latency"). The same
answer comes from a matrix product over vectors kept in memory.

What makes the copy safe to keep: a Lance fragment's data files never change after they are written. A
commit adds fragments (new rows), marks rows of existing ones deleted, or (compaction) replaces fragments by
new ones. So vectors are read once per fragment, keyed by its data files; which rows of a version are live
and meet the search's filter comes from Lance at every search, as a row-id scan of that version with the
filter (the prefilter LanceDB applies to its own scan; cheap, it reads no vectors); and the few winners are
read back from that version by row id. Every search therefore answers on exactly the version it pinned.

When the copy cannot answer, ``nearest`` returns None and the caller runs LanceDB's own scan: the table has
a vector index, its vectors would pass the memory budget, row ids are not row addresses (stable row ids), or
a large fragment is not read yet (it is read on a thread of its own, so no search waits for it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

log = structlog.get_logger("syncd.vector_cache")

INLINE_READ_ROWS = 8192
"""A fragment up to this many rows is read by the search that first meets it (a commit's new rows); a larger
one (a compaction's output, the table at start) is read in the background while searches use LanceDB's."""

READ_BATCH_ROWS = 2048
"""Rows a fragment read brings in at a time, one batch ahead at most: Lance's default read-ahead of a large
fragment held many times the vectors' size in flight, and the allocator kept it (the daemon's RSS)."""

RECENT_VERSIONS = 8
"""Versions remembered (their fragments and whether the copy can answer on them)."""

RECENT_S = 10.0
"""A version's fragments stay held while a search used it this recently (searches in flight pin older
versions for a moment); the newest version's always. A compaction's old fragments so leave soon after it."""

FragmentKey = tuple[int, tuple[str, ...]]


@dataclass(frozen=True)
class _Fragment:
    offsets: np.ndarray
    """Row offsets within the fragment (sorted): a row's id is (fragment id << 32) | offset."""
    vectors: np.ndarray
    """float32, one row per offset."""
    squared_norms: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.vectors.nbytes + self.squared_norms.nbytes)


@dataclass
class _Version:
    fragments: tuple[tuple[int, FragmentKey, int], ...]
    """(fragment id, key, physical rows) of every fragment of the version."""
    servable: bool
    """No vector index, row ids are row addresses."""
    used_at: float
    dataset: Any
    """The Lance dataset at this version (row-id scans and fragment reads)."""


class VectorCache:
    """Vectors of the live table's fragments in memory, for exact vector search on any recent version.

    Thread-safe: searches call ``nearest`` from the HTTP server's threads at once."""

    def __init__(self, budget_bytes: int, dim: int) -> None:
        self.budget_bytes = budget_bytes
        self.dim = dim
        self._fragments: dict[FragmentKey, _Fragment] = {}
        self._versions: OrderedDict[int, _Version] = OrderedDict()
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self.served = 0
        """Vector legs answered from memory."""
        self.passed = 0
        """Vector legs left to LanceDB's scan (see the module docstring for why one is)."""
        self.over_budget = False
        self.on_leg: Callable[[str], None] | None = None
        """Called with "memory" or "lance" for each vector leg (the service counts them in a metric)."""

    def resize(self, budget_bytes: int) -> None:
        """A new budget (a reload): each version is judged against it again at its next search."""
        with self._lock:
            self.budget_bytes = budget_bytes
            self._versions.clear()
            if budget_bytes <= 0:
                self._fragments.clear()

    # -- figures -----------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(f.nbytes for f in self._fragments.values())

    @property
    def rows(self) -> int:
        with self._lock:
            return sum(len(f.offsets) for f in self._fragments.values())

    def figures(self) -> dict[str, Any]:
        """What ``/status`` shows under ``store.vector_cache``: ``rows`` held (every live row of the versions
        searched, and rows deleted since their fragment was read, until a compaction replaces it), their
        ``bytes``, and the vector legs ``served`` from memory or ``passed`` to LanceDB."""
        return {"rows": self.rows, "bytes": self.nbytes, "budget_bytes": self.budget_bytes,
                "served": self.served, "passed": self.passed, "over_budget": self.over_budget}

    def _count(self, *, served: bool) -> None:
        with self._lock:
            if served:
                self.served += 1
            else:
                self.passed += 1
        if self.on_leg is not None:
            self.on_leg("memory" if served else "lance")

    # -- search ------------------------------------------------------------------------------------------
    def nearest(self, table: Any, query: np.ndarray, where: str | None, limit: int,
                columns: list[str]) -> pa.Table | None:
        """The ``limit`` rows of ``table`` (a LanceDB table at the version a search pinned) nearest to
        ``query`` by L2 distance among those meeting ``where``, nearest first, with ``columns`` and
        ``_distance`` as LanceDB's own flat search returns them; None when the copy cannot answer."""
        shape = self._version(table)
        dataset = shape.dataset
        if not shape.servable or not self._ready(shape, dataset):
            self._count(served=False)
            return None
        with self._lock:
            held = [(fid, self._fragments.get(key)) for fid, key, _ in shape.fragments]
        if any(f is None for _, f in held):  # dropped by a later version's eviction meanwhile
            self._count(served=False)
            return None
        ids = self._matching(dataset, where)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        fragment_of = (ids >> np.uint64(32)).astype(np.int64)
        offsets = (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        found_ids: list[np.ndarray] = []
        found_distances: list[np.ndarray] = []
        for fid, fragment in held:
            assert fragment is not None
            chosen = fragment_of == fid
            if not chosen.any():
                continue
            wanted = offsets[chosen]
            at = np.minimum(np.searchsorted(fragment.offsets, wanted), max(len(fragment.offsets) - 1, 0))
            if not len(fragment.offsets) or not np.array_equal(fragment.offsets[at], wanted):
                # A live row the copy does not hold: the fragment changed under its key. Never guess.
                log.warning("vector_cache.mismatch", fragment=fid, version=int(table.version))
                with self._lock:
                    self._fragments.clear()
                self._count(served=False)
                return None
            # The product over every held row, then the chosen ones: indexing the matrix first would copy it.
            # einsum, not `@`: NumPy's BLAS runs a matrix-vector product on every core and then spins them
            # waiting for more, taking the CPU the writer's embedding needs; einsum's loop is one thread and,
            # memory-bound, as fast (benchmarks/diagnostics/vector_product.py).
            distances = (fragment.squared_norms - 2.0 * np.einsum("ij,j->i", fragment.vectors, q))[at]
            found_ids.append(ids[chosen])
            found_distances.append(distances)
        if not found_ids:
            self._count(served=True)
            fields = [table.schema.field(c) for c in columns] + [pa.field("_distance", pa.float32())]
            return pa.schema(fields).empty_table()
        all_ids = np.concatenate(found_ids)
        all_distances = np.concatenate(found_distances) + float(np.einsum("i,i->", q, q))
        if len(all_ids) > limit:
            keep = np.argpartition(all_distances, limit - 1)[:limit]
            all_ids, all_distances = all_ids[keep], all_distances[keep]
        order = np.lexsort((all_ids, all_distances))  # nearest first; ties in row order, as a scan meets them
        all_ids, all_distances = all_ids[order], all_distances[order]
        rows = table.take_row_ids(all_ids.tolist()).select(columns).with_row_id().to_arrow()
        position = {int(rid): i for i, rid in enumerate(rows.column("_rowid").to_numpy())}
        if len(position) != len(all_ids):
            self._count(served=False)
            return None
        rows = rows.take(pa.array([position[int(rid)] for rid in all_ids], type=pa.int64())).drop_columns(["_rowid"])
        self._count(served=True)
        return rows.append_column("_distance", pa.array(np.maximum(all_distances, 0.0).astype(np.float32)))

    def warm(self, table: Any) -> None:
        """Read the vectors of ``table``'s current version in the background (the service's start)."""
        shape = self._version(table)
        if shape.servable:
            self._ready(shape, shape.dataset, inline_rows=0)

    # -- what a version holds --------------------------------------------------------------------------
    def _version(self, table: Any) -> _Version:
        version = int(table.version)
        with self._lock:
            known = self._versions.get(version)
            if known is not None:
                known.used_at = time.monotonic()
                return known
        dataset = table.to_lance()
        indexed = any("vector" in idx.columns for idx in table.list_indices())
        fragments = []
        addresses = True
        for fragment in dataset.get_fragments():
            meta = fragment.metadata
            addresses = addresses and meta.row_id_meta is None
            key = (int(fragment.fragment_id), tuple(sorted(f.path for f in meta.files)))
            fragments.append((int(fragment.fragment_id), key, int(meta.physical_rows)))
        size = sum(rows for _, _, rows in fragments) * (self.dim * 4 + 8)
        self.over_budget = size > self.budget_bytes
        now = time.monotonic()
        shape = _Version(fragments=tuple(fragments), servable=addresses and not indexed and not self.over_budget,
                         used_at=now, dataset=dataset)
        with self._lock:
            self._versions[version] = shape
            self._versions = OrderedDict(sorted(self._versions.items()))
            while len(self._versions) > RECENT_VERSIONS:
                self._versions.popitem(last=False)
            if not shape.servable:
                self._fragments.clear()  # an ANN index answers now, or the copy would pass the budget
            else:
                self._evict()
        return shape

    def _evict(self) -> None:
        """Drop the fragments of versions no search used lately (lock held). When what is left passes the
        budget (a compaction rewrote most of the table, and both layouts are held), the newest version's
        fragments only."""
        if not self._versions:
            return
        now = time.monotonic()
        newest = next(reversed(self._versions))
        keep = {key for v, known in self._versions.items() if v == newest or now - known.used_at < RECENT_S
                for _, key, _ in known.fragments}
        if sum(f.nbytes for k, f in self._fragments.items() if k in keep) > self.budget_bytes:
            keep = {key for _, key, _ in self._versions[newest].fragments}
        for key in [k for k in self._fragments if k not in keep]:
            del self._fragments[key]

    def _ready(self, shape: _Version, dataset: Any, inline_rows: int | None = None) -> bool:
        """Every fragment of ``shape`` held: missing ones up to ``inline_rows`` (``INLINE_READ_ROWS``) are read
        now, larger ones in the background (False until then)."""
        if inline_rows is None:
            inline_rows = INLINE_READ_ROWS
        with self._lock:
            missing = [(fid, key, rows) for fid, key, rows in shape.fragments if key not in self._fragments]
        if not missing:
            return True
        large = [m for m in missing if m[2] > inline_rows]
        try:
            for fid, key, rows in missing:
                if rows <= inline_rows:
                    self._read(dataset, fid, key)
        except Exception as exc:  # noqa: BLE001 - this search keeps LanceDB's scan; the next one tries again
            log.warning("vector_cache.read_failed", error=str(exc))
            return False
        if not large:
            return True
        self._read_later(dataset, large)
        return False

    def _read(self, dataset: Any, fragment_id: int, key: FragmentKey) -> None:
        """One fragment's vectors, batch by batch into one preallocated matrix: a whole-fragment Arrow table,
        then NumPy copies of it, made the daemon's resident memory several times the vectors' size."""
        fragment = dataset.get_fragment(fragment_id)
        matrix = np.empty((int(fragment.metadata.physical_rows), self.dim), dtype=np.float32)
        offsets = np.empty(len(matrix), dtype=np.uint32)
        count = 0
        for batch in fragment.to_batches(columns=["vector"], with_row_address=True, batch_size=READ_BATCH_ROWS,
                                         batch_readahead=1, io_buffer_size=READ_BATCH_ROWS * self.dim * 8):
            vectors = batch.column("vector")
            if vectors.null_count:
                raise ValueError(f"fragment {fragment_id} holds rows without a vector")
            n = batch.num_rows
            values = vectors.flatten().to_numpy(zero_copy_only=False)
            matrix[count:count + n] = values.reshape(n, self.dim)
            offsets[count:count + n] = batch.column("_rowaddr").to_numpy() & np.uint64(0xFFFFFFFF)
            count += n
        matrix, offsets = matrix[:count], offsets[:count]
        if count > 1 and not bool(np.all(offsets[1:] > offsets[:-1])):
            order = np.argsort(offsets, kind="stable")  # a scan reads in offset order; never assume it
            offsets, matrix = offsets[order], matrix[order]
        held = _Fragment(offsets=offsets, vectors=matrix, squared_norms=np.einsum("ij,ij->i", matrix, matrix))
        with self._lock:
            self._fragments[key] = held
            self._evict()

    def _read_later(self, dataset: Any, fragments: list[tuple[int, FragmentKey, int]]) -> None:
        with self._lock:
            if self._loader is not None and self._loader.is_alive():
                return

            def load() -> None:
                try:
                    for fid, key, _ in fragments:
                        with self._lock:
                            if key in self._fragments:
                                continue
                        self._read(dataset, fid, key)
                    log.info("vector_cache.read", fragments=len(fragments), rows=self.rows, bytes=self.nbytes)
                except Exception as exc:  # noqa: BLE001 - the searches keep LanceDB's scan; say why once
                    log.warning("vector_cache.read_failed", error=str(exc))

            self._loader = threading.Thread(target=load, name="syncd-vectors", daemon=True)
            self._loader.start()

    def wait(self, timeout: float = 60.0) -> None:
        """Until a background read ends (tests, the benchmark's warm-up)."""
        loader = self._loader
        if loader is not None:
            loader.join(timeout)

    @staticmethod
    def _matching(dataset: Any, where: str | None) -> np.ndarray:
        """Row ids of the version's live rows that meet ``where`` (the vectors are not read)."""
        got = dataset.to_table(columns=[], filter=where, with_row_id=True) if where else dataset.to_table(
            columns=[], with_row_id=True)
        return np.asarray(got.column("_rowid").to_numpy(), dtype=np.uint64)
