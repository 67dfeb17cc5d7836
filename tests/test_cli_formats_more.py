"""`--format table|json|csv` of `clew import reviews`, `clew dlq show` and `clew dlq stats`,
and the one-line answer (the closest name, exit 1) to a --source that does not exist in
`clew dlq` and `clew schema`: all in process, on a data directory and no server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from _support import make_settings
from clew.backends import open_log
from clew.cli import app
from clew.cli._errors import ExitCode
from clew.log.base import Message
from clew.stages.workers import build_stage

runner = CliRunner()

IMPORT_CSV = (
    "id,first_name,last_name,email,date_of_birth,postcode,address,city,loyalty_id\n"
    "C-5,Katherine,Johnson,kj@nasa.test,1968-08-26,LS1 4AP,5 Orbit Street,Leeds,L-5005\n"
    "C-6,Katherine,Johnson,,,,,Leeds,\n"
)


def clew(data_dir: Path, *args: str, columns: int = 80) -> Result:
    return runner.invoke(app, [*args, "--data-dir", str(data_dir)], env={"COLUMNS": str(columns)})


def parse_csv(result: Result) -> list[dict[str, str]]:
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stdout and result.stdout.endswith("\n")
    return list(csv.DictReader(io.StringIO(result.stdout)))


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- clew import reviews --------------------------------------------------------------------


def import_crm(root: Path) -> Path:
    """A data dir whose crm import queued one review: row C-5 probably is row C-6."""
    (root / "crm.csv").write_text(IMPORT_CSV)
    data_dir = root / "data"
    result = clew(data_dir, "import", "profiles", str(root / "crm.csv"), "--source", "crm")
    assert result.exit_code == 0, result.output
    return data_dir


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_crm(tmp_path_factory.mktemp("import"))


def test_import_reviews_as_csv_spreads_both_sides_into_columns(imported: Path) -> None:
    [row] = parse_csv(clew(imported, "import", "reviews", "--format", "csv"))
    [doc] = json.loads(clew(imported, "import", "reviews", "-f", "json").stdout)
    assert (row["review_id"], row["source"], row["record_id"]) == ("1", "crm", "C-5")
    assert (row["other_kind"], row["other_id"], row["link"]) == ("record", "C-6", "crm_id:C-6")
    assert float(row["probability"]) == doc["probability"]
    assert float(row["match_weight"]) == doc["match_weight"]
    assert (row["import_id"], row["created"], row["status"]) == (
        doc["import_id"],
        doc["created"],
        "pending",
    )
    assert row["record.email"] == "kj@nasa.test"
    assert row["record.address"] == "5 Orbit Street"
    assert (row["other.city"], row["other.last_name"]) == ("Leeds", "Johnson")
    # The other row has no email: its column is not there at all (no review has one).
    assert "other.email" not in row and "record.id" not in row


def test_import_reviews_json_is_the_json_alias_and_csv_is_empty_but_for_its_header(
    tmp_path: Path,
) -> None:
    imported = import_crm(tmp_path)
    as_format = clew(imported, "import", "reviews", "--format", "json")
    assert as_format.stdout == clew(imported, "import", "reviews", "--json").stdout
    [doc] = json.loads(as_format.stdout)
    assert doc["record"]["email"] == "kj@nasa.test"
    assert clew(imported, "import", "reviews", "--json", "-f", "csv").exit_code == ExitCode.USAGE

    assert clew(imported, "import", "reject", "1").exit_code == 0
    empty = clew(imported, "import", "reviews", "-f", "csv")
    assert empty.exit_code == 0
    assert empty.stdout.startswith("review_id,source,record_id,") and empty.stdout.count("\n") == 1
    assert clew(imported, "import", "reviews", "-f", "json").stdout == "[]\n"


def test_import_reviews_table_keeps_identifiers_whole_at_80_columns(imported: Path) -> None:
    pending = clew(imported, "import", "reviews")
    assert pending.exit_code == 0, pending.output
    for whole in ("crm_id:C-5", "(via crm_id:C-6)", "email: kj@nasa.test", "0.9"):
        assert whole in pending.stdout, whole


def test_import_reviews_of_an_unknown_source_names_the_closest(imported: Path) -> None:
    typo = clew(imported, "import", "reviews", "--source", "crn")
    assert typo.exit_code == ExitCode.FAILED
    assert one_error_line(typo) == (
        "error: there is no import source named 'crn' (did you mean 'crm'?)"
    )
    far = clew(imported, "import", "reviews", "--source", "shop", "-f", "csv")
    assert far.exit_code == ExitCode.FAILED
    assert (
        one_error_line(far) == "error: there is no import source named 'shop' (import sources: crm)"
    )


def test_import_reviews_source_before_any_import(tmp_path: Path) -> None:
    assert clew(tmp_path / "d", "sources", "create", "web").exit_code == 0
    none = clew(tmp_path / "d", "import", "reviews", "--source", "crm")
    assert none.exit_code == ExitCode.FAILED
    assert one_error_line(none) == (
        "error: there is no import source named 'crm' (there are no import sources yet)"
    )


# -- clew dlq -------------------------------------------------------------------------------


def letter(i: int, source_id: str, **fields: Any) -> dict[str, Any]:
    payload = {"type": "track", "event": "Order Completed", "userId": f"u{i}"}
    return {
        "reason": "schema_violation",
        "message": "$.properties.revenue: required property 'revenue' is missing",
        "payload": json.dumps(payload),
        "source_id": source_id,
        "received_at": f"2026-01-05T{14 + i // 2:02d}:00:00+00:00",
        "raw_partition": 0,
        "raw_offset": i,
        "index": 0,
        "message_id": f"m{i}",
        "event_type": "track",
        "event_name": "Order Completed",
        "violations": [
            {
                "path": "$.properties.revenue",
                "keyword": "required",
                "message": "required property 'revenue' is missing",
                "subject": "track:Order Completed",
                "version": "1-0-0",
            }
        ],
        "schema_versions": {"track:Order Completed": "1-0-0"},
        "dlq_id": f"0:{i}:0",
        **fields,
    }


@pytest.fixture(scope="module")
def dead(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with sources web and checkout_web and four dead letters in its lake:
    three schema violations of web (two at 14:00, one at 15:00) and one event of
    checkout_web without identity, written as the lake stage writes them."""
    data_dir = tmp_path_factory.mktemp("dlq") / "data"
    for name in ("web", "checkout_web"):
        assert clew(data_dir, "sources", "create", name).exit_code == 0
    ids = {
        s["name"]: s["id"] for s in json.loads(clew(data_dir, "sources", "list", "--json").stdout)
    }
    letters = [letter(i, ids["web"]) for i in range(3)]
    letters.append(
        letter(
            3,
            ids["checkout_web"],
            reason="no_identity",
            message="the event has no userId or anonymousId",
        )
    )
    del letters[3]["violations"], letters[3]["schema_versions"]
    settings = make_settings(data_dir)
    log = open_log(settings)
    try:
        log.append_sync("dlq", [Message(json.dumps(d).encode()) for d in letters])
        stage, closers = build_stage("lake", settings)
        consumer = log.consumer(stage.group, list(stage.topics))
        stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(max_records=100, timeout_s=0.1):
            stage.handle(records, consumer)
        stage.close(consumer)
        consumer.close()
        for close in closers:
            close()
    finally:
        log.close()
    return data_dir


def test_dlq_list_takes_every_format(dead: Path) -> None:
    rows = parse_csv(clew(dead, "dlq", "list", "--format", "csv"))
    assert sorted((r["id"], r["source"], r["reason"]) for r in rows) == [
        ("0:0:0", "web", "schema_violation"),
        ("0:1:0", "web", "schema_violation"),
        ("0:2:0", "web", "schema_violation"),
        ("0:3:0", "checkout_web", "no_identity"),
    ]
    assert rows[0]["event"] == "Order Completed"
    docs = json.loads(clew(dead, "dlq", "list", "-f", "json").stdout)
    assert {d["dlq_id"] for d in docs} == {r["id"] for r in rows}
    table = clew(dead, "dlq", "list")
    assert table.exit_code == 0 and "4 of 4 dead letters not yet replayed" in table.stdout


def test_dlq_show_as_csv_is_one_line_of_the_json_fields(dead: Path) -> None:
    [row] = parse_csv(clew(dead, "dlq", "show", "0:1:0", "--format", "csv"))
    doc = json.loads(clew(dead, "dlq", "show", "0:1:0", "--json").stdout)
    assert list(row) == list(doc)
    assert (row["dlq_id"], row["source"], row["reason"]) == ("0:1:0", "web", "schema_violation")
    assert row["message"] == "$.properties.revenue: required property 'revenue' is missing"
    assert row["received_at"] == "2026-01-05T14:00:00+00:00"
    assert (row["raw_partition"], row["raw_offset"], row["index"]) == ("0", "1", "0")
    assert json.loads(row["violations"]) == doc["violations"]
    assert json.loads(row["violations"])[0]["path"] == "$.properties.revenue"
    assert json.loads(row["schema_versions"]) == {"track:Order Completed": "1-0-0"}
    assert json.loads(row["payload"]) == json.loads(doc["payload"])
    assert (row["replayed"], row["replay_of"], json.loads(row["history"])) == ("", "", [])

    [bare] = parse_csv(clew(dead, "dlq", "show", "0:3:0", "-f", "csv"))
    assert (bare["source"], bare["reason"], bare["violations"]) == (
        "checkout_web",
        "no_identity",
        "[]",
    )

    table = clew(dead, "dlq", "show", "0:1:0")
    assert "Dead letter 0:1:0" in table.stdout and "$.properties.revenue" in table.stdout
    missing = clew(dead, "dlq", "show", "9:9:9", "-f", "csv")
    assert missing.exit_code == ExitCode.FAILED
    assert "no dead letter with id '9:9:9'" in one_error_line(missing)


def test_dlq_stats_as_csv_counts_by_reason_source_and_event(dead: Path) -> None:
    result = clew(dead, "dlq", "stats", "--format", "csv")
    assert parse_csv(result) == [
        {"reason": "schema_violation", "source": "web", "event": "Order Completed", "count": "3"},
        {
            "reason": "no_identity",
            "source": "checkout_web",
            "event": "Order Completed",
            "count": "1",
        },
    ]
    assert result.stdout.splitlines()[0] == "reason,source,event,count"
    stats = json.loads(clew(dead, "dlq", "stats", "--json").stdout)
    assert stats["total"] == 4
    assert [(h["hour"], h["count"]) for h in stats["by_hour"]] == [
        ("2026-01-05T14:00:00+00:00", 2),
        ("2026-01-05T15:00:00+00:00", 2),
    ]
    only_web = parse_csv(clew(dead, "dlq", "stats", "-f", "csv", "--source", "web"))
    assert [r["count"] for r in only_web] == ["3"]
    table = clew(dead, "dlq", "stats")
    assert "By reason, source and event" in table.stdout and "checkout_web" in table.stdout


def test_dlq_format_is_checked(dead: Path) -> None:
    for command in (["list"], ["show", "0:1:0"], ["stats"]):
        bad = clew(dead, "dlq", *command, "--format", "xml")
        assert bad.exit_code == ExitCode.USAGE, command
        both = clew(dead, "dlq", *command, "--json", "--format", "csv")
        assert both.exit_code == ExitCode.USAGE, command
        assert "--json and --format csv disagree" in both.stderr


@pytest.mark.parametrize(
    "command", [["list", "-f", "csv"], ["stats", "--json"], ["replay", "--dry-run"]]
)
def test_dlq_source_that_does_not_exist_names_the_closest(dead: Path, command: list[str]) -> None:
    typo = clew(dead, "dlq", *command, "--source", "wbe")
    assert typo.exit_code == ExitCode.FAILED
    assert one_error_line(typo) == (
        "error: there is no source named 'wbe' (did you mean 'web'?); "
        "`clew sources list --removed` shows them"
    )
    far = clew(dead, "dlq", *command, "--source", "ios")
    assert far.exit_code == ExitCode.FAILED
    assert "there is no source named 'ios' (sources: checkout_web, web); " in one_error_line(far)


def test_dlq_source_by_id_still_filters(dead: Path) -> None:
    ids = {s["name"]: s["id"] for s in json.loads(clew(dead, "sources", "list", "--json").stdout)}
    by_id = parse_csv(clew(dead, "dlq", "list", "-f", "csv", "--source", ids["checkout_web"]))
    assert [r["id"] for r in by_id] == ["0:3:0"]


# -- clew schema ----------------------------------------------------------------------------


PLAN = "source: web\nmode: block_violations\ncompatibility: NONE\n"
SIGNUP = "event: Signed Up\nschema:\n  type: object\n  properties:\n    plan: {type: string}\n"


def test_schema_commands_answer_an_unknown_source_with_the_closest(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (tmp_path / "plan" / "events").mkdir(parents=True)
    (tmp_path / "plan" / "plan.yaml").write_text(PLAN)
    (tmp_path / "plan" / "events" / "signed_up.yaml").write_text(SIGNUP)
    assert clew(d, "plan", "push", str(tmp_path / "plan")).exit_code == 0
    assert clew(d, "sources", "create", "mobile").exit_code == 0

    for command in (
        ["schema", "list"],
        ["schema", "show", "track:Signed Up"],
        ["schema", "diff", "track:Signed Up", "1"],
    ):
        typo = clew(d, *command, "--source", "wbe")
        assert typo.exit_code == ExitCode.FAILED, command
        assert one_error_line(typo) == (
            "error: there is no source named 'wbe' (did you mean 'web'?)"
        ), command
        plan_less = clew(d, *command, "--source", "mobil")
        assert "(did you mean 'mobile'?)" in one_error_line(plan_less), command

    far = clew(d, "schema", "list", "--source", "nope", "-f", "csv")
    assert far.exit_code == ExitCode.FAILED
    assert (
        one_error_line(far)
        == "error: there is no source named 'nope' (sources: default, mobile, web)"
    )

    [subject] = parse_csv(clew(d, "schema", "list", "--source", "web", "-f", "csv"))
    assert subject == {
        "subject": "track:Signed Up",
        "version": "1",
        "schemaver": "1-0-0",
        "compatibility": "NONE",
        "active": "yes",
    }
    shown = clew(d, "schema", "show", "track:Signed Up", "--source", "web")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["type"] == "object"
    # A source of the catalog without a plan is known: it has no subjects, not an error.
    assert parse_csv(clew(d, "schema", "list", "--source", "mobile", "-f", "csv")) == []


# -- clew destinations ----------------------------------------------------------------------


def test_destination_listings_answer_an_unknown_name_with_the_closest(tmp_path: Path) -> None:
    d = tmp_path / "data"
    added = clew(d, "destinations", "add", "crm_hook", "--url", "https://hooks.example.org/crm")
    assert added.exit_code == 0, added.output
    for command in (["deliveries", "crm_hok"], ["dlq", "crm_hok"], ["dlq", "crm_hok", "-f", "csv"]):
        typo = clew(d, "destinations", *command)
        assert typo.exit_code == ExitCode.FAILED, command
        assert one_error_line(typo) == (
            "error: there is no destination named 'crm_hok' (did you mean 'crm_hook'?); "
            "`clew destinations list` shows the configured ones"
        ), command
    # A configured destination with nothing delivered yet is an empty listing, not an error.
    assert parse_csv(clew(d, "destinations", "dlq", "crm_hook", "-f", "csv")) == []
    assert parse_csv(clew(d, "destinations", "deliveries", "crm_hook", "-f", "csv")) == []
