"""The ``raw`` topic's record format: one accepted HTTP request, its body as received, and
four headers. The collector writes it (:func:`raw_message`); the validate stage and the
privacy matcher read it back the same way (:func:`read_headers`, :func:`split_request`), so
that erasure finds a person's events exactly where validation found them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from clew.log.base import Message, Record

SOURCE = "source"
"""Header: the id of the source whose write key sent the request."""
RECEIVED_AT = "received_at"
"""Header: when the collector received the request, in microseconds since the epoch."""
PATH_TYPE = "type"
"""Header: the Tracking API path's event type (``batch`` for /v1/batch)."""
REQUEST_ID = "request_id"
"""Header: a random id of the request, which the ids Clew assigns to its events derive from."""

UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What :func:`split_request` and decoding one of its events raise for bytes that cannot be
read (``msgspec.ValidationError``, a subclass of DecodeError, for a batch without ``batch``)."""


def raw_message(
    body: bytes, source_id: str, path_type: str, received_us: int, request_id: str
) -> Message:
    """The ``raw`` record of one request."""
    return Message(
        value=body,
        headers=(
            (SOURCE, source_id.encode()),
            (RECEIVED_AT, str(received_us).encode()),
            (PATH_TYPE, path_type.encode()),
            (REQUEST_ID, request_id.encode()),
        ),
    )


@dataclass(frozen=True, slots=True)
class RawHeaders:
    """What a ``raw`` record's headers say; a missing or damaged header takes the value the
    record itself implies (its position, its log timestamp)."""

    source_id: str
    path_type: str
    request_id: str
    received_at: datetime


def _text(rec: Record, name: str) -> str | None:
    value = rec.header(name)
    return None if value is None else value.decode("utf-8", errors="replace")


def read_headers(rec: Record) -> RawHeaders:
    """The headers of the ``raw`` record ``rec``. Never raises."""
    try:
        received_us = int(rec.header(RECEIVED_AT) or rec.timestamp_ms * 1000)
    except ValueError:
        received_us = rec.timestamp_ms * 1000
    return RawHeaders(
        source_id=_text(rec, SOURCE) or "",
        path_type=_text(rec, PATH_TYPE) or "batch",
        request_id=_text(rec, REQUEST_ID) or f"{rec.partition}-{rec.offset}",
        received_at=datetime.fromtimestamp(received_us / 1e6, tz=UTC),
    )


class _BatchEnvelope(msgspec.Struct):
    batch: list[msgspec.Raw]
    context: Any = None
    integrations: Any = None
    sentAt: Any = None


_batch_decoder = msgspec.json.Decoder(_BatchEnvelope)


@dataclass(frozen=True, slots=True)
class Request:
    """A request's events, each still undecoded (so that one that cannot be read is
    dead-lettered alone, with its exact bytes), and the fields a batch gives them all."""

    events: list[msgspec.Raw]
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: str | None = None


def split_request(path_type: str, body: bytes) -> Request:
    """The events of a request to the path of ``path_type``: a batch's ``batch`` items, or
    the one event of any other path. Raises one of :data:`UNREADABLE` when a batch body
    cannot be read."""
    if path_type != "batch":
        return Request([msgspec.Raw(body)])
    envelope = _batch_decoder.decode(body)
    return Request(
        envelope.batch,
        envelope.context if isinstance(envelope.context, dict) else None,
        envelope.integrations if isinstance(envelope.integrations, dict) else None,
        envelope.sentAt if isinstance(envelope.sentAt, str) else None,
    )


POSITION_HEADER = "Clew-Position"
"""The HTTP header of a Tracking API answer that names where its request was stored."""
POSITION_PREFIX = "raw"
_MAX_POSITION_CHARS = 40


class InvalidPositionError(ValueError):
    """A position that is not of the form :meth:`RawPosition.__str__` writes."""


@dataclass(frozen=True, slots=True, order=True)
class RawPosition:
    """Where the collector stored a request: a ``raw`` partition and the record's offset.

    Its text, ``raw:<partition>:<offset>``, is what the Tracking API hands out and the Profile
    API's ``after`` takes back (docs/profile-api.md, "Read your writes"). Clients treat it as
    opaque; it stays the same across versions and backends, as the offsets do.

    >>> str(RawPosition(3, 12345))
    'raw:3:12345'
    >>> RawPosition.parse("raw:3:12345")
    RawPosition(partition=3, offset=12345)
    >>> RawPosition.parse("raw:3:-1")
    Traceback (most recent call last):
    ...
    clew.raw_records.InvalidPositionError: a position is the `Clew-Position` header of a \
Tracking API answer, e.g. raw:3:12345; got 'raw:3:-1'
    """

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{POSITION_PREFIX}:{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> RawPosition:
        """The position ``text`` names; :class:`InvalidPositionError` when it names none."""
        prefix, _, rest = text.partition(":")
        partition, _, offset = rest.partition(":")
        if (
            len(text) > _MAX_POSITION_CHARS
            or prefix != POSITION_PREFIX
            or not (partition.isascii() and partition.isdigit())
            or not (offset.isascii() and offset.isdigit())
        ):
            raise InvalidPositionError(
                "a position is the `Clew-Position` header of a Tracking API answer, e.g. "
                f"raw:3:12345; got {text[:_MAX_POSITION_CHARS]!r}"
            )
        return cls(int(partition), int(offset))
