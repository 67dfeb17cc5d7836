"""One webhook request: the body, its signature, and what the answer means for the batch.

A request is ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"batch": [...], "sentAt": "<ISO-8601 UTC>"}``; headers ``X-Clew-Delivery`` (the batch's
delivery id, the same on every attempt) and, when the destination has a secret,
``X-Clew-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``. ``sentAt`` changes
per attempt, so each attempt is signed anew; a receiver can refuse stale ``sentAt`` values to
stop replays of a captured request.

Answers: 2xx delivers the batch. Network errors, timeouts, 408, 429 and 5xx are retried
(honouring ``Retry-After``). Any other answer (3xx, since redirects are not followed, and
4xx) is final: the batch goes to the dead-letter store at once, as is a URL whose host is or
resolves to an address destinations may not reach (clew.destinations.addresses).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from clew.destinations.addresses import DestinationAddressError, pin
from clew.destinations.outbox import join_array
from clew.events import format_time

if TYPE_CHECKING:
    # Imported where a request is made (see Sender._run in clew.destinations.sender).
    import httpx

SIGNATURE_HEADER = "X-Clew-Signature"
DELIVERY_HEADER = "X-Clew-Delivery"
_RETRY_STATUS = frozenset({408, 429})
_USER_AGENT = "clew-destinations/1"


def build_body(payloads: Sequence[bytes], sent_at: datetime) -> bytes:
    """``{"batch": [...], "sentAt": ...}`` around records that are already JSON."""
    return (
        b'{"batch":' + join_array(payloads) + b',"sentAt":"' + format_time(sent_at).encode() + b'"}'
    )


def sign(key: bytes, body: bytes) -> str:
    """The ``X-Clew-Signature`` value of ``body``. Receivers recompute it over the raw bytes
    they received (not re-serialised JSON) and compare with ``hmac.compare_digest``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(slots=True, frozen=True)
class Answer:
    """What one attempt came to. ``outcome``: ``delivered``, ``retry`` or ``refused``."""

    outcome: str
    status: int | None
    error: str | None = None
    retry_after_s: float | None = None


def post(
    client: httpx.Client,
    url: str,
    body: bytes,
    delivery_id: str,
    key: bytes | None,
    timeout_s: float,
    block_private_networks: bool = False,
) -> Answer:
    """Send one attempt and classify the answer (never raises for network trouble). The URL's
    host is resolved and checked first (:func:`clew.destinations.addresses.pin`); a refused
    address is a final ``refused`` answer, a name that does not resolve a ``retry``."""
    import httpx

    try:
        target = pin(url, block_private_networks)
    except DestinationAddressError as exc:
        return Answer("refused", None, str(exc))
    except OSError as exc:
        return Answer("retry", None, f"cannot resolve the URL's host: {exc}")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        DELIVERY_HEADER: delivery_id,
    }
    if key is not None:
        headers[SIGNATURE_HEADER] = sign(key, body)
    try:
        response = target.post(client, body, headers, timeout_s)
    except httpx.TimeoutException:
        return Answer("retry", None, f"no answer within {timeout_s:g} s")
    except httpx.TransportError as exc:
        return Answer("retry", None, f"network error: {exc!r}")
    status = response.status_code
    if 200 <= status < 300:
        return Answer("delivered", status)
    error = f"HTTP {status}"
    snippet = response.text[:200].strip()
    if snippet:
        error += f": {snippet}"
    if status in _RETRY_STATUS or status >= 500:
        return Answer("retry", status, error, retry_after(response.headers.get("Retry-After")))
    if 300 <= status < 400:
        error += " (redirects are not followed; configure the final URL)"
    return Answer("refused", status, error)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(
    failures: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait after the ``failures``-th failed attempt: exponential backoff with full
    jitter, uniform in [0, min(max_s, initial_s * 2 ** (failures - 1))], so many senders that
    failed together do not retry together."""
    ceiling = min(max_s, initial_s * float(2 ** min(max(failures - 1, 0), 60)))
    return rand() * ceiling
