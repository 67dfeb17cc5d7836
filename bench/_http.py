"""HTTP for bench/audiences.py: a minimal keep-alive client (light enough to share a small
machine with the server), an open-loop sender, and a watcher that polls the Profile API from
its own thread until a change shows."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from _serve import WRITE_KEY, BenchError

_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = _LENGTH.search(head)
        body = await self.reader.readexactly(int(length.group(1))) if length else b""
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


class Pool:
    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self._free: asyncio.Queue[Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self._free.put_nowait(await Connection.open(self.port))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        conn = await self._free.get()
        try:
            answer = await conn.request(data)
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
            self._free.put_nowait(await Connection.open(self.port))
            raise
        self._free.put_nowait(conn)
        return answer

    def close(self) -> None:
        while not self._free.empty():
            self._free.get_nowait().close()


def post_batch(events: list[dict[str, Any]]) -> bytes:
    body = msgspec.json.encode({"batch": events})
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get_profile(user: str, token: str) -> bytes:
    return (
        f"GET /v1/profiles/user_id:{user} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


@dataclass(slots=True)
class Probe:
    """One person to watch: ``shows`` tells from a profile whether the change is visible.
    Polling starts at ``start`` (perf_counter); ``seen`` is the first poll that showed it."""

    kind: str
    user: str
    shows: Callable[[dict[str, Any]], bool]
    start: float
    ref: float = 0.0  # what latency is measured from (perf_counter)
    seen: float | None = None
    polls: int = 0


class Watcher:
    """Polls the Profile API for submitted probes from its own thread and event loop, every
    ``every_s`` (or 5% of the time waited so far, if longer) per pending probe, until the
    change shows or ``timeout_s`` passes."""

    def __init__(self, port: int, token: str, every_s: float, timeout_s: float) -> None:
        self.port, self.token = port, token
        self.every_s, self.timeout_s = every_s, timeout_s
        self.probes: list[Probe] = []
        self.get_ms: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self._thread.join()

    def submit(self, probe: Probe) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, probe)

    def _run(self) -> None:
        import uvloop

        uvloop.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = Pool(self.port, 8)
        await self._pool.open()
        self._ready.set()
        while not self._closing or self._tasks:
            await asyncio.sleep(0.05)
        self._pool.close()

    def _spawn(self, probe: Probe) -> None:
        self.probes.append(probe)
        task = asyncio.get_running_loop().create_task(self._watch(probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, probe: Probe) -> None:
        request = get_profile(probe.user, self.token)
        await asyncio.sleep(max(0.0, probe.start - time.perf_counter()))
        while True:
            began = time.perf_counter()
            probe.polls += 1
            try:
                status, body = await self._pool.request(request)
            except (OSError, asyncio.IncompleteReadError):
                status, body = 0, b""
            now = time.perf_counter()
            self.get_ms.append((now - began) * 1000)
            if status == 200 and probe.shows(msgspec.json.decode(body)):
                probe.seen = now
                return
            if now - probe.start > self.timeout_s:
                return
            # Tight at first, then within 5% of the time waited, so that a backlog in the
            # server does not turn into a flood of reads that deepens it.
            every = max(self.every_s, (now - probe.start) * 0.05)
            await asyncio.sleep(max(0.0, began + every - time.perf_counter()))


@dataclass(slots=True)
class Sent:
    requests: int = 0
    events: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    errors: int = 0


async def background(
    pool: Pool,
    events: Callable[[], dict[str, Any]],
    rate: float,
    batch: int,
    seconds: float,
    sent: Sent,
) -> None:
    """Open loop: ``batch`` events from ``events()`` every ``batch / rate`` s for ``seconds``,
    whatever the response times."""
    interval = batch / rate
    tasks = []
    began = time.perf_counter()
    for i in range(round(seconds / interval)):
        await asyncio.sleep(max(0.0, began + i * interval - time.perf_counter()))
        request = post_batch([events() for _ in range(batch)])
        tasks.append(asyncio.create_task(post(pool, request, batch, sent)))
    await asyncio.gather(*tasks)


async def post(pool: Pool, request: bytes, events: int, sent: Sent) -> float | None:
    """Sends one request; its 200's time (perf_counter), or None."""
    try:
        status, _ = await pool.request(request)
    except (OSError, asyncio.IncompleteReadError):
        sent.errors += 1
        return None
    if status != 200:
        sent.refused[status] += 1
        return None
    sent.requests += 1
    sent.events += events
    return time.perf_counter()


async def send_once(port: int, events: list[dict[str, Any]]) -> None:
    conn = await Connection.open(port)
    status, body = await conn.request(post_batch(events))
    conn.close()
    if status != 200:
        raise BenchError(f"the collector answered {status}: {body[:200]!r}")


def wait_until_shown(port: int, token: str, user: str, audience: str, timeout: float) -> None:
    """Wait until the profile of ``user`` is in ``audience``: the definitions are live."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v1/profiles/user_id:{user}"
    while time.monotonic() < deadline:
        resp = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        if resp.status_code == 200 and audience in resp.json().get("audiences", []):
            return
        time.sleep(0.1)
    raise BenchError(f"{user} did not enter {audience!r} within {timeout:.0f} s")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
