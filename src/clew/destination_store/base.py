"""The contract of the destinations' storage: one settings mapping per destination, by
name, with a version that changes with every change. What the settings mean (their checks,
the defaults) is :mod:`clew.destinations.config`'s business; a :class:`DestinationStore`
only keeps them, so that every process reading the same storage sees the same
destinations.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredDestination:
    """One destination as kept. ``origin`` names where (a file, a Redis field) and stays the
    same from read to read; ``name`` is the destination's name as stored (a file's ``name``,
    else its name without suffix); ``settings`` is the mapping (with ``name``), or ``None``
    when it cannot be read, with ``problem`` saying why."""

    origin: str
    name: str
    settings: dict[str, Any] | None
    problem: str | None = None


class DestinationTakenError(Exception):
    """A destination of that name is stored already (readable or not): ``where``."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(name)
        self.name = name
        self.where = where


class DestinationStore(abc.ABC):
    """Where destination settings live. Each method is atomic on its own and safe to call
    from several processes at once; what one handle writes, every other handle on the same
    storage reads from its next call (no handle caches)."""

    @abc.abstractmethod
    def read_all(self) -> list[StoredDestination]:
        """Every stored destination, readable or not, in a stable order."""

    @abc.abstractmethod
    def version(self) -> Hashable:
        """A cheap value that changes whenever a destination is added, changed or removed;
        readers poll it and read everything again when it moves."""

    @abc.abstractmethod
    def put(self, settings: Mapping[str, Any], *, replace: bool = False) -> str:
        """Store ``settings`` under ``settings["name"]`` and say where. Raises
        :class:`DestinationTakenError`, changing nothing, when that name is stored already
        and ``replace`` is false."""

    @abc.abstractmethod
    def delete(self, name: str) -> str | None:
        """Forget destination ``name``; where it was, or ``None`` when there was none."""

    @abc.abstractmethod
    def where(self, name: str | None = None) -> str:
        """Where ``name`` (or the whole set) is kept, for messages."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the storage holds open; it is not used again."""
