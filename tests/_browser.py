"""A real headless Chromium for the browser suites (``tests/browser/``): Debian's ``chromium``
(``sh scripts/chromium.sh`` installs it), driven by Playwright pointed at that executable.
Playwright's own browser download is never used.

:func:`chromium` yields one browser for the session. :class:`PageLog` records what a page
printed to its console and every uncaught error, so a test can assert a page ran clean, and
:func:`screenshot` writes a page's picture under ``.screenshots/`` (not committed) for a
reviewer to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _services import ServiceUnavailable, require_module

SCREENSHOTS = Path(__file__).resolve().parent.parent / ".screenshots"


def chromium_executable() -> str:
    """``CLEW_CHROMIUM``, else ``chromium`` on the PATH."""
    found = os.environ.get("CLEW_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise ServiceUnavailable(
            "chromium is not installed: run `sh scripts/chromium.sh` "
            "(on Debian or Ubuntu: apt-get install -y chromium chromium-driver)"
        )
    return found


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed when the block ends."""
    sync_api = require_module("playwright.sync_api")
    executable = chromium_executable()
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: the suite may run as root (CI), where Chromium's sandbox refuses.
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageLog:
    """Console messages and uncaught errors of one page (attach with :meth:`watch`)."""

    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> Any:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        return page

    def _console(self, message: Any) -> None:
        text = f"{message.type}: {message.text}"
        self.messages.append(text)
        if message.type == "error":
            self.errors.append(text)


def screenshot(page: Any, name: str) -> Path:
    """Writes the page's full picture to ``.screenshots/<name>.png`` and returns the path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
