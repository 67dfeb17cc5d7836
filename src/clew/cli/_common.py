"""What every `clew` command shares: consoles, the --data-dir/--config options, settings,
how listings are printed (``--format table|json|csv``), how times and durations are read and
shown, and the stores several command groups open (the catalog, the schema registry)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clew._names import did_you_mean
from clew.cli._errors import DataUse, ExitCode, command_settings, exit_with
from clew.config import ConfigError, Settings

if TYPE_CHECKING:
    from clew.schema import SchemaRegistry
    from clew.sources import Catalog

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Width of a table printed to a pipe or file: wide enough that no row is ever wrapped.
_PIPE_WIDTH = 100_000


class OutputFormat(StrEnum):
    """How a listing prints: a table for people, JSON or CSV for programs."""

    table = "table"
    json = "json"
    csv = "csv"


Format = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        "-f",
        help="table (for people), json or csv (for programs). [default: table]",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="The same as --format json.")]
Host = Annotated[str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1]")]
Port = Annotated[int | None, typer.Option(help="Port to listen on [default: 8088]")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where Clew keeps its data [default: ./.clew]", show_default=False
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="A TOML settings file.", show_default=False)
]


def settings_from(config: Path | None, *, data: DataUse = "read", **overrides: Any) -> Settings:
    """The settings for a command, or exit 2 with one line per configuration error; ``data``
    says whether the data directory must exist already (see :func:`command_settings`)."""
    try:
        return command_settings(config, data=data, **overrides).settings
    except ConfigError as e:
        raise exit_with(e) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error; raise the returned exit."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def unknown_name(
    kind: str, name: str, known: Iterable[str], *, plural: str | None = None, hint: str = ""
) -> typer.Exit:
    """Print that there is no ``kind`` named ``name``; return the exit to raise
    (:attr:`ExitCode.FAILED`, as for anything named that does not exist).

    The message names the known name closest to ``name``; when none is close, up to ten of
    the ``known`` names (``plural`` is the noun for them, ``kind + "s"`` by default), or says
    there are none. ``hint`` (e.g. "`clew sources list` shows them") ends the line:
    ``error: there is no source named 'wbe' (did you mean 'web'?)``."""
    names = sorted(set(known), key=str.lower)
    nouns = plural or f"{kind}s"
    detail = did_you_mean(name, names)
    if not detail and names:
        more = ", …" if len(names) > _NAMES_SHOWN else ""
        detail = f" ({nouns}: {', '.join(names[:_NAMES_SHOWN])}{more})"
    elif not names:
        detail = f" (there are no {nouns} yet)"
    end = f"; {hint}" if hint else ""
    return fail(escape(f"there is no {kind} named {name!r}{detail}{end}"), ExitCode.FAILED)


# Known names an unknown-name error lists when none of them is close.
_NAMES_SHOWN = 10


def output_format(fmt: OutputFormat | None, as_json: bool = False) -> OutputFormat:
    """The format a listing asked for: ``--json`` is ``--format json``; asking for json and
    another format at once is a usage error (exit 2)."""
    if as_json and fmt not in (None, OutputFormat.json):
        raise fail(f"--json and --format {fmt.value} disagree; give one of them", 2)
    if as_json:
        return OutputFormat.json
    return fmt or OutputFormat.table


def listing(*columns: str, prose: Iterable[str] = (), title: str | None = None) -> Table:
    """An empty table whose columns keep their cells whole: names, ids, times and numbers
    never wrap (on a narrow terminal the table grows past it instead of breaking one).
    Columns named in ``prose`` hold sentences: they wrap between words, and fold a word only
    when it is longer than the whole column."""
    table = Table(title=title)
    wrapping = set(prose)
    for name in columns:
        if name in wrapping:
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, no_wrap=True)
    return table


def print_table(table: Table, *, stderr: bool = False) -> None:
    """Print ``table`` on stdout (or stderr). On a terminal it fits the terminal as well as
    its unbreakable columns allow; to a pipe or file no row is wrapped at all, whatever
    ``COLUMNS`` says."""
    out = err if stderr else console
    if out.is_terminal:
        out.print(table)
    else:
        file = sys.stderr if stderr else sys.stdout
        Console(file=file, width=_PIPE_WIDTH, soft_wrap=True).print(table)


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (UTF-8 as is, not escaped); values JSON has
    no type for (times, paths) as their ``str()``."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")


def write_csv(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """A header line and one line per row on stdout, RFC 4180 quoting, LF line endings;
    ``None`` is an empty field."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in rows)


def print_listing(table: Table, fmt: OutputFormat, json_value: Any) -> None:
    """Print a listing as ``fmt`` asks: ``table`` as a table, ``json_value`` as JSON, or the
    table's columns and cells (their plain text, markup removed) as CSV."""
    if fmt is OutputFormat.json:
        print_json(json_value)
    elif fmt is OutputFormat.csv:
        cells = [[_plain(c) for c in column.cells] for column in table.columns]
        write_csv([_plain(c.header) for c in table.columns], zip(*cells, strict=True))
    else:
        print_table(table)


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def plural(n: int, noun: str) -> str:
    """``n`` (with thousands separators) and ``noun``, an ``s`` added unless ``n`` is 1:
    ``1,204 dead letters``, ``1 more row``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def time_of_ms(ms: int) -> str:
    """An epoch time in milliseconds as Clew prints event times (ISO-8601, UTC)."""
    from clew.events import format_time

    return format_time(dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC))


def minute_of_s(at: float | None) -> str:
    """An epoch time in seconds to the minute, ``2026-01-05 14:00 UTC``; ``-`` for None."""
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso_of_s(at: float | None) -> str | None:
    """An epoch time in seconds as ISO-8601 (UTC), None for None."""
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def time_option(option: str, value: str | None) -> dt.datetime | None:
    """The ISO-8601 time an option gave (None when left out), or exit 2 naming ``option``."""
    from clew.events import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise fail(f"{option} must be an ISO-8601 time such as 2026-01-05T14:00:00Z", 2) from None


def duration_option(option: str, text: str) -> float:
    """The seconds a duration option gave (``30d``, ``12h``), or exit 2 naming ``option``."""
    from clew.audiences.definitions import DefinitionError, parse_duration

    try:
        return parse_duration(text, option) / 1000
    except DefinitionError as e:
        raise fail(str(e), 2) from None


def source_names(settings: Settings) -> dict[str, str]:
    """Every source's name by its id, removed sources too (their events still name them)."""
    from clew.sources import Catalog

    catalog = Catalog.open(settings)
    try:
        return {s.id: s.name for s in catalog.sources()}
    finally:
        catalog.close()


@contextmanager
def open_catalog(
    config: Path | None, data_dir: Path | None, data: DataUse = "read"
) -> Iterator[Catalog]:
    """The catalog of the settings' data dir (``data``: see :func:`command_settings`); a
    :class:`~clew.sources.CatalogError` exits 1 with its message."""
    from clew.sources import Catalog, CatalogError

    settings = settings_from(config, data=data, data_dir=data_dir)
    catalog = Catalog.open(settings)
    try:
        yield catalog
    except CatalogError as e:
        raise fail(str(e)) from None
    finally:
        catalog.close()


def open_registry(
    data_dir: Path | None, config: Path | None, data: DataUse = "read"
) -> SchemaRegistry:
    """The schema registry of the settings' data dir (a context manager that closes it)."""
    from clew.schema import SchemaRegistry

    settings = settings_from(config, data=data, data_dir=data_dir)
    return SchemaRegistry.open(settings)
