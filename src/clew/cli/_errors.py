"""How `clew` ends: its exit codes, and how an error becomes one line that says what to do
(a traceback only with --debug or ``CLEW_DEBUG=1``)."""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from clew._datadir import (
    DataDirInUseError,
    NoDataDirError,
    claim_data_dir,
    is_data_dir,
    require_data_dir,
)
from clew._ports import PortInUseError
from clew.config import ConfigError, LoadedSettings, load_settings_with_origins
from clew.dependencies import UnreachableError
from clew.lake.query import LakeUnavailableError, QueryError

_err = Console(stderr=True, soft_wrap=True)


class ExitCode(IntEnum):
    """What `clew` exits with; :data:`EXIT_CODES` says when (docs/cli.md shows the same
    table, and a test keeps the two equal)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "Done as asked.",
    ExitCode.FAILED: "A check failed, something named does not exist, or the operation or "
    "query failed.",
    ExitCode.USAGE: "A wrong option, argument or name; an invalid configuration or definition.",
    ExitCode.UNAVAILABLE: "What the command needs is not there: no Clew data directory at the "
    "path given, the port or the data directory in use by another process, the lake's "
    "storage not answering.",
}

# Errors any command may meet, and the code each exits with.
_KNOWN_ERRORS: tuple[tuple[type[Exception], ExitCode], ...] = (
    (ConfigError, ExitCode.USAGE),
    (NoDataDirError, ExitCode.UNAVAILABLE),
    (PortInUseError, ExitCode.UNAVAILABLE),
    (DataDirInUseError, ExitCode.UNAVAILABLE),
    (QueryError, ExitCode.FAILED),
    (LakeUnavailableError, ExitCode.UNAVAILABLE),
    (UnreachableError, ExitCode.FAILED),
)

DEBUG_ENV = "CLEW_DEBUG"
# ``ctx.meta`` key of the --debug option, read by :class:`ClewGroup`.
_DEBUG = "clew.debug"

Debug = Annotated[
    bool,
    typer.Option(
        "--debug",
        envvar=DEBUG_ENV,
        help="Show the traceback of an error instead of its one-line answer.",
    ),
]


def set_debug(ctx: typer.Context, debug: bool) -> None:
    """Record the global --debug option for :class:`ClewGroup`."""
    ctx.meta[_DEBUG] = debug


def _debugging(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get(_DEBUG)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def exit_code(exc: BaseException) -> ExitCode | None:
    """The exit code of a known error class, None for any other error."""
    return next((code for kind, code in _KNOWN_ERRORS if isinstance(exc, kind)), None)


def exit_with(exc: Exception, code: ExitCode | None = None) -> typer.Exit:
    """Print ``exc`` as ``error:`` lines (one per line of its message) on stderr; return the
    exit to raise, with ``code`` or the code of its class (:attr:`ExitCode.FAILED` if none)."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    for line in lines:
        _err.print(f"[red]error:[/red] {escape(line)}", highlight=False)
    return typer.Exit(int(code or exit_code(exc) or ExitCode.FAILED))


class ClewGroup(TyperGroup):
    """The `clew` command group. An error a command does not handle itself is printed as one
    ``error:`` line per problem and exits with the code of its class (:data:`_KNOWN_ERRORS`);
    an error of no known class is one line naming its type, exiting :attr:`ExitCode.FAILED`.
    With --debug (or ``CLEW_DEBUG=1``) the error propagates with its traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _debugging(ctx):
                raise
            if exit_code(exc) is None:
                unexpected = RuntimeError(
                    f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
                )
                raise exit_with(unexpected) from None
            raise exit_with(exc) from None


DataUse = Literal["read", "provision", "create"]


def command_settings(
    config: Path | None, *, data: DataUse = "read", **overrides: Any
) -> LoadedSettings:
    """The settings of a command, with where each value came from.

    ``data`` says what the command does with the data directory: ``read`` needs a Clew data
    directory there already and raises :class:`NoDataDirError` (naming the one a running
    `clew serve` uses) otherwise; ``create`` (`clew serve`) creates and marks it;
    ``provision`` (commands that add a source, a token, a plan, ...) creates it too when it
    was named (by option, environment or config file), but not the implicit ``./.clew``, which
    is rarely the one a server uses. Raises :class:`ConfigError` for invalid settings."""
    loaded = load_settings_with_origins(config, **overrides)
    settings = loaded.settings
    named = loaded.origin("data_dir") != "default"
    if data == "create" or (data == "provision" and named):
        if not is_data_dir(settings.data_dir):
            claim_data_dir(settings.data_dir)
    else:
        require_data_dir(settings.data_dir, settings.port)
    return loaded
