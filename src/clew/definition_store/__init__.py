"""Where audience and trait definitions are stored, as named JSON documents with a version
that changes with every change and a writers' lock (a small store of the backends layer):
:class:`DirectoryStorage` is the data directory's ``audiences/`` folder, ``_redis`` a Redis
hash every machine reads (imported only when named). :func:`clew.backends.open_definitions_storage`
picks one; what the documents mean is :mod:`clew.audiences.repository`'s business.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from clew._datadir import AUDIENCES_DIR, AUDIENCES_LOCK, lock_path

__all__ = ["DirectoryStorage", "Storage", "StorageBusyError", "Version"]

# Counts the writes made through this module: file times are too coarse (milliseconds on
# some file systems) to tell apart two quick rewrites of the same size.
_GENERATION = ".generation"

Version = tuple[tuple[str, int, int], ...]


class StorageBusyError(RuntimeError):
    """Another writer held the lock too long (:meth:`Storage.locked`); the message says so."""


class Storage(Protocol):
    """Named definition documents (JSON bytes), a version that changes with every change,
    and a writers' lock."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes:
        """The document ``name``; ``FileNotFoundError`` when there is none."""
        ...

    def write(self, name: str, content: bytes) -> None: ...

    def delete(self, name: str) -> None: ...

    def version(self) -> Version: ...

    def bump(self) -> None: ...

    def where(self, name: str | None = None) -> str:
        """Where ``name`` (or the whole set) is kept, for messages."""
        ...

    def locked(self) -> AbstractContextManager[None]: ...

    def close(self) -> None:
        """Release what the storage holds open (a connection); it is not used again."""
        ...


class DirectoryStorage:
    """The ``audiences/`` folder of a data directory. Safe to use from several processes:
    writers take a lock, and every file is replaced atomically."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / AUDIENCES_DIR
        self._lock_path = lock_path(data_dir, AUDIENCES_LOCK)

    def files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(
            p
            for p in self.path.iterdir()
            if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
        )

    def names(self) -> list[str]:
        return [p.stem for p in self.files()]

    def read(self, name: str) -> bytes:
        return (self.path / f"{name}.json").read_bytes()

    def write(self, name: str, content: bytes) -> None:
        self._replace(self.path / f"{name}.json", content)

    def delete(self, name: str) -> None:
        (self.path / f"{name}.json").unlink(missing_ok=True)

    def where(self, name: str | None = None) -> str:
        return str(self.path if name is None else self.path / f"{name}.json")

    def version(self) -> Version:
        """A cheap value that changes whenever a definition file is added, changed or
        removed (names, modification times and sizes, and a count of writes made here)."""
        out = [(_GENERATION, self._generation(), 0)]
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _replace(self, target: Path, content: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{target.name}.tmp"
        with tmp.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)

    def _generation(self) -> int:
        try:
            return int((self.path / _GENERATION).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def bump(self) -> None:
        self._replace(self.path / _GENERATION, str(self._generation() + 1).encode())

    def close(self) -> None:
        """Nothing is held open between calls."""

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (the CLI and a running server's Admin API may push at once)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
