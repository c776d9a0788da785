"""Configuration: one pydantic model per TOML section, validated at start-up.

Every error names the key (``connectors[1].path``) and the problem. Relative paths resolve against the
config file's folder. Secrets are never in the file: it names an environment variable that holds them.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from syncd.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"10m"``, ``"1h"``, ``"250ms"`` or a bare number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\", \"10m\" or \"1h\"")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as \"30s\", \"10m\" or \"1h\", got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """``0.1`` -> ``"100ms"``, ``60`` -> ``"1m"``, ``90`` -> ``"90s"``: the shortest exact spelling."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


@dataclass(frozen=True, slots=True)
class Floor:
    """The shortest sane value of a duration key, and what 0 means where 0 is allowed."""

    minimum: float
    """Seconds; a shorter value is a config error naming the key and this minimum."""
    zero: str | None = None
    """What 0 means where it is documented (``"off"``, ``"only at start"``); None when 0 is an error."""


_LOOP_S = 0.1
"""Nothing in syncd repeats faster than ten times a second: a poll interval of 0 is a busy loop (the
polling observer re-scans the folder without pause), and an interval a little above 0 nearly one."""

DURATION_FLOORS: dict[str, Floor] = {
    # Keys of [store] and [sync].
    "read_consistency_interval": Floor(0.0, zero="on every query"),  # any value is sane; 0 is documented
    "index_when_idle": Floor(_LOOP_S, zero="only by rows and schedule"),
    "verify_interval": Floor(1.0, zero="never"),
    "maintenance_interval": Floor(1.0),
    "version_retention": Floor(600.0),  # readers in other processes must never lose the version they read
    "backoff_max": Floor(_LOOP_S),
    "delete_settle": Floor(_LOOP_S),  # the writer checks held deletions at this period
    "stall_after": Floor(1.0),  # shorter calls every backlog a stall
    "lease_ttl": Floor(2.0),  # the heartbeat renews at a third of it: shorter races every store round trip
    "keep_versions_for": Floor(86400.0, zero="off"),  # one version per day: less than a day keeps none
    # Keys every connector type may use, with the same meaning.
    "poll_interval": Floor(_LOOP_S),
    "reconcile_interval": Floor(1.0, zero="only at start"),
    "check_interval": Floor(1.0, zero="off"),  # a check more often than each second is a poll by another name
    "timeout": Floor(1.0),  # shorter fails every request or fetch, then retries it: a loop that does nothing
    "max_backoff": Floor(0.01),  # 0 would retry a failing server at once, with no pause at all
    "overlap": Floor(1.0),  # the sources' timestamps have whole seconds: less re-reads nothing
    "rc_max_age": Floor(3600.0),  # shorter sends every poll to a full listing
    # Per connector type, where a key means something else there.
    "confluence.reconcile_interval": Floor(1.0),  # 0 would list every page id on every poll, not "off"
}
"""Every duration key by name (``TYPE.KEY`` for one connector type). A key not listed has no floor;
``tests/test_config_hardening.py`` fails when a built-in duration key is missing here."""


def duration_floor(key: str, connector_type: str | None = None) -> Floor | None:
    """The floor of the duration ``key`` (of a connector of ``connector_type``), or None."""
    if connector_type is not None and f"{connector_type}.{key}" in DURATION_FLOORS:
        return DURATION_FLOORS[f"{connector_type}.{key}"]
    return DURATION_FLOORS.get(key)


def _check_floor(seconds: float, info: ValidationInfo) -> float:
    ctype = info.data.get("type") if isinstance(info.data, dict) else None
    floor = duration_floor(info.field_name or "", ctype if isinstance(ctype, str) else None)
    if floor is None or seconds >= floor.minimum or (seconds == 0 and floor.zero is not None):
        return seconds
    allowed = f"at least {format_duration(floor.minimum)}"
    if floor.zero is not None:
        allowed += f", or 0 ({floor.zero})"
    raise ValueError(f"must be {allowed}; got {format_duration(seconds) if seconds else '0'}")


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_check_floor)]
"""A duration in seconds, checked against its key's floor in ``DURATION_FLOORS``."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(Section):
    uri: str = "./.syncd/index"
    """LanceDB URI: a local folder (relative to the config file) or an object-store URI."""
    table: str = "chunks"
    """Base name of the chunk table; a reindex builds a new table and switches to it."""
    read_consistency_interval: Duration = 0.0
    """How often readers in other processes look for new commits (0 = on every query)."""
    compact_every_commits: int = Field(default=32, ge=1, le=10_000)
    """The service merges the small fragments written since the full-text index was last folded after this
    many commits (LanceDB advises about 20)."""
    max_fragments: int = Field(default=64, ge=2)
    """Past this many fragments it merges every small fragment, remapping the full-text and vector indexes
    (which Lance rewrites whole for it)."""
    ann_min_rows: int = Field(default=100_000, ge=1)
    """An ANN vector index is built once the table holds this many rows; below it a flat scan is faster."""
    index_when_idle: Duration = 2.0
    """The indexes are brought up to date once the writer has had nothing to do for this long (bringing
    the full-text index up to date rewrites it, the slowest step; 0 = only by rows and schedule; else at
    least 100ms)."""
    index_every_rows: int = Field(default=16_384, ge=1)
    """... and under a load that never leaves the writer idle, once this many rows are outside them
    (queries scan such rows without the index)."""
    fold_every_rows: int = Field(default=2048, ge=1)
    """Below that, past this many unindexed rows a thread beside the writer (the folder) folds them into one
    index at a time, so no edit waits behind an index update."""
    index_cache_mb: int = Field(default=1024, ge=16)
    """Memory LanceDB may keep for opened indexes, per process (its own default is sized for short-lived
    processes)."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    """Options of an object-store URI (``endpoint``, ``region``, ``allow_http``...), passed to LanceDB. No
    credentials: those come from the standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ...) or from a ``*_env`` key naming the variable that holds one (``aws_secret_access_key_env = "VAR"``)."""
    lease_ttl: Duration = 15.0
    """Object stores: how long a connector's ownership outlives its daemon's last heartbeat (a daemon renews
    its leases every third of this); a daemon killed without stopping is replaced after at most this long."""
    concurrent_writers: bool = True
    """Object stores: several daemons may write the store, each owning its connectors through leases kept in
    the store (which must honour conditional writes). false: this daemon is the store's only writer and takes
    no leases (the only way to use a store that ignores conditional writes)."""
    metadata_cache_mb: int = Field(default=64, ge=1)
    """Memory LanceDB may keep for table metadata, per process (its own default lets a long-lived service
    grow with every commit until it is reached; benchmarks/diagnostics/lancedb_commit_memory.py)."""

    def cache_limits(self) -> dict[str, int]:
        """``Store`` keyword arguments bounding LanceDB's caches."""
        return {"index_cache_mb": self.index_cache_mb, "metadata_cache_mb": self.metadata_cache_mb}

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        from syncd.redact import SECRET_OPTION

        for key in value:
            if SECRET_OPTION.search(key) and not key.endswith("_env"):
                raise ValueError(f"{key}: credentials never sit in the config file; name the environment "
                                 f"variable that holds it ({key}_env = \"VAR\") or use the standard "
                                 "environment variables (AWS_*, AZURE_STORAGE_*, GOOGLE_SERVICE_ACCOUNT*)")
        return value

    @property
    def is_object_store(self) -> bool:
        """The URI names an object store (s3://, gs://, az://...), not a local folder."""
        return "://" in self.uri and not self.uri.startswith("file://")

    def resolved_storage_options(self) -> dict[str, str]:
        """``storage_options`` with every ``*_env`` key replaced by the secret its variable holds (registered
        for redaction: it never appears in a log line or an error)."""
        from syncd.redact import register_secret

        out: dict[str, str] = {}
        for key, value in self.storage_options.items():
            if key.endswith("_env"):
                secret = resolve_secret(value, key=f"store.storage_options.{key}")
                assert secret is not None
                register_secret(secret)
                out[key.removesuffix("_env")] = secret
            else:
                out[key] = value
        if self.uri.startswith(("s3://", "s3a://")) and not any(
                k in out for k in ("aws_access_key_id", "access_key_id")) and "AWS_ACCESS_KEY_ID" not in os.environ:
            for key, secret in aws_credentials_file().items():
                register_secret(secret)
                out.setdefault(key, secret)
        return out

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError("must match [A-Za-z0-9_-]+")
        return value


class EmbeddingConfig(Section):
    model: str = "all-MiniLM-L6-v2"
    """A model name (all-MiniLM-L6-v2 resolves to the packaged offline copy) or a local folder."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Texts per model call, at most."""
    max_batch_tokens: int = Field(default=2048, ge=1)
    """Padded tokens per model call, at most (calls are also cut here: texts sorted by length, so a call of
    long texts holds fewer of them). Small calls of similar length are faster per text on a CPU."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    threads: int = Field(default=0, ge=0)
    """CPU threads of the model (PyTorch or ONNX Runtime); 0 = one per core."""
    query_cache: int = Field(default=1024, ge=0)
    """Query vectors kept by query text for /search, `syncd query -` and the Python API (most recently used;
    0 = none): a repeated query costs no model time."""
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    """auto (the default): a new index on a CPU gets onnx-int8, a GPU or a model ONNX cannot serve gets torch,
    and an existing index keeps the backend it was built with. torch runs sentence-transformers; onnx (fp32,
    same vectors) and onnx-int8 (dynamic int8 quantisation, the fastest on a CPU: benchmarks/README.md;
    activations are scaled per batch, so a text's vector varies slightly with its batch) run an ONNX Runtime
    copy of the model, exported once into the state folder (``syncd model prepare``, or the first start).
    Naming another backend than the index's rebuilds it: vectors of different backends are never mixed."""


class ChunkingConfig(Section):
    max_tokens: int = Field(default=256, ge=16, le=8192)
    """Largest chunk, in the embedding model's own tokens."""
    overlap_tokens: int = Field(default=32, ge=0)
    """Tokens repeated between the pieces of a block that is split because it is too long."""


class HttpToken(Section):
    """A bearer token limited to the principals it may act as (a person's, or an application's)."""

    token_env: str | None = None
    """Environment variable holding the token."""
    token_file: str | None = None
    """File holding the token instead."""
    principals: tuple[str, ...]
    """The principals a caller with this token may name in ``principal=`` (``everyone`` always)."""

    @field_validator("principals")
    @classmethod
    def _principals(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from syncd.acl import check_principal

        if not value:
            raise ValueError("must name at least one principal")
        return tuple(check_principal(v) for v in value)

    @field_validator("token_file")
    @classmethod
    def _one_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("token_env") is not None:
            raise ValueError("give token_env or token_file, not both")
        return value


class HttpConfig(Section):
    bind: str = "127.0.0.1:8765"
    """host:port; port 0 picks a free port (logged, and written to the state folder)."""
    token_env: str | None = None
    """Environment variable holding the bearer token; required (or token_file) when bind is not loopback."""
    token_file: str | None = None
    """File holding the bearer token instead (e.g. "$CREDENTIALS_DIRECTORY/http-token" with LoadCredential=)."""
    tokens: tuple[HttpToken, ...] = ()
    """Further tokens, each limited to the principals it may act as ([[http.tokens]]). The token above is a
    trusted backend's: it may act as any principal."""

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. \"127.0.0.1:8765\"")
        return value

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    @property
    def is_loopback(self) -> bool:
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class SearchConfig(Section):
    min_relevance: float = Field(default=0.3, ge=0.0, le=1.0)
    """Results below this relevance (the cosine similarity of query and chunk, 0-1) are left out unless a
    search asks for another floor; 0 keeps everything. The default sits between the relevance of off-topic
    and on-topic questions measured on the sample handbook (benchmarks/README.md)."""
    reranker: str | None = None
    """A local cross-encoder model folder (sentence-transformers ``CrossEncoder``) that reorders the fused
    candidates; loaded at start-up, and a model that is missing or does not load is an error then."""
    rerank_batch_size: int = Field(default=16, ge=1, le=1024)
    """(query, passage) pairs per reranker call."""
    candidates: int = Field(default=50, ge=1, le=1000)
    """Rows each leg contributes to the fusion, whatever k is (the first results for a small k are the
    first ones for a larger k)."""
    require_principals: bool = False
    """Refuse a /search (400) that names no principal, instead of answering with `everyone` documents only."""
    vector_cache_mb: int = Field(default=256, ge=0)
    """Memory the daemon may spend holding the table's vectors while it has no ANN index (below
    ``[store] ann_min_rows``), so the vector leg is a product in memory instead of a read of every vector
    from the table's files at each search; past it, or 0, LanceDB's own scan answers. 4 bytes a dimension
    a chunk: 384 dimensions at 100,000 chunks take about 150 MiB."""


class StateConfig(Section):
    dir: str = "./.syncd/state"
    """Local folder for cursors, caches and the running daemon's address."""


class LimitsConfig(Section):
    """Largest source file per type, in bytes; larger ones are skipped with a reason."""

    markdown: int = Field(default=20_000_000, ge=1)
    text: int = Field(default=20_000_000, ge=1)
    rst: int = Field(default=20_000_000, ge=1)
    html: int = Field(default=20_000_000, ge=1)
    pdf: int = Field(default=100_000_000, ge=1)
    wikitext: int = Field(default=20_000_000, ge=1)


class SyncConfig(Section):
    max_delete_fraction: float = Field(default=0.5, gt=0, le=1)
    """A cycle may delete at most this share of a connector's documents without --allow-mass-delete."""
    max_batch_docs: int = Field(default=256, ge=1)
    """Most documents written in one LanceDB commit."""
    verify_interval: Duration = 3600.0
    """How often the service compares the index with the sources (0 = never; else at least 1s)."""
    maintenance_interval: Duration = 300.0
    """How often the service compacts the table and prunes old versions (at least 1s)."""
    version_retention: Duration = 900.0
    """Old table versions are kept at least this long so readers in other processes never break (>= 10m)."""
    backoff_max: Duration = 900.0
    """Longest wait between attempts of a connector that keeps failing (the wait doubles from its interval;
    at least 100ms)."""
    embed_budget: int = Field(default=512, ge=16)
    """Most new chunk texts the service embeds for one commit. Smaller documents go first; a document past the
    budget keeps the vectors made so far and is finished in later cycles, so one large file never holds
    the writer (and every other document) for long. `syncd sync` and `reindex` have no budget."""
    delete_settle: Duration = 1.0
    """The service holds watcher-reported deletions until none came for this long, then the mass-deletion
    guard judges the whole burst at once (a fast `rm -r` is refused before any of it is deleted)."""
    stall_after: Duration = 120.0
    """A connector whose backlog has not shrunk for this long shows `stalled` in /status and fails /readyz."""


class AuditConfig(Section):
    keep_versions_for: Duration = 90 * 86400.0
    """Point-in-time answers: every version of the last hour and each day's last version are kept this long
    (as Lance tags, which version clean-up leaves alone); an as-of older than that is an error naming the
    oldest time available. 0 = off (versions go after [sync] version_retention). At least 1d."""


class ReindexConfig(Section):
    """``syncd reindex``: where a full rebuild runs. ``engine = "ray"`` (or ``--ray``) spreads it over a Ray
    cluster; the single-process rebuild is the default and is unchanged by this section."""

    engine: Literal["local", "ray"] = "local"
    """local: this process reads, chunks, embeds and writes; ray: a Ray cluster does (``--ray`` picks it too)."""
    address: str = "auto"
    """The Ray cluster to join: HOST:PORT of its head, or auto (``$RAY_ADDRESS``, else a cluster started on
    this machine with ``ray start``). ``--ray ADDRESS`` wins."""
    actors: int = Field(default=2, ge=1, le=10_000)
    """Embedding actors, each holding one copy of the model."""
    cpus_per_actor: float = Field(default=1.0, gt=0)
    """CPUs Ray reserves for each actor; the model runs that many threads."""
    gpus_per_actor: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves for each actor (with ``[embedding] device = "cuda"``); 0 = CPU actors."""
    batch_docs: int = Field(default=256, ge=1, le=100_000)
    """Documents per cluster batch: one read-and-chunk task, one embedding call and one written fragment."""
    read_cpus: float = Field(default=0.5, gt=0)
    """CPUs Ray reserves for each read-and-chunk task."""
    in_flight: int = Field(default=0, ge=0)
    """Batches under way at once (0 = three per actor): bounds the driver's and the object store's memory."""


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _acl_entries(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    from syncd.acl import check_entry

    if value is None:
        return None
    return tuple(check_entry(v) for v in value)


def _principal_map(value: dict[str, str]) -> dict[str, str]:
    from syncd.acl import check_principal

    for source, principal in value.items():
        try:
            check_principal(principal)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    return value


AclEntries = Annotated[tuple[str, ...] | None, AfterValidator(_acl_entries)]


class ConnectorConfig(Section):
    """Fields every connector has; each connector type extends it with its own."""

    name: str
    """Unique name, [a-z0-9_-]+."""
    type: str
    acl: AclEntries = None
    """Who may read this connector's documents (``user:NAME``, ``group:NAME``, ``everyone``), instead of
    what the connector captures from the source. Unset: the captured permissions (a git repository has none:
    its documents are then readable by nobody until this is set)."""
    acl_add: Annotated[tuple[str, ...], AfterValidator(_acl_entries)] = ()
    """Principals added to every document's captured permissions (e.g. an auditors group)."""
    principal_map: Annotated[dict[str, str], AfterValidator(_principal_map)] = Field(default_factory=dict)
    """Source identities renamed to principals, e.g. {"group:sysop" = "group:wiki-admins",
    "user:1001" = "user:alice"}."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", value):
            raise ValueError("must match [a-z0-9_-]+")
        return value


class PushConfig(ConnectorConfig):
    """A polled connector that also takes push hooks (``POST /hooks/NAME``): a hook only starts its poll now."""

    webhook_secret_env: str | None = None
    """Environment variable holding the secret that push hooks of this connector are signed or sent with
    (a forge's webhook secret, or `Authorization: Bearer SECRET` from a post-receive hook). Without a
    secret, /hooks/NAME answers 404."""
    webhook_secret_file: str | None = None
    """File holding that secret instead (e.g. "$CREDENTIALS_DIRECTORY/docs-webhook" with LoadCredential=)."""

    def webhook_secret(self, base_dir: Path | None = None) -> str | None:
        """The webhook secret (None when none is configured); a missing variable or file is a ConfigError."""
        key = f"connectors.{self.name}.webhook_secret_" + ("file" if self.webhook_secret_file else "env")
        return resolve_secret(self.webhook_secret_env, key=key, file=self.webhook_secret_file, base_dir=base_dir)


class Config(Section):
    store: StoreConfig = StoreConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    http: HttpConfig = HttpConfig()
    state: StateConfig = StateConfig()
    limits: LimitsConfig = LimitsConfig()
    sync: SyncConfig = SyncConfig()
    audit: AuditConfig = AuditConfig()
    reindex: ReindexConfig = ReindexConfig()
    logging: LoggingConfig = LoggingConfig()
    search: SearchConfig = SearchConfig()
    connectors: tuple[ConnectorConfig, ...] = ()

    # Set by load(): where the file was, to resolve relative paths.
    base_dir: Path = Path(".")
    source: str = "<defaults>"

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def store_uri(self) -> str:
        """The store URI, absolute for a local folder."""
        if "://" in self.store.uri:
            return self.store.uri
        return str(self.resolve_path(self.store.uri))

    @property
    def state_dir(self) -> Path:
        return self.resolve_path(self.state.dir)

    def connector(self, name: str) -> ConnectorConfig:
        for connector in self.connectors:
            if connector.name == name:
                return connector
        known = ", ".join(c.name for c in self.connectors) or "none"
        raise ConfigError(f"no connector named {name!r} (configured: {known})", key="connectors")


def find_config_path(explicit: str | None) -> Path:
    """--config, else $SYNCD_CONFIG, else ./syncd.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("SYNCD_CONFIG"):
        return Path(os.environ["SYNCD_CONFIG"])
    return Path("syncd.toml")


def _format_loc(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _raise_validation(exc: ValidationError, prefix: str, source: str) -> None:
    err = exc.errors()[0]
    key = _format_loc(tuple(err["loc"]), prefix)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    raise ConfigError(f"{source}: {key}: {msg}", key=key) from None


def parse(data: dict[str, Any], *, base_dir: Path, source: str) -> Config:
    """Validate a parsed TOML document. Raises ConfigError naming the key."""
    from syncd.registry import connector_class

    raw_connectors = data.pop("connectors", [])
    if not isinstance(raw_connectors, list):
        raise ConfigError(f"{source}: connectors: expected [[connectors]] tables", key="connectors")
    connectors: list[ConnectorConfig] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_connectors):
        key = f"connectors[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: {key}: expected a table", key=key)
        ctype = raw.get("type")
        if not isinstance(ctype, str):
            raise ConfigError(f"{source}: {key}.type: required (e.g. \"filesystem\")", key=f"{key}.type")
        try:
            cls = connector_class(ctype)
        except KeyError as exc:
            raise ConfigError(f"{source}: {key}.type: {exc.args[0]}", key=f"{key}.type") from None
        try:
            parsed = cls.config_model.model_validate(raw)
        except ValidationError as exc:
            _raise_validation(exc, key, source)
        if parsed.name in names:
            raise ConfigError(f"{source}: {key}.name: duplicate connector name {parsed.name!r}", key=f"{key}.name")
        names.add(parsed.name)
        connectors.append(parsed)
    try:
        config = Config.model_validate(
            {**data, "connectors": tuple(connectors), "base_dir": base_dir, "source": source}
        )
    except ValidationError as exc:
        _raise_validation(exc, "", source)
    return config


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config file (see find_config_path)."""
    cfg_path = find_config_path(str(path) if path is not None else None)
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {cfg_path} (pass --config PATH or set SYNCD_CONFIG)", key=None
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {cfg_path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: invalid TOML: {exc}") from None
    for forbidden in ("base_dir", "source"):
        if forbidden in data:
            raise ConfigError(f"{cfg_path}: {forbidden}: unknown key", key=forbidden)
    return parse(data, base_dir=cfg_path.resolve().parent, source=str(cfg_path))


def check_local_paths(config: Config, *, write: bool) -> None:
    """The state folder and a local store folder are folders, or can be made, and with ``write`` can be
    written: the commands check this before touching either, so a bad one is a config error naming the
    key (``state.dir``, ``store.uri``), not a traceback. Creates nothing."""
    _check_folder(config.state_dir, key="state.dir", write=write, source=config.source)
    if "://" not in config.store.uri:
        _check_folder(Path(config.store_uri), key="store.uri", write=write, source=config.source)


def _check_folder(path: Path, *, key: str, write: bool, source: str) -> None:
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "a broken symlink" if existing.is_symlink() and not existing.exists() else "not a folder"
        where = f"{path} is {what}" if existing == path else f"cannot create {path}: {existing} is {what}"
        raise ConfigError(f"{source}: {key}: {where}", key=key)
    if not write:
        return
    try:
        with tempfile.TemporaryFile(dir=existing):  # O_TMPFILE on Linux: no name ever appears
            pass
    except OSError as exc:
        reason = "a read-only filesystem" if exc.errno == errno.EROFS else exc.strerror or str(exc)
        where = f"{path} is not writable" if existing == path else f"cannot create {path}: {existing} is not writable"
        raise ConfigError(f"{source}: {key}: {where} ({reason})", key=key) from None


def aws_credentials_file() -> dict[str, str]:
    """The keys of the AWS credentials file (``$AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``),
    profile ``$AWS_PROFILE`` or ``default``, as storage options; empty when there is none. The AWS SDKs read
    this file by themselves; syncd's own store client does not, so it is read here."""
    import configparser

    path = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, configparser.Error):
        return {}
    profile = os.environ.get("AWS_PROFILE") or "default"
    if not parser.has_section(profile):
        return {}
    section = parser[profile]
    out = {key: section[key] for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
           if section.get(key)}
    return out if "aws_access_key_id" in out and "aws_secret_access_key" in out else {}


def resolve_secret(env_name: str | None, *, key: str, file: str | None = None,
                   base_dir: Path | None = None) -> str | None:
    """The secret held by the environment variable ``env_name`` or in ``file`` (None when neither is
    named). A file path may use ``$CREDENTIALS_DIRECTORY`` (systemd's LoadCredential=). The secret itself
    never appears in an error."""
    if file is not None:
        path = Path(os.path.expandvars(os.path.expanduser(file)))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read the secret file {path}: {exc.strerror}", key=key) from None
        if not value:
            raise ConfigError(f"{key}: the secret file {path} is empty", key=key)
        return value
    if env_name is None:
        return None
    found = os.environ.get(env_name)
    if found is None:
        raise ConfigError(f"{key}: environment variable {env_name} is not set", key=key)
    value = found
    if not value.strip():
        raise ConfigError(f"{key}: environment variable {env_name} is empty", key=key)
    return value
