"""`clew serve`, `clew collector` and `clew worker`: the commands that run Clew's processes
(docs/scale-out.md, "Process roles")."""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from clew._ports import ensure_port_free
from clew._stderr_log import log_to_stderr
from clew.cli._common import ConfigFile, DataDir, Host, Port, console, fail, settings_from

if TYPE_CHECKING:
    from clew.demo.web_site import ExampleSite


def _invoked_as() -> str:
    """How to run `clew` from the shell this process was started from: ``clew`` when that
    name finds this program on PATH, else the path it was started by (``.venv/bin/clew``
    after `make run`, where the virtualenv is not activated)."""
    argv0 = sys.argv[0]
    found = shutil.which("clew")
    if Path(argv0).name != "clew" or (found and Path(found).resolve() == Path(argv0).resolve()):
        return "clew"
    return argv0


def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="Log every HTTP request (method, path, status)."),
    ] = False,
    examples: Annotated[
        bool,
        typer.Option(
            "--examples",
            help="Also serve the instrumented example web site (examples/web) on its own port.",
        ),
    ] = False,
    examples_port: Annotated[
        int, typer.Option("--examples-port", help="The example site's port.")
    ] = 8089,
) -> None:
    """Run the collector, every stage and the APIs in one process.

    Stops on Ctrl+C (SIGINT) or SIGTERM: it refuses new events, lets the stages drain and
    exits 0."""
    from clew.server import Clew
    from clew.server import serve as run_server

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    if examples:
        _check_examples_port(settings.host, examples_port)
    sites = ExitStack()
    log_to_stderr()

    from clew._datadir import DataDirInUseError, open_to_others

    warning = open_to_others(settings.data_dir)
    if warning is not None:
        logging.getLogger("clew.serve").warning(warning)

    def ready(clew: Clew) -> None:
        base = f"http://{settings.host}:{settings.port}"
        console.print(
            f"[bold green]Clew is running[/bold green] on {base} (data in {settings.data_dir})"
        )
        src = clew.default_source
        console.print(f"  write key of source '{src.name}': [bold]{src.write_key}[/bold]")
        console.print(f"  Tracking API:  {base}/v1/batch  (Segment / RudderStack SDK host: {base})")
        clew_cmd = _invoked_as()
        sql_cmd = f'{clew_cmd} sql "SELECT count(*) FROM events" --data-dir {settings.data_dir}'
        console.print(f"  SQL:           {escape(sql_cmd)}", highlight=False)
        console.print(
            f"                 POST {base}/v1/sql with a token from "
            f"`{escape(clew_cmd)} tokens create NAME --data-dir {settings.data_dir}`",
            highlight=False,
        )
        console.print(
            f"  Console:       {base}/console  (sign in with a token from "
            f"`{escape(clew_cmd)} tokens create NAME --scope all`)",
            highlight=False,
        )
        console.print(f"  Health:        {base}/health   Metrics: {base}/metrics")
        if examples:
            site = _example_site(base, src.write_key, settings.host, examples_port)
            sites.enter_context(site)
            console.print(
                f"  Example site:  {site.url}/  (analytics.js; RudderStack: "
                f"{site.url}/?sdk=rudderstack)",
                highlight=False,
            )
        console.print("Press Ctrl+C to stop.")

    try:
        with sites:
            run_server(settings, on_ready=ready, access_log=access_log)
    except DataDirInUseError as e:
        raise fail(str(e)) from None


def _check_examples_port(host: str, port: int) -> None:
    from clew._ports import PortInUseError
    from clew.cli._errors import ExitCode

    try:
        ensure_port_free(host, port)
    except PortInUseError:
        raise fail(
            f"port {port} on {host} is in use by another process: pick another port for the "
            "example site with --examples-port",
            ExitCode.UNAVAILABLE,
        ) from None


def _example_site(api: str, write_key: str, host: str, port: int) -> ExampleSite:
    """The example site (examples/web), sending to ``api`` with ``write_key``."""
    from clew.demo.web_site import ExampleSite, SiteConfig

    return ExampleSite(SiteConfig(api, write_key), host, port)


def collector(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Run only the Tracking API (no stages, no Profile/Admin API).

    Run as many as you like, next to `clew worker` processes (docs/scale-out.md, "Process
    roles")."""
    from clew.backends import describe_log
    from clew.collector.process import CollectorProcess, run_collector

    settings = settings_from(config, data="create", host=host, port=port, data_dir=data_dir)
    ensure_port_free(settings.host, settings.port)
    log_to_stderr("collector")

    def ready(process: CollectorProcess) -> None:
        base = f"http://{settings.host}:{settings.port}"
        where = describe_log(settings)
        console.print(f"[bold green]Clew collector[/bold green] on {base}, appending to {where}")
        src = process.default_source
        console.print(f"  write key of source '{src.name}': [bold]{src.write_key}[/bold]")
        console.print(f"  Health: {base}/health   Metrics: {base}/metrics")

    run_collector(settings, on_ready=ready)


def worker(
    stage: Annotated[
        list[str],
        typer.Option(
            "--stage",
            help="validate, lake, monitor, profiles, profiles-lake or destinations (repeatable)",
        ),
    ],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port",
            help="Serve /health and /metrics of these stages on this port (on the host "
            "setting) [default: stages.worker_http_port, else none]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one stage in the foreground (`clew serve` starts one worker per stage itself).

    Stops on Ctrl+C (SIGINT) or SIGTERM within seconds: each stage finishes its batch."""
    from clew.stages.workers import UnknownStageError, run_worker

    settings = settings_from(config, data="create", data_dir=data_dir)
    port = http_port if http_port is not None else settings.stages.worker_http_port
    on_running = None
    if port is not None:
        from clew.worker_server import serve_worker_http

        ensure_port_free(settings.host, port)
        on_running = serve_worker_http(port)
    log_to_stderr("+".join(stage))
    try:
        run_worker(settings, stage, on_running)
    except UnknownStageError as e:
        raise fail(str(e), 2) from None
