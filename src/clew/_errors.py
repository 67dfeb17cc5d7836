"""How an error is told to an operator: in a dead letter, in /health, in a report."""

from __future__ import annotations

_ERROR_CHARS = 1000


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, cut to a length a dead letter and /health can carry.

    >>> describe(ValueError("bad date"))
    'ValueError: bad date'
    """
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


class ServiceUnavailableError(RuntimeError):
    """A service Clew depends on (Redis, Kafka, object storage) cannot be reached now. Nothing
    is wrong with the data in hand: a stage retries it with backoff (never sets a record
    aside for it), and an HTTP handler answers 503 with ``Retry-After``."""
