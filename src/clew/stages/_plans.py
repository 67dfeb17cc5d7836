"""Each source's compiled tracking plan, rebuilt when the registry's revision changes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from clew.sources import Catalog

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.schema import CompiledPlan, SchemaRegistry

_RECHECK_S = 1.0


class PlanCache:
    """``plan_for(source_id)``: the source's plan, or None when no plan was pushed for it (its
    events are then not checked). A pushed plan takes effect within about a second."""

    def __init__(self, settings: Settings) -> None:
        from clew.schema import SchemaRegistry

        self._registry: SchemaRegistry = SchemaRegistry.open(settings)
        self._catalog = Catalog.open(settings)
        self._names: dict[str, str | None] = {}
        self._plans: dict[str, tuple[float, int, CompiledPlan | None]] = {}

    def _name(self, source_id: str) -> str | None:
        if source_id not in self._names:
            by_id = {s.id: s.name for s in self._catalog.sources()}
            self._names[source_id] = by_id.get(source_id)
        return self._names[source_id]

    def plan_for(self, source_id: str) -> CompiledPlan | None:
        from clew.schema import CompiledPlan

        now = time.monotonic()
        cached = self._plans.get(source_id)
        if cached is not None and now - cached[0] < _RECHECK_S:
            return cached[2]
        name = self._name(source_id)
        if name is None or name not in self._registry.sources():
            self._plans[source_id] = (now, -1, None)
            return None
        revision = self._registry.revision(name)
        if cached is not None and cached[1] == revision:
            self._plans[source_id] = (now, revision, cached[2])
            return cached[2]
        plan = CompiledPlan.from_registry(self._registry, name)
        self._plans[source_id] = (now, plan.revision, plan)
        return plan

    def close(self) -> None:
        self._registry.close()
        self._catalog.close()
