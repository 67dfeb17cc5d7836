"""The schema registry: every published version of every subject of every source, kept in
SQLite tables (``registry.db``, or a copy in memory of a registry every machine shares:
``_registry_db``). A published version never changes (triggers refuse updates and
deletes); publishing the same schema as the latest version is a no-op; publishing a different
one checks it against the subject's compatibility mode first, then stores it as the next
version with a SchemaVer computed from the change.

Thread-safe; several processes (and machines, sharing one) may open the same registry: a
publish holds the registry's write lock from its compatibility check to its commit, so
concurrent publishers cannot both pass the check against the same latest version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from clew.backends import open_registry_storage
from clew.schema._jsonschema import Schema, canonical_json, check_schema, fingerprint
from clew.schema._registry_db import (
    FileDatabase,
    RegistryDatabase,
    SharedDatabase,
    dump,
    load,
)
from clew.schema._registry_model import (
    DEFAULT_COMPATIBILITY,
    DEFAULT_ENFORCEMENT,
    Evaluation,
    PlanSettings,
    Published,
    PublishResult,
    SchemaVersion,
    SubjectInfo,
    SubjectUpdate,
    version_from_row,
)
from clew.schema.changes import Change
from clew.schema.compat import Compatibility, check_mode, diff
from clew.schema.enforcement import Enforcement
from clew.schema.errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaError,
    SubjectNotFoundError,
)
from clew.schema.schemaver import SchemaVer, bump_for
from clew.schema.subjects import subject_order, validate_subject

if TYPE_CHECKING:
    from clew.config import Settings

__all__ = [
    "DEFAULT_COMPATIBILITY",
    "DEFAULT_ENFORCEMENT",
    "PlanSettings",
    "PublishResult",
    "Published",
    "SchemaRegistry",
    "SchemaVersion",
    "SubjectInfo",
    "SubjectUpdate",
]


class SchemaRegistry:
    """The registry in ``database``: a path opens (creating if needed) a ``registry.db``
    there; :meth:`open` gives the deployment's."""

    def __init__(self, database: Path | RegistryDatabase) -> None:
        self._db = FileDatabase(database) if isinstance(database, Path) else database
        self.path: Path | None = database if isinstance(database, Path) else None
        """The ``registry.db`` file, ``None`` for a shared registry."""
        self._lock = threading.RLock()

    @classmethod
    def open(cls, settings: Settings) -> SchemaRegistry:
        """The deployment's registry: shared by every machine when the serving store is
        Redis (:func:`clew.backends.open_registry_storage`), else ``registry.db``."""
        storage = open_registry_storage(settings)
        return cls(settings.registry_path if storage is None else SharedDatabase(storage))

    @classmethod
    def open_existing(cls, settings: Settings) -> SchemaRegistry | None:
        """Like :meth:`open`, but ``None`` when the registry is a file not made yet."""
        storage = open_registry_storage(settings)
        if storage is not None:
            return cls(SharedDatabase(storage))
        return cls(settings.registry_path) if settings.registry_path.exists() else None

    def where(self) -> str:
        """Where the registry is kept, for messages."""
        return self._db.where()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SchemaRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        source: str,
        subject: str,
        schema: Schema,
        *,
        compatibility: Compatibility | None = None,
    ) -> Published:
        """Publish one subject's schema. ``compatibility`` sets the subject's mode first;
        ``None`` keeps its current mode. Raises :class:`IncompatibleSchemaError` listing every
        breaking change when the mode refuses it, and :class:`InvalidSchemaError` when the
        schema cannot be published."""
        update = SubjectUpdate(subject, schema, compatibility)
        result = self._publish(source, [update], keep_overrides=compatibility is None)
        return result.published[0]

    def publish_all(
        self,
        source: str,
        updates: Sequence[SubjectUpdate],
        *,
        enforcement: Enforcement | None = None,
        compatibility: Compatibility | None = None,
        retire_missing: bool = False,
    ) -> PublishResult:
        """Publish a whole plan atomically: either every subject is published (or found
        unchanged) or, when any one breaks its mode, nothing is and
        :class:`IncompatibleSchemaError` lists every breaking change of every subject.

        ``enforcement`` and ``compatibility`` (the plan's default mode) replace the source's
        settings when given. Each update's ``compatibility`` replaces its subject's override.
        ``retire_missing`` retires the active subjects not in ``updates``: they keep their
        versions but leave the plan (and come back, checked against their history, when
        published again)."""
        return self._publish(
            source,
            updates,
            keep_overrides=False,
            enforcement=enforcement,
            compatibility=compatibility,
            retire_missing=retire_missing,
        )

    def check_all(
        self,
        source: str,
        updates: Sequence[SubjectUpdate],
        *,
        compatibility: Compatibility | None = None,
    ) -> list[tuple[str, Change]]:
        """What :meth:`publish_all` would refuse, without publishing: ``(subject, change)``
        for every breaking change. ``compatibility`` stands for the plan's default mode."""
        _check_source(source)
        with self._read() as conn:
            default = compatibility or self._settings(conn, source).compatibility
            evaluations = self._evaluate(conn, source, updates, default, keep_overrides=False)
        return [(e.update.subject, c) for e in evaluations for c in e.problems]

    def check(
        self,
        source: str,
        subject: str,
        schema: Schema,
        *,
        compatibility: Compatibility | None = None,
    ) -> list[Change]:
        """The breaking changes that would make :meth:`publish` refuse ``schema``."""
        update = SubjectUpdate(subject, schema, compatibility)
        with self._read() as conn:
            default = self._settings(conn, source).compatibility
            (evaluation,) = self._evaluate(
                conn, source, [update], default, keep_overrides=compatibility is None
            )
        return evaluation.problems

    # -- settings ------------------------------------------------------------------------

    def settings(self, source: str) -> PlanSettings:
        """The source's plan settings (defaults when nothing was published for it)."""
        with self._read() as conn:
            return self._settings(conn, source)

    def revision(self, source: str) -> int:
        """Cheap: grows whenever the source's plan changes."""
        return self.settings(source).revision

    def set_settings(
        self,
        source: str,
        *,
        enforcement: Enforcement | None = None,
        compatibility: Compatibility | None = None,
    ) -> PlanSettings:
        _check_source(source)
        with self._write() as conn:
            self._ensure_plan(conn, source)
            if enforcement is not None:
                conn.execute(
                    "UPDATE plans SET enforcement = ? WHERE source = ?", (enforcement, source)
                )
            if compatibility is not None:
                conn.execute(
                    "UPDATE plans SET compatibility = ? WHERE source = ?", (compatibility, source)
                )
            self._bump_revision(conn, source)
            return self._settings(conn, source)

    def set_compatibility(
        self, source: str, subject: str, compatibility: Compatibility | None
    ) -> None:
        """Set a subject's mode; ``None`` makes it follow the plan's default."""
        with self._write() as conn:
            self._subject_row(conn, source, subject)
            conn.execute(
                "UPDATE subjects SET compatibility = ?, updated_at = ? "
                "WHERE source = ? AND subject = ?",
                (compatibility, time.time(), source, subject),
            )
            self._bump_revision(conn, source)

    def retire(self, source: str, subject: str) -> None:
        """Take a subject out of the plan; its versions stay."""
        with self._write() as conn:
            self._subject_row(conn, source, subject)
            conn.execute(
                "UPDATE subjects SET active = 0, updated_at = ? WHERE source = ? AND subject = ?",
                (time.time(), source, subject),
            )
            self._bump_revision(conn, source)

    # -- reading -------------------------------------------------------------------------

    def sources(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute("SELECT source FROM plans ORDER BY source").fetchall()
        return [r[0] for r in rows]

    def subjects(self, source: str, *, include_retired: bool = False) -> list[SubjectInfo]:
        with self._read() as conn:
            default = self._settings(conn, source).compatibility
            rows = conn.execute(
                "SELECT subject, compatibility, active FROM subjects WHERE source = ?", (source,)
            ).fetchall()
            out = []
            for subject, override, active in rows:
                if not active and not include_retired:
                    continue
                history = self._history(conn, source, subject)
                mode = Compatibility(override) if override else None
                out.append(
                    SubjectInfo(
                        source,
                        subject,
                        mode or default,
                        mode,
                        bool(active),
                        len(history),
                        history[-1],
                    )
                )
        return sorted(out, key=lambda s: subject_order(s.subject))

    def versions(self, source: str, subject: str) -> list[SchemaVersion]:
        """Every version of a subject, oldest first."""
        with self._read() as conn:
            history = self._history(conn, source, subject)
        if not history:
            raise SubjectNotFoundError(f"source {source!r} has no subject {subject!r}")
        return history

    def get(self, source: str, subject: str, version: int | str = "latest") -> SchemaVersion:
        """One version: its number (``3``), its SchemaVer (``"1-0-2"``) or ``"latest"``."""
        history = self.versions(source, subject)
        if version == "latest":
            return history[-1]
        for v in history:
            if v.version == version or str(v.schemaver) == version or str(v.version) == version:
                return v
        raise SubjectNotFoundError(
            f"{subject!r} of source {source!r} has no version {version!r}; it has "
            + ", ".join(f"{v.version} ({v.schemaver})" for v in history)
        )

    def latest_versions(self, source: str) -> dict[str, SchemaVersion]:
        """The latest version of each active subject of ``source``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT v.subject, v.version, v.schemaver, v.schema, v.fingerprint, "
                "v.created_at, v.bump FROM versions v JOIN subjects s "
                "ON s.source = v.source AND s.subject = v.subject "
                "WHERE v.source = ? AND s.active = 1 AND v.version = "
                "(SELECT max(version) FROM versions w "
                "WHERE w.source = v.source AND w.subject = v.subject)",
                (source,),
            ).fetchall()
        return {r[0]: version_from_row(source, *r) for r in rows}

    # -- migration -----------------------------------------------------------------------

    def copy_from(self, other: SchemaRegistry) -> tuple[list[str], list[str]]:
        """Copy the plans (settings, revision, subjects and every version) of the sources
        ``other`` has and this registry has not, as they are. Returns the sources copied and
        those left alone because this registry has a plan for them already. For moving a
        ``registry.db`` into a shared registry; running it again copies nothing."""
        with other._read() as conn:
            document = dump(conn)
            theirs = [r[0] for r in conn.execute("SELECT source FROM plans ORDER BY source")]
        with self._write() as conn:
            ours = {r[0] for r in conn.execute("SELECT source FROM plans")}
            copied = [s for s in theirs if s not in ours]
            load(conn, document, only_sources=set(copied))
        return copied, [s for s in theirs if s in ours]

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db.reading() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db.writing() as conn:
            yield conn

    def _publish(
        self,
        source: str,
        updates: Sequence[SubjectUpdate],
        *,
        keep_overrides: bool,
        enforcement: Enforcement | None = None,
        compatibility: Compatibility | None = None,
        retire_missing: bool = False,
    ) -> PublishResult:
        _check_source(source)
        with self._write() as conn:
            before = self._settings(conn, source)
            default = compatibility or before.compatibility
            evaluations = self._evaluate(conn, source, updates, default, keep_overrides)
            problems = [(e.update.subject, c) for e in evaluations for c in e.problems]
            if problems:
                modes = {e.update.subject: e.mode for e in evaluations if e.problems}
                raise IncompatibleSchemaError(source, problems, modes)
            self._ensure_plan(conn, source)
            conn.execute(
                "UPDATE plans SET enforcement = ?, compatibility = ? WHERE source = ?",
                (enforcement or before.enforcement, default, source),
            )
            stored = [self._store(conn, source, e, keep_overrides) for e in evaluations]
            published = tuple(p for p, _ in stored)
            retired: tuple[str, ...] = ()
            if retire_missing:
                retired = self._retire_missing(conn, source, {u.subject for u in updates})
            changed = (
                PublishResult(before, published, retired).changed
                or any(mode_changed for _, mode_changed in stored)
                or (enforcement or before.enforcement) != before.enforcement
                or default != before.compatibility
            )
            if changed:
                self._bump_revision(conn, source)
            return PublishResult(self._settings(conn, source), published, retired)

    def _evaluate(
        self,
        conn: sqlite3.Connection,
        source: str,
        updates: Sequence[SubjectUpdate],
        default: Compatibility,
        keep_overrides: bool,
    ) -> list[Evaluation]:
        seen: set[str] = set()
        out = []
        for update in updates:
            subject = validate_subject(update.subject)
            if subject in seen:
                raise SchemaError(f"subject {subject!r} appears twice in one publish")
            seen.add(subject)
            try:
                check_schema(update.schema)
            except InvalidSchemaError as e:
                raise InvalidSchemaError(f"{subject}: {e}") from None
            row = conn.execute(
                "SELECT compatibility, active FROM subjects WHERE source = ? AND subject = ?",
                (source, subject),
            ).fetchone()
            override = update.compatibility
            if override is None and keep_overrides and row is not None and row[0]:
                override = Compatibility(row[0])
            evaluation = Evaluation(
                update=update,
                mode=override or default,
                fingerprint=fingerprint(update.schema),
                history=self._history(conn, source, subject),
                active=bool(row[1]) if row is not None else True,
            )
            if not evaluation.unchanged:
                evaluation.problems = check_mode(
                    [v.schema for v in evaluation.history], update.schema, evaluation.mode
                )
            out.append(evaluation)
        return out

    def _store(
        self, conn: sqlite3.Connection, source: str, e: Evaluation, keep_overrides: bool
    ) -> tuple[Published, bool]:
        """Store one evaluated update; also say whether the subject's mode changed."""
        subject = e.update.subject
        now = time.time()
        row = conn.execute(
            "SELECT compatibility FROM subjects WHERE source = ? AND subject = ?",
            (source, subject),
        ).fetchone()
        override = e.update.compatibility
        if override is None and keep_overrides and row is not None:
            override = Compatibility(row[0]) if row[0] else None
        mode_changed = row is None or (row[0] or None) != (override or None)
        conn.execute(
            "INSERT INTO subjects VALUES (?, ?, ?, 1, ?) ON CONFLICT (source, subject) "
            "DO UPDATE SET compatibility = excluded.compatibility, active = 1, "
            "updated_at = excluded.updated_at",
            (source, subject, override, now),
        )
        latest = e.latest
        if latest is not None and e.unchanged:
            return Published(latest, created=False, reactivated=not e.active), mode_changed
        if latest is None:
            schemaver, bump = SchemaVer.FIRST, None
        else:
            bump = bump_for(latest.schema, e.update.schema)
            schemaver = latest.schemaver.bump(bump)
        number = latest.version + 1 if latest else 1
        text = canonical_json(e.update.schema)
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (source, subject, number, str(schemaver), bump, e.fingerprint, text, now),
        )
        version = SchemaVersion(
            source, subject, number, schemaver, json.loads(text), e.fingerprint, now, bump
        )
        allowed = tuple(diff(latest.schema, e.update.schema)) if latest is not None else ()
        return Published(version, created=True, allowed_changes=allowed), mode_changed

    def _retire_missing(
        self, conn: sqlite3.Connection, source: str, keep: set[str]
    ) -> tuple[str, ...]:
        rows = conn.execute(
            "SELECT subject FROM subjects WHERE source = ? AND active = 1", (source,)
        ).fetchall()
        gone = sorted((r[0] for r in rows if r[0] not in keep), key=subject_order)
        conn.executemany(
            "UPDATE subjects SET active = 0, updated_at = ? WHERE source = ? AND subject = ?",
            [(time.time(), source, s) for s in gone],
        )
        return tuple(gone)

    def _history(self, conn: sqlite3.Connection, source: str, subject: str) -> list[SchemaVersion]:
        rows = conn.execute(
            "SELECT subject, version, schemaver, schema, fingerprint, created_at, bump "
            "FROM versions WHERE source = ? AND subject = ? ORDER BY version",
            (source, subject),
        ).fetchall()
        return [version_from_row(source, *r) for r in rows]

    def _settings(self, conn: sqlite3.Connection, source: str) -> PlanSettings:
        row = conn.execute(
            "SELECT enforcement, compatibility, revision FROM plans WHERE source = ?", (source,)
        ).fetchone()
        if row is None:
            return PlanSettings(source, DEFAULT_ENFORCEMENT, DEFAULT_COMPATIBILITY, 0)
        return PlanSettings(source, Enforcement(row[0]), Compatibility(row[1]), row[2])

    def _ensure_plan(self, conn: sqlite3.Connection, source: str) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO plans VALUES (?, ?, ?, 0, ?)",
            (source, DEFAULT_ENFORCEMENT, DEFAULT_COMPATIBILITY, time.time()),
        )

    def _bump_revision(self, conn: sqlite3.Connection, source: str) -> None:
        conn.execute(
            "UPDATE plans SET revision = revision + 1, updated_at = ? WHERE source = ?",
            (time.time(), source),
        )

    def _subject_row(self, conn: sqlite3.Connection, source: str, subject: str) -> None:
        row = conn.execute(
            "SELECT 1 FROM subjects WHERE source = ? AND subject = ?", (source, subject)
        ).fetchone()
        if row is None:
            raise SubjectNotFoundError(f"source {source!r} has no subject {subject!r}")


def _check_source(source: str) -> None:
    if not source or len(source) > 100:
        raise SchemaError("a source name must be 1 to 100 characters")
