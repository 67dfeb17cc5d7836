"""One settings object, built once (from an optional TOML file plus ``CLEW_*`` environment
variables) and passed down to every component.

Nothing here reads the environment at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from clew._redact import redact_options, redact_url
from clew.clock import ClockSettings
from clew.identity.rules import IdentityRules
from clew.identity.traits import TraitPolicy

if TYPE_CHECKING:
    from clew.lake._storage import LakeLocation
    from clew.monitor.volume import MonitorPolicy

from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Serialization context under which secrets are written out in full; without it, printed and
# JSON settings show a password in a URL and each secret value masked.
_REVEAL_SECRETS = "reveal_secrets"


def _reveal(info: SerializationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(_REVEAL_SECRETS))


class Limits(BaseModel):
    """Tracking API limits. Defaults match Segment's HTTP API."""

    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    # Requests waiting for a durable append; beyond this the collector answers 503.
    max_pending_appends: int = 2000


class HttpSettings(BaseModel):
    """Limits of the HTTP server of `clew serve` and `clew collector`, so that no client can
    hold it hostage; see docs/security.md ("HTTP limits")."""

    # Seconds a client has to send a whole request head (request line and headers), counted
    # from the connection opening or from its first byte after the previous response.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # A request head larger than this, or with more headers, is answered 431.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    # Open connections served; a request on any connection beyond them is answered 503.
    max_connections: int = Field(default=1000, ge=1)
    # Whole seconds a kept-alive connection may stay idle after a response.
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    # false: only the keep-alive timeout holds (for a proxy in front that enforces the rest).
    enforce: bool = True


class DestinationSettings(BaseModel):
    """Where destinations may send; see docs/destinations.md ("Addresses"). Link-local and
    cloud metadata addresses are refused always; ``block_private_networks`` refuses
    loopback, private and other non-public addresses too."""

    block_private_networks: bool = False


class LogSettings(BaseModel):
    """The log (DESIGN.md §2): ``embedded`` needs nothing; ``kafka`` needs a Kafka cluster and
    ``pip install 'clew[kafka]'`` (docs/scale-out.md)."""

    backend: Literal["embedded", "kafka"] = "embedded"
    partitions: int = 4
    # Retention of each topic; ``None`` keeps records forever.
    retention_hours: float | None = 7 * 24
    retention_bytes: int | None = None
    # Kafka: the cluster, and the replicas of each topic Clew creates (``None``: the cluster's
    # default.replication.factor).
    bootstrap_servers: str = "127.0.0.1:9092"
    replication_factor: int | None = Field(default=None, ge=1)
    # Seconds a request to the cluster may take before the log raises an error.
    kafka_timeout_s: float = Field(default=30.0, gt=0)
    # librdkafka properties for every client (security.protocol, sasl.*, ssl.*, client.id),
    # then for producers or consumers only.
    kafka_client: dict[str, str | int | float | bool] = Field(default_factory=dict)
    kafka_producer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    kafka_consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # sasl.password, ssl.key.password, ... stay out of logs and error messages.
        for name, value in super().__repr_args__():
            masked = name is not None and name.startswith("kafka_") and isinstance(value, dict)
            yield name, redact_options(value) if masked else value

    @field_serializer("kafka_client", "kafka_producer", "kafka_consumer", when_used="json")
    def _options_json(self, value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
        return value if _reveal(info) else redact_options(value)


class StoreSettings(BaseModel):
    """The serving store (DESIGN.md §3): ``sqlite`` is a file in the data directory; ``redis``
    needs a Redis server and ``pip install 'clew[redis]'`` (docs/scale-out.md)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    # Redis: the server (``redis://`` or ``rediss://`` URL, with database number, user and
    # password as redis-py reads them), and the prefix of every key Clew writes, so that
    # several Clew deployments can share one server without seeing each other's keys.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "clew"
    # Redis Cluster: ``redis_url`` names any node (database 0); ``redis_cluster_nodes`` more
    # ``host:port`` to discover the cluster from when that one is down. Cluster mode writes
    # every key name with the hash tag ``{<redis_prefix>}`` (one slot, so one primary, per
    # prefix), so a store written without it is not seen with it (docs/scale-out.md).
    redis_cluster: bool = False
    redis_cluster_nodes: list[str] = Field(default_factory=list)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL's password stays out of logs and error messages.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @field_serializer("redis_url", when_used="json")
    def _url_json(self, value: str, info: SerializationInfo) -> str:
        return value if _reveal(info) else redact_url(value)

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{node!r} is not host:port")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise ValueError(
                "must be non-empty and free of braces (they delimit Redis Cluster hash tags)"
            )
        return value


def _object_store_uri(value: str | None, setting: str) -> str | None:
    """``value`` checked as a lake location: ``None`` (local default), a local directory, or
    ``s3://bucket[/prefix]`` (``s3a://`` is read as ``s3://``); anything else raises with
    the setting's name."""
    if value is None:
        return None
    from clew.lake._storage import check_uri

    try:
        return check_uri(value)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


def _option_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


class LakeSettings(BaseModel):
    """The lake's tables (docs/object-storage.md for object storage)."""

    # Where the Delta tables live: ``None`` for ``data_dir/lake``, a local directory, or an
    # S3-compatible URI ``s3://bucket/prefix``.
    uri: str | None = None
    # Object-store options (credentials, region, endpoint, ...), as deltalake's
    # ``storage_options``; they win over the standard ``AWS_*`` environment variables.
    storage_options: dict[str, str] = Field(default_factory=dict)
    # A micro-batch is written when it holds this many rows or is this old.
    flush_rows: int = 20_000
    flush_interval_ms: int = 500
    # Small files are compacted after this many appends; old versions vacuumed after.
    compact_every_commits: int = 100
    vacuum_retention_hours: float = 1.0

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return _object_store_uri(value, "lake.uri")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # AWS_SECRET_ACCESS_KEY and the like stay out of logs and error messages.
        for name, value in super().__repr_args__():
            yield name, redact_options(value) if name == "storage_options" else value

    @field_serializer("storage_options", when_used="json")
    def _options_json(self, value: dict[str, str], info: SerializationInfo) -> dict[str, Any]:
        return value if _reveal(info) else redact_options(value)

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_as_text(cls, value: Any) -> Any:
        # TOML and JSON write ``allow_http = true``; the object store wants text.
        if isinstance(value, dict):
            return {k: _option_text(v) for k, v in value.items()}
        return value


class StageSettings(BaseModel):
    dedup_window_hours: float = 24.0
    poll_max_records: int = 500
    # Stage worker processes of `clew serve` run at this lower CPU priority (Unix nice), so
    # that on a saturated machine acknowledging requests wins over processing them; the log
    # absorbs the burst and the stages catch up when the load drops.
    worker_nice: int = 10


class IdentitySettings(BaseModel):
    """Identity resolution and profiles; see docs/identity.md."""

    rules: IdentityRules = Field(default_factory=IdentityRules)
    traits: TraitPolicy = Field(default_factory=TraitPolicy)
    # Recent events kept per profile in the serving store (the Profile API's /events).
    history: int = Field(default=100, ge=0)


PiiAction = Literal["keep", "hash", "truncate", "drop"]


class PrivacySettings(BaseModel):
    """Consent, PII policies and data-subject requests; see docs/privacy.md."""

    # Secret salt for hashed PII fields and for the identifier hashes in suppression lists and
    # audit records. Empty: generated on first use and kept in ``data_dir/privacy.salt``.
    salt: SecretStr = SecretStr("")
    # Field path (``context.ip``, ``traits.phone``, ``properties.card.last4``) -> what the
    # validate stage does with it before anything reaches the lake.
    pii: dict[str, PiiAction] = Field(default_factory=dict)
    # Seconds between two looks for queued data-subject requests in `clew serve`.
    poll_interval_s: float = Field(default=1.0, gt=0)
    # Kafka log only: seal every record with data keys kept outside Kafka, so that a deletion
    # destroys a person's keys and their records become unreadable (crypto-shredding). The
    # embedded log deletes records physically and ignores this.
    kafka_encryption: bool = True
    # Secret that wraps the data keys and hashes record keys; the same on every process.
    # Empty: derived from the salt above (then set ``salt`` on every machine alike).
    master_key: SecretStr = SecretStr("")
    # Seconds a process may keep using a data key it fetched (and a deletion waits after
    # destroying keys, so that no cache outlives the request).
    key_cache_s: float = Field(default=5.0, ge=0)

    @field_serializer("salt", "master_key", when_used="json")
    def _secret_json(self, value: SecretStr, info: SerializationInfo) -> str:
        return value.get_secret_value() if _reveal(info) else str(value)

    @field_validator("pii")
    @classmethod
    def _pii_paths(cls, value: dict[str, PiiAction]) -> dict[str, PiiAction]:
        from clew.privacy.pii import PiiPolicy

        PiiPolicy(value, salt=b"")  # raises with the path and what to change
        return value


class LifecycleSettings(BaseModel):
    """Hot / warm / cold tiers and retention; see docs/lifecycle.md."""

    # Lake partitions (event dates) younger than this stay warm (queried by default).
    warm_days: float = Field(default=90.0, gt=0)
    # Where cold tables live; default ``data_dir/cold``. An object-storage URI at scale.
    cold_path: Path | None = None
    # Or an S3-compatible URI ``s3://bucket/prefix`` for them (with ``lake.storage_options``);
    # at most one of ``cold_path`` and ``cold_uri``.
    cold_uri: str | None = None
    # Cold data older than this (days since the event) is purged; ``None`` keeps it forever.
    purge_after_days: float | None = Field(default=None, gt=0)
    # Minutes between two lifecycle runs inside `clew serve` (0 turns the scheduler off).
    run_every_minutes: float = Field(default=60.0, ge=0)

    @field_validator("cold_uri")
    @classmethod
    def _cold_uri(cls, value: str | None) -> str | None:
        return _object_store_uri(value, "lifecycle.cold_uri")

    @model_validator(mode="after")
    def _one_cold_location(self) -> LifecycleSettings:
        if self.cold_path is not None and self.cold_uri is not None:
            raise ValueError("lifecycle: set cold_path or cold_uri, not both")
        return self


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB,
    TiB; case ignored), as DuckDB writes memory sizes.

    >>> parse_size("4GB"), parse_size("512 MiB"), parse_size("1000")
    (4000000000, 536870912, 1000)
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 4GB or 512MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class SqlSettings(BaseModel):
    """Bounds on SQL over the lake (``POST /v1/sql`` and ``clew sql``); docs/security.md."""

    # Seconds a ``POST /v1/sql`` query may run; then it is interrupted (code query_timeout).
    timeout_s: float = Field(default=30.0, gt=0)
    # Memory all running queries of one process may use together (DuckDB's memory_limit,
    # split evenly between the ``max_concurrent`` slots); ``None``: a quarter of the RAM.
    memory_limit: str | None = None
    # Queries running at once in the HTTP API; one more waits up to ``queue_timeout_s`` for a
    # slot, then gets 503 with Retry-After.
    max_concurrent: int = Field(default=4, ge=1)
    queue_timeout_s: float = Field(default=2.0, ge=0)
    # Rows one ``POST /v1/sql`` answer holds; beyond them it says ``"truncated": true``.
    max_rows: int = Field(default=100_000, ge=1)
    # DuckDB worker threads per query; ``None``: DuckDB's default (one per core).
    threads: int | None = Field(default=None, ge=1)
    # Disk a query may spill to (inside the data dir) once its memory is used up.
    max_spill: str = "10GB"

    @field_validator("memory_limit", "max_spill")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    def memory_limit_bytes(self) -> int:
        """``memory_limit`` in bytes (a quarter of this machine's RAM when unset)."""
        if self.memory_limit is None:
            return _physical_memory() // 4
        return parse_size(self.memory_limit)


class MonitorSettings(BaseModel):
    """Volume monitors; see docs/monitoring.md for what each value does."""

    threshold_pct: float = 15.0
    min_expected: float = 20.0
    noise_z: float = 3.0
    seasonal_days: int = 7
    weekly_weeks: int = 4
    min_weekly_weeks: int = 2
    trailing_hours: int = 24
    min_trailing_hours: int = 3
    grace_minutes: float = 5.0
    catch_up_hours: int = 24
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 2

    @model_validator(mode="after")
    def _usable(self) -> MonitorSettings:
        try:
            self.policy()
        except ValueError as exc:
            raise ValueError(f"monitor: {exc}") from None
        return self

    def policy(self) -> MonitorPolicy:
        from datetime import timedelta

        from clew.monitor.volume import MonitorPolicy

        fields = self.model_dump(
            exclude={"grace_minutes", "webhook_url", "webhook_timeout_s", "webhook_retries"}
        )
        return MonitorPolicy(**fields, grace=timedelta(minutes=self.grace_minutes))


class MetricsSettings(BaseModel):
    """``require_token``: ``/metrics`` needs an access token with the ``metrics`` scope (what
    Prometheus sends as ``bearer_token``), and ``/health`` tells only ``ok``/``status``
    without one. Off by default: ``/metrics`` names sources, events and destinations."""

    require_token: bool = False


class Settings(BaseSettings):
    """Clew configuration. Environment: ``CLEW_DATA_DIR``, ``CLEW_PORT``, and nested values as
    ``CLEW_LIMITS__MAX_BATCH_EVENTS`` and so on."""

    model_config = SettingsConfigDict(env_prefix="CLEW_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path(".clew")
    host: str = "127.0.0.1"
    port: int = 8088
    limits: Limits = Field(default_factory=Limits)
    http: HttpSettings = Field(default_factory=HttpSettings)
    destinations: DestinationSettings = Field(default_factory=DestinationSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    stages: StageSettings = Field(default_factory=StageSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log.db"

    @property
    def meta_path(self) -> Path:
        return self.data_dir / "meta.db"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def monitor_path(self) -> Path:
        return self.data_dir / "monitor.db"

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def profiles_path(self) -> Path:
        """The SQLite serving store (``store.backend = "sqlite"``; unused with Redis)."""
        return self.data_dir / "profiles.db"

    @property
    def lake_path(self) -> Path:
        """The lake as a local directory; raises :class:`ObjectStorageUnsupported` when
        ``lake.uri`` is an object-store URI (use :attr:`lake_location`)."""
        return self.lake_location.local_path("this command")

    @property
    def sql_spill_path(self) -> Path:
        """Where SQL queries spill to disk: one private directory each, removed after it."""
        return self.data_dir / "sql-spill"

    @property
    def cold_path(self) -> Path:
        """The cold tier as a local directory (see :attr:`lake_path`)."""
        return self.cold_location.local_path("this command")

    @property
    def lake_location(self) -> LakeLocation:
        """Where the lake's Delta tables live, local or on object storage."""
        from clew.lake._storage import LakeLocation

        uri = self.lake.uri
        if uri is None:
            return LakeLocation(self.data_dir / "lake")
        return LakeLocation(uri, self.lake.storage_options, setting="lake.uri")

    @property
    def cold_location(self) -> LakeLocation:
        """The cold tier: Delta tables with the lake's names and schemas."""
        from clew.lake._storage import LakeLocation

        cold = self.lifecycle
        if cold.cold_uri is not None:
            return LakeLocation(cold.cold_uri, self.lake.storage_options, "lifecycle.cold_uri")
        return LakeLocation(cold.cold_path or self.data_dir / "cold")

    @property
    def privacy_path(self) -> Path:
        return self.data_dir / "privacy.db"


def settings_json_with_secrets(settings: Settings) -> bytes:
    """``settings`` as JSON that :meth:`Settings.model_validate_json` turns back into equal
    settings, secrets included (``model_dump_json`` and ``repr`` mask them). Hand it to another
    process only through a channel other users cannot read (an inherited pipe), never a command
    line."""
    return settings.model_dump_json(context={_REVEAL_SECRETS: True}).encode()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < TOML file < environment < explicit ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options can be passed straight in.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        return Settings(**explicit)
    if not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    file_values = tomllib.loads(config_file.read_text())

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

    return Settings.model_validate(_FromFile(**explicit).model_dump())


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which value to fix."""
