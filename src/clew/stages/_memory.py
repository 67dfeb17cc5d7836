"""Giving the memory a batch freed back to the system, the allocator settings of the worker
processes `clew serve` starts, and keeping pandas out of them.

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
from importlib.machinery import ModuleSpec
from types import ModuleType

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


class _Refuse:
    """A module finder that makes importing one module fail, as if it were not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == self.name:
            raise ModuleNotFoundError(
                f"{name} is not loaded in the stage workers of clew serve "
                "(clew.stages._memory.refuse_pandas)",
                name=name,
            )
        return None


def refuse_pandas() -> None:
    """From now on, importing pandas in this process fails as if it were not installed (a
    configuration pyarrow and deltalake support: pandas is optional to both).

    For the stage workers of `clew serve`, whose stages never use pandas: pyarrow imports it
    the first time it converts Python values (``pa.array``, a scalar in ``pyarrow.compute``)
    to look whether they are pandas objects, 54 MB resident in the lake's worker."""
    if not any(isinstance(finder, _Refuse) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Refuse("pandas"))
