"""Giving the memory a batch freed back to the system, and the allocator settings of the
worker processes `clew serve` starts.

A batch of a stage allocates tens of megabytes (the validate stage's 200 requests, the lake's
Arrow tables) and frees them when it ends. The C allocators keep what was freed for reuse
instead of returning it: glibc in one arena per thread that allocates (up to eight per core),
the jemalloc that deltalake's Rust code links in, the mimalloc pool of pyarrow. Under a
backlog each worker's resident memory then grows to several times what one batch holds.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache

# For the workers of `clew serve` (an operator's own value of each wins; docs/operations.md,
# "Memory"): two glibc arenas instead of one per thread; pyarrow allocating from glibc
# instead of its own pool; deltalake's jemalloc with one arena, returning freed pages at once.
WORKER_ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "_RJEM_MALLOC_CONF": "narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0",
}


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        # Not glibc (musl has no malloc_trim): nothing to give back this way.
        return None
    return trim


def release_freed_memory() -> None:
    """Return to the system the pages glibc holds free in its arenas (``malloc_trim``); a
    no-op off glibc. Costs a walk of the arenas' free lists: call it once per batch at most."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
