"""Where definitions live: one JSON file per definition in the data directory's ``audiences/``
folder, or, when the serving store is Redis, one field per definition of a Redis hash that
every machine reads (:func:`open_repository`); written by ``clew audiences push|remove`` and
the Admin API, read by the profiles stage (which polls :meth:`DefinitionRepository.version`
and reloads when it changes).

A file ``<name>.json`` holds the definition as written (its ``source``) plus ``"type":
"trait"`` or ``"audience"``, so :func:`~clew.audiences.definitions.parse_document` of its
content gives the definition back. Hidden files and files of other types are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from clew.audiences.definitions import (
    All,
    AnyOf,
    AudienceCatalog,
    AudienceDef,
    Compare,
    Condition,
    Definition,
    DefinitionError,
    Member,
    Not,
    TraitDef,
    parse_document,
)

# The stored documents are a small store of the backends layer; its names are re-exported.
from clew.definition_store import (
    DirectoryStorage,
    Storage,
    StorageBusyError,
    Version,
)

if TYPE_CHECKING:
    from clew.config import Settings


class UnknownDefinitionError(DefinitionError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no trait or audience named {name!r}; `clew audiences list` shows them")
        self.name = name


class DefinitionInUseError(DefinitionError):
    """The definition cannot be removed: audiences read it."""

    def __init__(self, what: str, name: str, users: list[str]) -> None:
        super().__init__(
            f"{what} {name!r} is used by audience(s) {', '.join(map(repr, users))}; change or "
            "remove those first"
        )
        self.users = users


def load_file(path: Path) -> list[Definition]:
    """The definitions in a YAML (``.yaml``/``.yml``) or JSON (``.json``) file. Raises
    :class:`DefinitionError` naming the file (and the line of a syntax error)."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise DefinitionError(f"{path}: definitions are read from .yaml, .yml or .json files")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{path}: cannot read it ({exc})") from None
    try:
        doc = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(f"{path}{line}: not valid YAML ({problem})") from None
    try:
        return parse_document(doc)
    except DefinitionError as exc:
        raise DefinitionError(f"{path}: {exc}") from None


def kind_of(definition: Definition) -> str:
    """``"trait"`` or ``"audience"``."""
    return "trait" if isinstance(definition, TraitDef) else "audience"


def document(definition: Definition) -> dict[str, Any]:
    """The definition as stored: ``type`` then its source fields."""
    return {"type": kind_of(definition), **definition.source}


def _encode(definition: Definition) -> bytes:
    # YAML may give dates; they are stored as their ISO text, as events carry them.
    return (
        json.dumps(document(definition), indent=2, ensure_ascii=False, default=str) + "\n"
    ).encode()


def _reads(definition: Definition) -> set[str]:
    """The audiences and computed values an audience's condition reads."""
    if not isinstance(definition, AudienceDef):
        return set()
    out: set[str] = set()
    todo: list[Condition] = [definition.condition]
    while todo:
        cond = todo.pop()
        if isinstance(cond, Member):
            out.add(cond.audience)
        elif isinstance(cond, Compare) and cond.source == "computed":
            out.add(cond.name)
        elif isinstance(cond, All | AnyOf):
            todo.extend(cond.items)
        elif isinstance(cond, Not):
            todo.append(cond.item)
    return out


def open_repository(settings: Settings) -> DefinitionRepository:
    """The definitions of this deployment: in Redis when the serving store is Redis (every
    machine's profiles workers, CLI and Admin API then see one set), else in the data
    directory (chosen in :func:`clew.backends.open_definitions_storage`)."""
    from clew.backends import open_definitions_storage

    return DefinitionRepository(settings.data_dir, open_definitions_storage(settings))


class DefinitionRepository:
    """The stored definitions, checked as a whole on every change (see :class:`Storage`)."""

    def __init__(self, data_dir: Path, storage: Storage | None = None) -> None:
        self.storage: Storage = storage if storage is not None else DirectoryStorage(data_dir)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The storage's writers' lock; waiting too long for it is a :class:`DefinitionError`."""
        try:
            with self.storage.locked():
                yield
        except StorageBusyError as exc:
            raise DefinitionError(str(exc)) from None

    @property
    def path(self) -> Path:
        """The folder of a repository kept in the data directory."""
        return self._directory().path

    def files(self) -> list[Path]:
        """The definition files of a repository kept in the data directory."""
        return self._directory().files()

    def _directory(self) -> DirectoryStorage:
        if not isinstance(self.storage, DirectoryStorage):
            raise TypeError(f"the definitions are kept in {self.storage.where()}, not files")
        return self.storage

    def version(self) -> Version:
        """A cheap value that changes whenever a definition is added, changed or removed."""
        return self.storage.version()

    def _read(self, name: str) -> Definition:
        where = self.storage.where(name)
        try:
            doc = json.loads(self.storage.read(name))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise DefinitionError(f"{where}: cannot read it ({exc})") from None
        try:
            found = parse_document(doc)
        except DefinitionError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
        if len(found) != 1 or found[0].name != name or "type" not in doc:
            raise DefinitionError(
                f"{where}: expected one definition named {name!r} with "
                "'type': 'trait' or 'audience'"
            )
        return found[0]

    def _load(self) -> tuple[dict[str, Definition], dict[str, DefinitionError]]:
        """Every readable definition by name, and the error of every unreadable one."""
        found: dict[str, Definition] = {}
        broken: dict[str, DefinitionError] = {}
        for name in self.storage.names():
            try:
                found[name] = self._read(name)
            except DefinitionError as exc:
                broken[name] = exc
            except FileNotFoundError:
                continue
        return found, broken

    def catalog(self) -> AudienceCatalog:
        """The stored definitions, checked. Raises :class:`DefinitionError` naming the first
        unreadable or invalid one, or saying why the set is not a valid catalog."""
        found, broken = self._load()
        if broken:
            raise next(iter(broken.values()))
        try:
            return AudienceCatalog.of(found.values())
        except DefinitionError as exc:
            raise DefinitionError(f"{self.storage.where()}: {exc}") from None

    def get(self, name: str) -> Definition | None:
        """The stored definition ``name``, or None. Raises :class:`DefinitionError` if it
        cannot be read."""
        if name not in self.storage.names():
            return None
        try:
            return self._read(name)
        except FileNotFoundError:
            return None

    def push(self, definitions: Sequence[Definition], *, dry_run: bool = False) -> list[str]:
        """Store ``definitions``, each replacing the stored one of its name (a trait cannot
        replace an audience, nor the other way round). Everything is checked first: if the
        stored definitions with these ones would not form a valid :class:`AudienceCatalog`,
        :class:`DefinitionError` is raised and nothing is written. Files are written one by
        one, in an order in which every intermediate set is valid too. Returns the names
        whose stored content changed (unchanged files are not rewritten); with ``dry_run``,
        checks and returns the names that would change, and writes nothing."""
        incoming: dict[str, Definition] = {}
        for d in definitions:
            if d.name in incoming:
                raise DefinitionError(f"{d.name!r} is defined twice; names must be unique")
            incoming[d.name] = d
        with nullcontext() if dry_run else self._locked():
            stored, broken = self._load()
            for name, exc in broken.items():
                if name not in incoming:
                    raise DefinitionError(
                        f"{exc}; fix the file, push a valid {name!r}, or remove it with "
                        f"`clew audiences remove {name}`"
                    )
            for name, d in incoming.items():
                old = stored.get(name)
                if old is not None and kind_of(old) != kind_of(d):
                    raise DefinitionError(
                        f"{name!r} is already defined as a {kind_of(old)}; a trait and an "
                        f"audience may not share a name (remove the {kind_of(old)} first)"
                    )
            catalog = AudienceCatalog.of({**stored, **incoming}.values())
            order = [d.name for d in catalog.definitions() if d.name in incoming]
            written = [n for n in order if self._write(n, _encode(incoming[n]), dry_run)]
            if written and not dry_run:
                self.storage.bump()
            return written

    def remove(self, name: str) -> None:
        """Delete the definition ``name``. Raises :class:`UnknownDefinitionError` if there is
        none, :class:`DefinitionInUseError` if an audience reads it (as a member audience or
        a computed trait): those must be changed or removed first."""
        with self._locked():
            stored, broken = self._load()
            if name not in stored and name not in broken:
                raise UnknownDefinitionError(name)
            users = sorted(a.name for a in stored.values() if a.name != name and name in _reads(a))
            if users:
                what = kind_of(stored[name]) if name in stored else "definition"
                raise DefinitionInUseError(what, name, users)
            self.storage.delete(name)
            self.storage.bump()

    def _write(self, name: str, content: bytes, dry_run: bool = False) -> bool:
        """Whether the stored content changes; writes it unless ``dry_run``."""
        try:
            if self.storage.read(name) == content:
                return False
        except FileNotFoundError:
            pass
        if not dry_run:
            self.storage.write(name, content)
        return True
