"""The settings layer: plain pydantic models of every setting, loading them from a TOML file,
the environment and command-line options, and where each value came from.

One settings object, built once (:func:`load_settings`) and passed down to every component.
Nothing here reads the environment at import time, and nothing here imports the domain: each
domain builds what it needs (a PII policy, a monitor policy, a lake table) from these models.

- :mod:`clew.config.settings`: :class:`Settings`, the whole, with the data directory's paths;
- :mod:`clew.config.service`, :mod:`~clew.config.backends`, :mod:`~clew.config.lake`,
  :mod:`~clew.config.identity`, :mod:`~clew.config.privacy`, :mod:`~clew.config.monitor`:
  the tables of the settings, by area;
- :mod:`clew.config.loading`: :func:`load_settings`, origins and :class:`ConfigError`.
"""

from clew.config._base import ENV_NESTING, ENV_PREFIX, Section
from clew.config.backends import LogSettings, StoreSettings
from clew.config.identity import (
    CustomIdType,
    IdentityRules,
    IdentitySettings,
    IdTypeRule,
    TraitPolicy,
)
from clew.config.lake import LakeSettings, LifecycleSettings, SqlSettings, parse_size
from clew.config.loading import (
    ORIGINS,
    ConfigError,
    LoadedSettings,
    env_var,
    load_settings,
    load_settings_with_origins,
)
from clew.config.monitor import MonitorSettings
from clew.config.privacy import PiiAction, PrivacySettings
from clew.config.service import (
    DestinationSettings,
    HttpSettings,
    Limits,
    MetricsSettings,
    StageSettings,
)
from clew.config.settings import Settings, settings_json_with_secrets

__all__ = [
    "ENV_NESTING",
    "ENV_PREFIX",
    "ORIGINS",
    "ConfigError",
    "CustomIdType",
    "DestinationSettings",
    "HttpSettings",
    "IdTypeRule",
    "IdentityRules",
    "IdentitySettings",
    "LakeSettings",
    "LifecycleSettings",
    "Limits",
    "LoadedSettings",
    "LogSettings",
    "MetricsSettings",
    "MonitorSettings",
    "PiiAction",
    "PrivacySettings",
    "Section",
    "Settings",
    "SqlSettings",
    "StageSettings",
    "StoreSettings",
    "TraitPolicy",
    "env_var",
    "load_settings",
    "load_settings_with_origins",
    "parse_size",
    "settings_json_with_secrets",
]
