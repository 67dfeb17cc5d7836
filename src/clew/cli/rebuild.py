"""``clew rebuild``: the batch layer. Re-derive every profile from the lake's ``events``
table, rewrite the lake tables ``customer_profiles`` and ``identities``, and say whether the
result agrees with the speed layer (the serving store the profiles stage keeps).

It reads the lake and the serving store and writes only the two lake tables, so it can run
while ``clew serve`` does; see docs/identity.md ("Batch rebuild"). ``--engine spark`` computes
the same tables with PySpark (docs/spark.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from clew.cli._common import ConfigFile, DataDir, console, fail, settings_from

if TYPE_CHECKING:
    from clew.batch.rebuild import RebuildReport
    from clew.config import Settings


class RebuildEngine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


def rebuild(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute and compare, but write no table.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 if the batch and speed layers disagree, and then write no table.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --check: write the tables even if the layers disagree."),
    ] = False,
    show: Annotated[int, typer.Option("--show", help="How many differences to list.", min=0)] = 20,
    engine: Annotated[
        RebuildEngine,
        typer.Option(
            "--engine",
            help="duckdb: in this process. spark: PySpark over the Delta tables (docs/spark.md).",
        ),
    ] = RebuildEngine.duckdb,
    spark_master: Annotated[
        str,
        typer.Option(
            "--spark-master",
            envvar="CLEW_SPARK_MASTER",
            help="Spark master URL for --engine spark, e.g. spark://host:7077.",
        ),
    ] = "local[*]",
    spark_conf: Annotated[
        list[str] | None,
        typer.Option(
            "--spark-conf",
            help="A Spark property KEY=VALUE for --engine spark (repeatable).",
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Rebuild customer_profiles and identities from the lake's events.

    Then reconcile them with the serving store."""
    from clew.batch.rebuild import RebuildError

    settings = settings_from(config, data_dir=data_dir)
    if engine is RebuildEngine.duckdb and spark_conf:
        raise fail("--spark-conf needs --engine spark")
    try:
        report = _run(
            settings,
            engine,
            spark_master,
            spark_conf or [],
            dry_run=dry_run,
            max_differences=show,
            require_agreement=check and not force,
        )
    except RebuildError as e:
        raise fail(str(e)) from None
    _print(report)
    recon = report.reconciliation
    if check and recon is not None and not recon.agree:
        raise typer.Exit(1)


def _run(
    settings: Settings,
    engine: RebuildEngine,
    spark_master: str,
    spark_conf: list[str],
    *,
    dry_run: bool,
    max_differences: int,
    require_agreement: bool,
) -> RebuildReport:
    """Rebuild on ``engine``; an unusable Spark exits 1 with its message."""
    from clew.batch.rebuild import rebuild as run

    if engine is RebuildEngine.duckdb:
        return run(
            settings,
            dry_run=dry_run,
            max_differences=max_differences,
            require_agreement=require_agreement,
        )
    from clew.batch.spark_rebuild import SparkUnavailableError, rebuild_spark

    try:
        return rebuild_spark(
            settings,
            master=spark_master,
            conf=_conf(spark_conf),
            dry_run=dry_run,
            max_differences=max_differences,
            require_agreement=require_agreement,
        )
    except SparkUnavailableError as e:
        raise fail(escape(str(e))) from None


def _conf(pairs: list[str]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--spark-conf {pair!r} is not KEY=VALUE")
        conf[key.strip()] = value
    return conf


def _print(report: RebuildReport) -> None:
    phases = ", ".join(f"{name} {s:.1f} s" for name, s in report.timings.items())
    console.print(f"rebuilt in {report.seconds:.1f} s ({phases})")
    console.print(
        f"  {report.events:,} events ({report.applied:,} applied by the unifier), "
        f"{report.profiles:,} profiles, {report.identities:,} identifiers"
    )
    if report.written:
        console.print("  wrote lake tables customer_profiles and identities")
    elif report.withheld:
        console.print(
            "  [yellow]no table written: the layers disagree[/yellow] (--force writes them anyway)"
        )
    else:
        console.print("  dry run: no table written")
    recon = report.reconciliation
    if recon is None:
        console.print("no serving store to compare with (the profiles stage has not run)")
        return
    console.print(
        f"speed layer: {recon.speed_profiles:,} profiles, {recon.speed_identifiers:,} "
        f"identifiers; batch layer: {recon.batch_profiles:,} profiles, "
        f"{recon.batch_identifiers:,} identifiers"
    )
    compared = "id, seen times, purchases, traits, consent"
    if recon.computed:
        compared += ", computed traits, audiences"
    console.print(
        f"  {recon.same_groups:,} profiles group the same identifiers, "
        f"{recon.identical:,} of them identical ({compared})"
    )
    if recon.agree:
        console.print("[green]the batch and speed layers agree[/green]")
        return
    console.print(f"[yellow]{recon.difference_count:,} differences[/yellow]; the first ones:")
    for line in recon.differences:
        console.print(f"  - {escape(line)}", highlight=False)
