"""`clew tokens`: scoped access tokens for the SQL, Profile, Admin and privacy APIs and
/metrics (see docs/security.md)."""

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
from clew.sources import ALL_SCOPES, SCOPES, parse_scopes

tokens_app = typer.Typer(
    help="Scoped access tokens for SQL, the Profile, Admin and privacy APIs and /metrics.",
    no_args_is_help=True,
)


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
    expires_in_s = None if expires is None else duration_option("--expires", expires)
    with open_catalog(config, data_dir, "provision") as catalog:
        scopes = parse_scopes(scope or [])
        token = catalog.create_token(name, scopes, expires_in_s)
    lasting = f", expires in {expires}" if expires else ""
    err.print(f"token '{name}' with scopes {', '.join(scopes)}{lasting} (shown only once):")
    print(token)


@tokens_app.command("revoke")
def tokens_revoke(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke an access token.

    Every Clew process sharing this catalog refuses it from its next request."""
    with open_catalog(config, data_dir) as catalog:
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
    with open_catalog(config, data_dir) as catalog:
        tokens = catalog.tokens()
    docs = [
        {
            "name": t.name,
            "scopes": [s for s in SCOPES if s in t.scopes],
            "legacy": t.legacy,
            "created_at": iso_of_s(t.created_at),
            "expires_at": iso_of_s(t.expires_at),
            "last_used_at": iso_of_s(t.last_used_at),
        }
        for t in tokens
    ]
    table = listing("name", "scopes", "created", "expires", "last used", prose=["scopes"])
    for t in tokens:
        scopes = ", ".join(s for s in SCOPES if s in t.scopes)
        if t.legacy:
            scopes = f"{ALL_SCOPES} (created before scopes existed; re-create it to narrow)"
        table.add_row(
            t.name,
            scopes,
            minute_of_s(t.created_at),
            minute_of_s(t.expires_at),
            minute_of_s(t.last_used_at),
        )
    print_listing(table, fmt, docs)
