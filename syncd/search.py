"""Search: what happens between the two legs' candidates and the results a RAG application sees.

``store.py`` runs the vector and the full-text leg over the live table with one prefilter (built here by
``where_clause`` from conditions made of escaped values) and looks up where a text occurs; everything else
is a pure function over candidate rows, in this order:

    fuse (RRF over a candidate pool of fixed size) -> relevance (cosine) -> rerank (optional)
    -> relevance floor -> collapse identical texts -> the first k -> read their rows and where else
    their texts occur (one query)

The pool does not depend on ``k``: each leg fetches at least ``candidates`` rows and only ranks within
that pool count in the fusion, so the first three results for ``k=3`` are the first three for ``k=10``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from syncd.errors import SyncdError

RRF_K = 60
"""Reciprocal rank fusion constant (LanceDB's RRFReranker default)."""
CANDIDATES = 50
"""Rows each leg contributes to the fusion, whatever ``k`` is ([search] candidates)."""
DEFAULT_MIN_RELEVANCE = 0.3
"""[search] min_relevance: the default floor (benchmarks/search_quality.py measures where on-topic and
off-topic questions fall on the relevance scale)."""
ALSO_IN_LIMIT = 100
"""Citations listed in one result's ``also_in`` at most (a footer repeated in every page would list them all)."""
STAGES = ("embed", "vector", "fulltext", "fusion", "rerank", "dedup", "read", "total")
"""The stages ``syncd_search_seconds{stage}`` times."""
CITATION_KEYS = ("connector", "doc_id", "uri", "start_line", "end_line")


if TYPE_CHECKING:
    import numpy as np


class SearchError(SyncdError):
    """A search could not be answered (a reranker that failed, a filter the store refused)."""


class SearchOptionError(SearchError, ValueError):
    """A search option with a bad value; ``option`` names it as the interface spells it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchOptions:
    """What a caller asks for; the same options in HTTP, the CLI and the Python API (INTERFACE.md)."""

    k: int = 10
    connector: str | None = None
    path: str | None = None
    """A glob over doc ids (``*`` also crosses folders, ``?`` one character, ``[abc]`` a class)."""
    updated_since: dt.datetime | None = None
    """Only chunks whose document was synced at or after this time (aware, any zone)."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Source metadata the document must hold, key = value (all of them)."""
    min_relevance: float | None = None
    """Results below this relevance are left out; None = the configured default."""
    dedup: bool = True
    """Collapse results with the same text (content hash) into one, with the other places in ``also_in``."""
    as_of: float | None = None
    """Search the index as it was at this unix time (a kept table version that holds exactly that state)."""
    principals: tuple[str, ...] = ()
    """Whom the search is for (``user:NAME``, ``group:NAME``): only chunks they may read are searched; none
    means ``everyone`` documents only (``syncd.acl``)."""


# -- parsing the options as HTTP and the CLI receive them ---------------------------------------------


def parse_time(value: str, option: str = "updated_since") -> dt.datetime:
    """ISO 8601 (``2026-03-03T12:00:00Z``, an offset, or a date); a time without a zone is UTC."""
    text = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SearchOptionError(option, f"expected an ISO 8601 time such as 2026-03-03T12:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_as_of(value: str, option: str = "as_of") -> float:
    """An as-of TIME (ISO 8601) as unix time."""
    from syncd.audit import parse_time as audit_time
    from syncd.errors import BadArgument

    try:
        return audit_time(value, key=option)
    except BadArgument as exc:
        raise SearchOptionError(option, str(exc).removeprefix(f"{option}: ")) from None


def parse_relevance(value: str | float, option: str = "min_relevance") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SearchOptionError(option, f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise SearchOptionError(option, f"must be between 0 and 1, got {value!r}")
    return number


def parse_metadata(pairs: Iterable[str], option: str = "meta") -> dict[str, str]:
    """``KEY=VALUE`` strings (the value may hold ``=``) as a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise SearchOptionError(option, f"expected KEY=VALUE, got {pair!r}")
        out[key] = val
    return out


def parse_bool(value: str, option: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SearchOptionError(option, f"expected true or false, got {value!r}")


def options_from_params(params: Mapping[str, Sequence[str]]) -> SearchOptions:
    """``/search``'s query parameters (``k``, ``connector``, ``path``, ``updated_since``, ``min_relevance``,
    ``meta`` repeatable as KEY=VALUE, ``dedup``) as options; a bad value raises SearchOptionError."""

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values else None

    k_text = one("k")
    try:
        k = int(k_text) if k_text is not None else 10
    except ValueError:
        raise SearchOptionError("k", "must be a whole number") from None
    since = one("updated_since")
    floor = one("min_relevance")
    dedup = one("dedup")
    as_of = one("as_of")
    return check_options(SearchOptions(
        k=k, connector=one("connector"), path=one("path"),
        updated_since=parse_time(since) if since is not None else None,
        metadata=parse_metadata(params.get("meta", [])),
        min_relevance=parse_relevance(floor) if floor is not None else None,
        dedup=parse_bool(dedup, "dedup") if dedup is not None else True,
        as_of=parse_as_of(as_of) if as_of is not None else None,
        principals=tuple(params.get("principal", []))))


def check_options(options: SearchOptions) -> SearchOptions:
    """The options as given through the Python API, checked as HTTP and the CLI check theirs."""
    if isinstance(options.k, bool) or not isinstance(options.k, int) or not 1 <= options.k <= 1000:
        raise SearchOptionError("k", f"must be a whole number between 1 and 1000, got {options.k!r}")
    if options.min_relevance is not None:
        parse_relevance(options.min_relevance)
    for name, value in (("connector", options.connector), ("path", options.path)):
        if value is not None and (not isinstance(value, str) or "\x00" in value):
            raise SearchOptionError(name, "must be a string without NUL")
    if options.updated_since is not None:
        if not isinstance(options.updated_since, dt.datetime):
            raise SearchOptionError("updated_since", "must be a datetime (or an ISO 8601 string)")
        if options.updated_since.tzinfo is None:
            options = replace(options, updated_since=options.updated_since.replace(tzinfo=dt.UTC))
    if options.as_of is not None and (isinstance(options.as_of, bool) or not isinstance(options.as_of, int | float)):
        raise SearchOptionError("as_of", "must be a unix time (or an ISO 8601 string through the interfaces)")
    for key, value in options.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or "\x00" in key + value:
            raise SearchOptionError("metadata", f"keys and values must be strings without NUL: {key!r}")
    from syncd.acl import PrincipalError, check_principal

    if isinstance(options.principals, str):
        raise SearchOptionError("principal", "expected a list of principals, got one string")
    try:
        principals = tuple(check_principal(p) for p in options.principals or ())
    except PrincipalError as exc:
        raise SearchOptionError("principal", str(exc)) from None
    if principals != options.principals:
        return replace(options, principals=principals)
    return options


# -- filters -----------------------------------------------------------------------------------------

_REGEX_META = frozenset("\\.+*?()|[]{}^$#&-~")


def _regex_char(c: str) -> str:
    return "\\" + c if c in _REGEX_META else c


def glob_regex(glob: str) -> str:
    """A glob over doc ids as an anchored regular expression in the syntax both Rust's ``regex`` (the
    store's ``regexp_like``) and Python's ``re`` read: ``*`` is any run of characters (folders included, as in
    the connectors' include globs), ``?`` one character, ``[abc]``/``[a-z]``/``[!abc]`` a class; everything
    else is literal (``%``, quotes, backslashes and non-ASCII included)."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            while i < n and glob[i] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append("\\[")
                continue
            body, i = glob[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            parts: list[str] = []
            m = 0
            while m < len(body):
                if m + 2 < len(body) and body[m + 1] == "-":
                    lo, hi = body[m], body[m + 2]
                    if lo <= hi:  # a reversed range matches nothing, as in fnmatch
                        parts.append(f"{_regex_char(lo)}-{_regex_char(hi)}")
                    m += 3
                else:
                    parts.append(_regex_char(body[m]))
                    m += 1
            if not parts:
                out.append("[^\\s\\S]" if not negate else "(?s:.)")
            else:
                out.append("[" + ("^" if negate else "") + "".join(parts) + "]")
        else:
            out.append(_regex_char(c))
    return "(?s)^" + "".join(out) + "$"


def glob_escape(text: str) -> str:
    """A glob that matches exactly ``text``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def where_clause(conditions: Iterable[str | None]) -> str | None:
    """One prefilter from SQL conditions, each built from escaped values (``store.sql_string``), all of
    which must hold; None when there are none. The one place where conditions are combined: the legs,
    the citation lookup and every filter added later go through it."""
    parts = [c for c in conditions if c]
    if not parts:
        return None
    return " AND ".join(f"({c})" for c in parts)


def timestamp_literal(when: dt.datetime) -> str:
    """A UTC timestamp literal for a filter (no caller text reaches it: it is formatted from a datetime)."""
    utc = when.astimezone(dt.UTC)
    return f"TIMESTAMP '{utc.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z'"


def filter_conditions(options: SearchOptions) -> list[str]:
    """The SQL conditions of the options' filters, from escaped values only."""
    from syncd.acl import search_filter
    from syncd.store import metadata_condition, sql_string

    # Who may read a chunk comes first: it is never left out, and the label-list index serves it.
    conditions: list[str] = [search_filter(options.principals)]
    if options.connector is not None:
        conditions.append(f"connector = {sql_string(options.connector)}")
    if options.path is not None:
        conditions.append(f"regexp_like(doc_id, {sql_string(glob_regex(options.path))})")
    if options.updated_since is not None:
        conditions.append(f"updated_at >= {timestamp_literal(options.updated_since)}")
    for key, value in sorted(options.metadata.items()):
        conditions.append(metadata_condition(key, value))
    return conditions


# -- the pure stages ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    """One chunk found by either leg, with what each stage made of it."""

    row: dict[str, Any]
    fused: float
    """Reciprocal rank fusion over the candidate pool (0 for a row past the pool in both legs)."""
    best_rank: int
    relevance: float = 0.0
    rerank: float | None = None
    also_in: list[dict[str, Any]] = field(default_factory=list)


def fuse(vector_rows: Sequence[dict[str, Any]], text_rows: Sequence[dict[str, Any]], *,
         pool: int = CANDIDATES) -> list[Candidate]:
    """Reciprocal rank fusion in which only ranks within ``pool`` count: rows past it (fetched when k is
    larger than the pool) score 0 and follow in order of their best rank, so the order of the pooled rows
    never depends on how many rows the legs fetched. Ties break on chunk id, so the order is total."""
    found: dict[str, Candidate] = {}
    for ranked in (vector_rows, text_rows):
        for rank, row in enumerate(ranked, 1):
            cid = row["chunk_id"]
            cand = found.get(cid)
            if cand is None:
                cand = found[cid] = Candidate(row=row, fused=0.0, best_rank=rank)
            else:
                cand.best_rank = min(cand.best_rank, rank)
                if cand.row.get("vector") is None and row.get("vector") is not None:
                    cand.row = row
            if rank <= pool:
                cand.fused += 1.0 / (rank + RRF_K)
    return sorted(found.values(), key=lambda c: (-c.fused, c.best_rank, c.row["chunk_id"]))


def score_relevance(candidates: Sequence[Candidate], query_vector: np.ndarray) -> None:
    """``relevance`` = the cosine similarity of the query's and the chunk's embedding, clipped to [0, 1]:
    the same scale for a row found by either leg, and the one a floor is set on."""
    import numpy as np

    if not candidates:
        return
    q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    q_norm = float(np.linalg.norm(q)) or 1.0
    matrix = np.stack([np.asarray(c.row["vector"], dtype=np.float32) for c in candidates])
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    # einsum, not `@`: NumPy's BLAS may wake every core for the product and leave them spinning (see
    # vector_cache.py), taking CPU from the writer.
    cosines = np.einsum("ij,j->i", matrix, q) / (norms * q_norm)
    for cand, cos in zip(candidates, cosines, strict=True):
        cand.relevance = float(min(1.0, max(0.0, cos)))


class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant."""

    def score(self, query: str, passages: Sequence[str]) -> Sequence[float]: ...


def rerank(candidates: list[Candidate], query: str, reranker: Reranker) -> list[Candidate]:
    """The fused pool (rows with a fusion score) in the reranker's order; rows past the pool follow as
    they were. A reranker that fails fails the search: results are never silently left unranked."""
    pooled = [c for c in candidates if c.fused > 0]
    rest = [c for c in candidates if c.fused <= 0]
    if not pooled:
        return candidates
    try:
        scores = list(reranker.score(query, [c.row["text"] or "" for c in pooled]))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the search reports it
        raise SearchError(f"the reranker failed: {exc}") from exc
    if len(scores) != len(pooled):
        raise SearchError(f"the reranker returned {len(scores)} scores for {len(pooled)} passages")
    for cand, value in zip(pooled, scores, strict=True):
        cand.rerank = float(value)
    order = sorted(range(len(pooled)), key=lambda i: (-(pooled[i].rerank or 0.0), i))
    return [pooled[i] for i in order] + rest


def citation(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"connector": row["connector"], "doc_id": row["doc_id"], "uri": row["uri"],
            "start_line": int(row["start_line"]), "end_line": int(row["end_line"])}


def collapse(candidates: Sequence[Candidate]) -> list[Candidate]:
    """One candidate per content hash, the best placed; the others become its ``also_in`` citations."""
    out: list[Candidate] = []
    first: dict[str, Candidate] = {}
    for cand in candidates:
        h = cand.row.get("content_hash")
        kept = first.get(h) if h else None
        if kept is None:
            if h:
                first[h] = cand
            out.append(cand)
        elif len(kept.also_in) < ALSO_IN_LIMIT:
            kept.also_in.append(citation(cand.row))
    return out


def add_citations(kept: Sequence[Candidate], rows: Iterable[Mapping[str, Any]]) -> None:
    """Every other place a kept result's text occurs (rows of a lookup by content hash), once each."""
    by_hash = {c.row["content_hash"]: c for c in kept if c.row.get("content_hash")}
    for row in sorted(rows, key=lambda r: (r["connector"], r["doc_id"], int(r["start_line"]), r["chunk_id"])):
        cand = by_hash.get(row["content_hash"])
        if cand is None or row["chunk_id"] == cand.row["chunk_id"]:
            continue
        cite = citation(row)
        if cite not in cand.also_in and len(cand.also_in) < ALSO_IN_LIMIT:
            cand.also_in.append(cite)


def result(cand: Candidate, table_version: int | None) -> dict[str, Any]:
    """A candidate as the `query` JSON's result object (INTERFACE.md, keys added, none renamed)."""
    row = cand.row
    updated = row.get("updated_at")
    score = cand.rerank if cand.rerank is not None else cand.fused
    out: dict[str, Any] = {
        "score": float(score),
        "relevance": round(cand.relevance, 6),
        "text": row["text"], "doc_id": row["doc_id"], "connector": row["connector"], "uri": row["uri"],
        "title": row["title"], "revision": row["revision"], "chunk_index": int(row["chunk_index"]),
        "heading_path": list(row["heading_path"] or []),
        "start_line": int(row["start_line"]), "end_line": int(row["end_line"]),
        "updated_at": updated.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if updated else None,
        "chunk_id": row["chunk_id"], "content_hash": row.get("content_hash"),
        "table_version": table_version,
        "also_in": list(cand.also_in),
    }
    if cand.rerank is not None:
        out["fusion_score"] = float(cand.fused)
    return out


# -- the whole search --------------------------------------------------------------------------------


class Legs(Protocol):
    """What the search needs from the store (``store.Store`` implements it)."""

    def search_legs(self, vector: np.ndarray | Callable[[], np.ndarray], text: str, *, limit: int,
                    where: str | None, version: int | None = None) -> LegRows: ...

    def complete_rows(self, chunk_ids: Sequence[str], hashes: Sequence[str], where: str | None,
                      version: int | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]: ...

    def table_version(self) -> int: ...

    def version_as_of(self, when: float) -> int: ...


@dataclass(kw_only=True, slots=True)
class LegRows:
    """The two legs' rows for one query, the query vector, and how long each part took."""

    vector_rows: list[dict[str, Any]]
    text_rows: list[dict[str, Any]]
    query_vector: np.ndarray
    seconds: dict[str, float]


@dataclass(kw_only=True, slots=True)
class Answer:
    results: list[dict[str, Any]]
    table_version: int | None
    seconds: dict[str, float]


def search(store: Legs, vector: np.ndarray | Callable[[], np.ndarray], text: str, options: SearchOptions, *,
           default_min_relevance: float = DEFAULT_MIN_RELEVANCE, reranker: Reranker | None = None,
           candidates: int = CANDIDATES, extra_conditions: Sequence[str] = (), version: int | None = None) -> Answer:
    """Hybrid search with every stage above; ``extra_conditions`` are further SQL conditions (escaped) that
    every row must meet. ``version`` (or ``options.as_of``) searches the table as that version held it;
    otherwise the version the live table has when the search begins: every read is made on that one
    version, which ``table_version`` names."""
    options = check_options(options)
    where = where_clause([*filter_conditions(options), *extra_conditions])
    floor = default_min_relevance if options.min_relevance is None else options.min_relevance
    started = time.perf_counter()
    if version is None and options.as_of is not None:
        version = store.version_as_of(options.as_of)  # AsOfUnavailable names the oldest time kept
    # Every read of the search is made on the version the live table had when it began: one snapshot, so
    # the answer never mixes versions whatever commits land meanwhile. (Repeating the reads when a commit
    # had landed, as before, ran most searches again while a sync kept committing.)
    pinned = version if version is not None else store.table_version()
    legs = store.search_legs(vector, text, limit=max(options.k, candidates), where=where, version=pinned)
    seconds = dict(legs.seconds)
    t0 = time.perf_counter()
    found = fuse(legs.vector_rows, legs.text_rows, pool=candidates)
    score_relevance(found, legs.query_vector)
    seconds["fusion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if reranker is not None:
        found = [c for c in found if c.relevance >= floor]
        pooled = [c for c in found if c.fused > 0]
        found = complete(store, found, pooled, (), where, pinned)  # the reranker reads their text
        found = rerank(found, text, reranker)
    seconds["rerank"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = [c for c in found if c.relevance >= floor]
    if options.dedup:
        kept = collapse(found)[:options.k]
        hashes = sorted({c.row["content_hash"] for c in kept if c.row.get("content_hash")})
    else:
        kept, hashes = found[:options.k], []
    seconds["dedup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = complete(store, kept, kept, hashes, where, pinned)
    seconds["read"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return Answer(results=[result(c, pinned) for c in kept], table_version=pinned, seconds=seconds)


def complete(store: Legs, candidates: list[Candidate], wanted: Sequence[Candidate], hashes: Sequence[str],
             where: str | None, version: int | None) -> list[Candidate]:
    """``candidates`` with the result columns of those in ``wanted`` read (the legs read only what ranking
    needs), and the other places of ``hashes`` cited, on the same ``version`` as the legs. A wanted row the
    read did not find (none should: it is the legs' version) is left out rather than answered half-read."""
    need = [c for c in wanted if "text" not in c.row]
    if not need and not hashes:
        return candidates
    full, places = store.complete_rows([c.row["chunk_id"] for c in need], hashes, where, version=version)
    gone: set[str] = set()
    for cand in need:
        row = full.get(cand.row["chunk_id"])
        if row is None:
            gone.add(cand.row["chunk_id"])
        else:
            cand.row = {**row, "vector": cand.row.get("vector")}
    if places:
        add_citations([c for c in candidates if c.row["chunk_id"] not in gone], places)
    return [c for c in candidates if c.row["chunk_id"] not in gone]


def options_from_kwargs(*, k: int = 10, connector: str | None = None, path: str | None = None,
                        updated_since: dt.datetime | str | None = None, metadata: Mapping[str, str] | None = None,
                        min_relevance: float | None = None, dedup: bool = True,
                        as_of: float | str | dt.datetime | None = None,
                        principals: Sequence[str] | None = None) -> SearchOptions:
    """SearchOptions from the Python API's keyword arguments (an ISO 8601 string is parsed); the same for
    the in-process index and the one answered by the daemon."""
    since = parse_time(updated_since) if isinstance(updated_since, str) else updated_since
    return check_options(SearchOptions(
        k=k, connector=connector, path=path, updated_since=since, metadata=dict(metadata or {}),
        min_relevance=min_relevance, dedup=dedup, as_of=_when(as_of) if as_of is not None else None,
        principals=tuple(principals or ())))


def _when(value: float | str | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, str):
        return parse_as_of(value)
    return float(value)


def options_to_params(options: SearchOptions) -> list[tuple[str, str]]:
    """``/search``'s query parameters for ``options`` (the inverse of ``options_from_params``), without ``q``."""
    params = [("k", str(options.k))]
    if options.connector is not None:
        params.append(("connector", options.connector))
    if options.path is not None:
        params.append(("path", options.path))
    if options.updated_since is not None:
        params.append(("updated_since", options.updated_since.isoformat()))
    params += [("meta", f"{key}={value}") for key, value in options.metadata.items()]
    if options.min_relevance is not None:
        params.append(("min_relevance", repr(float(options.min_relevance))))
    if not options.dedup:
        params.append(("dedup", "false"))
    if options.as_of is not None:
        params.append(("as_of", dt.datetime.fromtimestamp(options.as_of, dt.UTC).isoformat()))
    params.extend(("principal", p) for p in options.principals)
    return params
