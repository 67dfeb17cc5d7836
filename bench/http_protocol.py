"""CPU time per request of the HTTP protocol alone, in this process, with no network: uvicorn's
stock httptools protocol against Clew's (``clew.http_limits``), both answering a trivial app.

Over-the-network figures (``bench/http_limits.py``) move with whatever else the machine
runs; this one counts only the CPU this process spends, so it shows what the limits add to
each request. Rounds alternate which protocol goes first; medians are compared.

    .venv/bin/python bench/http_protocol.py [--rounds 7] [--connections 64] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from clew.config import HttpSettings
from clew.http_limits import protocol_class

# What the Go load generator sends for one single-event request, with a tiny body.
REQUEST = (
    b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:8088\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 2\r\nAuthorization: Basic QkVOQ0hLRVk6\r\n"
    b"Content-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n{}"
)
Message = MutableMapping[str, Any]


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Any]
) -> None:
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    """Takes every write and never closes: only the protocol's own work is measured."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        addresses = {"sockname": ("127.0.0.1", 8088), "peername": ("127.0.0.1", 50000)}
        return addresses.get(name, default)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def cpu_us_per_request(protocol: type[asyncio.Protocol], connections: int, requests: int) -> float:
    """Process CPU time per request over ``connections`` times ``requests`` kept-alive requests."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocols: list[Any] = []
    for _ in range(connections):
        p: Any = protocol(config=config, server_state=state, app_state={}, _loop=loop)  # type: ignore[call-arg]
        p.connection_made(_Transport())
        protocols.append(p)

    async def drive() -> None:
        for _ in range(requests):
            for p in protocols:
                p.data_received(REQUEST)
            while state.tasks:
                await asyncio.gather(*list(state.tasks))

    loop.run_until_complete(drive())  # warm-up
    started = time.process_time()
    loop.run_until_complete(drive())
    elapsed = time.process_time() - started
    for p in protocols:
        p.connection_lost(None)
    loop.close()
    return elapsed / (connections * requests) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300, help="per connection and round")
    args = parser.parse_args()
    pair: list[tuple[str, type[asyncio.Protocol]]] = [
        ("stock", HttpToolsProtocol),
        ("limits", protocol_class(HttpSettings())),
    ]
    runs: dict[str, list[float]] = {"stock": [], "limits": []}
    for i in range(args.rounds):
        for name, protocol in pair if i % 2 == 0 else pair[::-1]:
            runs[name].append(cpu_us_per_request(protocol, args.connections, args.requests))
    stock, limits = statistics.median(runs["stock"]), statistics.median(runs["limits"])
    print(
        f"stock {stock:.2f} µs/request, with the limits {limits:.2f} µs/request: "
        f"{limits - stock:+.2f} µs per request"
    )


if __name__ == "__main__":
    main()
