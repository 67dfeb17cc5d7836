"""The browser suites' own check: the system Chromium starts, runs a page's script, and the
page log catches an uncaught error (so a page that throws cannot pass as clean)."""

from __future__ import annotations

from typing import Any

from _browser import PageLog


def test_chromium_runs_a_page_and_reports_its_errors(browser: Any) -> None:
    log = PageLog()
    page = log.watch(browser.new_page())
    page.set_content(
        "<p id=p>0</p><script>document.getElementById('p').textContent = 6 * 7</script>"
    )
    assert page.inner_text("#p") == "42"
    assert log.errors == []
    page.evaluate("setTimeout(() => { throw new Error('boom') }, 0)")
    page.wait_for_timeout(100)
    assert any("boom" in e for e in log.errors)
    page.close()
