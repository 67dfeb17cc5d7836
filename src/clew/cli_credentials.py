"""`clew sources` (sources and their write keys) and `clew tokens` (scoped access tokens):
the credentials Clew hands out, see docs/security.md."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from clew.audiences.definitions import DefinitionError, parse_duration
from clew.cli_common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    console,
    err,
    fail,
    listing,
    output_format,
    print_listing,
    settings_from,
)
from clew.cli_errors import DataUse
from clew.sources import ALL_SCOPES, SCOPES, Catalog, CatalogError, parse_scopes

sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Scoped access tokens for SQL, the Profile, Admin and privacy APIs and /metrics.",
    no_args_is_help=True,
)

WriteKey = Annotated[
    str | None, typer.Option("--write-key", help="Use this key instead of a random one.")
]


@contextmanager
def _catalog(
    config: Path | None, data_dir: Path | None, data: DataUse = "read"
) -> Iterator[Catalog]:
    """The catalog of the settings' data dir (``data``: see :func:`command_settings`); a
    :class:`CatalogError` exits 1 with its message."""
    settings = settings_from(config, data=data, data_dir=data_dir)
    catalog = Catalog(settings.meta_path)
    try:
        yield catalog
    except CatalogError as e:
        raise fail(str(e)) from None
    finally:
        catalog.close()


@sources_app.command("create")
def sources_create(
    name: str, write_key: WriteKey = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Create a source and print its write key (names are unique ignoring case)."""
    with _catalog(config, data_dir, "provision") as catalog:
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
    with _catalog(config, data_dir) as catalog:
        sources = catalog.sources(include_removed=removed)
    table = listing("name", "id", "write key", *(["removed"] if removed else []))
    for s in sources:
        table.add_row(s.name, s.id, s.write_key, *([_when(s.removed_at)] if removed else []))
    docs = [
        {"name": s.name, "id": s.id, "write_key": s.write_key, "removed_at": _iso(s.removed_at)}
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
    grace_s = 0.0 if grace is None else _duration_s(grace, "--grace")
    with _catalog(config, data_dir) as catalog:
        src = catalog.rotate_write_key(name, grace_s, write_key)
    until = f"for {grace} more" if grace_s else "no more"
    err.print(f"new write key of source '{src.name}'; the old key works {until}:")
    print(src.write_key)


@sources_app.command("remove")
def sources_remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Stop a source's write keys (within a second in every collector).

    Its events stay, and its name stays taken."""
    with _catalog(config, data_dir) as catalog:
        src = catalog.remove_source(name)
    console.print(f"removed source '{src.name}' ({src.id}); its events stay")


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help=f"{', '.join(SCOPES)} or {ALL_SCOPES} (repeatable or comma-separated); "
            "sql and profiles when left out.",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Stop working after this long (e.g. 30d, 12h).", show_default=False
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an access token and print it (it is shown only once; only its hash is kept)."""
    expires_in_s = None if expires is None else _duration_s(expires, "--expires")
    with _catalog(config, data_dir, "provision") as catalog:
        scopes = parse_scopes(scope or [])
        token = catalog.create_token(name, scopes, expires_in_s)
    lasting = f", expires in {expires}" if expires else ""
    err.print(f"token '{name}' with scopes {', '.join(scopes)}{lasting} (shown only once):")
    print(token)


@tokens_app.command("revoke")
def tokens_revoke(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke an access token.

    Every Clew process sharing this catalog refuses it from its next request."""
    with _catalog(config, data_dir) as catalog:
        catalog.revoke_token(name)
    console.print(f"revoked token '{name}'")


@tokens_app.command("list")
def tokens_list(
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List tokens: name, scopes, created, expires, last used.

    Never the token itself: only its hash is kept. As JSON: a list of {name, scopes,
    legacy, created_at, expires_at, last_used_at}, times in ISO-8601 or null; a legacy
    token (made before scopes existed) holds every scope."""
    fmt = output_format(format, as_json)
    with _catalog(config, data_dir) as catalog:
        tokens = catalog.tokens()
    docs = [
        {
            "name": t.name,
            "scopes": [s for s in SCOPES if s in t.scopes],
            "legacy": t.legacy,
            "created_at": _iso(t.created_at),
            "expires_at": _iso(t.expires_at),
            "last_used_at": _iso(t.last_used_at),
        }
        for t in tokens
    ]
    table = listing("name", "scopes", "created", "expires", "last used", prose=["scopes"])
    for t in tokens:
        scopes = ", ".join(s for s in SCOPES if s in t.scopes)
        if t.legacy:
            scopes = f"{ALL_SCOPES} (created before scopes existed; re-create it to narrow)"
        table.add_row(
            t.name, scopes, _when(t.created_at), _when(t.expires_at), _when(t.last_used_at)
        )
    print_listing(table, fmt, docs)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def _duration_s(text: str, option: str) -> float:
    try:
        return parse_duration(text, option) / 1000
    except DefinitionError as e:
        raise fail(str(e), 2) from None
