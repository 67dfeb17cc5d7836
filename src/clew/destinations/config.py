"""Destination configuration, kept where :func:`clew.backends.open_destination_store` says:
one YAML or JSON file per destination in the data directory's ``destinations/`` folder, or,
when the serving store is Redis, a Redis hash every machine shares. Read by the destinations
stage (changes take effect within about a second), the CLI and the console; written by
``clew destinations add|remove|migrate``.

A destination says where to send (a webhook URL and the secret that signs each request), what
to send (event names or types, kinds of profile changes, audiences, traits), whose data it may
receive (the consent categories it belongs to) and how (batch size and wait, timeout, retry
window). See docs/destinations.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clew._datadir import DESTINATIONS_DIR, OUTBOX_FILE
from clew._names import did_you_mean
from clew.backends import open_destination_store
from clew.destination_store import (
    DestinationStore,
    DestinationTakenError,
    FileDestinationStore,
    read_settings,
)

if TYPE_CHECKING:
    from clew.config import Settings

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
        return read_settings(path)
    except ValueError as exc:
        raise DestinationConfigError(str(exc)) from None


def read_file(path: Path) -> DestinationConfig:
    """The destination in ``path`` (YAML or JSON); its ``name`` defaults to the file name."""
    return parse_destination(read_mapping(path), str(path))


class Destinations:
    """The configured destinations over a :class:`~clew.destination_store.DestinationStore`:
    the data directory's files, or the Redis every machine shares (:meth:`open` picks from
    the settings). Closing it (or leaving its ``with`` block) closes the store."""

    def __init__(self, store: DestinationStore) -> None:
        self.store = store

    @classmethod
    def open(cls, settings: Settings) -> Destinations:
        return cls(open_destination_store(settings))

    def __enter__(self) -> Destinations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def version(self) -> Hashable:
        """Changes whenever a destination is added, changed or removed (cheap to compare)."""
        return self.store.version()

    def where(self, name: str | None = None) -> str:
        return self.store.where(name)

    def load(self) -> tuple[dict[str, DestinationConfig], dict[str, str]]:
        """Every valid destination and the problem of every invalid one, each by where it is
        kept (a second file naming an existing destination is invalid)."""
        found: dict[str, DestinationConfig] = {}
        errors: dict[str, str] = {}
        names: set[str] = set()
        for stored in self.store.read_all():
            if stored.settings is None:
                errors[stored.origin] = stored.problem or f"{stored.origin}: cannot read it"
                continue
            try:
                config = parse_destination(stored.settings, stored.origin)
            except DestinationConfigError as exc:
                errors[stored.origin] = str(exc)
                continue
            if config.name in names:
                errors[stored.origin] = (
                    f"{stored.origin}: destination {config.name!r} is already defined in "
                    "another file"
                )
                continue
            names.add(config.name)
            found[stored.origin] = config
        return found, errors

    def names(self) -> list[str]:
        """The names of the destinations that load."""
        return [config.name for config in self.load()[0].values()]

    def stored_names(self) -> set[str]:
        """The names of every stored destination, those that do not load too."""
        return {stored.name for stored in self.store.read_all()}

    def get(self, name: str) -> DestinationConfig:
        for config in self.load()[0].values():
            if config.name == name:
                return config
        raise UnknownDestinationError(name, self.names())

    def save(self, config: DestinationConfig, *, replace: bool = False) -> str:
        """Store ``config`` (its settings that differ from the defaults) and say where; a
        file is readable only by its owner (it may hold a secret)."""
        data = config.model_dump(mode="json", exclude_defaults=True)
        try:
            return self.store.put(
                {"name": config.name, "type": config.type, **data}, replace=replace
            )
        except DestinationTakenError:
            raise DestinationExistsError(config.name) from None

    def remove(self, name: str) -> str:
        where = self.store.delete(name)
        if where is None:
            raise UnknownDestinationError(name, self.names())
        return where


class DestinationDirectory(Destinations):
    """The destinations of one folder (a data directory's ``destinations/``), whatever the
    settings say: for tests, and for copying a folder into the shared store."""

    def __init__(self, path: Path) -> None:
        super().__init__(FileDestinationStore(path))
        self.path = path


@dataclass(frozen=True, slots=True)
class Copied:
    """What :func:`copy_destinations` did: the names now in the target with the settings of
    the source, those the target holds with other settings (left as they are), and the
    problems of those that do not load."""

    copied: list[str]
    kept: list[str]
    invalid: list[str]


def copy_destinations(source: Destinations, target: Destinations) -> Copied:
    """Copy every destination of ``source`` that ``target`` does not have; one it has with
    the same settings counts as copied, so running it again changes nothing."""
    found, problems = source.load()
    there = {c.name: c for c in target.load()[0].values()}
    copied, kept = [], []
    for config in sorted(found.values(), key=lambda c: c.name):
        have = there.get(config.name)
        if have is None:
            try:
                target.save(config)
            except DestinationExistsError:
                kept.append(config.name)  # stored there, but it does not load
                continue
            copied.append(config.name)
        elif have == config:
            copied.append(config.name)
        else:
            kept.append(config.name)
    return Copied(copied, kept, sorted(problems.values()))
