"""The quickstart install: Clew installed as `make run` installs it (``pip install -e .``, no
extra) runs every command that reads the lake. Packages only the dev extra brings (numpy,
pandas) are not there, so a code path that needs one fails here and not on a user's first
`clew rebuild`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support import WRITE_KEY, ServeProcess, drained, lake_count, wait_for
from clew.background import free_port

REPO = Path(__file__).resolve().parents[1]
AUDIENCE = REPO / "examples" / "audiences" / "high_value_customer.yaml"
PLAN = """
source: tests
mode: block_violations
compatibility: NONE
"""
ORDER = """
event: Order Completed
schema:
  type: object
  properties:
    order_id: {type: string}
    revenue: {type: [number, string]}
  required: [order_id]
"""
# What a missing package or a crash prints; no command's output may hold any of them.
CRASH_MARKERS = ("numpy", "pandas", "Traceback")


def _environment() -> dict[str, str]:
    """The environment without what would let the quickstart venv see the test runner's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


class Quickstart:
    """The ``clew`` executable of a fresh quickstart venv, run against one data directory."""

    def __init__(self, bin_dir: Path, data_dir: Path) -> None:
        self.clew = str(bin_dir / "clew")
        self.data_dir = data_dir

    def __call__(self, *args: str, code: int = 0) -> str:
        """Run ``clew ARGS --data-dir DATA_DIR``; check its exit code is ``code`` and that it
        printed no crash; return stdout and stderr together."""
        done = subprocess.run(
            [self.clew, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == code, f"clew {' '.join(args)} exited {done.returncode}:\n{output}"
        for marker in CRASH_MARKERS:
            assert marker not in output, f"clew {' '.join(args)} printed {marker!r}:\n{output}"
        return output

    def json(self, *args: str) -> Any:
        return json.loads(self(*args))


@pytest.fixture(scope="module")
def quickstart_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a new venv holding Clew as `make run` installs it."""
    venv = tmp_path_factory.mktemp("quickstart") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_environment())
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(REPO)],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"


def _post(url: str, batch: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def clew(quickstart_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    """A data directory filled by the quickstart venv's `clew serve`: Ada (an identify with an
    email, orders of 650 and "25.5" as a string), Bob (an identify with an email), one order
    dead-lettered by the tracking plan, and the example high-value audience."""
    root = tmp_path_factory.mktemp("quickstart-data")
    clew = Quickstart(quickstart_bin, root / "data")
    plan = root / "plan"
    (plan / "events").mkdir(parents=True)
    (plan / "plan.yaml").write_text(PLAN)
    (plan / "events" / "order_completed.yaml").write_text(ORDER)
    clew("sources", "create", "tests", "--write-key", WRITE_KEY)
    clew("plan", "push", str(plan))
    clew("audiences", "push", str(AUDIENCE))

    serve = ServeProcess(clew.data_dir, free_port(), clew=clew.clew)
    serve.start()
    try:
        order = {"type": "track", "event": "Order Completed", "userId": "ada"}
        _post(
            serve.url,
            [
                {"type": "identify", "userId": "ada", "traits": {"email": "ada@shop.test"}},
                {"type": "identify", "userId": "bob", "traits": {"email": "bob@shop.test"}},
                {**order, "properties": {"order_id": "o1", "revenue": 650}},
                {**order, "properties": {"order_id": "o2", "revenue": "25.5"}},
                {**order, "properties": {"revenue": 10}},
            ],
        )
        wait_for(lambda: lake_count(clew.data_dir) == 4 and lake_count(clew.data_dir, "dlq") == 1)
        wait_for(lambda: drained(serve.url))
    finally:
        serve.stop()
    yield clew


@pytest.mark.slow
def test_every_lake_reading_command_runs_on_a_quickstart_install(clew: Quickstart) -> None:
    [row] = clew.json("sql", "SELECT count(*) AS n FROM events", "--format", "json")
    assert row == {"n": 4}

    checked = clew("rebuild", "--dry-run", "--check")
    assert "4 events" in checked and "the batch and speed layers agree" in checked
    clew("rebuild")
    [ada] = clew.json(
        "sql",
        "SELECT email, total_lifetime_value, orders_count FROM customer_profiles "
        "WHERE user_id = 'ada'",
        "--format",
        "json",
    )
    assert ada == {"email": "ada@shop.test", "total_lifetime_value": 675.5, "orders_count": 2}

    [dead] = clew.json("dlq", "list", "--format", "json")
    assert dead["reason"] == "schema_violation"
    shown = clew.json("dlq", "show", dead["dlq_id"], "--format", "json")
    assert shown["payload"] and "order_id" in json.dumps(shown["violations"])
    assert "schema_violation" in clew("dlq", "stats")
    assert "Would replay 1 dead letter" in clew("dlq", "replay", "--dry-run")

    explained = clew.json("identity", "explain", "email:ada@shop.test", "--json")
    attached = {r["identifier"] for r in explained["reasons"] if r["kind"] == "identity"}
    assert attached == {"email:ada@shop.test", "user_id:ada"}
    assert clew("audiences", "size", "high_value_customer").split() == ["1"]

    # Probabilistic matching (splink) against the profiles the events made.
    crm = clew.data_dir.parent / "crm.csv"
    crm.write_text("id,email,first_name\nc1,ada@shop.test,Ada\nc2,cy@shop.test,Cy\n")
    imported = clew.json("import", "profiles", str(crm), "--source", "crm", "--dry-run", "--json")
    assert imported["rows_read"] == 2
    # c1 shares Ada's email: it joins her profile at once, never queued for review.
    assert "c1" not in json.dumps(imported["reviews"])

    tiers = clew.json("lifecycle", "status", "--json")
    rows = {(t["table"], t["tier"]): t["rows"] for t in tiers}
    assert rows == {
        ("events", "warm"): 4,
        ("events", "cold"): 0,
        ("dlq", "warm"): 1,
        ("dlq", "cold"): 0,
    }

    deleted = clew("privacy", "request", "suppress_with_delete", "email:bob@shop.test", "--wait")
    assert "finished" in deleted and "zero traces" in deleted
    assert "zero traces" in clew("privacy", "verify", "email:bob@shop.test")
    remains = clew("privacy", "verify", "email:ada@shop.test", code=1)
    assert "trace(s) remain" in remains and "lake: lake/events/" in remains
