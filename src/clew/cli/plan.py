"""`clew plan`: publish a tracking plan kept as files in your repository
(docs/schema-registry.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from clew.cli._common import ConfigFile, DataDir, console, fail, open_registry

plan_app = typer.Typer(
    help="Tracking plans kept as files in your repository.", no_args_is_help=True
)


@plan_app.command("push")
def plan_push(directory: Path, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Publish a tracking plan: a new version of every changed subject.

    The plan is refused as a whole (exit 1) if any change breaks its subject's compatibility
    mode."""
    from clew.schema import IncompatibleSchemaError, PlanError, load_plan, push
    from clew.schema.report import render_check, render_push

    try:
        plan = load_plan(directory)
    except PlanError as e:
        raise fail(escape(str(e)), 2) from None
    with open_registry(data_dir, config, "provision") as registry:
        try:
            result = push(registry, plan)
        except IncompatibleSchemaError as e:
            console.print(render_check(e.changes, source=e.source, modes=e.modes), markup=False)
            raise typer.Exit(1) from None
    console.print(render_push(result), markup=False)
