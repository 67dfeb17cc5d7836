"""The live debugger: accepted events and dead letters as they happen, streamed to the page
as server-sent events (``GET /console/live/stream``), filtered by kind, source, type, event
name and identifier, each with its JSON and what validation said.

A stream starts at the end of the ``events`` and ``dlq`` topics (or where the browser's
``Last-Event-ID`` says it stopped) and polls the log every :data:`POLL_S` in a worker thread.
Each connection's work is bounded: records read per poll, rows sent per poll (a partition
further behind than :data:`MAX_BEHIND` jumps to its end, and the page is told how many it
skipped), a lifetime of :data:`MAX_LIFETIME_S` after which the browser reconnects where it
stopped, and at most :data:`MAX_STREAMS` streams at once. A stream ends when the browser goes
away, when the server begins to stop (``ConsoleContext.stopping``), or at its lifetime.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from clew.console import _live_rows
from clew.console._kit import BASE, ConsoleKit
from clew.console._live_rows import TOPICS, Filter, Position
from clew.console._session import Session
from clew.log.base import Log, LogError
from clew.sources import ADMIN
from clew.stages._plans import PlanCache

LIVE = f"{BASE}/live"
POLL_S = 0.2
READ_PER_PARTITION = 200
"""Records read from one partition per poll."""
MAX_ROWS_PER_POLL = 200
"""Rows sent per poll; the rest of what was read is dropped, and counted as skipped."""
MAX_BEHIND = 5_000
"""A partition further behind its end than this jumps to the end (counted as skipped)."""
MAX_LIFETIME_S = 300.0
MAX_STREAMS = 8
HEARTBEAT_S = 10.0
_RETRY_MS = 1000


@dataclass(slots=True)
class _Poll:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def _positions(log: Log) -> tuple[Position, Position]:
    start = {t: log.start_offsets(t) for t in TOPICS}
    end = {t: log.end_offsets(t) for t in TOPICS}
    return start, end


def _poll(
    log: Log, position: Position, wanted: Filter, sources: dict[str, str], plans: PlanCache
) -> _Poll:
    """What arrived since ``position`` (advanced in place) that ``wanted`` matches."""
    out = _Poll()
    for topic in TOPICS:
        parts = position[topic]
        if not wanted.wants(topic):
            parts.update(log.end_offsets(topic))
            continue
        for partition, end in log.end_offsets(topic).items():
            offset = parts.get(partition, end)
            if end - offset > MAX_BEHIND:
                out.skipped += end - offset
                parts[partition] = end
                continue
            if offset >= end:
                continue
            records = log.read(topic, partition, offset, READ_PER_PARTITION)
            if records:
                parts[partition] = records[-1].offset + 1
            for rec in records:
                shown = _live_rows.row(rec, sources, plans.plan_for)
                if not wanted.matches(shown):
                    continue
                if len(out.rows) >= MAX_ROWS_PER_POLL:
                    out.skipped += 1
                    continue
                del shown["ids"]
                out.rows.append(shown)
    return out


def _message(event: str, data: Any, position: Position | None = None) -> bytes:
    lines = [f"event: {event}", f"data: {json.dumps(data, ensure_ascii=False)}"]
    if position is not None:
        lines.insert(0, f"id: {_live_rows.format_position(position)}")
    return ("\n".join(lines) + "\n\n").encode()


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    log = kit.ctx.log
    open_streams = [0]

    def sources() -> dict[str, str]:
        return {s.id: s.name for s in kit.ctx.catalog.sources()}

    async def page(request: Request, session: Session) -> Response:
        known = await run_in_threadpool(kit.ctx.catalog.sources)
        wanted = Filter.from_query(request.query_params)
        return kit.render(request, "live.html", session, sources=known, wanted=wanted)

    async def stream(request: Request, session: Session) -> Response:
        if open_streams[0] >= MAX_STREAMS:
            return PlainTextResponse(
                f"too many live streams are open (at most {MAX_STREAMS}); close another "
                "live page and try again",
                status_code=503,
                headers={"retry-after": "5"},
            )
        wanted = Filter.from_query(request.query_params)
        start, end = await run_in_threadpool(_positions, log)
        resume = request.headers.get("last-event-id", "")
        position = _live_rows.parse_position(resume, start, end) if resume else end
        names = await run_in_threadpool(sources)
        settings = kit.ctx.settings

        async def body() -> AsyncIterator[bytes]:
            open_streams[0] += 1
            plans: PlanCache | None = None
            try:
                plans = await run_in_threadpool(PlanCache, settings)
                ready = _message("ready", {"filter": wanted.kind}, position)
                yield f"retry: {_RETRY_MS}\n".encode() + ready
                born = last_sent = time.monotonic()
                while time.monotonic() - born < MAX_LIFETIME_S:
                    if kit.ctx.stopping.is_set() or await request.is_disconnected():
                        return
                    try:
                        got = await run_in_threadpool(_poll, log, position, wanted, names, plans)
                    except LogError:
                        return  # the log closed under us: the server is stopping
                    out = [_message("row", shown, position) for shown in got.rows]
                    if got.skipped:
                        out.append(_message("skipped", {"count": got.skipped}, position))
                    if out:
                        yield b"".join(out)
                        last_sent = time.monotonic()
                    elif time.monotonic() - last_sent > HEARTBEAT_S:
                        yield _message("ping", {}, position)
                        last_sent = time.monotonic()
                    await asyncio.sleep(POLL_S)
            finally:
                open_streams[0] -= 1
                if plans is not None:
                    plans.close()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-store",
                "x-content-type-options": "nosniff",
                "x-accel-buffering": "no",
            },
        )

    return [
        Route(LIVE, kit.page(ADMIN, page), methods=["GET"], name="console_live"),
        Route(
            LIVE + "/stream", kit.page(ADMIN, stream), methods=["GET"], name="console_live_stream"
        ),
    ]
