"""`clew lifecycle run|status` and `clew sql --include-cold` on a data directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from deltalake import write_deltalake
from typer.testing import CliRunner

from clew._datadir import claim_data_dir
from clew.cli import app
from clew.config import Settings
from clew.lake.tables import EVENTS, to_arrow
from clew.lake.tiers import lifecycle_lock

runner = CliRunner()

DAYS = {"2024-01-15": 3, "2024-02-20": 2, "2024-05-30": 4}
NOW = "2024-06-01T00:00:00Z"


def _fill(data_dir: Path) -> None:
    for day, n in DAYS.items():
        rows = [
            orjson.dumps(
                {
                    "messageId": f"{day}/{i}",
                    "type": "track",
                    "event": "Signed Up",
                    "userId": f"u{i}",
                    "timestamp": f"{day}T08:00:00Z",
                }
            )
            for i in range(n)
        ]
        write_deltalake(
            str(Settings(data_dir=data_dir).lake_path / EVENTS.name),
            to_arrow(EVENTS, rows),
            mode="append",
            partition_by=[EVENTS.partition_by],
        )


def _json(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _events_status(data_dir: Path) -> dict[str, dict[str, Any]]:
    rows = _json(["lifecycle", "status", "--json", "--data-dir", str(data_dir)])
    return {r["tier"]: r for r in rows if r["table"] == "events"}


def _count(data_dir: Path, *extra: str) -> int:
    q = "SELECT count(*) AS n FROM events"
    return int(_json(["sql", q, "-f", "json", "--data-dir", str(data_dir), *extra])[0]["n"])


def test_run_moves_old_partitions_and_status_shows_both_tiers(tmp_path: Path) -> None:
    d = tmp_path / "data"
    _fill(d)
    before = _events_status(d)
    assert (before["warm"]["partitions"], before["warm"]["rows"]) == (3, 9)
    assert before["cold"]["rows"] == 0 and before["cold"]["oldest"] is None

    dry = runner.invoke(app, ["lifecycle", "run", "--dry-run", "--now", NOW, "--data-dir", str(d)])
    assert dry.exit_code == 0, dry.output
    assert "2024-01-15: 3 rows would be moved to cold" in dry.stdout
    assert "would move" in dry.stdout and "not applied (dry run)" in dry.stdout
    assert _events_status(d)["cold"]["rows"] == 0

    shown = runner.invoke(app, ["lifecycle", "run", "--now", NOW, "--data-dir", str(d)])
    assert shown.exit_code == 0, shown.output
    assert "events 2024-02-20: 2 rows moved to cold" in shown.stdout
    assert "Raw log retention removed" in shown.stdout

    after = _events_status(d)
    assert (after["warm"]["rows"], after["warm"]["oldest"]) == (4, "2024-05-30")
    assert (after["cold"]["partitions"], after["cold"]["rows"]) == (2, 5)
    assert (after["cold"]["oldest"], after["cold"]["newest"]) == ("2024-01-15", "2024-02-20")
    assert _count(d) == 4
    assert _count(d, "--include-cold") == 9
    q = "SELECT count(*) FROM events"
    warm_only = runner.invoke(app, ["sql", q, "--data-dir", str(d)])
    assert warm_only.stderr == (
        "note: 5 more rows of the tables queried are in the cold tier; "
        "--include-cold queries them too\n"
    )
    with_cold = runner.invoke(app, ["sql", q, "--include-cold", "--data-dir", str(d)])
    assert with_cold.stderr == ""

    report = _json(["lifecycle", "run", "--now", NOW, "--json", "--data-dir", str(d)])
    assert report["dry_run"] is False and report["warm_before"] == "2024-03-03"
    assert [t["rows_moved"] for t in report["tables"]] == [0, 0]


def test_run_refuses_a_bad_time_and_a_concurrent_run(tmp_path: Path) -> None:
    d = tmp_path / "data"
    bad = runner.invoke(app, ["lifecycle", "run", "--now", "yesterday", "--data-dir", str(d)])
    assert bad.exit_code == 2 and "ISO-8601" in bad.output
    claim_data_dir(d)
    with lifecycle_lock(d):
        busy = runner.invoke(app, ["lifecycle", "run", "--dry-run", "--data-dir", str(d)])
    assert busy.exit_code == 1 and "another lifecycle run" in busy.output


def test_run_reports_a_table_it_cannot_read_and_exits_with_an_error(tmp_path: Path) -> None:
    d = tmp_path / "data"
    _fill(d)
    entry = max((d / "lake" / "events" / "_delta_log").glob("*.json"))
    entry.write_bytes(b"{not json\n")
    result = runner.invoke(app, ["lifecycle", "run", "--now", NOW, "--data-dir", str(d)])
    assert result.exit_code == 1
    assert "lifecycle failed for events (DeltaError" in result.output
    assert "Raw log retention removed" in result.stdout
