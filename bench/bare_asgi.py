"""The ceiling: a raw ASGI callable that reads the whole body, parses it with orjson and
answers ``200 {"success":true}`` - what any Python collector must do at the least.

Served as ``clew serve`` is: uvicorn, one process, uvloop, httptools, no access log; without
Clew's HTTP limits unless ``--http-limits`` (what ``bench/http_limits.py`` compares).

    .venv/bin/python bench/bare_asgi.py --port 8099
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

from clew.config import HttpSettings
from clew.http_limits import uvicorn_config

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_OK = b'{"success":true}'
_BAD = b'{"code":"invalid_json","message":"the body is not valid JSON"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        # Readiness probe, same path as Clew's.
        await _respond(send, 200, b'{"status":"ok"}')
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    try:
        orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        await _respond(send, 400, _BAD)
        return
    await _respond(send, 200, _OK)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--http-limits",
        action="store_true",
        help="serve with Clew's HTTP limits (clew.http_limits, default settings)",
    )
    args = parser.parse_args()
    if args.http_limits:
        uvicorn.Server(uvicorn_config(app, args.host, args.port, HttpSettings())).run()
        return
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
