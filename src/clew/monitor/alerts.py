"""Volume alerts: the JSON written to the ``changes`` topic, and their delivery to an optional
webhook from a background thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from clew.events import format_time
from clew.monitor.volume import HOUR_S, VOLUME, Assessment, SeriesKey, hour_start

if TYPE_CHECKING:
    # Imported by the webhook itself: a process without an alert webhook never loads httpx.
    import httpx

logger = logging.getLogger(__name__)

ALERT_KIND = "volume_alert"
_ID_NAMESPACE = uuid.UUID("3d0f7a52-9b1e-4c55-8a2f-6e4b1c9d7f10")


def alert_id(key: SeriesKey, bucket: int) -> str:
    """The id of the alert of ``key`` for hour ``bucket``: the same on every retry, so a
    receiver can drop repeats."""
    return str(
        uuid.uuid5(_ID_NAMESPACE, f"{key.event_name}\0{key.source_id}\0{key.app_version}\0{bucket}")
    )


class VolumeAlert(msgspec.Struct, kw_only=True):
    """An alert as written to the ``changes`` topic and posted to the webhook.

    ``expected``/``observed``/``change_pct`` are accepted events of the hour; ``signals``
    says what tripped: ``volume`` (against the baseline) and/or ``dlq_share`` (a larger share
    of the series' events was dead-lettered than before). ``app_version`` is ``"*"`` for the
    rollup of all versions, and ``top_dlq_app_version`` names the version with the most
    dead-lettered events of the hour.
    """

    kind: str = ALERT_KIND
    alert_id: str
    event_name: str
    source_id: str
    app_version: str
    bucket_start: str
    bucket_end: str
    expected: float
    observed: int
    change_pct: float
    direction: str
    signals: list[str]
    baseline: str | None
    dlq_count: int
    dlq_share: float
    expected_dlq_share: float
    top_dlq_reason: str | None
    top_dlq_message: str | None
    top_dlq_app_version: str | None
    detected_at: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(VolumeAlert)


def encode_alert(alert: VolumeAlert) -> bytes:
    return _encoder.encode(alert)


def decode_alert(data: bytes) -> VolumeAlert:
    return _decoder.decode(data)


def volume_alert(
    key: SeriesKey,
    bucket: int,
    a: Assessment,
    *,
    top_dlq: tuple[str | None, str | None],
    top_version: str | None,
    now: datetime,
) -> VolumeAlert:
    """The alert of series ``key`` for hour ``bucket``, from its assessment ``a`` (whose
    status is ``alert``); ``top_dlq`` is the hour's most frequent DLQ reason of the series
    with an example message, ``top_version`` the app version with the most dead letters."""
    assert a.expected is not None and a.change_pct is not None and a.direction
    reason, example = top_dlq
    start = hour_start(bucket)
    return VolumeAlert(
        alert_id=alert_id(key, bucket),
        event_name=key.event_name,
        source_id=key.source_id,
        app_version=key.app_version,
        bucket_start=format_time(start),
        bucket_end=format_time(start + timedelta(seconds=HOUR_S)),
        expected=a.expected,
        observed=a.observed,
        change_pct=a.change_pct,
        direction=a.direction,
        signals=list(a.signals),
        baseline=a.baseline,
        dlq_count=a.dlq,
        dlq_share=a.dlq_share,
        expected_dlq_share=a.expected_dlq_share,
        top_dlq_reason=reason,
        top_dlq_message=example or None,
        top_dlq_app_version=top_version,
        detected_at=format_time(now),
    )


def log_key(alert: VolumeAlert) -> bytes:
    """The alert's key on the ``changes`` topic: one series' alerts share a partition, in
    order."""
    return f"{alert.event_name}\0{alert.source_id}\0{alert.app_version}".encode()


def log_alert(a: VolumeAlert) -> None:
    """Log the alert as one warning line."""
    dlq = (
        f"; {a.dlq_count} dead-lettered ({a.dlq_share:.0%}), mostly {a.top_dlq_reason}"
        + (f" from app version {a.top_dlq_app_version}" if a.top_dlq_app_version else "")
        + (f": {a.top_dlq_message}" if a.top_dlq_message else "")
        if a.dlq_count
        else ""
    )
    logger.warning(
        "volume %s: %r from source %s, app version %s, %s to %s: %d accepted, %.1f expected "
        "(%+.1f%%, %s)%s",
        a.direction,
        a.event_name,
        a.source_id,
        a.app_version,
        a.bucket_start,
        a.bucket_end,
        a.observed,
        a.expected,
        a.change_pct,
        f"{a.baseline} baseline" if a.signals[0] == VOLUME else "expected of what arrived",
        dlq,
    )


_RETRY_STATUS = frozenset({408, 425, 429})


class WebhookUrlError(ValueError):
    """The webhook URL cannot be used; the message says why."""


class WebhookSender:
    """POSTs alert bodies (JSON) to ``url`` from one background thread, so a slow or dead
    receiver never holds up the stage.

    Each alert is tried once plus ``retries`` times, with ``timeout_s`` per attempt and
    doubling backoff, on network errors, 5xx, 408, 425 and 429; any other answer is final.
    The outcome of each alert (``True`` = a 2xx) is collected by :meth:`results`. Alerts still
    queued at :meth:`close` are not sent; the caller keeps them pending and sends them again
    after a restart.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_queued: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Here, not at the top: httpx and the command-line libraries it imports (click, rich,
        # pygments) take about 20 MB in each process that loads them.
        import httpx

        if httpx.URL(url).scheme not in ("http", "https"):
            raise WebhookUrlError(f"webhook URL {url!r} must start with http:// or https://")
        self.url = url
        self._retries = retries
        self._backoff_s = backoff_s
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_queued)
        self._results: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout_s, transport=transport)
        self._thread = threading.Thread(target=self._run, name="clew-monitor-webhook", daemon=True)
        self._thread.start()

    def send(self, alert_id: str, body: bytes) -> bool:
        """Queue one alert; ``False`` (and nothing queued) when the queue is full."""
        try:
            self._queue.put_nowait((alert_id, body))
            return True
        except queue.Full:
            logger.warning("webhook queue is full; alert %s waits for the next start", alert_id)
            return False

    def results(self) -> list[tuple[str, bool]]:
        """The outcomes finished since the last call: (alert id, delivered)."""
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop after the attempt in flight (waiting up to ``timeout_s``)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._queue.get()
                if item is None:
                    return
                alert_id, body = item
                delivered = self._deliver(alert_id, body)
                if delivered is not None:
                    self._results.put((alert_id, delivered))
        finally:
            self._client.close()

    def _deliver(self, alert_id: str, body: bytes) -> bool | None:
        """True when delivered, False when refused or out of attempts, None when stopped
        before the attempts ran out (the alert stays pending)."""
        headers = {
            "content-type": "application/json",
            "user-agent": "clew-monitor",
            "x-clew-alert-id": alert_id,
        }
        import httpx

        problem = ""
        for attempt in range(self._retries + 1):
            if attempt and self._stop.wait(self._backoff_s * 2 ** (attempt - 1)):
                return None
            try:
                response = self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = repr(exc)
                continue
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                break
        logger.warning("webhook %s did not take alert %s: %s", self.url, alert_id, problem)
        return False
