"""What an erasure (``clew.privacy.erase``) reports: per store, how much was removed and any
error. A module of its own so that the store-specific erasers (``_erase_kafka``) build their
part of the report without importing ``erase``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StoreReport:
    store: str
    removed: int
    detail: str = ""
    error: str | None = None


@dataclass
class ErasureReport:
    stores: list[StoreReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.stores)
