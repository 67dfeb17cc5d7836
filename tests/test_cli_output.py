"""What `clew` prints: listings as a table, JSON or CSV (fit for a pipe), help for every
option, and a `clew serve` that stops quietly and prints commands that work as shown."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from _support import clew_bin
from clew.background import free_port
from clew.cli import app

runner = CliRunner()

# Longer than an 80-column table leaves for the column; a name a wrapping table would break.
LONG_NAME = "cart_abandoner_reminders_for_returning_customers_of_the_spring_campaign"


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    d = str(tmp_path / "data")
    made = runner.invoke(
        app, ["sources", "create", LONG_NAME, "--write-key", "k" * 40, "--data-dir", d]
    )
    assert made.exit_code == 0, made.output
    return d


def test_a_piped_table_keeps_every_identifier_whole_at_80_columns(data_dir: str) -> None:
    listing = runner.invoke(app, ["sources", "list", "--data-dir", data_dir], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.stdout.splitlines() if LONG_NAME in line)
    assert "k" * 40 in row


def test_json_and_its_json_alias_parse_and_agree(data_dir: str) -> None:
    by_format = runner.invoke(app, ["sources", "list", "--format", "json", "--data-dir", data_dir])
    by_alias = runner.invoke(app, ["sources", "list", "--json", "--data-dir", data_dir])
    assert by_format.exit_code == by_alias.exit_code == 0
    assert by_format.stdout == by_alias.stdout
    [source] = json.loads(by_format.stdout)
    assert (source["name"], source["write_key"], source["removed_at"]) == (
        LONG_NAME,
        "k" * 40,
        None,
    )


def test_json_and_another_format_at_once_is_a_usage_error(data_dir: str) -> None:
    both = runner.invoke(app, ["sources", "list", "--json", "-f", "csv", "--data-dir", data_dir])
    assert both.exit_code == 2
    assert "--json and --format csv disagree" in both.stderr


def test_csv_has_a_header_and_lf_line_endings(data_dir: str) -> None:
    listing = runner.invoke(app, ["sources", "list", "-f", "csv", "--data-dir", data_dir])
    assert listing.exit_code == 0, listing.output
    assert "\r" not in listing.stdout and listing.stdout.endswith("\n")
    rows = list(csv.reader(io.StringIO(listing.stdout)))
    assert rows[0] == ["name", "id", "write key"]
    assert (rows[1][0], rows[1][2]) == (LONG_NAME, "k" * 40)

    q = "SELECT 1 AS one, 'a,b' AS text"
    result = runner.invoke(app, ["sql", q, "--format", "csv", "--data-dir", data_dir])
    assert result.stdout == 'one,text\n1,"a,b"\n'


def test_every_listing_takes_format_and_json(data_dir: str) -> None:
    listings = [
        ["sources", "list"],
        ["tokens", "list"],
        ["schema", "list"],
        ["dlq", "list"],
        ["dlq", "stats"],
        ["import", "reviews"],
        ["audiences", "list"],
        ["destinations", "list"],
        ["privacy", "list"],
        ["lifecycle", "status"],
    ]
    for command in listings:
        as_csv = runner.invoke(app, [*command, "-f", "csv", "--data-dir", data_dir])
        assert as_csv.exit_code == 0, (command, as_csv.output)
        assert "\r" not in as_csv.stdout and as_csv.stdout.count("\n") >= 1, command
        as_json = runner.invoke(app, [*command, "--json", "--data-dir", data_dir])
        assert as_json.exit_code == 0, (command, as_json.output)
        json.loads(as_json.stdout)


def test_schema_list_of_an_unknown_source_says_so(data_dir: str) -> None:
    result = runner.invoke(app, ["schema", "list", "--source", "nope", "--data-dir", data_dir])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: there is no source named 'nope' (sources: {LONG_NAME}, default)"
    ]
    known = runner.invoke(app, ["schema", "list", "--source", LONG_NAME, "--data-dir", data_dir])
    assert known.exit_code == 0, known.output


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every command under ``command`` (a group's commands, recursively) with its path."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [(" ".join(path), command)]
    return [found for name, sub in subcommands.items() for found in _commands(sub, (*path, name))]


COMMANDS = _commands(typer.main.get_command(app))


def test_every_option_of_every_command_is_described() -> None:
    assert len(COMMANDS) > 40
    undescribed = [
        f"clew {name} {param.opts[0]}"
        for name, command in COMMANDS
        for param in command.params
        if param.param_type_name == "option" and not param.hidden and not (param.help or "").strip()
    ]
    assert undescribed == []


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_help_shows_prose_without_raw_markup_or_bool_metavars(name: str, command: Any) -> None:
    shown = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    assert "``" not in shown.stdout and "<bool>" not in shown.stdout
    assert (command.help or "").strip(), f"clew {name} has no help"
    summary = (command.help or "").strip().splitlines()[0]
    # The summary is a whole sentence on one line; the rest are paragraphs that rewrap.
    assert summary.endswith((".", ")", ":")), f"clew {name}: {summary!r}"


def _start_serve(tmp_path: Path, path_env: str) -> tuple[subprocess.Popen[str], str]:
    """`clew serve` started by its full path, with PATH as given; returns once the banner
    is printed, with the banner."""
    proc = subprocess.Popen(
        [clew_bin(), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": path_env},
    )
    assert proc.stdout is not None
    banner = ""
    deadline = time.monotonic() + 60
    while "Press Ctrl+C" not in banner and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
    assert "Press Ctrl+C" in banner, proc.communicate(timeout=30)
    return proc, banner


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_on_a_signal_with_exit_0_and_no_traceback(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, _ = _start_serve(tmp_path, os.environ.get("PATH", ""))
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr


def test_the_banner_names_clew_as_it_can_be_run_from_this_shell(tmp_path: Path) -> None:
    venv_bin = str(Path(clew_bin()).parent)
    elsewhere = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    proc, banner = _start_serve(tmp_path, elsewhere)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert f'{clew_bin()} sql "SELECT count(*) FROM events"' in banner
    assert f"{clew_bin()} tokens create NAME" in banner
    assert " clew sql" not in banner
