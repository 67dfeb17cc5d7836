"""The browser suites' Chromium: one per test module, not per session. Playwright's sync API
keeps an asyncio event loop running in the main thread while it is open, and tests outside
these modules call ``asyncio.run``, which refuses to start inside a running loop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from _browser import chromium
from _services import ServiceUnavailable, unavailable


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``) for the module (skips, or fails under CI,
    without Debian's chromium: ``sh scripts/chromium.sh``)."""
    with ExitStack() as stack:
        try:
            launched = stack.enter_context(chromium())
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield launched
