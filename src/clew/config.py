"""One settings object, built once (from an optional TOML file plus ``CLEW_*`` environment
variables) and passed down to every component.

Nothing here reads the environment at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from clew._redact import redact_options, redact_url
from clew.clock import ClockSettings
from clew.identity.rules import IdentityRules
from clew.identity.traits import TraitPolicy

if TYPE_CHECKING:
    from clew.lake._storage import LakeLocation
    from clew.monitor.volume import MonitorPolicy

from pydantic_settings import BaseSettings, SettingsConfigDict

# How the environment names a setting: CLEW_PORT, CLEW_LAKE__FLUSH_ROWS.
ENV_PREFIX = "CLEW_"
ENV_NESTING = "__"

# Serialization context under which secrets are written out in full; without it, printed and
# JSON settings show a password in a URL and each secret value masked.
_REVEAL_SECRETS = "reveal_secrets"


def _reveal(info: SerializationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(_REVEAL_SECRETS))


class Section(BaseModel):
    """A table of the settings: an unknown key in it is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Limits(Section):
    """Tracking API limits. Defaults match Segment's HTTP API."""

    max_event_bytes: int = Field(
        default=32 * 1024, description="Largest event accepted, in bytes; a larger one is rejected."
    )
    max_request_bytes: int = Field(
        default=500 * 1024,
        description="Largest request body accepted, in bytes (answered 400 beyond it).",
    )
    max_batch_events: int = Field(default=2500, description="Most events in one batch request.")
    max_pending_appends: int = Field(
        default=2000,
        description="Requests waiting for a durable append; beyond this the collector answers 503.",
    )


class HttpSettings(Section):
    """Limits of the HTTP server of `clew serve` and `clew collector`, so that no client can
    hold it hostage; see docs/security.md ("HTTP limits")."""

    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a client has to send a whole request head (request line and headers), counted "
            "from the connection opening or from its first byte after the previous response."
        ),
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="A request head larger than this many bytes is answered 431.",
    )
    max_headers: int = Field(
        default=100, ge=1, description="A request with more headers than this is answered 431."
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description=(
            "Open connections served; a request on any connection beyond them is answered 503."
        ),
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        ge=1,
        description="Whole seconds a kept-alive connection may stay idle after a response.",
    )
    enforce: bool = Field(
        default=True,
        description=(
            "false: only the keep-alive timeout holds (for a proxy in front that enforces the "
            "rest)."
        ),
    )


class DestinationSettings(Section):
    """Where destinations may send; see docs/destinations.md ("Addresses"). Link-local and
    cloud metadata addresses are refused always; ``block_private_networks`` refuses
    loopback, private and other non-public addresses too."""

    block_private_networks: bool = Field(
        default=False,
        description=(
            "Refuse loopback, private and other non-public addresses too (link-local and cloud "
            "metadata addresses are refused always)."
        ),
    )


class LogSettings(Section):
    """The log: ``embedded`` needs nothing; ``kafka`` needs a Kafka cluster and
    ``pip install 'clew[kafka]'`` (docs/scale-out.md)."""

    backend: Literal["embedded", "kafka"] = Field(
        default="embedded",
        description=(
            "`embedded` needs nothing; `kafka` needs a Kafka cluster and `pip install "
            "'clew[kafka]'`."
        ),
    )
    partitions: int = Field(default=4, description="Partitions of each topic.")
    retention_hours: float | None = Field(
        default=7 * 24, description="Hours each topic keeps records; unset keeps them forever."
    )
    retention_bytes: int | None = Field(
        default=None, description="Bytes each topic partition keeps at most; unset: no size bound."
    )
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka: the cluster's brokers, `host:port` separated by commas.",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Kafka: replicas of each topic Clew creates; unset: the cluster's "
            "default.replication.factor."
        ),
    )
    kafka_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Kafka: seconds a request to the cluster may take before the log raises an error."
        ),
    )
    kafka_client: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description=(
            "Kafka: librdkafka properties for every client (security.protocol, sasl.*, ssl.*, "
            "client.id)."
        ),
    )
    kafka_producer: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Kafka: librdkafka properties for producers only."
    )
    kafka_consumer: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Kafka: librdkafka properties for consumers only."
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # sasl.password, ssl.key.password, ... stay out of logs and error messages.
        for name, value in super().__repr_args__():
            masked = name is not None and name.startswith("kafka_") and isinstance(value, dict)
            yield name, redact_options(value) if masked else value

    @field_serializer("kafka_client", "kafka_producer", "kafka_consumer", when_used="json")
    def _options_json(self, value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
        return value if _reveal(info) else redact_options(value)


class StoreSettings(Section):
    """The serving store: ``sqlite`` is a file in the data directory; ``redis``
    needs a Redis server and ``pip install 'clew[redis]'`` (docs/scale-out.md)."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description=(
            "`sqlite` is a file in the data directory; `redis` needs a Redis server and `pip "
            "install 'clew[redis]'`."
        ),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description=(
            "Redis: the server (`redis://` or `rediss://` URL, with database number, user and "
            "password)."
        ),
    )
    redis_prefix: str = Field(
        default="clew",
        description=(
            "Redis: the prefix of every key Clew writes, so that several deployments can share one "
            "server."
        ),
    )
    redis_cluster: bool = Field(
        default=False,
        description=(
            "Redis Cluster: every key is written with the hash tag `{<redis_prefix>}`, so a store "
            "written without it is not seen with it."
        ),
    )
    redis_cluster_nodes: list[str] = Field(
        default_factory=list,
        description=(
            "Redis Cluster: more `host:port` nodes to discover the cluster from when the one in "
            "`redis_url` is down."
        ),
    )

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


class LakeSettings(Section):
    """The lake's tables (docs/object-storage.md for object storage)."""

    uri: str | None = Field(
        default=None,
        description=(
            "Where the Delta tables live: unset for `data_dir/lake`, a local directory, or "
            "`s3://bucket/prefix`."
        ),
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Object-store options (credentials, region, endpoint, ...); they win over the `AWS_*` "
            "environment variables."
        ),
    )
    flush_rows: int = Field(
        default=20_000, description="A micro-batch is written when it holds this many rows..."
    )
    flush_interval_ms: int = Field(default=500, description="... or is this many milliseconds old.")
    compact_every_commits: int = Field(
        default=100, description="Small files are compacted after this many appends."
    )
    vacuum_retention_hours: float = Field(
        default=1.0, description="Old table versions are vacuumed after this many hours."
    )

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


class StageSettings(Section):
    """The stages that read the log: validation, lake, profiles, destinations, monitors."""

    dedup_window_hours: float = Field(
        default=24.0, description="Hours a messageId is remembered to drop a repeated event."
    )
    poll_max_records: int = Field(
        default=500, description="Records a stage reads from the log at most at a time."
    )
    worker_nice: int = Field(
        default=10,
        description=(
            "Unix nice of the stage worker processes of `clew serve`, so that on a saturated "
            "machine acknowledging requests wins over processing them."
        ),
    )


class IdentitySettings(Section):
    """Identity resolution and profiles; see docs/identity.md."""

    rules: IdentityRules = Field(
        default_factory=IdentityRules, description="Identity-resolution rules."
    )
    traits: TraitPolicy = Field(
        default_factory=TraitPolicy, description="How profile traits are merged."
    )
    history: int = Field(
        default=100,
        ge=0,
        description=(
            "Recent events kept per profile in the serving store (the Profile API's /events)."
        ),
    )


PiiAction = Literal["keep", "hash", "truncate", "drop"]


class PrivacySettings(Section):
    """Consent, PII policies and data-subject requests; see docs/privacy.md."""

    salt: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Secret salt for hashed PII fields and for the identifier hashes in suppression lists "
            "and audit records; empty: generated on first use and kept in `data_dir/privacy.salt`."
        ),
    )
    pii: dict[str, PiiAction] = Field(
        default_factory=dict,
        description=(
            "Field path (`context.ip`, `traits.phone`, `properties.card.last4`) -> keep, hash, "
            "truncate or drop, done by the validate stage before anything reaches the lake."
        ),
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two looks for queued data-subject requests in `clew serve`.",
    )
    kafka_encryption: bool = Field(
        default=True,
        description=(
            "Kafka log only: seal every record with data keys kept outside Kafka, so that a "
            "deletion makes a person's records unreadable (crypto-shredding)."
        ),
    )
    master_key: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Secret that wraps the data keys and hashes record keys, the same on every process; "
            "empty: derived from `salt` (then set `salt` on every machine alike)."
        ),
    )
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Seconds a process may keep using a data key it fetched (a deletion waits as long after"
            " destroying keys)."
        ),
    )

    @field_serializer("salt", "master_key", when_used="json")
    def _secret_json(self, value: SecretStr, info: SerializationInfo) -> str:
        return value.get_secret_value() if _reveal(info) else str(value)

    @field_validator("pii")
    @classmethod
    def _pii_paths(cls, value: dict[str, PiiAction]) -> dict[str, PiiAction]:
        from clew.privacy.pii import PiiPolicy

        PiiPolicy(value, salt=b"")  # raises with the path and what to change
        return value


class LifecycleSettings(Section):
    """Hot / warm / cold tiers and retention; see docs/lifecycle.md."""

    warm_days: float = Field(
        default=90.0,
        gt=0,
        description=(
            "Lake partitions (event dates) younger than this many days stay warm (queried by "
            "default)."
        ),
    )
    cold_path: Path | None = Field(
        default=None, description="Where cold tables live; unset: `data_dir/cold`."
    )
    cold_uri: str | None = Field(
        default=None,
        description=(
            "Or an S3-compatible URI `s3://bucket/prefix` for them (with `lake.storage_options`); "
            "at most one of `cold_path` and `cold_uri`."
        ),
    )
    purge_after_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Cold data older than this many days (since the event) is purged; unset keeps it "
            "forever."
        ),
    )
    run_every_minutes: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Minutes between two lifecycle runs inside `clew serve`; 0 turns the scheduler off."
        ),
    )

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


class SqlSettings(Section):
    """Bounds on SQL over the lake (``POST /v1/sql`` and ``clew sql``); docs/security.md."""

    timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds a `POST /v1/sql` query may run; then it is interrupted (code query_timeout)."
        ),
    )
    memory_limit: str | None = Field(
        default=None,
        description=(
            "Memory all running queries of one process may use together (such as 4GB), split evenly"
            " between the `max_concurrent` slots; unset: a quarter of the RAM."
        ),
    )
    max_concurrent: int = Field(
        default=4,
        ge=1,
        description=(
            "Queries running at once in the HTTP API; one more waits up to `queue_timeout_s` for a "
            "slot."
        ),
    )
    queue_timeout_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a query waits for a slot, then gets 503 with Retry-After.",
    )
    max_rows: int = Field(
        default=100_000,
        ge=1,
        description=(
            'Rows one `POST /v1/sql` answer holds; beyond them it says `"truncated": true`.'
        ),
    )
    threads: int | None = Field(
        default=None, ge=1, description="DuckDB worker threads per query; unset: one per core."
    )
    max_spill: str = Field(
        default="10GB",
        description="Disk a query may spill to (inside the data dir) once its memory is used up.",
    )

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


class MonitorSettings(Section):
    """Volume monitors; see docs/monitoring.md for what each value does."""

    threshold_pct: float = Field(
        default=15.0, description="Change in an hour's volume, in percent either way, that alerts."
    )
    min_expected: float = Field(
        default=20.0, description="No alert below this expected volume per hour."
    )
    noise_z: float = Field(
        default=3.0,
        description="Standard deviations of chance a change must also exceed; 0 turns it off.",
    )
    seasonal_days: int = Field(
        default=7, description="Days of the same hour in the seasonal baseline."
    )
    weekly_weeks: int = Field(
        default=4,
        description="Weeks of the same weekday hour in the weekly baseline; 0 turns it off.",
    )
    min_weekly_weeks: int = Field(
        default=2, description="Weeks of history the weekly baseline needs at least."
    )
    trailing_hours: int = Field(
        default=24,
        description="Hours of the trailing baseline, the fallback for series younger than a day.",
    )
    min_trailing_hours: int = Field(
        default=3, description="Hours of history the trailing baseline needs at least."
    )
    grace_minutes: float = Field(
        default=5.0, description="Minutes to wait after an hour ends before judging it."
    )
    catch_up_hours: int = Field(default=24, description="Most missed hours judged after downtime.")
    webhook_url: str | None = Field(
        default=None, description="POST each alert as JSON here; unset: no webhook."
    )
    webhook_timeout_s: float = Field(default=5.0, description="Seconds per webhook attempt.")
    webhook_retries: int = Field(default=2, description="Webhook attempts after the first.")

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


class MetricsSettings(Section):
    """``require_token``: ``/metrics`` needs an access token with the ``metrics`` scope (what
    Prometheus sends as ``bearer_token``), and ``/health`` tells only ``ok``/``status``
    without one. Off by default: ``/metrics`` names sources, events and destinations."""

    require_token: bool = Field(
        default=False,
        description=(
            "`/metrics` needs an access token with the `metrics` scope, and `/health` tells only "
            "ok/status without one (off by default: `/metrics` names sources, events and "
            "destinations)."
        ),
    )


class Settings(BaseSettings):
    """Clew configuration. Environment: ``CLEW_DATA_DIR``, ``CLEW_PORT``, and nested values as
    ``CLEW_LIMITS__MAX_BATCH_EVENTS`` and so on."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTING, extra="forbid"
    )

    data_dir: Path = Field(
        default=Path(".clew"),
        description=(
            "Where Clew keeps its data (log, catalog, lake, serving store); created by `clew "
            "serve`."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="Interface the HTTP server of `clew serve` and `clew collector` listens on.",
    )
    port: int = Field(default=8088, description="Port the HTTP server listens on.")
    limits: Limits = Field(default_factory=Limits, description="Tracking API limits.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP server limits.")
    destinations: DestinationSettings = Field(
        default_factory=DestinationSettings, description="Where destinations may send."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="The log.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="The serving store.")
    lake: LakeSettings = Field(default_factory=LakeSettings, description="The lake.")
    sql: SqlSettings = Field(default_factory=SqlSettings, description="SQL over the lake.")
    stages: StageSettings = Field(
        default_factory=StageSettings, description="The processing stages."
    )
    monitor: MonitorSettings = Field(
        default_factory=MonitorSettings, description="Volume monitors."
    )
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings, description="Identity resolution and profiles."
    )
    clock: ClockSettings = Field(default_factory=ClockSettings, description="The clock.")
    privacy: PrivacySettings = Field(
        default_factory=PrivacySettings, description="Consent, PII and data-subject requests."
    )
    lifecycle: LifecycleSettings = Field(
        default_factory=LifecycleSettings, description="Tiers and retention."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="The /metrics and /health endpoints."
    )

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

    @property
    def imports_path(self) -> Path:
        """The ledger of `clew import` runs and their match reviews."""
        return self.data_dir / "imports.db"


def settings_json_with_secrets(settings: Settings) -> bytes:
    """``settings`` as JSON that :meth:`Settings.model_validate_json` turns back into equal
    settings, secrets included (``model_dump_json`` and ``repr`` mask them). Hand it to another
    process only through a channel other users cannot read (an inherited pipe), never a command
    line."""
    return settings.model_dump_json(context={_REVEAL_SECRETS: True}).encode()


# Where a value came from, in the order each wins over the one before.
ORIGINS = ("default", "config file", "environment", "option")


@dataclass(frozen=True)
class LoadedSettings:
    """Settings with where each value came from: ``origins`` maps a key path (``("lake",
    "flush_rows")``) set anywhere but the defaults to a label such as ``config file clew.toml``,
    ``environment CLEW_LAKE__FLUSH_ROWS`` or ``option --data-dir``."""

    settings: Settings
    origins: dict[tuple[str, ...], str]

    def origin(self, key: str) -> str:
        """Where the value of the dotted ``key`` came from (``default`` when nowhere else).

        A key holding a table (``log.kafka_client``) takes the strongest origin of its
        entries."""
        path = tuple(key.split("."))
        found = [
            label
            for where, label in self.origins.items()
            if where[: len(path)] == path or path[: len(where)] == where
        ]
        return max(found, key=_strength, default="default")


def _strength(label: str) -> int:
    return next(i for i, origin in enumerate(ORIGINS) if label.startswith(origin))


def _leaves(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def env_var(path: tuple[str, ...]) -> str:
    """The environment variable that sets the setting at ``path``.

    >>> env_var(("lake", "flush_rows"))
    'CLEW_LAKE__FLUSH_ROWS'
    """
    return (ENV_PREFIX + ENV_NESTING.join(path)).upper()


def _env_label(path: tuple[str, ...]) -> str:
    # A whole table may be set as JSON (CLEW_LOG__KAFKA_CLIENT='{...}'): name the variable
    # that is actually set, the longest prefix of the path.
    names = {name.upper() for name in os.environ}
    for end in range(len(path), 0, -1):
        if env_var(path[:end]) in names:
            return f"environment {env_var(path[:end])}"
    return f"environment {env_var(path)}"


def load_settings_with_origins(config_file: Path | None = None, **overrides: Any) -> LoadedSettings:
    """Build the settings as :func:`load_settings` does, noting where each value came from.

    Raises :class:`ConfigError` with one line per problem (an unknown key names the closest
    valid one) when the file, the environment or an override is not valid."""
    from pydantic_settings import EnvSettingsSource

    explicit = {k: v for k, v in overrides.items() if v is not None}
    file_values: dict[str, Any] = {}
    file_label = f"config file {config_file}"
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            file_values = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
    env_values = EnvSettingsSource(Settings)()
    origins: dict[tuple[str, ...], str] = {}
    for path in _leaves(file_values):
        origins[path] = file_label
    for path in _leaves(env_values):
        origins[path] = _env_label(path)
    for name in explicit:
        origins[(name,)] = f"option --{name.replace('_', '-')}"
    merged = _merge(_merge(file_values, env_values), explicit)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        loaded = LoadedSettings(Settings.model_construct(), origins)
        lines = [_problem(error, loaded) for error in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    return LoadedSettings(settings, origins)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < TOML file < environment < explicit ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options can be passed straight in.
    Raises :class:`ConfigError` (see :func:`load_settings_with_origins`).
    """
    return load_settings_with_origins(config_file, **overrides).settings


def _section_model(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The settings model that holds the keys at ``path`` (a table of the settings), or None
    when ``path`` leads into free-form values."""
    model: Any = Settings
    keyed = False
    for part in path:
        if keyed:
            keyed = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
        args = [a for a in get_args(model) if a is not type(None)]
        if get_origin(model) in (dict, list) and args:
            model, keyed = args[-1], True
        elif len(args) == 1:
            model = args[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _problem(error: ErrorDetails, loaded: LoadedSettings) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    where = loaded.origin(key)
    if error["type"] == "extra_forbidden":
        section = ".".join(str(part) for part in loc[:-1])
        place = f"in [{section}]" if section else "at the top level"
        model = _section_model(loc[:-1])
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"
        return f"unknown key {loc[-1]!r} {place} ({where}); {hint}"
    message = error["msg"].removeprefix("Value error, ")
    subject = f"{key}: " if key else ""
    if where == "default":
        return f"{subject}{message}"
    return f"{subject}{message} (got {error['input']!r}; {where})"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which value to fix, one line per
    problem."""
