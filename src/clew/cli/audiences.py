"""``clew audiences``: push, list, show, size and remove computed-trait and audience
definitions; see docs/audiences.md.

Every command works on the data directory's files directly, so it works whether or not
``clew serve`` runs; a running server picks up pushed and removed definitions within about a
second.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from clew._names import did_you_mean
from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    console,
    fail,
    listing,
    output_format,
    print_listing,
    settings_from,
)
from clew.cli._errors import DataUse

if TYPE_CHECKING:
    from clew.audiences.definitions import Definition
    from clew.audiences.repository import DefinitionRepository
    from clew.config import Settings
    from clew.store.base import ProfileStore

audiences_app = typer.Typer(
    help="Computed traits and audiences: definitions kept live from every profile's events.",
    no_args_is_help=True,
)

PENDING = "pending"


def _open(
    data_dir: Path | None, config: Path | None, data: DataUse = "read"
) -> tuple[DefinitionRepository, Settings]:
    from clew.audiences.repository import open_repository

    settings = settings_from(config, data=data, data_dir=data_dir)
    return open_repository(settings), settings


@contextmanager
def _profiles(settings: Settings) -> Iterator[ProfileStore | None]:
    """The serving store, or None before `clew serve` has written any profile."""
    from clew.backends import open_existing_store

    store = open_existing_store(settings)
    if store is None:
        yield None
        return
    try:
        yield store
    finally:
        store.close()


def _backfill(store: ProfileStore | None, definition: Definition) -> str:
    from clew.audiences.status import backfill_state

    done = backfill_state(store, definition) if store is not None else None
    return f"done {done}" if done else PENDING


def _definition(repository: DefinitionRepository, name: str) -> Definition:
    from clew.audiences.definitions import DefinitionError

    try:
        found = repository.get(name)
    except DefinitionError as exc:
        raise fail(escape(str(exc))) from None
    if found is None:
        close = did_you_mean(name, repository.storage.names())
        raise fail(
            escape(f"no trait or audience named {name!r}{close}; `clew audiences list` shows them")
        )
    return found


@audiences_app.command("push")
def push(
    files: Annotated[list[Path], typer.Argument(help="YAML or JSON files of definitions.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and show what would change; write nothing.")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add or replace the definitions in FILES.

    All are checked together with the stored ones first (names, references between
    audiences, cycles); if any is invalid, nothing is stored."""
    from clew.audiences.definitions import DefinitionError
    from clew.audiences.repository import kind_of, load_file

    repository, _ = _open(data_dir, config, "provision")
    try:
        definitions = [d for path in files for d in load_file(path)]
        before = set(repository.storage.names())
        changed = set(repository.push(definitions, dry_run=dry_run))
    except DefinitionError as exc:
        raise fail(escape(str(exc)), 2) from None
    for d in definitions:
        if d.name not in changed:
            state = "unchanged"
        elif dry_run:
            state = "would replace" if d.name in before else "would add"
        else:
            state = "replaced" if d.name in before else "added"
        console.print(f"{state:>13}  {kind_of(d)} [bold]{escape(d.name)}[/bold]", highlight=False)
    if dry_run:
        console.print("dry run: nothing was written")
    elif changed:
        console.print(
            f"{len(changed)} definition(s) stored; a running `clew serve` picks them up within "
            "a second and backfills new and changed ones from the lake"
        )


@audiences_app.command("list")
def list_(
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Stored traits and audiences (audiences in evaluation order) with their backfill state.

    As JSON: a list of {type, name, fingerprint, backfill, source}, source the definition as
    pushed."""
    from clew.audiences.definitions import DefinitionError
    from clew.audiences.repository import kind_of

    fmt = output_format(format, as_json)
    repository, settings = _open(data_dir, config)
    try:
        definitions = repository.catalog().definitions()
    except DefinitionError as exc:
        raise fail(escape(str(exc))) from None
    with _profiles(settings) as store:
        backfill = {d.name: _backfill(store, d) for d in definitions}
    rows = [
        {
            "type": kind_of(d),
            "name": d.name,
            "fingerprint": d.fingerprint,
            "backfill": backfill[d.name],
            "source": dict(d.source),
        }
        for d in definitions
    ]
    table = listing(
        "type",
        "name",
        "kind / condition",
        "window",
        "fingerprint",
        "backfill",
        prose=["kind / condition", "backfill"],
    )
    for d in definitions:
        source = d.source
        window = str(source.get("window", "")) if kind_of(d) == "trait" else ""
        table.add_row(
            kind_of(d),
            escape(d.name),
            escape(_trait(source) if kind_of(d) == "trait" else _condition(source["condition"])),
            escape(window),
            d.fingerprint,
            backfill[d.name],
        )
    print_listing(table, fmt, rows)


@audiences_app.command("show")
def show(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """A definition as YAML, with its backfill state (and size, for an audience)."""
    import yaml

    from clew.audiences.repository import document, kind_of
    from clew.audiences.status import audience_size

    repository, settings = _open(data_dir, config)
    definition = _definition(repository, name)
    doc = json.loads(json.dumps(document(definition), default=str))
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    with _profiles(settings) as store:
        console.print(f"# fingerprint: {definition.fingerprint}", highlight=False)
        console.print(f"# backfill: {_backfill(store, definition)}", highlight=False)
        if kind_of(definition) == "audience":
            size = audience_size(store, name) if store is not None else 0
            console.print(f"# size: {size} profiles", highlight=False)


@audiences_app.command("size")
def size(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """The number of profiles in the audience NAME now."""
    from clew.audiences.definitions import AudienceDef
    from clew.audiences.status import audience_size

    repository, settings = _open(data_dir, config)
    if not isinstance(_definition(repository, name), AudienceDef):
        raise fail(f"{escape(repr(name))} is a computed trait, not an audience")
    with _profiles(settings) as store:
        print(audience_size(store, name) if store is not None else 0)


@audiences_app.command("remove")
def remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Remove a definition (refused while an audience still uses it)."""
    from clew.audiences.definitions import DefinitionError

    repository, _ = _open(data_dir, config)
    try:
        repository.remove(name)
    except DefinitionError as exc:
        raise fail(escape(str(exc))) from None
    console.print(
        f"removed {escape(name)}; a running `clew serve` stops evaluating it within a second"
    )


def _events(value: Any) -> str:
    if value is None or value == "*":
        return "any event"
    if isinstance(value, list):
        return " or ".join(repr(v) for v in value)
    if isinstance(value, Mapping):
        return _events(value.get("event"))
    return repr(value)


def _within(raw: Mapping[str, Any]) -> str:
    return f" within {raw['within']}" if raw.get("within") is not None else ""


def _trait(source: Mapping[str, Any]) -> str:
    """``sum(revenue) of 'Order Completed'``."""
    kind = source.get("kind")
    prop = f"({source['property']})" if source.get("property") else ""
    where = " where …" if source.get("where") else ""
    return f"{kind}{prop} of {_events(source.get('event'))}{where}"


def _condition(raw: Any) -> str:
    """One line for a condition tree (``list`` only; ``show`` prints the whole definition)."""
    if not isinstance(raw, Mapping):
        return repr(raw)
    if "all" in raw or "any" in raw:
        joiner = " and " if "all" in raw else " or "
        return "(" + joiner.join(_condition(c) for c in raw.get("all", raw.get("any", []))) + ")"
    if "not" in raw:
        return f"not {_condition(raw['not'])}"
    if "audience" in raw:
        return f"in audience {raw['audience']}"
    for source in ("trait", "computed"):
        if source in raw:
            value = f" {raw['value']!r}" if "value" in raw else ""
            return f"{source} {raw[source]} {raw.get('op', 'eq' if value else 'exists')}{value}"
    if "did_not" in raw:
        return f"did not {_events(raw['did_not'])}{_within(raw)}"
    if "funnel" in raw:
        body = raw["funnel"]
        if isinstance(body, Mapping):
            first, then = _events(body.get("did")), _events(body.get("then_not"))
            return f"did {first}, then not {then}{_within(body)}"
    if "event" in raw:
        for agg in ("sum", "avg", "min", "max"):
            if agg in raw:
                what = f"{agg}({raw[agg]}) of {_events(raw['event'])}"
                return f"{what} {raw.get('op', 'gte')} {raw.get('value')!r}{_within(raw)}"
        count = next((k for k in ("at_least", "at_most", "exactly") if k in raw), "at_least")
        n = raw.get(count, 1)
        return f"{_events(raw['event'])} {count.replace('_', ' ')} {n}x{_within(raw)}"
    return json.dumps(raw, default=str)
