"""``POST /v1/sql`` queries, kept within bounds: a few at a time, each on a thread of their own
(never the thread pool the other routes share), each stopped when it runs too long or when
its client goes away."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from clew.api._auth import error
from clew.config import SqlSettings
from clew.lake.query import (
    Interrupt,
    Lake,
    LakeUnavailableError,
    QueryError,
    QueryInterrupted,
    QueryResult,
)

# How often a running query's client is checked for having gone away.
_DISCONNECT_POLL_S = 0.1
# How often a query waiting for a slot looks again.
_SLOT_POLL_S = 0.02
# What a client is told to wait before asking again while the lake's storage is away.
_LAKE_RETRY_AFTER_S = 5


class SqlRunner:
    """Runs the SQL API's queries on ``settings.max_concurrent`` threads of its own.

    A query that finds every slot taken waits up to ``settings.queue_timeout_s`` for one, then
    is answered 503 ``sql_busy`` with ``Retry-After``. A slot is given back only when its query
    has really stopped, so abandoned queries count until DuckDB lets them go. ``close``
    interrupts whatever still runs; the runner refuses queries after it."""

    def __init__(self, lake: Lake, settings: SqlSettings) -> None:
        self.lake = lake
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_concurrent)
        self._executor = ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="clew-sql")
        self._lock = threading.Lock()
        self._running: set[Interrupt] = set()
        self._closed = False
        # Queries interrupted because their client went away.
        self.abandoned = 0

    @property
    def running(self) -> int:
        """Queries holding a slot now (running, or being stopped)."""
        with self._lock:
            return len(self._running)

    async def answer(self, request: Request, query: str, include_cold: bool) -> JSONResponse:
        """The response to ``query``: its rows (at most ``max_rows``, with ``truncated``),
        400 ``invalid_query``, 504 ``query_timeout`` when it was interrupted, 503
        ``sql_busy`` when no slot frees up in time, or 503 ``lake_unavailable`` (with
        ``Retry-After``) when the lake's storage does not answer."""
        if not await self._take_slot():
            retry = max(1, math.ceil(self.settings.queue_timeout_s))
            refused = error(
                503,
                "sql_busy",
                f"{self.settings.max_concurrent} SQL queries are running already; "
                f"retry in {retry} s",
            )
            refused.headers["Retry-After"] = str(retry)
            return refused
        interrupt = Interrupt()
        with self._lock:
            self._running.add(interrupt)
        try:
            future = self._executor.submit(self._run, interrupt, query, include_cold)
        except RuntimeError:  # closed meanwhile
            self._release(interrupt)
            return error(503, "sql_busy", "Clew is shutting down")
        waiting = asyncio.wrap_future(future)
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=_DISCONNECT_POLL_S)
                if not waiting.done() and await request.is_disconnected():
                    self.abandoned += 1
                    interrupt.interrupt()
        except asyncio.CancelledError:
            interrupt.interrupt()
            raise
        try:
            result = waiting.result()
        except QueryInterrupted as e:
            return error(504, "query_timeout", str(e))
        except LakeUnavailableError as e:
            unavailable = error(503, "lake_unavailable", f"{e}; retry later")
            unavailable.headers["Retry-After"] = str(_LAKE_RETRY_AFTER_S)
            return unavailable
        except QueryError as e:
            return error(400, "invalid_query", str(e))
        return JSONResponse(
            {
                "columns": result.columns,
                "rows": [[jsonable(v) for v in row] for row in result.rows],
                "truncated": result.truncated,
            }
        )

    def close(self) -> None:
        """Interrupt every running query and stop the threads (waiting for them to end)."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for interrupt in running:
            interrupt.interrupt()
        self._executor.shutdown(wait=True)

    async def _take_slot(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout_s
        while not self._closed:
            if self._slots.acquire(blocking=False):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_SLOT_POLL_S)
        return False

    def _release(self, interrupt: Interrupt) -> None:
        with self._lock:
            self._running.discard(interrupt)
        self._slots.release()

    def _run(self, interrupt: Interrupt, query: str, include_cold: bool) -> QueryResult:
        try:
            return self.lake.sql(
                query,
                self.settings.max_rows,
                include_cold,
                timeout_s=self.settings.timeout_s,
                interrupt=interrupt,
            )
        finally:
            self._release(interrupt)


def jsonable(value: Any) -> Any:
    """``value`` as a query answer shows it in JSON (and in ``clew sql``'s outputs)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value
