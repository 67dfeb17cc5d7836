"""Helpers of the console's browser suites: a signed-in page of a token with chosen scopes."""

from __future__ import annotations

from typing import Any

from _browser import PageLog
from clew.background import BackgroundServer


def sign_in(
    browser: Any, server: BackgroundServer, scopes: tuple[str, ...] = ("all",), name: str = ""
) -> tuple[Any, PageLog]:
    """A new browser context signed in to the console with a fresh token holding ``scopes``:
    its page and its :class:`PageLog`. The token's name is ``name`` or made from the scopes."""
    token_name = name or f"console-{'-'.join(scopes)}"
    token = server.clew.catalog.create_token(token_name, scopes)
    log = PageLog()
    page = log.watch(browser.new_context().new_page())
    page.set_default_timeout(15_000)
    page.goto(f"{server.url}/console/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page, log
