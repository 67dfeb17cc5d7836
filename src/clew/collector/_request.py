"""What the collector reads of an HTTP request before it looks at the events: the media type
and encoding, the write key (HTTP Basic, or a beacon's query string) and the body, capped in
size and inflated; and the refusal it raises when one of them will not do."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from clew.raw_records import RawPosition

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# curl sends form-urlencoded unless told otherwise; its body is still read as JSON.
JSON_TYPES = (b"application/json", b"text/plain", b"", b"application/x-www-form-urlencoded")
#: How much of a refused request's body is kept in the dead-letter queue.
DEAD_LETTER_PAYLOAD = 8 * 1024


class Seen:
    """What the collector learned of a request: its source and body, kept in the dead-letter
    queue if it is refused; where the log stored it, named in the answer if not."""

    __slots__ = ("body", "position", "source_id")

    def __init__(self) -> None:
        self.source_id: str | None = None
        self.body = b""
        self.position: RawPosition | None = None


class Refusal(Exception):
    """The request is refused: the status and JSON error of the answer (docs/tracking-api.md),
    with ``Retry-After`` or ``Allow`` when given."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int | None = None,
        allow: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.allow = allow


def content_encoding(headers: dict[bytes, bytes]) -> bytes:
    """The request's Content-Encoding, after refusing a media type or an encoding the
    collector does not read (415)."""
    ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise Refusal(
            415,
            "unsupported_media_type",
            f"send application/json or text/plain, not {ctype.decode(errors='replace')}",
        )
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"gzip", b"identity", b""):
        raise Refusal(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding.decode(errors='replace')} is not supported; use gzip",
        )
    return encoding


def beacon_key(query_string: bytes) -> str | None:
    """The ``writeKey`` of a beacon's query string."""
    keys = parse_qs(query_string.decode("latin-1")).get("writeKey")
    return keys[0] if keys and keys[0] else None


def basic_auth_user(value: bytes | None) -> str | None:
    if not value or value[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Refusal(401, "invalid_write_key", "the Basic auth header is not valid") from None
    user = decoded.split(":", 1)[0]
    return user or None


async def read_body(receive: Receive, cap: int, seen: Seen) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "invalid_json", "the client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            seen.body = b"".join(chunks)[:DEAD_LETTER_PAYLOAD]
            raise Refusal(400, "request_too_large", f"the request body is larger than {cap} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def gunzip(data: bytes, cap: int) -> bytes:
    """Inflate every gzip member of ``data`` (RFC 1952 lets a file hold several, one after
    the other; zero bytes padding the end are ignored, as gzip does). ``cap`` bounds the
    inflated size of all members together: inflating stops as soon as it is passed, so a
    bomb spread over many members is refused just as one in a single member."""
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(rest, cap - size + 1)
        except zlib.error as e:
            raise Refusal(400, "invalid_gzip", f"the body is not valid gzip: {e}") from None
        size += len(chunk)
        if size > cap or inflater.unconsumed_tail:
            raise Refusal(
                400,
                "request_too_large",
                f"the request body inflates to more than {cap} bytes",
            )
        if not inflater.eof:
            raise Refusal(400, "invalid_gzip", "the gzip body is truncated")
        out.append(chunk)
        rest = inflater.unused_data
        if not rest.strip(b"\0"):
            return out[0] if len(out) == 1 else b"".join(out)
