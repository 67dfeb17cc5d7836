"""`clew demo`: simulated traffic of a small shop through the HTTP API, then the README's
example questions answered in SQL (the simulation itself is :mod:`clew.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from clew.cli._common import ConfigFile, DataDir, console, fail, settings_from


def demo(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    users: Annotated[int, typer.Option(help="Simulated visitors.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same traffic).")] = 7,
) -> None:
    """Simulate a small e-commerce site through the HTTP API.

    Then answer the README's example questions in SQL."""
    from clew._datadir import DataDirInUseError
    from clew.demo import DemoError, run_demo

    settings = settings_from(config, data="create", data_dir=data_dir)
    try:
        run_demo(settings, console, users=users, seed=seed)
    except (DemoError, DataDirInUseError) as e:
        raise fail(str(e)) from None
