"""Destination configuration: one YAML or JSON file per destination in the data directory's
``destinations/`` folder, read by the destinations stage (changes take effect within about a
second) and written by ``clew destinations add|remove``.

A destination says where to send (a webhook URL and the secret that signs each request), what
to send (event names or types, kinds of profile changes, audiences, traits), whose data it may
receive (the consent categories it belongs to) and how (batch size and wait, timeout, retry
window). See docs/destinations.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clew._datadir import DESTINATIONS_DIR, OUTBOX_FILE
from clew._names import did_you_mean

# Kinds of records on the ``changes`` topic a destination can ask for.
CHANGE_KINDS = (
    "profile",
    "profile_deleted",
    "audience_entered",
    "audience_exited",
    "trait_changed",
)
ChangeKind = Literal[
    "profile", "profile_deleted", "audience_entered", "audience_exited", "trait_changed"
]
ALL_EVENTS = "*"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SUFFIXES = (".yaml", ".yml", ".json")


class DestinationError(ValueError):
    """A destination cannot be used as asked; the message says what to do."""


class DestinationConfigError(DestinationError):
    """A destination file or option is invalid; the message names the value to fix."""


class DestinationExistsError(DestinationError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"destination {name!r} already exists; pass --replace to overwrite it, or remove "
            f"it first with `clew destinations remove {name}`"
        )


class UnknownDestinationError(DestinationError):
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        super().__init__(
            f"no destination named {name!r}{did_you_mean(name, known)}; "
            "`clew destinations list` shows the configured ones"
        )


class SecretUnavailableError(DestinationError):
    def __init__(self, name: str, variable: str) -> None:
        super().__init__(
            f"destination {name!r} signs with the secret in ${variable}, which is not set; set it "
            "in the environment of `clew serve` (deliveries wait in the outbox until then)"
        )


def destinations_dir(data_dir: Path) -> Path:
    """The folder holding one file per destination."""
    return data_dir / DESTINATIONS_DIR


def outbox_path(data_dir: Path) -> Path:
    """The SQLite file holding outboxes, delivery history and dead letters."""
    return data_dir / OUTBOX_FILE


class DestinationConfig(BaseModel):
    """One webhook destination. Filters combine with AND: an event is sent when its name or
    type is in ``events``; a change record when its kind is in ``changes`` and, for audience
    records, its audience is in ``audiences`` (when that is set), for trait records its trait
    in ``traits`` (when set). ``categories``: consent categories the destination belongs to;
    an event that carries consent preferences is sent only if all of them are granted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: Literal["webhook"] = "webhook"
    url: str
    secret: str | None = None
    secret_env: str | None = None
    categories: tuple[str, ...] = ()
    events: tuple[str, ...] = (ALL_EVENTS,)
    changes: tuple[ChangeKind, ...] = ()
    audiences: tuple[str, ...] = ()
    traits: tuple[str, ...] = ()
    batch_size: int = Field(default=100, ge=1, le=10_000)
    max_batch_wait_ms: int = Field(default=1000, ge=0, le=3_600_000)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retry_for_s: float = Field(default=4 * 3600.0, ge=0)
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_delay_s: float = Field(default=600.0, gt=0)
    max_outbox_events: int = Field(default=100_000, ge=1)
    # When a person is erased, POST a signed deletion notice naming their identifiers to
    # ``url`` (clew.destinations.notices), so that this tool can erase them too.
    deletion_notices: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("the webhook URL must start with http:// or https://")
        return value

    @field_validator("categories", "events", "audiences", "traits")
    @classmethod
    def _non_empty(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in values):
            raise ValueError("entries must be non-empty strings")
        return values

    @model_validator(mode="after")
    def _one_secret(self) -> DestinationConfig:
        if self.secret is not None and self.secret_env is not None:
            raise ValueError("set either secret or secret_env, not both")
        return self

    def signing_key(self) -> bytes | None:
        """The HMAC key, or None when requests are not signed. Reads ``secret_env`` from the
        environment on every call, so a restarted worker picks up a rotated secret; raises
        :class:`SecretUnavailableError` when that variable is not set."""
        if self.secret is not None:
            return self.secret.encode()
        if self.secret_env is None:
            return None
        value = os.environ.get(self.secret_env)
        if not value:
            raise SecretUnavailableError(self.name, self.secret_env)
        return value.encode()

    def describe_secret(self) -> str:
        if self.secret is not None:
            return "set"
        return f"${self.secret_env}" if self.secret_env else "none (unsigned)"


def parse_destination(data: Any, where: str) -> DestinationConfig:
    """Validate ``data`` (a mapping from a file or CLI options); ``where`` names its origin in
    the error message."""
    if not isinstance(data, dict):
        raise DestinationConfigError(f"{where}: expected a mapping of destination settings")
    try:
        return DestinationConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'destination'}: {e['msg']}"
            for e in exc.errors()
        )
        raise DestinationConfigError(f"{where}: {problems}") from None


def read_mapping(path: Path) -> dict[str, Any]:
    """The settings in ``path`` (YAML or JSON) as a mapping; ``name`` defaults to the file
    name."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DestinationConfigError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise DestinationConfigError(f"{path}: expected a mapping of destination settings")
    data.setdefault("name", path.stem)
    return data


def read_file(path: Path) -> DestinationConfig:
    """The destination in ``path`` (YAML or JSON); its ``name`` defaults to the file name."""
    return parse_destination(read_mapping(path), str(path))


class DestinationDirectory:
    """The ``destinations/`` folder. Files other than ``*.yaml``, ``*.yml`` and ``*.json``
    (and hidden files) are ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def files(self) -> Iterator[Path]:
        if not self.path.is_dir():
            return
        for p in sorted(self.path.iterdir()):
            if p.suffix in _SUFFIXES and not p.name.startswith(".") and p.is_file():
                yield p

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """Changes whenever a file is added, removed or rewritten (cheap to compare)."""
        out = []
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def load(self) -> tuple[dict[Path, DestinationConfig], dict[Path, str]]:
        """Every valid destination by file, and the problem of every invalid file (a second
        file naming an existing destination is invalid)."""
        found: dict[Path, DestinationConfig] = {}
        errors: dict[Path, str] = {}
        names: set[str] = set()
        for p in self.files():
            try:
                config = read_file(p)
            except DestinationConfigError as exc:
                errors[p] = str(exc)
                continue
            if config.name in names:
                errors[p] = f"{p}: destination {config.name!r} is already defined in another file"
                continue
            names.add(config.name)
            found[p] = config
        return found, errors

    def names(self) -> list[str]:
        """The names of the destinations whose files load."""
        return [config.name for config in self.load()[0].values()]

    def get(self, name: str) -> DestinationConfig:
        for config in self.load()[0].values():
            if config.name == name:
                return config
        raise UnknownDestinationError(name, self.names())

    def file_of(self, name: str) -> Path | None:
        for p, config in self.load()[0].items():
            if config.name == name:
                return p
        for suffix in _SUFFIXES:
            if (self.path / f"{name}{suffix}").exists():
                return self.path / f"{name}{suffix}"
        return None

    def save(self, config: DestinationConfig, *, replace: bool = False) -> Path:
        """Write ``config`` to ``<name>.yaml`` atomically, readable only by its owner (it may
        hold a secret)."""
        existing = self.file_of(config.name)
        if existing is not None and not replace:
            raise DestinationExistsError(config.name)
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{config.name}.yaml"
        tmp = self.path / f".{config.name}.yaml.tmp"
        data = config.model_dump(mode="json", exclude_defaults=True)
        data = {"name": config.name, "type": config.type, **data}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        tmp.replace(target)
        if existing is not None and existing != target:
            existing.unlink(missing_ok=True)
        return target

    def remove(self, name: str) -> Path:
        path = self.file_of(name)
        if path is None:
            raise UnknownDestinationError(name, self.names())
        path.unlink()
        return path
