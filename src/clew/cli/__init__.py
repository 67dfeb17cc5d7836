"""The ``clew`` command line: :data:`app`, the Typer application, and :func:`main`, the
``clew`` console script.

One module per command group (``clew dlq`` is :mod:`clew.cli.dlq`, ``clew serve``,
``collector`` and ``worker`` are :mod:`clew.cli.serve`); what they share is in
:mod:`clew.cli._common` (options, settings, listings) and :mod:`clew.cli._errors` (exit
codes, one-line errors). This module only assembles them.
"""

from __future__ import annotations

import typer

from clew.cli import demo, rebuild, serve, sql
from clew.cli._errors import ClewGroup, Debug, set_debug
from clew.cli.audiences import audiences_app
from clew.cli.config import config_app
from clew.cli.destinations import destinations_app
from clew.cli.dlq import dlq_app
from clew.cli.identity import identity_app
from clew.cli.imports import import_app
from clew.cli.lifecycle import lifecycle_app
from clew.cli.plan import plan_app
from clew.cli.privacy import privacy_app
from clew.cli.schema import schema_app
from clew.cli.sources import sources_app
from clew.cli.tokens import tokens_app

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ClewGroup,
    help="Clew, an open-source customer data platform.",
    no_args_is_help=True,
    # Plain help: paragraphs rewrap to the terminal, no markup is interpreted in docstrings,
    # and flags show no value type.
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(ctx: typer.Context, debug: Debug = False) -> None:
    set_debug(ctx, debug)


# Commands, then groups, each in the order `clew --help` lists them.
app.command(name="rebuild")(rebuild.rebuild)
app.command(name="serve")(serve.serve)
app.command(name="collector")(serve.collector)
app.command(name="worker")(serve.worker)
app.command(name="sql")(sql.sql)
app.command(name="demo")(demo.demo)

app.add_typer(config_app, name="config")
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(plan_app, name="plan")
app.add_typer(schema_app, name="schema")
app.add_typer(dlq_app, name="dlq")
app.add_typer(identity_app, name="identity")
app.add_typer(destinations_app, name="destinations")
app.add_typer(audiences_app, name="audiences")
app.add_typer(import_app, name="import")
app.add_typer(lifecycle_app, name="lifecycle")
app.add_typer(privacy_app, name="privacy")


def main() -> None:
    """The `clew` command: every file it writes into the data directory is owner-only."""
    from clew._startup import prepare_process

    prepare_process()
    app()
