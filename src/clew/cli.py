"""The ``clew`` command line."""

from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from clew._ports import ensure_port_free
from clew.cli_audiences import audiences_app
from clew.cli_common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    Host,
    OutputFormat,
    Port,
    console,
    fail,
    listing,
    output_format,
    print_json,
    print_table,
    settings_from,
    write_csv,
)
from clew.cli_config import config_app
from clew.cli_credentials import sources_app, tokens_app
from clew.cli_destinations import destinations_app
from clew.cli_dlq import dlq_app
from clew.cli_errors import ClewGroup, Debug, set_debug
from clew.cli_identity import identity_app
from clew.cli_import import import_app
from clew.cli_lifecycle import lifecycle_app
from clew.cli_privacy import privacy_app
from clew.cli_rebuild import rebuild
from clew.cli_schema import plan_app, schema_app
from clew.config import Settings

app = typer.Typer(
    cls=ClewGroup,
    help="Clew, an open-source customer data platform.",
    no_args_is_help=True,
    # Plain help: paragraphs rewrap to the terminal, no markup is interpreted in docstrings,
    # and flags show no value type.
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(ctx: typer.Context, debug: Debug = False) -> None:
    set_debug(ctx, debug)


app.add_typer(config_app, name="config")
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(plan_app, name="plan")
app.add_typer(schema_app, name="schema")
app.add_typer(dlq_app, name="dlq")
app.add_typer(identity_app, name="identity")
app.add_typer(destinations_app, name="destinations")
app.add_typer(audiences_app, name="audiences")
app.add_typer(import_app, name="import")
app.add_typer(lifecycle_app, name="lifecycle")
app.add_typer(privacy_app, name="privacy")
app.command(name="rebuild")(rebuild)


def _log_to_stderr(role: str = "") -> None:
    """Log INFO and up to stderr, each line tagged with ``role`` when given. HTTP clients log
    WARNING and up only (a webhook destination would log a line per delivery)."""
    tag = f"[{role}] " if role else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"
    )
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _invoked_as() -> str:
    """How to run `clew` from the shell this process was started from: ``clew`` when that
    name finds this program on PATH, else the path it was started by (``.venv/bin/clew``
    after `make run`, where the virtualenv is not activated)."""
    argv0 = sys.argv[0]
    found = shutil.which("clew")
    if Path(argv0).name != "clew" or (found and Path(found).resolve() == Path(argv0).resolve()):
        return "clew"
    return argv0


@app.command()
def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="Log every HTTP request (method, path, status)."),
    ] = False,
) -> None:
    """Run the collector, every stage and the APIs in one process.

    Stops on Ctrl+C (SIGINT) or SIGTERM: it refuses new events, lets the stages drain and
    exits 0."""
    from clew.server import Clew
    from clew.server import serve as run_server

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    _log_to_stderr()

    from clew._datadir import DataDirInUseError, open_to_others

    warning = open_to_others(settings.data_dir)
    if warning is not None:
        logging.getLogger("clew.serve").warning(warning)

    def ready(clew: Clew) -> None:
        base = f"http://{settings.host}:{settings.port}"
        console.print(
            f"[bold green]Clew is running[/bold green] on {base} (data in {settings.data_dir})"
        )
        src = clew.default_source
        console.print(f"  write key of source '{src.name}': [bold]{src.write_key}[/bold]")
        console.print(f"  Tracking API:  {base}/v1/batch  (Segment / RudderStack SDK host: {base})")
        clew_cmd = _invoked_as()
        sql_cmd = f'{clew_cmd} sql "SELECT count(*) FROM events" --data-dir {settings.data_dir}'
        console.print(f"  SQL:           {escape(sql_cmd)}", highlight=False)
        console.print(
            f"                 POST {base}/v1/sql with a token from "
            f"`{escape(clew_cmd)} tokens create NAME --data-dir {settings.data_dir}`",
            highlight=False,
        )
        console.print(f"  Health:        {base}/health   Metrics: {base}/metrics")
        console.print("Press Ctrl+C to stop.")

    try:
        run_server(settings, on_ready=ready, access_log=access_log)
    except DataDirInUseError as e:
        raise fail(str(e)) from None


@app.command()
def collector(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run only the Tracking API (no stages, no Profile/Admin API).

    Run as many as you like, next to `clew worker` processes (docs/scale-out.md, "Process
    roles")."""
    from clew.backends import describe_log
    from clew.collector.process import CollectorProcess, run_collector

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    _log_to_stderr("collector")

    def ready(process: CollectorProcess) -> None:
        base = f"http://{settings.host}:{settings.port}"
        where = describe_log(settings)
        console.print(f"[bold green]Clew collector[/bold green] on {base}, appending to {where}")
        src = process.default_source
        console.print(f"  write key of source '{src.name}': [bold]{src.write_key}[/bold]")
        console.print(f"  Health: {base}/health   Metrics: {base}/metrics")

    run_collector(settings, on_ready=ready)


@app.command()
def worker(
    stage: Annotated[
        list[str],
        typer.Option(
            "--stage",
            help="validate, lake, monitor, profiles, profiles-lake or destinations (repeatable)",
        ),
    ],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    settings_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run one stage in the foreground (`clew serve` starts one worker per stage itself)."""
    from clew.stages.workers import UnknownStageError, receive_settings, run_worker

    if settings_fd is not None:
        settings = receive_settings(settings_fd)
    else:
        settings = settings_from(config, data="create", data_dir=data_dir)
    _log_to_stderr("+".join(stage))
    try:
        run_worker(settings, stage)
    except UnknownStageError as e:
        raise fail(str(e), 2) from None


# Rows `clew sql` prints as a table unless --limit says otherwise.
TABLE_ROWS = 1_000


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SELECT (or WITH … SELECT) statement.")],
    format: Format = None,
    as_json: AsJson = False,
    include_cold: Annotated[
        bool,
        typer.Option(
            "--include-cold",
            help="Query cold partitions too (docs/lifecycle.md); warm only by default.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=0,
            help=f"Rows to print at most (0: all). Default: {TABLE_ROWS:,} as a table, "
            "all as json or csv.",
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run a read-only SQL query over the lake.

    Works while `clew serve` is writing, within the memory limit of the [sql] settings.
    Rows past --limit are counted, not printed. Without --include-cold, a note on stderr
    says how many rows of the tables queried are in the cold tier."""
    from clew.api.sql import jsonable
    from clew.lake.query import Lake, QueryError, QueryLimits

    fmt = output_format(format, as_json)
    if limit is None:
        limit = TABLE_ROWS if fmt is OutputFormat.table else 0
    settings = settings_from(config, data_dir=data_dir)
    try:
        lake = Lake(
            settings.lake_location, settings.cold_location, QueryLimits.from_settings(settings)
        )
        result = lake.sql(query, limit or None, include_cold, count_rest=True)
    except QueryError as e:
        raise fail(str(e)) from None
    if fmt is OutputFormat.json:
        print_json([dict(zip(result.columns, map(jsonable, r), strict=True)) for r in result.rows])
    elif fmt is OutputFormat.csv:
        write_csv(result.columns, ([jsonable(v) for v in r] for r in result.rows))
    else:
        table = listing(*result.columns)
        for r in result.rows:
            table.add_row(*(Text("NULL" if v is None else str(jsonable(v))) for v in r))
        print_table(table)
    if result.left_out:
        left_out = (
            f"{result.left_out:,} more row{'s' if result.left_out != 1 else ''} left out "
            f"(--limit {limit:,} shown; --limit 0 prints all)"
        )
        # On stderr, so that the json and csv on stdout stay whole.
        typer.echo(left_out, err=True)
    if not include_cold:
        cold = _cold_rows(settings, query)
        if cold:
            typer.echo(
                f"note: {cold:,} more row{'s' if cold != 1 else ''} of the tables queried "
                "are in the cold tier; --include-cold queries them too",
                err=True,
            )


def _cold_rows(settings: Settings, query: str) -> int:
    """Rows the cold tier holds of the tiered tables ``query`` names."""
    from clew.lake.tiers import tier_status

    named = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)}
    return sum(
        s.rows for s in tier_status(settings) if s.tier == "cold" and s.table.lower() in named
    )


@app.command()
def demo(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    users: Annotated[int, typer.Option(help="Simulated visitors.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same traffic).")] = 7,
) -> None:
    """Simulate a small e-commerce site through the HTTP API.

    Then answer the README's example questions in SQL."""
    from clew._datadir import DataDirInUseError
    from clew.demo import DemoError, run_demo

    settings = settings_from(config, data="create", data_dir=data_dir)
    try:
        run_demo(settings, console, users=users, seed=seed)
    except (DemoError, DataDirInUseError) as e:
        raise fail(str(e)) from None


def main() -> None:
    """The `clew` command: every file it writes into the data directory is owner-only."""
    from clew._datadir import restrict_new_files

    restrict_new_files()
    app()


if __name__ == "__main__":
    main()
