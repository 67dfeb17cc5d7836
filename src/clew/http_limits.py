"""The HTTP server every Clew role runs (`clew serve`, `clew collector`): uvicorn with
httptools on uvloop, bounded so that no client can hold it hostage (docs/security.md,
"HTTP limits"), and stopped quietly by SIGINT or SIGTERM (:class:`StoppedBySignal`).

uvicorn closes a kept-alive connection left idle after a response (``timeout_keep_alive``)
and answers 503 on connections beyond a number (``limit_concurrency``); it does not bound the
request head. A connection that never finishes its headers is held forever, and headers of
any size and number are parsed. :class:`LimitedHttpProtocol` adds those bounds:

- the request head (request line and headers) must be complete within ``header_timeout_s``
  of the connection opening or of the first byte that follows the previous response;
  otherwise the connection is closed (with a 408 when part of a head had arrived);
- a head of more than ``max_header_bytes`` bytes or ``max_headers`` headers is answered 431
  and the connection closed, as soon as the bytes received show it, before the rest is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from asyncio import TimerHandle
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ClassVar

import httptools
import msgspec
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from clew.config import HttpSettings

# The ``code`` of the JSON error bodies, as every other Clew refusal has one.
HEADERS_TOO_LARGE = "headers_too_large"
HEAD_TIMEOUT = "request_timeout"

# Request line and header lines end in CRLF; a header line also holds ": ".
_HEADER_OVERHEAD = 4


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the head passed a limit (the message says which)."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head bounds above. ``limits`` is set on the
    subclass :func:`protocol_class` makes for one server; use that, not this class.

    Each connection has one timer for its whole life, not one per request: it fires every
    ``header_timeout_s`` or sooner, and closes the connection only if a head has been awaited
    that long (``_head_since``); otherwise it sets itself again. A request then costs two
    attribute writes instead of scheduling and cancelling a timer."""

    limits: ClassVar[HttpSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: TimerHandle | None = None
        # The loop time from which a head is awaited; None while none is (the app is
        # answering, or the connection idles after a response: uvicorn's keep-alive timer).
        self._head_since: float | None = None
        # True from a request's first byte until its headers are complete.
        self._reading_head = False
        # Exact bytes of the head's URL and complete headers, and how many headers.
        self._head_bytes = 0
        self._header_count = 0
        # Bytes received in reads that ended with the head still incomplete: at least the
        # size of the part of the head the parser holds but has not handed over yet.
        self._received = 0
        self._max_head_bytes = self.limits.max_header_bytes
        self._max_headers = self.limits.max_headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # What uvicorn's data_received does, but with a 431 for a head past its limits.
        self._unset_keepalive_if_required()
        if self._head_since is None and (self.cycle is None or self.cycle.response_complete):
            self._head_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, HEADERS_TOO_LARGE, str(exc.__context__))
                return
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._reading_head:
            self._received += len(data)
            if self._received > self._max_head_bytes:
                self._refuse(431, HEADERS_TOO_LARGE, self._too_large_message())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = self._header_count = self._received = 0
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head_bytes:
            raise _HeadTooLarge(self._too_large_message())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + _HEADER_OVERHEAD
        self._header_count += 1
        if self._header_count > self._max_headers:
            raise _HeadTooLarge(f"a request may carry at most {self._max_headers} headers")
        if self._head_bytes > self._max_head_bytes:
            raise _HeadTooLarge(self._too_large_message())
        # uvicorn's on_header, inline: this runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_since = None
        super().on_headers_complete()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _too_large_message(self) -> str:
        return f"the request head is larger than {self._max_head_bytes} bytes"

    def _head_check(self) -> None:
        timeout = self.limits.header_timeout_s
        since = self._head_since
        waited = 0.0 if since is None else self.loop.time() - since
        if waited < timeout:
            self._head_timer = self.loop.call_later(timeout - waited, self._head_check)
            return
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._reading_head and self._between_requests():
            message = f"the request head did not arrive within {timeout:g} s"
            self._refuse(408, HEAD_TIMEOUT, message)
        else:
            # Nothing of a request came: close without an answer nobody asked for.
            self.transport.close()

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error and close, unless a response is under way on
        this connection (then only close: bytes of two answers must not interleave)."""
        self._head_since = None
        self._reading_head = False
        if self._between_requests():
            body = msgspec.json.encode({"code": code, "message": message})
            self.transport.write(
                STATUS_LINE[status]
                + b"content-type: application/json\r\n"
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
        self.transport.close()


def protocol_class(limits: HttpSettings) -> type[LimitedHttpProtocol]:
    """The protocol class of one server, bound to its ``limits``."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


def uvicorn_config(app: Any, host: str, port: int, limits: HttpSettings) -> uvicorn.Config:
    """The uvicorn configuration of every Clew server: ``app`` on ``host:port`` within
    ``limits``. ``max_connections`` is uvicorn's ``limit_concurrency`` plus one, because
    uvicorn counts the connection asking among the open ones."""
    http: type[asyncio.Protocol] | str = protocol_class(limits) if limits.enforce else "httptools"
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=http,
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_level="warning",
        # Responses still open when a signal arrives get this long: with the stages' own
        # stop, a role's SIGTERM then ends within 10 s.
        timeout_graceful_shutdown=3,
        timeout_keep_alive=limits.keep_alive_timeout_s,
        limit_concurrency=limits.max_connections + 1 if limits.enforce else None,
    )


class StoppedBySignal(uvicorn.Server):
    """A uvicorn server that treats SIGINT and SIGTERM as a request to stop: it shuts down
    gracefully and returns, instead of raising the signal again once it has stopped (which
    ends the process with KeyboardInterrupt or 128 + the signal's number). Every role that
    runs in the foreground (`clew serve`, `clew collector`) uses it, so each exits 0 once
    it has stopped cleanly. ``on_stop`` is called as the signal arrives, before the server
    waits for the responses still open."""

    on_stop: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.on_stop is not None:
            self.on_stop()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def exit_on_signal(signum: int, frame: object) -> None:
    """A SIGTERM handler for before the server runs and after it stopped: a SystemExit, so
    ``finally`` blocks still close what the role opened instead of the process dying."""
    raise SystemExit(128 + signum)


def serve_until_signal(
    config: uvicorn.Config,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve ``config`` on a uvloop event loop (:class:`StoppedBySignal`) until SIGINT or
    SIGTERM, then return once the server has stopped. ``on_ready`` is called once, on the
    event loop, as soon as the server listens (never if it fails to start); ``on_stop`` as
    a signal arrives, before open responses are waited for."""
    server = StoppedBySignal(config)
    server.on_stop = on_stop

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready()
        await task

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
