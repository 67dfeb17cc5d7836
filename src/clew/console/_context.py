"""What the console's pages read and act on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clew.audiences.repository import DefinitionRepository
from clew.config import Settings
from clew.destinations import Destinations
from clew.lake.query import Lake
from clew.log.base import Log
from clew.privacy.requests import RequestStore
from clew.sources import Catalog
from clew.store.base import ProfileStore


@dataclass(frozen=True, slots=True)
class ConsoleContext:
    """The stores ``clew serve`` already opened, shared with the console (never closed by it)."""

    settings: Settings
    catalog: Catalog
    lake: Lake
    log: Log
    profiles: ProfileStore
    audiences: DefinitionRepository
    destinations: Destinations
    privacy: RequestStore
    privacy_wake: Callable[[], None]
    health: Callable[[], dict[str, Any]]
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the server begins to stop: long-lived responses (live streams) end then."""
