"""``clew destinations``: add, list and remove webhook destinations; inspect deliveries and the
delivery dead-letter store; replay dead letters. See docs/destinations.md.

Every command works on the stores directly, so it works whether or not ``clew serve`` runs:
the destinations where the settings keep them (the data directory's ``destinations/``, or the
Redis every machine shares), the outbox, deliveries and dead letters in this machine's
``destinations.db``. A running destinations worker picks up added, changed and removed
destinations within about a second, and replayed dead letters within its next outbox poll.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

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
    print_listing,
    settings_from,
    time_of_ms,
    unknown_name,
)
from clew.destinations.config import CHANGE_KINDS

if TYPE_CHECKING:
    from clew.destinations import DestinationConfig, Destinations, Outbox

destinations_app = typer.Typer(
    help="Webhook destinations: events and profile changes, filtered by consent, batched, "
    "signed and retried.",
    no_args_is_help=True,
)


def _many(help: str) -> Any:
    """A repeatable option without a default shown."""
    return typer.Option(help=f"{help} (repeatable)", show_default=False)


Categories = Annotated[
    list[str] | None,
    _many(
        "A consent category the destination belongs to: an event carrying consent "
        "preferences is sent only when every category is granted"
    ),
]
Events = Annotated[
    list[str] | None, _many("Send events with this name or type; '*' is every event [*]")
]
Changes = Annotated[
    list[str] | None, _many(f"Send profile change records of this kind: {', '.join(CHANGE_KINDS)}")
]
Audiences = Annotated[
    list[str] | None, _many("Send audience changes of this audience only [all audiences]")
]
Traits = Annotated[list[str] | None, _many("Send trait changes of this trait only [all traits]")]


def _when(ms: int | None) -> str:
    return "" if ms is None else time_of_ms(ms)


def _open(data_dir: Path | None, config: Path | None) -> tuple[Destinations, Path]:
    """The configured destinations (close them) and this machine's outbox file."""
    from clew.destinations import Destinations

    settings = settings_from(config, data_dir=data_dir)
    return Destinations.open(settings), settings.outbox_path


def _outbox(path: Path) -> Outbox:
    from clew.destinations import Outbox

    return Outbox(path)


def _require_destination(directory: Destinations, outbox: Outbox, name: str) -> None:
    """Exit 1 naming the closest destination unless ``name`` is configured (its settings may
    not parse) or has left something in the outbox: removed destinations keep their
    deliveries and dead letters."""
    known = directory.stored_names() | set(outbox.known())
    if name in known:
        return
    known |= {x.dest for x in outbox.dead_letters()}
    if name not in known:
        raise unknown_name(
            "destination", name, known, hint="`clew destinations list` shows the configured ones"
        )


@destinations_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The destination's name (letters, digits, _-.).")],
    url: Annotated[str | None, typer.Option(help="Webhook URL (http:// or https://).")] = None,
    secret: Annotated[
        str | None, typer.Option(help="HMAC key that signs each request (X-Clew-Signature).")
    ] = None,
    secret_env: Annotated[
        str | None,
        typer.Option(help="Read the HMAC key from this environment variable of `clew serve`."),
    ] = None,
    category: Categories = None,
    event: Events = None,
    change: Changes = None,
    audience: Audiences = None,
    trait: Traits = None,
    batch_size: Annotated[int | None, typer.Option(help="Records per request [100].")] = None,
    max_batch_wait_ms: Annotated[
        int | None, typer.Option(help="Send a smaller batch after this wait [1000].")
    ] = None,
    timeout_s: Annotated[float | None, typer.Option(help="Per-request timeout [10].")] = None,
    retry_for_s: Annotated[
        float | None, typer.Option(help="Retry a failing batch this long [14400 = 4 h].")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--file", help="Read the settings from a YAML or JSON file instead."),
    ] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an existing destination.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a webhook destination.

    Repeat --category, --event, --change, --audience and --trait for several values; the
    filters combine with AND (docs/destinations.md)."""
    from clew.destinations import DestinationError, Destinations, parse_destination
    from clew.destinations.addresses import check_url
    from clew.destinations.config import read_mapping

    settings = settings_from(config, data="provision", data_dir=data_dir)
    options: dict[str, Any] = {
        "url": url,
        "secret": secret,
        "secret_env": secret_env,
        "categories": category,
        "events": event,
        "changes": change,
        "audiences": audience,
        "traits": trait,
        "batch_size": batch_size,
        "max_batch_wait_ms": max_batch_wait_ms,
        "timeout_s": timeout_s,
        "retry_for_s": retry_for_s,
    }
    given = {k: v for k, v in options.items() if v is not None}
    try:
        if from_file is not None:
            base = read_mapping(from_file)
            destination = parse_destination({**base, **given, "name": name}, str(from_file))
        else:
            if url is None:
                raise fail("--url is required (or --file with the settings)", 2)
            destination = parse_destination({"name": name, **given}, "destination")
        check_url(destination.url, settings.destinations.block_private_networks)
        with Destinations.open(settings) as directory:
            path = directory.save(destination, replace=replace)
    except DestinationError as exc:
        raise fail(escape(str(exc)), 2) from None
    console.print(f"destination [bold]{escape(name)}[/bold] saved to {escape(str(path))}")
    console.print(f"  {escape(_summary(destination))}", highlight=False)


def _summary(d: DestinationConfig) -> str:
    parts = [f"events: {', '.join(d.events) or 'none'}"]
    if d.changes:
        parts.append(f"changes: {', '.join(d.changes)}")
    if d.audiences:
        parts.append(f"audiences: {', '.join(d.audiences)}")
    if d.traits:
        parts.append(f"traits: {', '.join(d.traits)}")
    parts.append(f"consent: {', '.join(d.categories) if d.categories else 'not mapped'}")
    return "; ".join(parts)


@destinations_app.command("list")
def list_(
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Configured destinations with their filters, outbox and delivery counts.

    "active since" is when the destinations stage picked the destination up: it gets the
    records that arrive from then on ("pending" until `clew serve` has seen it). As JSON:
    {destinations: [...], problems: [...]}; as a table or CSV, files that do not parse are
    reported after it (on stderr for CSV)."""
    fmt = output_format(format, as_json)
    directory, db = _open(data_dir, config)
    with directory:
        found, problems = directory.load()
    waiting: dict[str, int] = {}
    counters: dict[tuple[str, str], int] = {}
    known: dict[str, int] = {}
    dead: dict[str, int] = {}
    # No outbox here: this machine runs no destinations worker (its figures are on the one
    # that does); none is made for nothing.
    if db.exists():
        outbox = _outbox(db)
        try:
            waiting = outbox.waiting()
            counters = outbox.counters()
            known = outbox.known()
            for letter in outbox.dead_letters():
                dead[letter.dest] = dead.get(letter.dest, 0) + 1
        finally:
            outbox.close()
    rows = []
    for d in sorted(found.values(), key=lambda c: c.name):
        rows.append(
            {
                **d.model_dump(mode="json", exclude={"secret"}),
                "secret": d.describe_secret(),
                "active_since": _when(known[d.name]) if d.name in known else None,
                "outbox": waiting.get(d.name, 0),
                "delivered_events": counters.get((d.name, "events:delivered"), 0),
                "dead_letters": dead.get(d.name, 0),
            }
        )
    table = listing(
        "name",
        "url",
        "selects",
        "secret",
        "active since",
        "outbox",
        "delivered",
        "dead letters",
        prose=["selects", "secret"],
    )
    for d, row in zip(sorted(found.values(), key=lambda c: c.name), rows, strict=True):
        table.add_row(
            escape(d.name),
            escape(d.url),
            escape(_summary(d)),
            escape(row["secret"]),
            row["active_since"] or "pending",
            str(row["outbox"]),
            str(row["delivered_events"]),
            str(row["dead_letters"]),
        )
    print_listing(
        table, fmt, {"destinations": rows, "problems": [str(p) for p in problems.values()]}
    )
    if fmt is not OutputFormat.json:
        out = console if fmt is OutputFormat.table else err
        for problem in problems.values():
            out.print(f"[red]invalid:[/red] {escape(problem)}")


@destinations_app.command("remove")
def remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Remove a destination and drop its outbox (its history and dead letters stay)."""
    from clew.destinations import DestinationError

    directory, db = _open(data_dir, config)
    try:
        path = directory.remove(name)
    except DestinationError as exc:
        raise fail(escape(str(exc))) from None
    finally:
        directory.close()
    if not db.exists():
        console.print(
            f"removed {escape(str(path))}; its outbox, on the machine running the destinations "
            "worker, is dropped there within a second"
        )
        return
    outbox = _outbox(db)
    try:
        dropped = outbox.purge(name)
    finally:
        outbox.close()
    console.print(
        f"removed {escape(str(path))}; {dropped} records waiting in its outbox were dropped"
    )


@destinations_app.command("deliveries")
def deliveries(
    name: str,
    limit: Annotated[int, typer.Option(help="Finished deliveries to show.")] = 20,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """The batch being delivered and the latest finished deliveries, newest first.

    The batch being delivered shows its attempts, last error and next attempt. As JSON:
    {outbox, in_flight, deliveries}; as CSV: the finished deliveries only."""
    fmt = output_format(format, as_json)
    directory, db = _open(data_dir, config)
    outbox = _outbox(db)
    try:
        _require_destination(directory, outbox, name)
        head = outbox.head(name)
        waiting = outbox.waiting().get(name, 0)
        done = outbox.deliveries(name, limit)
    finally:
        outbox.close()
        directory.close()
    pending = None
    if head is not None:
        pending = {
            "delivery_id": head.delivery_id,
            "events": head.events,
            "attempts": head.attempts,
            "last_status": head.last_status,
            "last_error": head.last_error,
            "next_attempt": _when(head.next_attempt_ms) if head.attempts else "now",
        }
    finished = [
        {
            "delivery_id": d.delivery_id,
            "events": d.events,
            "outcome": d.outcome,
            "status": d.status,
            "attempts": d.attempts,
            "error": d.error,
            "finished": _when(d.finished_ms),
        }
        for d in done
    ]
    if fmt is OutputFormat.table:
        console.print(f"{waiting} records in the outbox of {escape(name)}")
    if fmt is OutputFormat.table and pending is not None:
        console.print(
            f"in flight: {pending['delivery_id']} ({pending['events']} records), "
            f"{pending['attempts']} failed attempts, next {pending['next_attempt']}"
            + (f", last: {escape(str(pending['last_error']))}" if pending["last_error"] else ""),
            highlight=False,
        )
    table = listing(
        "finished",
        "delivery id",
        "records",
        "outcome",
        "status",
        "attempts",
        "error",
        prose=["error"],
    )
    for d in done:
        table.add_row(
            _when(d.finished_ms),
            d.delivery_id,
            str(d.events),
            d.outcome,
            "" if d.status is None else str(d.status),
            str(d.attempts),
            escape(d.error or ""),
        )
    print_listing(table, fmt, {"outbox": waiting, "in_flight": pending, "deliveries": finished})


@destinations_app.command("dlq")
def dlq(
    name: Annotated[str | None, typer.Argument(help="Only this destination.")] = None,
    show: Annotated[
        str | None, typer.Option(help="Print the records of this delivery id as JSON.")
    ] = None,
    purge: Annotated[
        bool, typer.Option(help="Delete the destination's dead letters (needs NAME).")
    ] = False,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Deliveries that were refused or ran out of retries, with the reason.

    As JSON: a list of {destination, delivery_id, events, reason, status, attempts,
    failed}."""
    fmt = output_format(format, as_json)
    directory, db = _open(data_dir, config)
    outbox = _outbox(db)
    try:
        if name is not None:
            _require_destination(directory, outbox, name)
        if show is not None:
            body = outbox.dead_letter_body(show)
            if body is None:
                raise fail(f"no dead letter with delivery id {escape(show)}")
            sys.stdout.write(body.decode() + "\n")
            return
        if purge:
            if name is None:
                raise fail("name the destination whose dead letters to purge", 2)
            console.print(
                f"deleted {outbox.purge_dead_letters(name)} dead letters of {escape(name)}"
            )
            return
        letters = outbox.dead_letters(name)
    finally:
        outbox.close()
        directory.close()
    rows = [
        {
            "destination": x.dest,
            "delivery_id": x.delivery_id,
            "events": x.events,
            "reason": x.reason,
            "status": x.status,
            "attempts": x.attempts,
            "failed": _when(x.failed_ms),
        }
        for x in letters
    ]
    table = listing(
        "failed", "destination", "delivery id", "records", "status", "reason", prose=["reason"]
    )
    for x in letters:
        table.add_row(
            _when(x.failed_ms),
            escape(x.dest),
            x.delivery_id,
            str(x.events),
            "" if x.status is None else str(x.status),
            escape(x.reason),
        )
    print_listing(table, fmt, rows)


@destinations_app.command("replay")
def replay(
    name: str,
    delivery_id: Annotated[
        str | None, typer.Option("--id", help="Only this dead letter (a delivery id).")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Send a destination's dead letters again.

    Each goes back to its outbox as a batch with its original delivery id, after the batch
    in flight."""
    from clew.destinations import DestinationError

    directory, db = _open(data_dir, config)
    try:
        directory.get(name)
    except DestinationError as exc:
        raise fail(escape(str(exc)) + " (add it again to replay its dead letters)") from None
    finally:
        directory.close()
    outbox = _outbox(db)
    try:
        batches, records = outbox.replay(name, int(time.time() * 1000), delivery_id)
    finally:
        outbox.close()
    if delivery_id is not None and not batches:
        raise fail(f"no dead letter of {escape(name)} with delivery id {escape(delivery_id)}")
    console.print(
        f"{batches} dead letters ({records} records) of {escape(name)} are back in its outbox"
    )


@destinations_app.command("migrate")
def migrate(
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="The destinations/ folder to copy; this data directory's when left out.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Copy a destinations/ folder's destinations into the configured store.

    Run it once, on moving to store.backend = "redis" (docs/scale-out.md, "One control
    plane"). A destination the store has already is left as it is (named when its settings
    differ), so running it again changes nothing; files that do not load are named and not
    copied. Outboxes, deliveries and dead letters stay in this machine's destinations.db."""
    from clew.backends import destinations_folder
    from clew.destinations import DestinationDirectory, Destinations, copy_destinations

    settings = settings_from(config, data_dir=data_dir)
    path = (folder or settings.destinations_path).resolve()
    if not path.is_dir():
        raise fail(escape(f"there is no destinations folder at {path} to copy"))
    own = destinations_folder(settings)
    if own is not None and own.resolve() == path:
        raise fail(
            escape(
                f"{path} is this deployment's destinations already; set store.backend = "
                '"redis" to copy them into the shared store'
            )
        )
    with DestinationDirectory(path) as old, Destinations.open(settings) as target:
        done = copy_destinations(old, target)
        where = target.where()
    for name in done.kept:
        err.print(
            escape(f"warning: destination '{name}' not copied: {where} has other settings for it"),
            highlight=False,
        )
    for problem in done.invalid:
        err.print(escape(f"warning: not copied: {problem}"), highlight=False)
    console.print(
        escape(f"{where} holds {len(done.copied)} destination(s) of {path}"), highlight=False
    )
