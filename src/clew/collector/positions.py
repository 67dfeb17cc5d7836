"""The position a Tracking API answer carries: where the log stored the request, in the
``Clew-Position`` header (:data:`clew.raw_records.POSITION_HEADER`), so that a client can ask
the Profile API for a profile that includes its write (docs/profile-api.md, "Read your
writes"). The body is unchanged, so official SDKs see the answer they expect.
"""

from __future__ import annotations

from clew.log.base import Position
from clew.raw_records import POSITION_HEADER, RawPosition

_NAME = POSITION_HEADER.lower().encode()
# Without it a browser's fetch() cannot read the header of a cross-origin answer.
EXPOSE_HEADERS = (b"access-control-expose-headers", POSITION_HEADER.encode())


class Positions:
    """The positions of one collector's answers. Thread-compatible: used from its event
    loop only."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: RawPosition | None = None

    def stored(self, position: Position) -> RawPosition:
        """The position of a record the log just stored; remembered for answers that store
        nothing."""
        raw = RawPosition(position.partition, position.offset)
        self._last = raw
        return raw

    def headers(self, own: RawPosition | None) -> list[tuple[bytes, bytes]]:
        """The answer's position header: the request's own position, or, for a request that
        stored nothing (an empty batch, or only a suppressed person's events), the last one
        this collector stored. Waiting for that is harmless, and the answer then looks like
        any other, so it does not tell that a person is suppressed. Nothing before the first
        stored request."""
        position = own if own is not None else self._last
        return [] if position is None else [(_NAME, str(position).encode())]
