"""Destinations under a real `clew serve` (stages in worker processes): a destination added
with the CLI while it runs starts receiving, signed with a secret from the server's
environment; after a SIGKILL with records in the outbox, the restarted server delivers them."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess

import httpx
import pytest

from _support import WRITE_KEY, ServeProcess, clew_bin, wait_for
from destinations._receiver import Receiver

pytestmark = pytest.mark.slow


def _send(url: str, prefix: str, n: int) -> None:
    batch = [
        {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": f"{prefix}{i}"}
        for i in range(n)
    ]
    r = httpx.post(url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200


def _active_since(serve: ServeProcess, name: str) -> str | None:
    out = subprocess.run(
        [clew_bin(), "destinations", "list", "--json", "--data-dir", str(serve.data_dir)],
        check=True,
        capture_output=True,
    )
    rows = json.loads(out.stdout)["destinations"]
    since: str | None = next(r["active_since"] for r in rows if r["name"] == name)
    return since


def test_serve_delivers_to_a_destination_added_while_running_and_after_a_crash(
    serve_process: ServeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = Receiver().start()
    try:
        monkeypatch.setenv("CLEW_TEST_HOOK_SECRET", "from-the-environment")
        serve_process.stop()
        serve_process.start()  # now with the secret in its environment
        subprocess.run(
            [
                clew_bin(),
                "destinations",
                "add",
                "crm",
                "--url",
                hook.url,
                "--secret-env",
                "CLEW_TEST_HOOK_SECRET",
                "--max-batch-wait-ms",
                "100",
                "--data-dir",
                str(serve_process.data_dir),
            ],
            check=True,
            capture_output=True,
        )
        # Picked up within about a second; records that arrive from then on are delivered.
        wait_for(lambda: _active_since(serve_process, "crm") is not None, timeout_s=10)
        _send(serve_process.url, "a", 5)
        wait_for(lambda: len(hook.events()) == 5, timeout_s=15)
        for r in hook.accepted():
            mac = hmac.new(b"from-the-environment", r.body, hashlib.sha256).hexdigest()
            assert r.headers["x-clew-signature"] == f"sha256={mac}"

        hook.stop()
        _send(serve_process.url, "b", 7)
        wait_for(
            lambda: (
                'clew_destination_outbox{destination="crm"} 7'
                in httpx.get(serve_process.url + "/metrics").text
            ),
            timeout_s=15,
        )
        serve_process.kill()
        hook.start()
        serve_process.start()
        wait_for(lambda: len(hook.events()) >= 12, timeout_s=20)
        ids = [e["messageId"] for e in hook.events()]
        assert sorted(set(ids)) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(7)])
    finally:
        hook.stop()
