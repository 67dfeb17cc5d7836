"""Volume alerts: the JSON written to the ``changes`` topic, and their delivery to an optional
webhook from a background thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid

import httpx
import msgspec

from clew.monitor.volume import SeriesKey

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
