"""The schema registry's tables and the values it returns (:mod:`clew.schema.registry`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from clew.schema._jsonschema import Schema
from clew.schema.changes import Change
from clew.schema.compat import Compatibility
from clew.schema.enforcement import Enforcement
from clew.schema.schemaver import Bump, SchemaVer

DEFAULT_COMPATIBILITY = Compatibility.BACKWARD
DEFAULT_ENFORCEMENT = Enforcement.ALLOW
SCHEMA_VERSION = 1
DDL = """
CREATE TABLE IF NOT EXISTS plans (
    source TEXT PRIMARY KEY,
    enforcement TEXT NOT NULL,
    compatibility TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    compatibility TEXT,
    active INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, subject)
);
CREATE TABLE IF NOT EXISTS versions (
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    schemaver TEXT NOT NULL,
    bump TEXT,
    fingerprint TEXT NOT NULL,
    schema TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (source, subject, version)
);
CREATE TRIGGER IF NOT EXISTS versions_immutable BEFORE UPDATE ON versions
BEGIN SELECT RAISE(ABORT, 'published schema versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS versions_permanent BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'published schema versions are immutable'); END;
"""


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One immutable published version. ``version`` counts 1, 2, 3… per subject;
    ``schemaver`` says what the change did to data written earlier; ``bump`` is ``None`` for
    the first version."""

    source: str
    subject: str
    version: int
    schemaver: SchemaVer
    schema: Schema
    fingerprint: str
    created_at: float
    bump: Bump | None


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    source: str
    subject: str
    compatibility: Compatibility
    compatibility_override: Compatibility | None
    active: bool
    versions: int
    latest: SchemaVersion


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """A source's plan-wide settings. ``revision`` grows whenever anything about the source's
    plan changes (a version, a mode, a retired subject): compare it to rebuild caches."""

    source: str
    enforcement: Enforcement
    compatibility: Compatibility
    revision: int


@dataclass(frozen=True, slots=True)
class SubjectUpdate:
    """A schema to publish. ``compatibility`` overrides the plan's default mode for this
    subject; ``None`` follows the default."""

    subject: str
    schema: Schema
    compatibility: Compatibility | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """The outcome for one subject: the version now latest, whether it was created, and the
    breaking changes against the previous version that its mode allowed."""

    version: SchemaVersion
    created: bool
    reactivated: bool = False
    allowed_changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishResult:
    settings: PlanSettings
    published: tuple[Published, ...]
    retired: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.retired) or any(p.created or p.reactivated for p in self.published)


@dataclass(slots=True)
class Evaluation:
    """One subject of a publish, checked against its history before anything is stored."""

    update: SubjectUpdate
    mode: Compatibility
    fingerprint: str
    history: list[SchemaVersion] = field(default_factory=list)
    active: bool = True
    problems: list[Change] = field(default_factory=list)

    @property
    def latest(self) -> SchemaVersion | None:
        return self.history[-1] if self.history else None

    @property
    def unchanged(self) -> bool:
        return self.latest is not None and self.latest.fingerprint == self.fingerprint


def version_from_row(
    source: str,
    subject: str,
    version: int,
    schemaver: str,
    schema: str,
    fp: str,
    created_at: float,
    bump: str | None,
) -> SchemaVersion:
    """A ``versions`` row (without its source) as a :class:`SchemaVersion`."""
    return SchemaVersion(
        source,
        subject,
        version,
        SchemaVer.parse(schemaver),
        json.loads(schema),
        fp,
        created_at,
        Bump(bump) if bump else None,
    )
