"""Kept for callers not moved yet: the serving store is opened by :mod:`clew.backends`
(``open_store``, ``open_existing_store``). New code imports from there."""

from __future__ import annotations

from clew.backends import open_existing_store, open_store

__all__ = ["open_existing_store", "open_store"]
