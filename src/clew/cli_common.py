"""What every `clew` command shares: consoles, the --data-dir/--config options, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from clew.config import ConfigError, Settings, load_settings

console = Console(soft_wrap=True)
err = Console(stderr=True)

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


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """The settings for a command, or exit 2 with the configuration error."""
    try:
        return load_settings(config, **overrides)
    except (ConfigError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error; raise the returned exit."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)
