"""The settings object: one :class:`Settings`, built once (from an optional TOML file plus
``CLEW_*`` environment variables, :mod:`clew.config.loading`) and passed down to every
component, with the paths of the data directory."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from clew._datadir import (
    COLD_DIR,
    CONSOLE_KEY_FILE,
    DESTINATIONS_DIR,
    IMPORTS_FILE,
    KEYS_FILE,
    LAKE_DIR,
    LAKE_INDEX_FILE,
    LOG_FILE,
    META_FILE,
    MONITOR_FILE,
    OUTBOX_FILE,
    PRIVACY_FILE,
    PROFILES_FILE,
    REGISTRY_FILE,
    SALT_FILE,
    SQL_SPILL_DIR,
    STATE_FILE,
)
from clew._locations import LakeLocation
from clew.clock import ClockSettings
from clew.config._base import ENV_NESTING, ENV_PREFIX, REVEAL_SECRETS
from clew.config.backends import LogSettings, StoreSettings
from clew.config.identity import IdentitySettings
from clew.config.lake import LakeSettings, LifecycleSettings, SqlSettings
from clew.config.monitor import MonitorSettings
from clew.config.privacy import PrivacySettings
from clew.config.service import (
    DestinationSettings,
    HttpSettings,
    Limits,
    MetricsSettings,
    StageSettings,
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
        return self.data_dir / LOG_FILE

    @property
    def meta_path(self) -> Path:
        return self.data_dir / META_FILE

    @property
    def console_key_path(self) -> Path:
        return self.data_dir / CONSOLE_KEY_FILE

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def monitor_path(self) -> Path:
        return self.data_dir / MONITOR_FILE

    @property
    def registry_path(self) -> Path:
        return self.data_dir / REGISTRY_FILE

    @property
    def profiles_path(self) -> Path:
        """The SQLite serving store (``store.backend = "sqlite"``; unused with Redis)."""
        return self.data_dir / PROFILES_FILE

    @property
    def lake_path(self) -> Path:
        """The lake as a local directory; raises :class:`ObjectStorageUnsupported` when
        ``lake.uri`` is an object-store URI (use :attr:`lake_location`)."""
        return self.lake_location.local_path("this command")

    @property
    def sql_spill_path(self) -> Path:
        """Where SQL queries spill to disk: one private directory each, removed after it."""
        return self.data_dir / SQL_SPILL_DIR

    @property
    def cold_path(self) -> Path:
        """The cold tier as a local directory (see :attr:`lake_path`)."""
        return self.cold_location.local_path("this command")

    @property
    def lake_location(self) -> LakeLocation:
        """Where the lake's Delta tables live, local or on object storage."""
        uri = self.lake.uri
        if uri is None:
            return LakeLocation(self.data_dir / LAKE_DIR)
        return LakeLocation(uri, self.lake.storage_options, setting="lake.uri")

    @property
    def cold_location(self) -> LakeLocation:
        """The cold tier: Delta tables with the lake's names and schemas."""
        cold = self.lifecycle
        if cold.cold_uri is not None:
            return LakeLocation(cold.cold_uri, self.lake.storage_options, "lifecycle.cold_uri")
        return LakeLocation(cold.cold_path or self.data_dir / COLD_DIR)

    @property
    def privacy_path(self) -> Path:
        return self.data_dir / PRIVACY_FILE

    @property
    def imports_path(self) -> Path:
        """The ledger of `clew import` runs and their match reviews."""
        return self.data_dir / IMPORTS_FILE

    @property
    def keys_path(self) -> Path:
        """The per-person keys of crypto-shredding (the SQLite key store)."""
        return self.data_dir / KEYS_FILE

    @property
    def salt_path(self) -> Path:
        """The salt generated on first use when ``privacy.salt`` is not set."""
        return self.data_dir / SALT_FILE

    @property
    def lake_index_path(self) -> Path:
        """Which lake files hold which person (:mod:`clew.lake.person_index`)."""
        return self.data_dir / LAKE_INDEX_FILE

    @property
    def outbox_path(self) -> Path:
        """The SQLite file holding destination outboxes, delivery history and dead letters."""
        return self.data_dir / OUTBOX_FILE

    @property
    def destinations_path(self) -> Path:
        """The folder holding one file per destination."""
        return self.data_dir / DESTINATIONS_DIR


def settings_json_with_secrets(settings: Settings) -> bytes:
    """``settings`` as JSON that :meth:`Settings.model_validate_json` turns back into equal
    settings, secrets included (``model_dump_json`` and ``repr`` mask them). Hand it to another
    process only through a channel other users cannot read (an inherited pipe), never a command
    line."""
    return settings.model_dump_json(context={REVEAL_SECRETS: True}).encode()
