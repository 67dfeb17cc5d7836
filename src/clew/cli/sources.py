"""`clew sources`: sources and their write keys, the credentials the Tracking API takes (see
docs/security.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    console,
    duration_option,
    err,
    iso_of_s,
    listing,
    minute_of_s,
    open_catalog,
    output_format,
    print_listing,
)

sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)

WriteKey = Annotated[
    str | None, typer.Option("--write-key", help="Use this key instead of a random one.")
]


@sources_app.command("create")
def sources_create(
    name: str, write_key: WriteKey = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Create a source and print its write key (names are unique ignoring case)."""
    with open_catalog(config, data_dir, "provision") as catalog:
        src = catalog.create_source(name, write_key)
    print(src.write_key)


@sources_app.command("list")
def sources_list(
    removed: Annotated[
        bool,
        typer.Option("--removed", help="Also list removed sources (their keys no longer work)."),
    ] = False,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List sources with their write keys.

    As JSON: a list of {name, id, write_key, removed_at}, removed_at an ISO-8601 time or
    null."""
    fmt = output_format(format, as_json)
    with open_catalog(config, data_dir) as catalog:
        sources = catalog.sources(include_removed=removed)
    table = listing("name", "id", "write key", *(["removed"] if removed else []))
    for s in sources:
        table.add_row(s.name, s.id, s.write_key, *([minute_of_s(s.removed_at)] if removed else []))
    docs = [
        {"name": s.name, "id": s.id, "write_key": s.write_key, "removed_at": iso_of_s(s.removed_at)}
        for s in sources
    ]
    print_listing(table, fmt, docs)


@sources_app.command("rotate")
def sources_rotate(
    name: str,
    grace: Annotated[
        str | None,
        typer.Option(
            "--grace",
            help="Keep the old key working this long (e.g. 1h, 7d) while SDKs move to the new "
            "one; by default it stops at once.",
            show_default=False,
        ),
    ] = None,
    write_key: WriteKey = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Give a source a new write key and print it.

    The old key stops working after the grace period (within a second in every collector
    sharing this catalog)."""
    grace_s = 0.0 if grace is None else duration_option("--grace", grace)
    with open_catalog(config, data_dir) as catalog:
        src = catalog.rotate_write_key(name, grace_s, write_key)
    until = f"for {grace} more" if grace_s else "no more"
    err.print(f"new write key of source '{src.name}'; the old key works {until}:")
    print(src.write_key)


@sources_app.command("remove")
def sources_remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Stop a source's write keys (within a second in every collector).

    Its events stay, and its name stays taken."""
    with open_catalog(config, data_dir) as catalog:
        src = catalog.remove_source(name)
    console.print(f"removed source '{src.name}' ({src.id}); its events stay")
