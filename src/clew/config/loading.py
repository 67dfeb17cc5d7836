"""Loading the settings: defaults < TOML file < environment < explicit overrides, noting where
each value came from, and a :class:`ConfigError` with one line per problem when they cannot
be used.

Nothing here reads the environment at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from clew.config._base import ENV_NESTING, ENV_PREFIX
from clew.config.settings import Settings

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
