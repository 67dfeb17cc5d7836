"""Deletion notices: when a person is erased, every destination with ``deletion_notices:
true`` is told whom to forget, directly over HTTP (never through the log or the outbox, so no
copy of the identifiers stays behind in Clew).

A notice is ``POST <url>`` with ``Content-Type: application/json`` and the body::

    {"type": "deletion", "noticeId": "<uuid>", "identifiers": [{"type": "email",
     "value": "ada@example.test"}, ...], "profileIds": ["..."], "sentAt": "<ISO-8601 UTC>"}

and the headers ``X-Clew-Notice: deletion``, ``X-Clew-Delivery`` (the notice id) and, when the
destination has a secret, ``X-Clew-Signature`` exactly as for deliveries
(:func:`clew.destinations.webhook.sign`). Network errors, timeouts, 408, 429 and 5xx are tried
again a few times within the call; any 2xx counts as delivered. A notice that fails is not
queued: the data-subject request reports it, and running the request again sends it again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from clew.destinations.addresses import DestinationAddressError, pin
from clew.destinations.config import DestinationConfig, DestinationError
from clew.destinations.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from clew.events import format_time

if TYPE_CHECKING:
    # Imported where a request is made (see Sender._run in clew.destinations.sender).
    import httpx

NOTICE_HEADER = "X-Clew-Notice"
ATTEMPTS = 3
_PAUSES_S = (0.2, 1.0)
_RETRY_STATUS = frozenset({408, 429})


@dataclass(slots=True, frozen=True)
class NoticeOutcome:
    dest: str
    delivered: bool
    status: int | None = None
    error: str | None = None


def notice_body(
    identifiers: Iterable[tuple[str, str]],
    profile_ids: Iterable[str],
    notice_id: str,
    sent_at: datetime,
) -> bytes:
    return msgspec.json.encode(
        {
            "type": "deletion",
            "noticeId": notice_id,
            "identifiers": [{"type": t, "value": v} for t, v in identifiers],
            "profileIds": list(profile_ids),
            "sentAt": format_time(sent_at),
        }
    )


def send_deletion_notice(
    config: DestinationConfig,
    identifiers: Iterable[tuple[str, str]],
    profile_ids: Iterable[str],
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    block_private_networks: bool = False,
) -> NoticeOutcome:
    """Tell one destination to forget a person; never raises for network trouble. The URL's
    address is checked as for deliveries (clew.destinations.addresses); a refused one is not
    contacted and the notice fails with the reason."""
    import httpx

    ids, pids = list(identifiers), list(profile_ids)
    notice_id = str(uuid.uuid4())
    try:
        key = config.signing_key()
    except DestinationError as exc:
        return NoticeOutcome(config.name, False, None, str(exc))
    error: str | None = None
    status: int | None = None
    with httpx.Client(transport=transport, follow_redirects=False, trust_env=False) as client:
        for attempt in range(ATTEMPTS):
            body = notice_body(ids, pids, notice_id, datetime.now(UTC))
            headers = {
                "Content-Type": "application/json",
                NOTICE_HEADER: "deletion",
                DELIVERY_HEADER: notice_id,
            }
            if key is not None:
                headers[SIGNATURE_HEADER] = sign(key, body)
            try:
                status, error = _attempt(client, config, body, headers, block_private_networks)
            except DestinationAddressError as exc:
                return NoticeOutcome(config.name, False, None, str(exc))
            if error is None:
                return NoticeOutcome(config.name, True, status)
            if status is not None and status not in _RETRY_STATUS and status < 500:
                break
            if attempt < ATTEMPTS - 1:
                sleep(_PAUSES_S[min(attempt, len(_PAUSES_S) - 1)])
    return NoticeOutcome(config.name, False, status, error)


def _attempt(
    client: httpx.Client,
    config: DestinationConfig,
    body: bytes,
    headers: dict[str, str],
    block_private_networks: bool,
) -> tuple[int | None, str | None]:
    """One POST of a notice: its status and, unless it was a 2xx, what went wrong. Raises
    :class:`DestinationAddressError` when the URL's address may not be reached."""
    import httpx

    try:
        target = pin(config.url, block_private_networks)
    except OSError as exc:
        return None, f"cannot resolve the URL's host: {exc}"
    try:
        response = target.post(client, body, headers, config.timeout_s)
    except httpx.TransportError as exc:
        return None, f"network error: {exc!r}"
    status = response.status_code
    return status, None if 200 <= status < 300 else f"HTTP {status}"
