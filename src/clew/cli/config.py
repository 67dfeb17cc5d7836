"""`clew config`: the settings in effect, and the reference of every setting."""

from __future__ import annotations

import json
import sys

import typer

from clew.cli._common import AsJson, ConfigFile, DataDir
from clew.config import load_settings_with_origins
from clew.settings_reference import effective, render_docs, render_show

config_app = typer.Typer(
    help="The settings: what is in effect, and what exists.", no_args_is_help=True
)


@config_app.command("show")
def show(as_json: AsJson = False, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print every setting in effect and where it came from.

    Each line is a key, its value as JSON and its origin: the default, the config file, an
    environment variable or an option. Secrets are masked."""
    rows = effective(load_settings_with_origins(config, data_dir=data_dir))
    if as_json:
        doc = {row.key: {"value": row.value, "from": row.origin} for row in rows}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render_show(rows))


@config_app.command("docs")
def docs() -> None:
    """Print the reference of every setting as Markdown.

    docs/configuration.md is its output: `clew config docs > docs/configuration.md`."""
    sys.stdout.write(render_docs())
