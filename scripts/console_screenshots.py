"""Pictures of the console for the docs: runs `clew serve` on a fresh data directory, pushes the
example audiences, sends the demo's simulated shop (`clew demo`), then signs in to the console
in headless Chromium and writes a screenshot of the overview and of one shopper's profile page
to docs/images/. Needs the dev extra (Playwright) and Debian's chromium (scripts/chromium.sh).

    .venv/bin/python scripts/console_screenshots.py [--users 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CLEW = ROOT / ".venv" / "bin" / "clew"
IMAGES = ROOT / "docs" / "images"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clew(*args: str | Path) -> str:
    done = subprocess.run([CLEW, *map(str, args)], capture_output=True, text=True, check=True)
    return done.stdout


def _wait_until_drained(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    lagging: list[str] = []
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=5).text
        lags = [line for line in text.splitlines() if line.startswith("clew_consumer_lag{")]
        lagging = [line for line in lags if float(line.rsplit(" ", 1)[1]) != 0]
        if lags and not lagging:
            return
        time.sleep(0.5)
    raise SystemExit("the stages did not drain in time: " + "; ".join(lagging))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    chromium = os.environ.get("CLEW_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: run `sh scripts/chromium.sh`")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clew-screens-") as tmp:
        data = Path(tmp) / "data"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        definitions = sorted((ROOT / "examples" / "audiences").glob("*.yaml"))
        _clew("audiences", "push", *definitions, "--data-dir", data)
        server = subprocess.Popen(
            [CLEW, "serve", "--port", str(port), "--data-dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            _clew("demo", "--users", str(args.users), "--data-dir", data)
            _wait_until_drained(url)
            token = _clew("tokens", "create", "screenshots", "--scope", "all", "--data-dir", data)
            _shoot(chromium, url, token.split()[-1])
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def _shoot(chromium: str, url: str, token: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/console/login")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        page.screenshot(path=str(IMAGES / "console-overview.png"), full_page=True)
        # The shopper with the most events: a profile page with a full timeline.
        answer = httpx.post(
            f"{url}/v1/sql",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "query": "SELECT user_id FROM events WHERE user_id IS NOT NULL "
                "GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
            },
            timeout=30,
        ).json()
        user_id = answer["rows"][0][0]
        page.goto(f"{url}/console/people?q=user_id:{user_id}")
        page.wait_for_load_state()
        # The page's top: identities, their links, traits and audiences (the timeline is long).
        page.set_viewport_size({"width": 1280, "height": 1300})
        page.screenshot(path=str(IMAGES / "console-profile.png"))
        browser.close()
    print(f"wrote {', '.join(p.name for p in sorted(IMAGES.glob('console-*.png')))} in {IMAGES}")


if __name__ == "__main__":
    main()
