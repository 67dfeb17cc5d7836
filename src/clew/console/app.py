"""Assembles the console's routes from what ``clew serve`` holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute

from clew.audiences.repository import DefinitionRepository
from clew.config import Settings
from clew.lake.query import Lake
from clew.log.base import Log
from clew.privacy.requests import RequestStore
from clew.sources import Catalog
from clew.store.base import ProfileStore


@dataclass(frozen=True, slots=True)
class ConsoleContext:
    """What the console's pages read and act on: the stores ``clew serve`` already opened."""

    settings: Settings
    catalog: Catalog
    lake: Lake
    log: Log
    profiles: ProfileStore
    audiences: DefinitionRepository
    privacy: RequestStore
    privacy_wake: Callable[[], None]
    health: Callable[[], dict[str, Any]]


def console_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    """The console's routes, mounted beside the HTTP APIs."""
    return []
