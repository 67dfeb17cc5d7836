"""``clew identity``: why a profile holds each identifier (``explain``), and splitting an
identifier off a wrongly merged profile (``split``); see docs/identity-split.md.

Both open the data directory's serving store directly, so they work whether or not
``clew serve`` runs (a split takes the store's write lock for a moment; the profiles stage
waits for it).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    OutputFormat,
    console,
    err,
    fail,
    listing,
    output_format,
    print_json,
    print_listing,
    print_table,
    settings_from,
    source_names,
    time_of_ms,
)

if TYPE_CHECKING:
    from clew.batch.split import SplitResult
    from clew.config import Settings
    from clew.identity.dropped import DroppedIdentifiers
    from clew.identity.resolver import Explanation
    from clew.store.base import Profile, Provenance, Separation

identity_app = typer.Typer(
    help="Identity resolution: why a profile holds its identifiers; split wrong merges.",
    no_args_is_help=True,
)

Ref = Annotated[
    str,
    typer.Argument(
        help="A profile id (an old, merged-away one too) or an identifier as id_type:value, "
        "e.g. email:ada@shop.test.",
        show_default=False,
    ),
]


def _settings(data_dir: Path | None, config: Path | None) -> Settings:
    from clew.backends import serving_store_file

    settings = settings_from(config, data_dir=data_dir)
    store_file = serving_store_file(settings)
    if store_file is not None and not store_file.exists():
        raise fail(
            escape(
                f"no profiles in {settings.data_dir} yet (is --data-dir right? profiles appear "
                "once `clew serve` has processed events)"
            )
        )
    return settings


def _event(p: Provenance, names: dict[str, str]) -> dict[str, Any]:
    return {
        "message_id": p.message_id,
        "source_id": p.source_id,
        "source": names.get(p.source_id, p.source_id),
        "time": time_of_ms(p.time_ms),
        "match_weight": p.match_weight,
    }


def _reason(line: Explanation, names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": line.kind}
    if line.identifier is not None:
        out["identifier"] = str(line.identifier)
    if line.merged_profile is not None:
        out["merged_profile"] = line.merged_profile
    return {**out, **_event(line.provenance, names), "text": line.text}


def _dropped(found: DroppedIdentifiers) -> list[dict[str, Any]]:
    return [
        {"identifier": str(d.identifier), "reason": d.reason, "message_id": d.message_id}
        for d in found.items
    ]


def _history_note(found: DroppedIdentifiers) -> str:
    return (
        f"only the profile's {found.events_read} most recent events were read "
        "(identity.history); identifiers of older events are not shown"
    )


def _separation(sep: Separation) -> dict[str, Any]:
    return {
        "identifier": f"{sep.a[0]}:{sep.a[1]}",
        "apart_from": f"{sep.b[0]}:{sep.b[1]}",
        "by": sep.provenance.source_id,
        "time": time_of_ms(sep.provenance.time_ms),
    }


def _reasons_table(lines: list[Explanation], names: dict[str, str]) -> Table:
    """One row per reason: when, what (an identifier attached, a profile merged in), by
    which event of which source, with what match weight."""
    table = listing("time", "what", "event (message id)", "source", "match weight")
    for line in lines:
        p = line.provenance
        if line.identifier is not None:
            what = f"{line.identifier} attached"
        else:
            what = f"profile {line.merged_profile} merged in"
        weight = "" if p.match_weight is None else f"{p.match_weight:g}"
        table.add_row(
            time_of_ms(p.time_ms),
            escape(what),
            escape(p.message_id),
            escape(names.get(p.source_id, p.source_id)),
            weight,
        )
    return table


@identity_app.command("explain")
def explain(
    ref: Ref,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Why a profile holds each identifier, and which events merged profiles into it.

    Oldest first: the event that attached each identifier (message id, source, time, match
    weight) and each merge with its event; then the separations that concern the profile;
    then the identifiers the profile's recent events carried that it does not hold, with why
    (a placeholder, held by another profile, refused by an identity rule).

    As JSON: {profile_id, reasons, separations, dropped, history_full}; as CSV: the table of
    reasons only."""
    fmt = output_format(format, as_json)
    from clew.backends import open_store
    from clew.batch.split import SplitError, find_profile
    from clew.identity.dropped import dropped_identifiers
    from clew.identity.resolver import IdentityResolver

    settings = _settings(data_dir, config)
    rules = settings.identity.rules
    store = open_store(settings)
    try:
        pid = find_profile(store, ref, rules)
        lines = IdentityResolver(store, rules).explain(pid)
        held = {(i.id_type, i.value) for i in (line.identifier for line in lines) if i}
        seps = [s for s in store.separations() if s.a in held or s.b in held]
        found = dropped_identifiers(store, pid, rules)
    except SplitError as e:
        raise fail(escape(str(e))) from None
    finally:
        store.close()
    names = source_names(settings)
    doc = {
        "profile_id": pid,
        "reasons": [_reason(line, names) for line in lines],
        "separations": [_separation(s) for s in seps],
        "dropped": _dropped(found),
        "history_full": found.history_full,
    }
    table = _reasons_table(lines, names)
    if fmt is not OutputFormat.table:
        print_listing(table, fmt, doc)
        return
    console.print(f"Profile [bold]{escape(pid)}[/bold]")
    print_listing(table, fmt, doc)
    for sep in seps:
        s = _separation(sep)
        console.print(
            escape(
                f"{s['identifier']} is kept apart from {s['apart_from']} ({s['by']}, {s['time']})"
            )
        )
    if found.items:
        dropped = listing("dropped identifier", "why", "event (message id)", prose=["why"])
        for d in found.items:
            dropped.add_row(escape(str(d.identifier)), escape(d.reason), escape(d.message_id))
        console.print("Dropped (carried by its recent events, not held by this profile):")
        print_table(dropped)
    if found.history_full:
        console.print(escape(_history_note(found)))


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _profile_doc(p: Profile) -> dict[str, Any]:
    return {
        "profile_id": p.profile_id,
        "identifiers": [f"{e.id_type}:{e.value}" for e in p.identities],
        "orders_count": p.computed.get("orders_count", 0),
        "total_lifetime_value": p.computed.get("total_lifetime_value", 0.0),
        "first_seen": time_of_ms(p.first_seen_ms),
        "last_seen": time_of_ms(p.last_seen_ms),
    }


def _result_doc(r: SplitResult) -> dict[str, Any]:
    return {
        "old_profile_id": r.old_profile_id,
        "identifier": str(r.identifier),
        "apart_from": str(r.anchor),
        "profiles": [_profile_doc(p) for p in r.profiles],
        "retired": [{"profile_id": c.profile_id, "into": c.into} for c in r.retired],
        "events_replayed": r.events_replayed,
        "events_from_log": r.events_from_log,
        "events_pending": r.events_pending,
        "events_missing": r.events_missing,
        "unplaced": [str(i) for i in r.unplaced],
    }


@identity_app.command("split")
def split(
    ref: Ref,
    identifier: Annotated[
        str,
        typer.Option(
            "--identifier",
            help="The identifier that does not belong with the rest of the profile, as "
            "id_type:value.",
            show_default=False,
        ),
    ],
    operator: Annotated[
        str | None,
        typer.Option(help="Who asks; recorded with the separation (default: your login name)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Split even if some of the profile's events can no longer be read."
        ),
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Split an identifier off a wrongly merged profile (see docs/identity-split.md).

    The identifier is kept apart from the profile's most trusted other identifier from now
    on, and the profile is re-derived from its events into the profiles they now give."""
    from clew.batch.split import SplitError, parse_split_identifier, split_profile

    settings = _settings(data_dir, config)
    try:
        ident = parse_split_identifier(identifier, settings.identity.rules)
        result = split_profile(settings, ref, ident, operator or _default_operator(), force=force)
    except SplitError as e:
        raise fail(escape(str(e))) from None
    doc = _result_doc(result)
    if as_json:
        print_json(doc)
        return
    console.print(
        escape(
            f"Split {doc['identifier']} off profile {doc['old_profile_id']}; from now on it is "
            f"kept apart from {doc['apart_from']}."
        )
    )
    table = Table("profile", "identifiers", "orders", "lifetime value")
    for p in doc["profiles"]:
        table.add_row(
            escape(p["profile_id"]),
            escape("\n".join(p["identifiers"])),
            str(p["orders_count"]),
            f"{p['total_lifetime_value']:g}",
        )
    console.print(table)
    console.print(
        f"Replayed {result.events_replayed} events ({result.events_from_log} read from the log "
        f"because the lake did not hold them yet); {result.events_pending} newer events are "
        "left for the profiles stage."
    )
    for c in result.retired:
        where = f"now leads to {c.into}" if c.into else "no longer exists"
        console.print(escape(f"Profile id {c.profile_id} {where}."))
    if result.unplaced:
        listed = ", ".join(doc["unplaced"])
        err.print(escape(f"warning: no profile holds {listed} any more (every event lost it)"))
    if result.events_missing:
        err.print(f"warning: {result.events_missing} events could not be read (--force)")
