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
import os
import sys
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


# glibc's mallopt parameter for the arena cap (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX = -8


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl has no malloc_trim: then not glibc
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Return to the system the pages glibc holds free in its arenas (``malloc_trim``); a
    no-op off glibc. Costs a walk of the arenas' free lists: call it once per batch at most."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _Refuse:
    """A module finder that makes importing one module fail, as if it were not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == self.name:
            raise ModuleNotFoundError(
                f"{name} is not loaded in clew serve or its stage workers "
                "(clew.stages.memory.refuse_pandas)",
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


def lean_server_process() -> None:
    """For `clew serve` itself, before it starts its workers, which inherit the same: the
    worker allocator settings that still take effect in a running process (an operator's own
    value of each wins), and pandas refused. Its SQL API loads DuckDB, deltalake and pyarrow
    on the first query (``SELECT count(*) FROM events`` over 300k events: +214 MB, pandas
    46 MB of it); pyarrow's pool and deltalake's jemalloc read their variables when first
    used, glibc's arena cap is set through ``mallopt``."""
    for name, value in WORKER_ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)
    libc = _glibc()
    arenas = os.environ["MALLOC_ARENA_MAX"]
    if libc is not None and arenas.isdigit():
        libc.mallopt(_M_ARENA_MAX, int(arenas))
    refuse_pandas()
