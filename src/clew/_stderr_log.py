"""How Clew's long-running processes (`clew serve`, `clew collector`, the stage workers) log:
to stderr, one line each, tagged with the process's role."""

from __future__ import annotations

import logging
import re
import time


def log_to_stderr(role: str = "") -> None:
    """Log INFO and up to stderr, each line tagged with ``role`` when given. HTTP clients log
    WARNING and up only (a webhook destination would log a line per delivery); librdkafka's
    lines (through ``clew.log.kafka``) at most once a minute each, since it logs every
    reconnection attempt while a broker is down."""
    tag = f"[{role}] " if role else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"
    )
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("clew.log.kafka").addFilter(OncePerInterval(60.0))


class OncePerInterval(logging.Filter):
    """Lets each distinct message through at most once per ``interval_s``; the next one let
    through says how many were held back."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's lines differ only by their thread and client names between retries.
        key = re.sub(r"rdkafka#\w+-\d+|thrd:[^\]]*", "", record.getMessage())
        now = time.monotonic()
        last, held = self._seen.get(key, (-self._interval_s, 0))
        if now - last < self._interval_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it held back)"
        return True
