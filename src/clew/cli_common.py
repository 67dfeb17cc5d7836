"""What every `clew` command shares: consoles, the --data-dir/--config options, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from clew.cli_errors import DataUse, command_settings, exit_with
from clew.config import ConfigError, Settings

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
Host = Annotated[str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1]")]
Port = Annotated[int | None, typer.Option(help="Port to listen on [default: 8088]")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where Clew keeps its data [default: ./.clew]", show_default=False
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="A TOML settings file.", show_default=False)
]


def settings_from(config: Path | None, *, data: DataUse = "read", **overrides: Any) -> Settings:
    """The settings for a command, or exit 2 with one line per configuration error; ``data``
    says whether the data directory must exist already (see :func:`command_settings`)."""
    try:
        return command_settings(config, data=data, **overrides).settings
    except ConfigError as e:
        raise exit_with(e) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error; raise the returned exit."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)
