"""Read your writes: the Profile API's ``after=POSITION`` and ``wait_ms=N`` parameters
(docs/profile-api.md, "Read your writes").

A read with ``after`` is answered once the profiles stage has applied the request stored at
that position (the rule is :mod:`clew.stages.applied`'s), or refused with 409 ``not_yet``
when it has not after ``wait_ms``. Waiting is an ``asyncio.sleep`` between looks at the
stages' progress (from 1 ms, doubling, to at most 20 ms); each look is a few short reads
run in the thread pool and shared by every request waiting at the time, so a waiting
request holds no thread and the log is read at most once per round however many wait.
"""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse

from clew._errors import ServiceUnavailableError
from clew.api._auth import error
from clew.log.base import LogError
from clew.raw_records import InvalidPositionError, RawPosition
from clew.stages.applied import ProgressReader, Targets, UnknownPositionError

AFTER = "after"
WAIT_MS = "wait_ms"
MAX_WAIT_MS = 10_000
DEFAULT_WAIT_MS = 0
"""Without ``wait_ms`` the position is checked once: 409 at once when not yet applied."""
_FIRST_PAUSE_S = 0.001
_MAX_PAUSE_S = 0.02
# How long a read waits for a look another read is taking, even with no wait_ms: a look takes
# milliseconds unless the log does not answer.
_MIN_PATIENCE_S = 1.0
# Seconds a client is told to wait when the log or the store cannot be read.
_RETRY_AFTER_S = 5


async def wait_until_applied(
    reader: ProgressReader | None, query: QueryParams
) -> JSONResponse | None:
    """``None`` when the read may be answered: no ``after`` was asked, or the profiles stage
    has applied it within ``wait_ms``. Otherwise the refusal to send: 400 for a parameter
    that is not one, 409 ``not_yet``, or 503 when the log or the store cannot be read."""
    text = query.get(AFTER)
    if text is None:
        return None
    if reader is None:
        return error(400, "invalid_parameter", "this server does not take `after`")
    try:
        position = RawPosition.parse(text)
    except InvalidPositionError as exc:
        return error(400, "invalid_position", str(exc))
    wait_ms = _wait_ms(query.get(WAIT_MS))
    if wait_ms is None:
        return error(
            400,
            "invalid_parameter",
            f"wait_ms must be a whole number of milliseconds from 0 to {MAX_WAIT_MS}; "
            f"got {query.get(WAIT_MS, '')[:20]!r}",
        )
    try:
        if await _applied(reader, position, wait_ms):
            return None
    except UnknownPositionError as exc:
        return error(400, "invalid_position", str(exc))
    except (LogError, ServiceUnavailableError) as exc:
        refused = error(503, "store_unavailable", f"{exc}; retry later")
        refused.headers["Retry-After"] = str(_RETRY_AFTER_S)
        return refused
    return error(
        409,
        "not_yet",
        f"the profiles stage has not applied {position} yet (waited {wait_ms} ms): retry, or "
        f"send wait_ms (up to {MAX_WAIT_MS}) to wait longer",
    )


def _wait_ms(raw: str | None) -> int | None:
    """``wait_ms`` in milliseconds, or ``None`` when it is not a whole number in range."""
    if raw is None or raw == "":
        return DEFAULT_WAIT_MS
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        return None
    value = int(raw)
    return value if value <= MAX_WAIT_MS else None


async def _applied(reader: ProgressReader, position: RawPosition, wait_ms: int) -> bool:
    """Whether the profiles stage applies ``position`` within ``wait_ms``."""
    deadline = time.monotonic() + wait_ms / 1000
    targets: Targets | None = None
    checked = False
    pause = _FIRST_PAUSE_S
    begun = time.monotonic()
    while True:
        patience = max(deadline - time.monotonic(), _MIN_PATIENCE_S)
        targets, done = await run_in_threadpool(reader.advance, position, targets, begun, patience)
        if done:
            return True
        if targets is None and not checked:
            await run_in_threadpool(reader.check, position)
            checked = True
        now = time.monotonic()
        if now >= deadline:
            return False
        await asyncio.sleep(min(pause, deadline - now))
        pause = min(pause * 2, _MAX_PAUSE_S)
        begun = time.monotonic()
