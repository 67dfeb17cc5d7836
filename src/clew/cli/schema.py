"""`clew schema`: check a tracking plan, and read the schema registry (`clew plan push`
publishes plans: :mod:`clew.cli.plan`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    OutputFormat,
    console,
    fail,
    listing,
    open_registry,
    output_format,
    print_listing,
    settings_from,
    unknown_name,
)

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.schema import SchemaRegistry

schema_app = typer.Typer(help="The schema registry.", no_args_is_help=True)

SourceOpt = Annotated[str, typer.Option("--source", help="The source whose plan to read.")]


def _require_source(registry: SchemaRegistry, settings: Settings, source: str) -> None:
    """Exit 1 naming the closest source unless ``source`` has a plan or is in the catalog
    (the ``default`` source always is)."""
    from clew.sources import DEFAULT_SOURCE, Catalog

    known = set(registry.sources()) | {DEFAULT_SOURCE}
    if source in known:
        return
    catalog = Catalog.open_existing(settings)
    if catalog is not None:
        try:
            known |= {s.name for s in catalog.sources(include_removed=False)}
        finally:
            catalog.close()
    if source not in known:
        raise unknown_name("source", source, known)


@schema_app.command("check")
def schema_check(
    directory: Path,
    against: Annotated[
        Path | None,
        typer.Option(help="Compare with this checkout of the plan instead of the registry."),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Explain every breaking change the plan in DIRECTORY would make; exit 1 if any.

    A CI gate: exit 0 when the plan is compatible."""
    from clew.schema import PlanError, load_plan
    from clew.schema.plan import check, compare
    from clew.schema.report import render_check

    try:
        plan = load_plan(directory)
        old = load_plan(against) if against is not None else None
    except PlanError as e:
        raise fail(escape(str(e)), 2) from None
    if old is not None:
        problems = compare(old, plan)
    else:
        with open_registry(data_dir, config) as registry:
            problems = check(registry, plan)
    console.print(render_check(problems, source=plan.source, modes=plan.modes()), markup=False)
    if problems:
        raise typer.Exit(1)


@schema_app.command("list")
def schema_list(
    source: SourceOpt = "default",
    all_subjects: Annotated[bool, typer.Option("--all", help="Include retired subjects.")] = False,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Subjects of a source's plan with their latest version.

    A source that is neither in the catalog (`clew sources list`) nor has a plan exits 1,
    naming the closest one. As JSON: {source, enforcement, subjects: [{subject, version,
    schemaver, compatibility, active}]}; as CSV: the subjects."""
    from clew.schema import SchemaRegistry

    fmt = output_format(format, as_json)
    settings = settings_from(config, data_dir=data_dir)
    with SchemaRegistry.open(settings) as registry:
        _require_source(registry, settings, source)
        plan = registry.settings(source)
        subjects = registry.subjects(source, include_retired=all_subjects)
    table = listing("subject", "version", "schemaver", "compatibility", "active")
    for info in subjects:
        table.add_row(
            info.subject,
            str(info.latest.version),
            str(info.latest.schemaver),
            str(info.compatibility.value),
            "yes" if info.active else "retired",
        )
    doc = {
        "source": source,
        "enforcement": plan.enforcement.value,
        "subjects": [
            {
                "subject": info.subject,
                "version": info.latest.version,
                "schemaver": str(info.latest.schemaver),
                "compatibility": info.compatibility.value,
                "active": info.active,
            }
            for info in subjects
        ],
    }
    if fmt is OutputFormat.table:
        console.print(f"source {source}: enforcement {plan.enforcement.value}")
    print_listing(table, fmt, doc)


@schema_app.command("show")
def schema_show(
    subject: str,
    version: Annotated[
        str, typer.Option(help="A version number, a SchemaVer or latest.")
    ] = "latest",
    source: SourceOpt = "default",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Print one version of a subject's JSON Schema."""
    from clew.schema import SchemaError, SchemaRegistry

    settings = settings_from(config, data_dir=data_dir)
    with SchemaRegistry.open(settings) as registry:
        _require_source(registry, settings, source)
        try:
            v = registry.get(source, subject, int(version) if version.isdigit() else version)
        except SchemaError as e:
            raise fail(escape(str(e))) from None
    print(json.dumps(v.schema, indent=2, sort_keys=True))


@schema_app.command("diff")
def schema_diff(
    subject: str,
    old: str,
    new: Annotated[str, typer.Argument()] = "latest",
    source: SourceOpt = "default",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Show what changed between two versions of a subject, and whether it breaks data."""
    from clew.schema import SchemaError, SchemaRegistry
    from clew.schema.report import render_diff

    settings = settings_from(config, data_dir=data_dir)
    with SchemaRegistry.open(settings) as registry:
        _require_source(registry, settings, source)
        try:
            a = registry.get(source, subject, int(old) if old.isdigit() else old)
            b = registry.get(source, subject, int(new) if new.isdigit() else new)
        except SchemaError as e:
            raise fail(escape(str(e))) from None
    console.print(render_diff(a, b), markup=False)
