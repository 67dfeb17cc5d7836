"""`clew plan`: publish a tracking plan kept as files in your repository
(docs/schema-registry.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from clew.cli._common import (
    ConfigFile,
    DataDir,
    console,
    err,
    fail,
    open_registry,
    settings_from,
)

plan_app = typer.Typer(
    help="Tracking plans kept as files in your repository.", no_args_is_help=True
)


SourceOverride = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Publish it for this source instead of the one plan.yaml names (one plan for "
        "several sources).",
        show_default=False,
    ),
]


@plan_app.command("push")
def plan_push(
    directory: Path,
    source: SourceOverride = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Publish a tracking plan: a new version of every changed subject.

    The plan is refused as a whole (exit 1) if any change breaks its subject's compatibility
    mode."""
    from clew.schema import IncompatibleSchemaError, PlanError, load_plan, push
    from clew.schema.report import render_check, render_push

    try:
        plan = load_plan(directory)
    except PlanError as e:
        raise fail(escape(str(e)), 2) from None
    if source is not None:
        if not 1 <= len(source) <= 100:
            raise fail("--source must name the source (1 to 100 characters)", 2)
        plan = dataclasses.replace(plan, source=source)
    with open_registry(data_dir, config, "provision") as registry:
        try:
            result = push(registry, plan)
        except IncompatibleSchemaError as e:
            console.print(render_check(e.changes, source=e.source, modes=e.modes), markup=False)
            raise typer.Exit(1) from None
    console.print(render_push(result), markup=False)


@plan_app.command("migrate")
def plan_migrate(
    registry_db: Annotated[
        Path | None,
        typer.Argument(
            help="The registry.db to copy; this data directory's when left out.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Copy a registry.db's tracking plans into the configured registry.

    Run it once, on moving to store.backend = "redis" (docs/scale-out.md, "One control
    plane"). Each source's plan comes with its settings, subjects and every version; a source the
    registry has a plan for already is left as it is, and named, so running it again
    changes nothing."""
    from clew.schema import SchemaRegistry

    settings = settings_from(config, data_dir=data_dir)
    path = (registry_db or settings.registry_path).resolve()
    if not path.is_file():
        raise fail(escape(f"there is no registry at {path} to copy"))
    with SchemaRegistry.open(settings) as target:
        if target.path is not None and target.path.resolve() == path:
            raise fail(
                escape(
                    f"{path} is this deployment's registry already; set store.backend = "
                    '"redis" to copy it into the shared store'
                )
            )
        with SchemaRegistry(path) as old:
            copied, kept = target.copy_from(old)
        where = target.where()
    for source in kept:
        err.print(
            escape(f"warning: the plan of source '{source}' not copied: {where} has one"),
            highlight=False,
        )
    console.print(
        escape(f"copied the plans of {len(copied)} source(s) from {path} into {where}"),
        highlight=False,
    )
