"""`clew privacy request|status|list|verify` on a data directory, with and without a
running server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from _support import WRITE_KEY, drained, lake_count, make_settings, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.privacy.runner import Operations
from privacy._fakes import FakeOperations

runner = CliRunner()


def clew(data_dir: Path, *args: str) -> Result:
    return runner.invoke(app, [*args, "--data-dir", str(data_dir)])


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> FakeOperations:
    fake = FakeOperations()
    fake.person(("user_id", "ada"), ("email", "ada@x.test"))

    def operations(settings: Settings) -> Operations:
        return fake.operations()

    monkeypatch.setattr("clew.privacy.runner.default_operations", operations)
    return fake


def test_without_a_server_a_request_waits_in_the_queue_unless_asked_to_run_now(
    tmp_path: Path, ops: FakeOperations
) -> None:
    data = tmp_path / "data"
    queued = clew(data, "privacy", "request", "suppress", "email:ada@x.test", "--json")
    assert queued.exit_code == 0, queued.output
    request_id = json.loads(queued.output)["id"]
    text = clew(data, "privacy", "request", "unsuppress", "user_id:ada")
    assert "runs when it next starts" in text.output

    listed = clew(data, "privacy", "list", "--json")
    assert [r["status"] for r in json.loads(listed.output)] == ["received", "received"]

    ran = clew(data, "privacy", "request", "suppress_with_delete", "user_id:ada", "--wait")
    assert ran.exit_code == 0, ran.output
    assert "finished" in ran.output and "zero traces" in ran.output
    # The person's id never shows; hashes (hex, where "ada" may occur by chance) are left out.
    assert "ada" not in re.sub(r"[0-9a-f]{8,}", "", ran.output.replace("user_id", ""))
    # Only the request asked for ran; the queued ones wait for `clew serve`.
    status = json.loads(clew(data, "privacy", "status", request_id, "--json").output)
    assert status["status"] == "received"


def test_a_partial_request_exits_1_and_says_where(tmp_path: Path, ops: FakeOperations) -> None:
    ops.erase_error = "vacuum failed"
    out = clew(tmp_path / "d", "privacy", "request", "delete", "email:ada@x.test", "--wait")
    assert out.exit_code == 1
    assert "partial" in out.output and "lake: erasure failed: vacuum failed" in out.output


def test_unusable_requests_exit_2(tmp_path: Path) -> None:
    out = clew(tmp_path / "d", "privacy", "request", "forget", "email:ada@x.test")
    assert out.exit_code == 2 and "type must be one of" in out.output
    out = clew(tmp_path / "d", "privacy", "request", "delete", "ada@x.test")
    assert out.exit_code == 2 and "id_type:value" in out.output
    out = clew(tmp_path / "d", "privacy", "status", "pr_nope")
    assert out.exit_code == 1 and "no privacy request" in out.output


def test_with_a_server_running_the_server_runs_it_and_wait_follows_it(
    tmp_path: Path, ops: FakeOperations
) -> None:
    settings = make_settings(tmp_path / "data")
    settings.privacy.poll_interval_s = 0.1
    with BackgroundServer(settings):
        out = clew(settings.data_dir, "privacy", "request", "suppress", "user_id:ada", "--wait")
        assert out.exit_code == 0, out.output
        assert "waiting for `clew serve`" in out.output and "finished" in out.output
        listed = json.loads(clew(settings.data_dir, "privacy", "list", "--json").output)
        assert listed[0]["audit"]["suppression"] == {"added": 2, "temporary": False}


def test_delete_and_verify_without_a_server_with_the_real_stores(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        batch = [
            {
                "type": "identify",
                "userId": "ada",
                "anonymousId": "ada-dev",
                "traits": {"email": "ada@x.test"},
            },
            {"type": "track", "event": "Viewed", "userId": "bob"},
        ]
        r = httpx.post(
            f"{srv.url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""), timeout=10
        )
        assert r.status_code == 200
        wait_for(lambda: drained(srv.url) and lake_count(settings.data_dir) == 2)
    data = settings.data_dir
    before = clew(data, "privacy", "verify", "user_id:ada")
    assert before.exit_code == 1 and "trace(s) remain" in before.output

    done = clew(data, "privacy", "request", "delete", "anonymous_id:ada-dev", "--wait", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["status"] == "finished" and result["audit"]["verify"]["clean"] is True
    assert result["audit"]["in_flight"] == {"waited": False}

    after = clew(
        data, "privacy", "verify", "user_id:ada", "email:ada@x.test", "anonymous_id:ada-dev"
    )
    assert after.exit_code == 0, after.output
    assert "zero traces" in after.output
    assert lake_count(data, where="user_id = 'bob'") == 1
