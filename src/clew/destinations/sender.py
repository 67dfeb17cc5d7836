"""A destination's sender: one thread that delivers the destination's outbox, batch by batch,
so a slow or failing receiver holds up only itself.

One batch of a destination is in flight at a time, oldest first, so a receiver gets records in
the order the stage read them, and a batch that is being retried holds back the ones behind
it (they wait in the outbox; nothing is dropped). A batch is retried on network errors,
timeouts, 408, 429 and 5xx with exponential backoff and full jitter (or after the receiver's
``Retry-After``) until ``retry_for_s`` has passed since its first attempt; then, or at once
for any other non-2xx answer, it goes to the dead-letter store. All of this state is in the
outbox file, so a restart resumes where the last process stopped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from clew.destinations.config import DestinationConfig, SecretUnavailableError
from clew.destinations.outbox import DEAD_LETTERED, DELIVERED, Batch, Outbox
from clew.destinations.webhook import backoff_s, build_body, post

if TYPE_CHECKING:
    # Imported where a request is made (see Sender._run in clew.destinations.sender).
    import httpx

logger = logging.getLogger(__name__)

# How often a sender looks at its outbox when nothing woke it (records replayed by another
# process, a batch that became due).
POLL_S = 0.5
_SECRET_RECHECK_S = 5.0


class Sender:
    """Delivers ``config``'s outbox from a background thread until :meth:`stop`.

    ``block_private_networks``: refuse non-public addresses too (clew.destinations.addresses).
    ``wake`` tells it new records are waiting (it also polls every ``poll_s``); ``update``
    swaps in a changed configuration, used from the next attempt on. ``stop`` does not wait:
    an attempt in flight finishes (or times out) in the background and is still recorded.
    """

    def __init__(
        self,
        config: DestinationConfig,
        outbox_path: Path,
        *,
        poll_s: float = POLL_S,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        block_private_networks: bool = False,
    ) -> None:
        self._config = config
        self._block_private_networks = block_private_networks
        self._path = outbox_path
        self._poll_s = poll_s
        self._transport = transport
        self._clock = clock
        self._rand = rand
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._secret_warned = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"clew-destination-{config.name}", daemon=True
        )

    @property
    def config(self) -> DestinationConfig:
        return self._config

    def start(self) -> None:
        self._thread.start()

    def update(self, config: DestinationConfig) -> None:
        self._config = config
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _run(self) -> None:
        # httpx loads only once a destination sends: a process without destinations never
        # holds it (about 20 MB, with the command-line libraries it imports).
        import httpx

        outbox = Outbox(self._path)
        # No proxy from the environment: the address checked must be the one connected to.
        client = httpx.Client(transport=self._transport, follow_redirects=False, trust_env=False)
        failures = 0
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    wait = self._step(outbox, client)
                    failures = 0
                except Exception:
                    # A locked or broken outbox file; the state in it is intact, so try again.
                    logger.exception("destination %s: sender failed; retrying", self._config.name)
                    wait = min(30.0, 0.5 * 2**failures)
                    failures += 1
                if wait > 0:
                    self._wake.wait(wait)
        finally:
            client.close()
            outbox.close()

    def _step(self, outbox: Outbox, client: httpx.Client) -> float:
        """Do the next piece of work; returns how long to wait before the next step."""
        config = self._config
        now = self._now_ms()
        batch = outbox.head(config.name)
        if batch is None:
            formed = outbox.form_batch(
                config.name, config.batch_size, config.max_batch_wait_ms, now
            )
            if formed is None:
                return self._poll_s
            if isinstance(formed, int):
                return min(self._poll_s, (formed - now) / 1000)
            batch = formed
        if batch.next_attempt_ms > now:
            return min(self._poll_s, (batch.next_attempt_ms - now) / 1000)
        try:
            key = config.signing_key()
        except SecretUnavailableError as exc:
            if time.monotonic() - self._secret_warned > 60:
                logger.error("%s", exc)
                self._secret_warned = time.monotonic()
            return _SECRET_RECHECK_S
        self._attempt(outbox, client, config, batch, key)
        return 0.0

    def _attempt(
        self,
        outbox: Outbox,
        client: httpx.Client,
        config: DestinationConfig,
        batch: Batch,
        key: bytes | None,
    ) -> None:
        started = self._now_ms()
        first = batch.first_attempt_ms if batch.first_attempt_ms is not None else started
        payloads = outbox.payloads(batch)
        body = build_body(payloads, datetime.fromtimestamp(started / 1000, UTC))
        answer = post(
            client,
            config.url,
            body,
            batch.delivery_id,
            key,
            config.timeout_s,
            self._block_private_networks,
        )
        now = self._now_ms()
        if answer.outcome == DELIVERED:
            outbox.finish(batch, DELIVERED, first, answer.status, None, now)
            return
        attempts = batch.attempts + 1
        if answer.outcome != "retry":
            logger.warning(
                "destination %s refused delivery %s (%s); it is in the dead-letter store",
                config.name,
                batch.delivery_id,
                answer.error,
            )
            outbox.finish(batch, DEAD_LETTERED, first, answer.status, answer.error, now)
            return
        deadline = first + int(config.retry_for_s * 1000)
        if now >= deadline:
            reason = (
                f"gave up after {attempts} attempts over {(now - first) / 1000:.0f} s "
                f"(retry_for_s = {config.retry_for_s:g}); last: {answer.error}"
            )
            logger.warning("destination %s: delivery %s %s", config.name, batch.delivery_id, reason)
            outbox.finish(batch, DEAD_LETTERED, first, answer.status, reason, now)
            return
        if answer.retry_after_s is not None:
            delay_s = answer.retry_after_s
        else:
            delay_s = backoff_s(
                attempts, config.retry_initial_s, config.retry_max_delay_s, self._rand
            )
        if attempts == 1:
            logger.warning(
                "destination %s: delivery %s failed (%s); retrying for up to %g s",
                config.name,
                batch.delivery_id,
                answer.error,
                config.retry_for_s,
            )
        next_ms = min(now + int(delay_s * 1000), deadline)
        outbox.retry_later(batch, first, next_ms, answer.status, answer.error or "failed")
