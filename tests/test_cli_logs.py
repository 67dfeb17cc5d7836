"""How `clew serve`, `collector` and `worker` log: librdkafka's line for each reconnection
attempt while a broker is down (every 50 ms at first) is let through once a minute, the
next one saying how many were held back."""

from __future__ import annotations

import logging
import time

from clew._stderr_log import OncePerInterval


def _line(client: str, text: str) -> logging.LogRecord:
    message = (
        f"FAIL [rdkafka#{client}] [thrd:kafka-1:9092/bootstrap]: kafka-1:9092/bootstrap: {text}"
    )
    return logging.LogRecord("clew.log.kafka", logging.ERROR, __file__, 1, message, None, None)


def test_a_repeated_librdkafka_line_is_let_through_once_per_interval() -> None:
    refused = "Connect to ipv4#10.0.0.7:9092 failed: Connection refused"
    once = OncePerInterval(0.2)
    shown = [once.filter(_line(f"producer-{i % 3}", refused)) for i in range(20)]
    assert shown == [True] + [False] * 19
    assert once.filter(_line("consumer-9", "Disconnected (after 12ms in state UP)"))

    time.sleep(0.25)
    later = _line("producer-1", refused)
    assert once.filter(later)
    assert later.getMessage().endswith("(19 more like it held back)")
