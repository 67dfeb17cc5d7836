"""``clew lifecycle``: move old lake partitions to the cold tier, purge expired ones, and show
what each tier holds (docs/lifecycle.md). Safe to run while ``clew serve`` runs."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    OutputFormat,
    console,
    fail,
    listing,
    output_format,
    print_listing,
    settings_from,
    time_option,
)

if TYPE_CHECKING:
    from clew.lake.tiers import LifecycleReport, TierProgress

lifecycle_app = typer.Typer(
    help="Hot, warm and cold data: tier old lake partitions, purge expired ones.",
    no_args_is_help=True,
)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in doc.items()}


@lifecycle_app.command("run")
def run(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Report what would move and be purged; change nothing."),
    ] = False,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Pretend it is this ISO-8601 time (partition ages are measured from it).",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Tier old lake partitions to cold, purge expired ones, apply log retention.

    Moves lake partitions older than lifecycle.warm_days to the cold tier, purges cold ones
    older than lifecycle.purge_after_days, and applies the raw log's retention."""
    from clew.backends import open_log
    from clew.clock import clock_for
    from clew.lake.tiers import LifecycleBusyError, run_lifecycle

    pretend = time_option("--now", now)
    settings = settings_from(config, data_dir=data_dir)
    if pretend is not None:
        now_ms = int(pretend.timestamp() * 1000)
    else:
        now_ms = clock_for(settings.clock, settings.data_dir).now_ms()

    def progress(p: TierProgress) -> None:
        if not as_json:
            verb = {"move": "moved to cold", "purge": "purged"}[p.action]
            if dry_run:
                verb = "would be " + verb
            console.print(f"  {p.table} {p.partition}: {p.rows:,} rows {verb}", highlight=False)

    log = None if dry_run else open_log(settings)
    try:
        report = run_lifecycle(settings, now_ms, dry_run=dry_run, progress=progress, log=log)
    except LifecycleBusyError as e:
        raise fail(str(e)) from None
    finally:
        if log is not None:
            log.close()
    if as_json:
        doc = _jsonable(asdict(report))
        doc["tables"] = [_jsonable(t) for t in doc["tables"]]
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        _print_report(report)
    if report.failures:
        raise fail(
            "lifecycle failed for "
            + "; ".join(f"{t} ({e})" for t, e in sorted(report.failures.items()))
            + "; the other tables ran. Fix the cause and run again: it resumes the work."
        )


def _print_report(report: LifecycleReport) -> None:
    would = "would " if report.dry_run else ""
    purge = (
        f"before {report.purge_before}" if report.purge_before else "never (no purge_after_days)"
    )
    console.print(
        f"Warm partitions dated before {report.warm_before} {would or 'now '}move to cold; "
        f"cold partitions are purged {purge}.",
        highlight=False,
    )
    table = Table(
        "table",
        "would move" if would else "moved",
        "would purge" if would else "purged",
        "warm bytes",
        "cold bytes",
        "seconds",
    )
    for t in report.tables:
        if t.error is not None:
            table.add_row(t.table, "failed", "-", "-", "-", f"{t.seconds:.2f}")
            continue
        moved = f"{t.partitions_moved} partitions, {t.rows_moved:,} rows"
        if t.partitions_deferred:
            moved += f" ({t.partitions_deferred} deferred to the next run)"
        table.add_row(
            t.table,
            moved,
            f"{t.partitions_purged} partitions, {t.rows_purged:,} rows",
            f"{_size(t.warm_bytes_before)} -> {_size(t.warm_bytes_after)}",
            f"{_size(t.cold_bytes_before)} -> {_size(t.cold_bytes_after)}",
            f"{t.seconds:.2f}",
        )
    console.print(table)
    if report.log_records_removed is None:
        console.print("Raw log retention: not applied (dry run).")
    else:
        console.print(f"Raw log retention removed {report.log_records_removed:,} records.")
    console.print(
        "Hot tier (serving store): "
        f"{'in Redis' if report.hot_bytes is None else _size(report.hot_bytes)}, at most "
        f"{report.hot_history_per_profile} recent events per profile.",
        highlight=False,
    )
    console.print(f"Done in {report.seconds:.2f} s.")


@lifecycle_app.command("status")
def status(
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """What the warm and cold tiers of each table hold.

    As JSON: a list of {table, tier, partitions, rows, bytes, oldest, newest}."""
    from clew.lake.tiers import tier_status

    fmt = output_format(format, as_json)
    settings = settings_from(config, data_dir=data_dir)
    rows = tier_status(settings)
    table = listing("table", "tier", "partitions", "rows", "bytes", "oldest", "newest")
    for r in rows:
        table.add_row(
            r.table,
            r.tier,
            str(r.partitions),
            f"{r.rows:,}",
            _size(r.bytes),
            str(r.oldest or "-"),
            str(r.newest or "-"),
        )
    print_listing(table, fmt, [_jsonable(asdict(r)) for r in rows])
    if fmt is not OutputFormat.table:
        return
    console.print(
        f"warm: {settings.lake_location} (younger than {settings.lifecycle.warm_days:g} days)\n"
        f"cold: {settings.cold_location}",
        highlight=False,
    )
