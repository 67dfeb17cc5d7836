"""The ``clew`` command line."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from typing import Annotated

import typer
from rich.table import Table

from clew._ports import ensure_port_free
from clew.cli_audiences import audiences_app
from clew.cli_common import ConfigFile, DataDir, Host, Port, console, fail, settings_from
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

app = typer.Typer(
    cls=ClewGroup,
    help="Clew, an open-source customer data platform.",
    no_args_is_help=True,
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


@app.command()
def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run the collector, every stage and the APIs in one process."""
    from clew.server import Clew
    from clew.server import serve as run_server

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

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
        sql_cmd = f'clew sql "SELECT count(*) FROM events" --data-dir {settings.data_dir}'
        console.print(f"  SQL:           {sql_cmd}")
        console.print(
            f"                 POST {base}/v1/sql with a token from `clew tokens create NAME`"
        )
        console.print(f"  Health:        {base}/health   Metrics: {base}/metrics")
        console.print("Press Ctrl+C to stop.")

    try:
        run_server(settings, on_ready=ready)
    except DataDirInUseError as e:
        raise fail(str(e)) from None


@app.command()
def collector(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run only the Tracking API (no stages, no Profile/Admin API); run as many as you like,
    next to `clew worker` processes (docs/scale-out.md, "Process roles")."""
    from clew.collector.process import CollectorProcess, run_collector

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [collector] %(name)s: %(message)s"
    )

    def ready(process: CollectorProcess) -> None:
        base = f"http://{settings.host}:{settings.port}"
        backend = settings.log.backend
        where = (
            f"Kafka at {settings.log.bootstrap_servers}"
            if backend == "kafka"
            else f"the embedded log in {settings.data_dir} (this machine only)"
        )
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
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{'+'.join(stage)}] %(name)s: %(message)s",
    )
    try:
        run_worker(settings, stage)
    except UnknownStageError as e:
        raise fail(str(e), 2) from None


# Rows `clew sql` prints as a table unless --limit says otherwise.
TABLE_ROWS = 1_000


@app.command()
def sql(
    query: str,
    format: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
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
    """Run a read-only SQL query over the lake (works while `clew serve` is writing), within
    the `sql` memory limit. Rows past the limit are counted, not printed."""
    from clew.api.sql import jsonable
    from clew.lake.query import Lake, QueryError, QueryLimits

    if format not in ("table", "json", "csv"):
        raise fail("--format must be table, json or csv", 2)
    if limit is None:
        limit = TABLE_ROWS if format == "table" else 0
    settings = settings_from(config, data_dir=data_dir)
    try:
        lake = Lake(
            settings.lake_location, settings.cold_location, QueryLimits.from_settings(settings)
        )
        result = lake.sql(query, limit or None, include_cold, count_rest=True)
    except QueryError as e:
        raise fail(str(e)) from None
    if format == "json":
        rows = [dict(zip(result.columns, map(jsonable, r), strict=True)) for r in result.rows]
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
    elif format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(result.columns)
        writer.writerows([[jsonable(v) for v in r] for r in result.rows])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(*result.columns)
        for r in result.rows:
            table.add_row(*("NULL" if v is None else str(jsonable(v)) for v in r))
        console.print(table)
    if result.left_out:
        left_out = (
            f"{result.left_out:,} more row{'s' if result.left_out != 1 else ''} left out "
            f"(--limit {limit:,} shown; --limit 0 prints all)"
        )
        # On stderr, so that the json and csv on stdout stay whole.
        typer.echo(left_out, err=True)


@app.command()
def demo(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    users: Annotated[int, typer.Option(help="Simulated visitors.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same traffic).")] = 7,
) -> None:
    """Simulate a small e-commerce site through the HTTP API, then answer the README's
    example questions in SQL."""
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
