"""Whether a Kafka cluster answers, asked apart from the log's own clients
(:class:`KafkaProbe`), so that a process can check it before opening the log and watch it
while running without waiting behind the log's requests. Imported only when confluent-kafka
is installed."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from clew.log._kafka_driver import KafkaException, admin
from clew.log.base import LogError

# Each metadata request waits this long at most before the probe looks at why.
_SLICE_S = 1.0
# librdkafka's line for a failed connection, up to the state it failed in.
_FAILED = re.compile(r"\]: (?:\S+: )?(.*?)(?: \(after \d+ms in state \w+\))?$")


class _LastLine(logging.Handler):
    """Keeps the last line librdkafka logged for the probe's client, instead of printing
    one every time it retries (every 50 ms at first while a broker is down)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class KafkaProbe:
    """A metadata request to ``bootstrap_servers`` with the client properties ``client``
    (security, SASL). Calling it returns once a broker answered, or raises
    :class:`~clew.log.base.LogError` within ``timeout_s`` with the reason librdkafka gave
    (``Connect to ipv4#127.0.0.1:9092 failed: Connection refused``). Its client is made at
    the first call and kept; librdkafka's own lines for it are never printed."""

    def __init__(self, bootstrap_servers: str, client: Mapping[str, Any] | None = None) -> None:
        self._config = {"bootstrap.servers": bootstrap_servers, **(client or {})}
        self._lines = _LastLine()
        self._logger = logging.Logger(f"clew.kafka-probe.{id(self)}")
        self._logger.addHandler(self._lines)
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self, timeout_s: float) -> None:
        with self._lock:
            if self._client is None:
                self._client = admin.AdminClient({**self._config, "logger": self._logger})
            client = self._client
        started = time.monotonic()
        self._lines.last = None
        while True:
            left = timeout_s - (time.monotonic() - started)
            try:
                client.list_topics(timeout=max(0.01, min(_SLICE_S, left)))
                return
            except KafkaException as exc:
                client.poll(0)  # serves the log lines that say why
                error = exc.args[0].str()
            # A refused connection is an answer: no need to wait out the whole timeout.
            refused = self._lines.last is not None and time.monotonic() - started >= _SLICE_S
            if refused or time.monotonic() - started >= timeout_s:
                raise LogError(self._reason(error))

    def _reason(self, error: str) -> str:
        line = self._lines.last
        found = _FAILED.search(line) if line else None
        if found is None:
            return error
        # "Connect to ipv4#127.0.0.1:9092 failed: Connection refused": the address is known.
        return found.group(1).rsplit(" failed: ", 1)[-1]
