"""Destinations as files of the data directory (the embedded default): one YAML or JSON
file per destination in ``destinations/``. Files other than ``*.yaml``, ``*.yml`` and
``*.json`` (and hidden files) are ignored; a file's ``name`` defaults to its file name.
Files are written as ``<name>.yaml``, atomically and readable by their owner only (one may
hold a secret), so people may also write them by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clew.destination_store.base import DestinationStore, DestinationTakenError, StoredDestination

SUFFIXES = (".yaml", ".yml", ".json")
# Counts the changes made through this module: file times are too coarse on some file
# systems to tell apart two quick rewrites of the same size. Hidden, so never read as a
# destination.
_GENERATION = ".generation"


def read_settings(path: Path) -> dict[str, Any]:
    """The settings in ``path`` (YAML or JSON) as a mapping; ``name`` defaults to the file
    name. ``ValueError`` naming the file when it cannot be read or is not a mapping."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of destination settings")
    data.setdefault("name", path.stem)
    return data


class FileDestinationStore(DestinationStore):
    """The folder ``path`` (a data directory's ``destinations/``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return [
            p
            for p in sorted(self.path.iterdir())
            if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]

    def read_all(self) -> list[StoredDestination]:
        found = []
        for p in self.files():
            try:
                data = read_settings(p)
            except ValueError as exc:
                found.append(StoredDestination(str(p), p.stem, None, str(exc)))
                continue
            found.append(StoredDestination(str(p), str(data["name"]), data))
        return found

    def version(self) -> tuple[tuple[str, int, int], ...]:
        """File names, modification times and sizes (so files written by hand count), and
        the number of changes made here."""
        out = [(_GENERATION, self._generation(), 0)]
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _file_of(self, name: str) -> Path | None:
        """The file that defines ``name``, else one named after it that does not read."""
        for stored in self.read_all():
            if stored.settings is not None and stored.name == name:
                return Path(stored.origin)
        for suffix in SUFFIXES:
            if (self.path / f"{name}{suffix}").exists():
                return self.path / f"{name}{suffix}"
        return None

    def put(self, settings: Mapping[str, Any], *, replace: bool = False) -> str:
        name = str(settings["name"])
        existing = self._file_of(name)
        if existing is not None and not replace:
            raise DestinationTakenError(name, str(existing))
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{name}.yaml"
        tmp = self.path / f".{name}.yaml.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(dict(settings), handle, sort_keys=False)
        tmp.replace(target)
        if existing is not None and existing != target:
            existing.unlink(missing_ok=True)
        self._bump()
        return str(target)

    def delete(self, name: str) -> str | None:
        path = self._file_of(name)
        if path is None:
            return None
        path.unlink(missing_ok=True)
        self._bump()
        return str(path)

    def _generation(self) -> int:
        try:
            return int((self.path / _GENERATION).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _bump(self) -> None:
        tmp = self.path / f".{_GENERATION}.tmp"
        tmp.write_text(str(self._generation() + 1))
        tmp.replace(self.path / _GENERATION)

    def where(self, name: str | None = None) -> str:
        if name is None:
            return str(self.path)
        return str(self._file_of(name) or self.path / f"{name}.yaml")

    def close(self) -> None:
        """Nothing is held open between calls."""
