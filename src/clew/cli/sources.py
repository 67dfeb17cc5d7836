"""`clew sources`: sources and their write keys, the credentials the Tracking API takes (see
docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    console,
    duration_option,
    err,
    fail,
    iso_of_s,
    listing,
    minute_of_s,
    open_catalog,
    output_format,
    print_listing,
    settings_from,
)

sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)

WriteKey = Annotated[
    str | None, typer.Option("--write-key", help="Use this key instead of a random one.")
]


@sources_app.command("create")
def sources_create(
    name: str, write_key: WriteKey = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Create a source and print its write key (names are unique ignoring case).

    Run again with the same name and --write-key, it prints the key and changes nothing, so a
    deploy pipeline may run it on every machine."""
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


@sources_app.command("migrate")
def sources_migrate(
    meta: Annotated[
        Path | None,
        typer.Argument(
            help="The meta.db to copy; this data directory's when left out.", show_default=False
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Copy a meta.db's sources and tokens into the configured catalog.

    Run it once, on moving to store.backend = "redis" (docs/scale-out.md, "One control
    plane"). Sources keep their ids, write keys, keys in a grace period and removal; tokens their
    hashes, scopes, expiry and last use. What the catalog has already is left as it is, so
    running it again changes nothing; a source whose name is taken there by another source
    is not copied, and is named."""
    from clew.backends import catalog_file, open_catalog_store
    from clew.catalog_store import SqliteCatalogStore, copy_catalog

    settings = settings_from(config, data_dir=data_dir)
    path = (meta or settings.meta_path).resolve()
    if not path.is_file():
        raise fail(escape(f"there is no catalog at {path} to copy"))
    own = catalog_file(settings)
    if own is not None and own.resolve() == path:
        raise fail(
            escape(
                f'{path} is this deployment\'s catalog already; set store.backend = "redis" '
                "to copy it into the shared store"
            )
        )
    old = SqliteCatalogStore(path)
    target = open_catalog_store(settings)
    try:
        sources, tokens, skipped = copy_catalog(old, target)
        where = target.where()
    finally:
        old.close()
        target.close()
    for src in skipped:
        err.print(
            escape(
                f"warning: source '{src.name}' ({src.id}) not copied: {where} has another "
                "source of that name; this copy's write key works only if it is that source's, "
                f"and its past events keep the id {src.id}"
            ),
            highlight=False,
        )
    console.print(
        escape(f"{where} holds {sources} source(s) and {tokens} token(s) of {path}"),
        highlight=False,
    )
