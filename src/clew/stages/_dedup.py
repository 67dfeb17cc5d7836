"""Kept for callers not moved yet: dedup is a small store of the backends layer,
:mod:`clew.dedup`, opened by :func:`clew.backends.open_dedup`."""

from __future__ import annotations

from clew.backends import open_dedup
from clew.dedup import Dedup, DedupIndex, RedisDedupIndex

__all__ = ["Dedup", "DedupIndex", "RedisDedupIndex", "open_dedup"]
