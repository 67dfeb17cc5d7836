"""The Tracking API: a raw ASGI app that checks a request, appends it to the ``raw`` topic as
received, and answers 200 only once that append is durable.

Per-event work (splitting a batch, normalising, deduplicating) happens in the validate stage,
so the collector's cost per request is one JSON scan and one (group-committed) log append.
Error responses are listed in docs/tracking-api.md.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from clew._errors import ServiceUnavailableError
from clew.collector._request import (
    DEAD_LETTER_PAYLOAD,
    Refusal,
    Seen,
    basic_auth_user,
    beacon_key,
    content_encoding,
    gunzip,
    read_body,
)
from clew.collector._request import Receive as RequestReceive
from clew.collector.positions import EXPOSE_HEADERS, Positions
from clew.config import Limits
from clew.events import PATH_TYPES
from clew.log.base import Log, LogError, Message, Position
from clew.nesting import MAX_DEPTH, too_deep
from clew.raw_records import raw_message
from clew.sources import Catalog, Source
from clew.topics import DLQ_TOPIC, RAW_TOPIC

if TYPE_CHECKING:
    from clew.privacy.suppression import Suppression

Scope = MutableMapping[str, Any]
Receive = RequestReceive
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


_SUCCESS = b'{"success":true}'
#: Where RudderStack's JavaScript SDK posts batches with ``navigator.sendBeacon`` (its
#: ``useBeacon`` option). A beacon carries no header, so the write key is in the query string.
BEACON_PATH = "/beacon/v1/batch"
_ALLOWED_HEADERS = b"Content-Type, Authorization, Content-Encoding, Anonymousid"


class _Batch(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None
    writeKey: str | None = None


class _Single(msgspec.Struct):
    writeKey: str | None = None


_batch_decoder = msgspec.json.Decoder(_Batch)
_single_decoder = msgspec.json.Decoder(_Single)


# Refusals kept in the dead-letter queue when the source is known, with their DLQ reason.
_DEAD_LETTERED = {
    "invalid_json": "invalid_json",
    "event_too_large": "size_violation",
    "request_too_large": "size_violation",
    "batch_too_large": "size_violation",
}


class Collector:
    """ASGI app for ``/v1/{track,identify,page,screen,group,alias,batch,import}``, the
    analytics.js short paths and RudderStack's beacon path (:data:`BEACON_PATH`).
    ``counters`` counts requests, events and refusals by code.

    With ``suppression``, events of a suppressed person are answered like any other but not
    stored (``events_suppressed`` counts them; ``events_accepted`` counts stored events)."""

    def __init__(
        self,
        log: Log,
        catalog: Catalog,
        limits: Limits,
        suppression: Suppression | None = None,
    ) -> None:
        self._log = log
        self._catalog = catalog
        self._limits = limits
        self._suppression = suppression
        self._pending = 0
        self.counters: Counter[str] = Counter()
        self.accepting = True
        self.positions = Positions()
        # Requests of one event-loop turn are appended together: one log write and one
        # wake-up of the loop for all of them, instead of one each.
        self._queued: list[tuple[Message, asyncio.Future[Position]]] = []

    @staticmethod
    def handles(path: str) -> bool:
        if path.startswith("/v1/"):
            return path[4:].rstrip("/") in PATH_TYPES
        return path.rstrip("/") == BEACON_PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        try:
            if scope["method"] == "OPTIONS":
                await self._preflight(headers, send)
                return
            if scope["method"] != "POST":
                raise Refusal(405, "method_not_allowed", "send events with POST", allow=True)
            if scope["path"].startswith("/v1/"):
                path_type, query_key = PATH_TYPES[scope["path"][4:].rstrip("/")], None
            else:
                path_type, query_key = "batch", beacon_key(scope["query_string"])
            seen = Seen()
            n_events = await self._handle(path_type, headers, receive, seen, query_key)
            self.counters["requests_accepted"] += 1
            self.counters["events_accepted"] += n_events
            await _respond(send, 200, _SUCCESS, origin, extra=self.positions.headers(seen.position))
        except Refusal as r:
            self.counters[f"refused_{r.code}"] += 1
            if r.code in _DEAD_LETTERED and seen.source_id is not None:
                self._dead_letter(r, seen)
            body = msgspec.json.encode({"code": r.code, "message": r.message})
            await _respond(send, r.status, body, origin, r.retry_after, r.allow)

    async def _preflight(self, headers: dict[bytes, bytes], send: Send) -> None:
        requested = headers.get(b"access-control-request-headers", _ALLOWED_HEADERS)
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", headers.get(b"origin", b"*")),
                    (b"access-control-allow-methods", b"POST, OPTIONS"),
                    (b"access-control-allow-headers", requested),
                    (b"access-control-allow-credentials", b"true"),
                    (b"access-control-max-age", b"86400"),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _dead_letter(self, refusal: Refusal, seen: Seen) -> None:
        """Keep a refused request of a known source in the dead-letter queue (typed
        ``invalid_json`` or ``size_violation``, payload cut to 8 KB) so the team can see what
        their SDK sent. Best effort: the client was already told with a 400."""
        assert seen.source_id is not None
        record = {
            "reason": _DEAD_LETTERED[refusal.code],
            "message": f"refused with {refusal.status} {refusal.code}: {refusal.message}",
            "payload": seen.body[:DEAD_LETTER_PAYLOAD].decode("utf-8", errors="replace"),
            "source_id": seen.source_id,
            "received_at": datetime.now(UTC).isoformat(),
            "raw_partition": -1,
            "raw_offset": -1,
            "index": -1,
            "dlq_id": f"collector:{uuid.uuid4().hex}",
        }
        self._log.append(
            DLQ_TOPIC, [Message(value=msgspec.json.encode(record), key=seen.source_id.encode())]
        )

    async def _handle(
        self,
        path_type: str,
        headers: dict[bytes, bytes],
        receive: Receive,
        seen: Seen,
        query_key: str | None = None,
    ) -> int:
        """Check and append one request; the number of events stored (0 for an empty batch
        or one whose events are all of suppressed people). Refusals are raised, in the
        order: media type, encoding, header write key (for a beacon, the query's), size,
        text, JSON, body write key, batch shape and sizes."""
        cap = self._limits.max_request_bytes
        encoding = content_encoding(headers)
        header_key = basic_auth_user(headers.get(b"authorization")) or query_key
        source = None if header_key is None else self._source_for(header_key, seen)
        body = await read_body(receive, cap, seen)
        if encoding == b"gzip":
            body = gunzip(body, cap)
        seen.body = body
        parsed = _parse(body, path_type)
        if source is None:
            if not parsed.writeKey:
                raise Refusal(
                    401,
                    "missing_write_key",
                    "send the write key as HTTP Basic user name or as writeKey in the body",
                )
            source = self._source_for(parsed.writeKey, seen)
        n_events = _count_events(parsed, body, self._limits)
        if n_events == 0:
            return 0
        suppression = self._suppression
        if suppression is not None and _reachable(lambda: suppression.active):
            kept, suppressed = _without_suppressed(suppression, body, parsed, path_type)
            if suppressed:
                self.counters["events_suppressed"] += suppressed
                n_events -= suppressed
                if kept is None:
                    return 0
                body = kept
        seen.position = self.positions.stored(await self._append(body, source.id, path_type))
        return n_events

    def _source_for(self, write_key: str, seen: Seen) -> Source:
        """The source of ``write_key``; 401 when it is no source's key."""
        source = _reachable(lambda: self._catalog.source_for_key(write_key))
        if source is None:
            raise Refusal(401, "invalid_write_key", "the write key is not a source's key")
        seen.source_id = source.id
        return source

    async def _append(self, body: bytes, source_id: str, path_type: str) -> Position:
        if not self.accepting:
            raise Refusal(503, "unavailable", "the server is shutting down", retry_after=5)
        if self._pending >= self._limits.max_pending_appends:
            raise Refusal(
                503, "overloaded", "too many requests are waiting to be stored", retry_after=1
            )
        message = raw_message(body, source_id, path_type, time.time_ns() // 1000, uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Position] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush, loop)
        self._queued.append((message, done))
        self._pending += 1
        try:
            return await done
        except LogError as e:
            raise Refusal(503, "unavailable", f"the log cannot be written: {e}", 5) from None
        finally:
            self._pending -= 1

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        queued, self._queued = self._queued, []
        try:
            written = self._log.append(RAW_TOPIC, [m for m, _ in queued])
        except Exception as exc:
            # An append that raises instead of failing its future: without this, the error
            # would end this loop callback and the requests waiting here would never answer.
            written = Future()
            written.set_exception(exc)

        def settle(result: Future[Any]) -> None:
            error = result.exception()
            stored = result.result() if error is None else []
            if error is None and len(stored) != len(queued):
                error = LogError(f"the log stored {len(queued)} records at {len(stored)} places")
            for i, (_, done) in enumerate(queued):
                if done.done():
                    continue
                if error is None:
                    done.set_result(stored[i])
                else:
                    done.set_exception(
                        error if isinstance(error, LogError) else LogError(str(error))
                    )

        written.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))


_T = TypeVar("_T")


def _reachable(call: Callable[[], _T]) -> _T:
    """``call()``; a service it needs being unreachable (the suppression list's or the source
    catalog's Redis) is a 503 with ``Retry-After``, as a log that cannot be written is."""
    try:
        return call()
    except ServiceUnavailableError as e:
        raise Refusal(503, "unavailable", str(e), retry_after=5) from None


def _parse(body: bytes, path_type: str) -> _Batch | _Single:
    """The envelope of ``body`` (a batch's events left raw), or the 400 (401 for a
    ``writeKey`` that is not a string)."""
    _check_text(body)
    decoder = _batch_decoder if path_type == "batch" else _single_decoder
    try:
        parsed: _Batch | _Single = decoder.decode(body)
    except msgspec.ValidationError as e:
        raise _decode_refusal(e) from None
    except msgspec.DecodeError as e:
        raise _unreadable(body, e) from None
    return parsed


def _count_events(parsed: _Batch | _Single, body: bytes, limits: Limits) -> int:
    """How many events the request holds, after refusing a batch without a list, one of
    too many events, or an event over ``max_event_bytes``."""
    if not isinstance(parsed, _Batch):
        if len(body) > limits.max_event_bytes:
            raise Refusal(
                400,
                "event_too_large",
                f"the event is {len(body)} bytes; the limit is {limits.max_event_bytes}",
            )
        return 1
    if parsed.batch is None:
        raise Refusal(400, "invalid_batch", "a batch request needs a list in `batch`")
    n_events = len(parsed.batch)
    if n_events > limits.max_batch_events:
        raise Refusal(
            400,
            "batch_too_large",
            f"a batch may hold at most {limits.max_batch_events} events, not {n_events}",
        )
    for i, raw in enumerate(parsed.batch):
        if len(raw) > limits.max_event_bytes:
            raise Refusal(
                400,
                "event_too_large",
                f"event {i} of the batch is {len(raw)} bytes; the limit is "
                f"{limits.max_event_bytes}",
            )
    return n_events


def _without_suppressed(
    suppression: Suppression, body: bytes, parsed: _Batch | _Single, path_type: str
) -> tuple[bytes | None, int]:
    """The body to store without the suppressed person's events (``None``: nothing left),
    and how many were left out. A batch is re-encoded only when some of it is dropped."""
    if not isinstance(parsed, _Batch):
        return (None, 1) if suppression.is_suppressed_raw(body, path_type) else (body, 0)
    assert parsed.batch is not None
    context = suppression.batch_context(body)
    keep = [raw for raw in parsed.batch if not suppression.is_suppressed_raw(raw, "batch", context)]
    dropped = len(parsed.batch) - len(keep)
    if not dropped:
        return body, 0
    if not keep:
        return None, dropped
    envelope = msgspec.json.decode(body)
    envelope["batch"] = keep
    return msgspec.json.encode(envelope), dropped


def _check_text(body: bytes) -> None:
    """Refuse a body that is not UTF-8 text or nests deeper than ``MAX_DEPTH``, before it is
    parsed (the parser would fail on either with no JSON answer). ASCII, the common case,
    costs one scan."""
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as e:
            raise Refusal(
                400,
                "invalid_json",
                f"the body is not valid UTF-8: byte 0x{body[e.start]:02x} at offset {e.start}",
            ) from None
    if too_deep(body):
        raise Refusal(
            400, "invalid_json", f"the body nests objects and arrays deeper than {MAX_DEPTH} levels"
        )


# A \u escape of a high surrogate not followed by a low one, or of a low one not preceded by
# a high one (escaped backslashes are removed first, so ``\\ud800`` is not one).
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _unreadable(body: bytes, e: msgspec.DecodeError) -> Refusal:
    lone = _LONE_SURROGATE.search(body.replace(b"\\\\", b"")) if b"\\u" in body else None
    if lone is not None:
        return Refusal(
            400,
            "invalid_json",
            f"the body escapes a lone surrogate ({lone.group().decode()}), which is not text",
        )
    return Refusal(400, "invalid_json", f"the body is not valid JSON: {e}")


def _decode_refusal(e: msgspec.ValidationError) -> Refusal:
    text = str(e)
    if "$.batch" in text:
        return Refusal(400, "invalid_batch", f"`batch` must be a list of events: {text}")
    if "$.writeKey" in text:
        return Refusal(401, "invalid_write_key", "writeKey must be a string")
    return Refusal(400, "invalid_json", f"the body must be a JSON object: {text}")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    origin: bytes | None,
    retry_after: int | None = None,
    allow: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if origin is not None:
        headers.append((b"access-control-allow-origin", origin))
        headers.append((b"access-control-allow-credentials", b"true"))
        headers.append((b"vary", b"Origin"))
        headers.append(EXPOSE_HEADERS)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if allow:
        headers.append((b"allow", b"POST, OPTIONS"))
    headers.extend(extra or ())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
