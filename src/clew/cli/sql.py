"""`clew sql`: a read-only SQL query over the lake, printed as a table, JSON or CSV."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    OutputFormat,
    fail,
    listing,
    output_format,
    plural,
    print_json,
    print_table,
    settings_from,
    write_csv,
)

if TYPE_CHECKING:
    from clew.config import Settings


# Rows `clew sql` prints as a table unless --limit says otherwise.
TABLE_ROWS = 1_000


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
    _print_rows(result.columns, result.rows, fmt)
    if result.left_out:
        left_out = (
            f"{plural(result.left_out, 'more row')} left out "
            f"(--limit {limit:,} shown; --limit 0 prints all)"
        )
        # On stderr, so that the json and csv on stdout stay whole.
        typer.echo(left_out, err=True)
    if not include_cold:
        cold = _cold_rows(settings, query)
        if cold:
            typer.echo(
                f"note: {plural(cold, 'more row')} of the tables queried "
                "are in the cold tier; --include-cold queries them too",
                err=True,
            )


def _print_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: OutputFormat) -> None:
    """The result's rows on stdout: JSON objects, CSV lines or a table (NULL for None)."""
    from clew.api.sql import jsonable

    if fmt is OutputFormat.json:
        print_json([dict(zip(columns, map(jsonable, r), strict=True)) for r in rows])
    elif fmt is OutputFormat.csv:
        write_csv(columns, ([jsonable(v) for v in r] for r in rows))
    else:
        table = listing(*columns)
        for r in rows:
            table.add_row(*(Text("NULL" if v is None else str(jsonable(v))) for v in r))
        print_table(table)


def _cold_rows(settings: Settings, query: str) -> int:
    """Rows the cold tier holds of the tiered tables ``query`` names."""
    from clew.lake.tiers import tier_status

    named = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)}
    return sum(
        s.rows for s in tier_status(settings) if s.tier == "cold" and s.table.lower() in named
    )
