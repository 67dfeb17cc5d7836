"""``clew dlq``: inspect the dead-letter queue, and replay it against the current tracking plan.

The commands read the ``dlq`` lake table, so they work while ``clew serve`` runs (and see the
rows its lake stage has written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    OutputFormat,
    console,
    err,
    fail,
    listing,
    output_format,
    plural,
    print_json,
    print_listing,
    print_table,
    write_csv,
)
from clew.cli._dlq_rows import (
    AllRows,
    DlqContext,
    EventName,
    Reason,
    Since,
    SourceName,
    Until,
    csv_cell,
    cut,
    event_label,
    iso,
    row_json,
    short_time,
    show_table,
)

if TYPE_CHECKING:
    from clew.dlq.replay import ReplayReport

dlq_app = typer.Typer(
    help="The dead-letter queue: events Clew refused, with the reason; replay them once fixed.",
    no_args_is_help=True,
)


@dlq_app.command("list")
def list_rows(
    reason: Reason = None,
    source: SourceName = None,
    event: EventName = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 50,
    all_rows: AllRows = False,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Dead letters, newest first; rows already replayed are hidden unless --all.

    As JSON: a list of rows with every field (the message whole, violations, where the raw
    record is, the last replay); as CSV: the table's columns, the message cut as in the
    table."""
    fmt = output_format(format, as_json)
    ctx = DlqContext(data_dir, config)
    try:
        f = ctx.filters(reason, source, event, since, until, limit, all_rows)
        rows = [r for batch in ctx.snapshot.rows(f) for r in batch]
        if fmt is OutputFormat.json:
            print_json([row_json(ctx, r) for r in rows])
            return
        if not rows and fmt is OutputFormat.table:
            hint = "" if all_rows else " (rows already replayed are hidden; --all shows them)"
            console.print(f"No dead letters match{hint}.")
            return
        total = ctx.snapshot.count(f)
        # The message is cut short (`clew dlq show ID` has it all).
        table = listing(
            "id",
            "received (UTC)",
            "source",
            "reason",
            "event",
            "message",
            *(["replayed"] if all_rows else []),
            prose=["message"],
        )
        for r in rows:
            cells = [
                escape(r.dlq_id),
                short_time(r.received_at),
                escape(ctx.source(r.source_id)),
                r.reason,
                escape(event_label(r)),
                escape(cut(r.message, 120)),
            ]
            if all_rows:
                cells.append(r.replay.outcome if r.replay is not None else "")
            table.add_row(*cells)
        print_listing(table, fmt, None)
        if fmt is OutputFormat.table:
            hidden = "" if all_rows else " not yet replayed"
            more = "; use --limit to see more" if total > len(rows) else ""
            console.print(f"{len(rows)} of {plural(total, 'dead letter')}{hidden}{more}")
    finally:
        ctx.close()


@dlq_app.command("show")
def show(
    dlq_id: Annotated[str, typer.Argument(help="The row's id, as `clew dlq list` shows it.")],
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Everything about one dead letter.

    Its reason, each violation with JSON path, keyword and message, the schema versions used,
    the payload, and what replays made of it.

    As JSON: the row as `clew dlq list --json` gives it, with its replay history; as CSV: a
    header of the same fields and one line, violations, schema_versions, replayed and history
    as JSON text, the payload as kept."""
    fmt = output_format(format, as_json)
    ctx = DlqContext(data_dir, config)
    try:
        row = ctx.snapshot.get(dlq_id)
        if row is None:
            raise fail(
                escape(f"no dead letter with id {dlq_id!r}; `clew dlq list --all` shows the ids")
            )
        history = ctx.ledger.history(dlq_id)
        if fmt is OutputFormat.table:
            show_table(ctx, row, history)
        else:
            doc = row_json(ctx, row)
            doc["history"] = [
                {
                    "dlq_id": h.dlq_id,
                    "replay_id": h.replay_id,
                    "outcome": h.outcome,
                    "reason": h.reason,
                    "new_dlq_id": h.new_dlq_id,
                    "replayed_at": iso(h.replayed_at),
                }
                for h in history
            ]
            if fmt is OutputFormat.json:
                print_json(doc)
            else:
                write_csv(doc, [[csv_cell(v) for v in doc.values()]])
    finally:
        ctx.close()


@dlq_app.command("stats")
def stats(
    reason: Reason = None,
    source: SourceName = None,
    event: EventName = None,
    since: Since = None,
    until: Until = None,
    all_rows: AllRows = False,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Dead letters by reason, source and event, and by hour received.

    As JSON: {total, by_kind: [{reason, source, event, count}], by_hour: [{hour, count}]};
    as CSV: the counts by reason, source and event (reason,source,event,count)."""
    fmt = output_format(format, as_json)
    ctx = DlqContext(data_dir, config)
    try:
        f = ctx.filters(reason, source, event, since, until, None, all_rows)
        result = ctx.snapshot.stats(f)
        by_kind = [
            {"reason": r, "source": ctx.source(s), "event": e, "count": n}
            for r, s, e, n in result.by_kind
        ]
        if fmt is OutputFormat.json:
            by_hour = [{"hour": iso(h), "count": n} for h, n in result.by_hour]
            print_json({"total": result.total, "by_kind": by_kind, "by_hour": by_hour})
            return
        if fmt is OutputFormat.csv:
            write_csv(("reason", "source", "event", "count"), (k.values() for k in by_kind))
            return
        out = console
        kinds = listing("reason", "source", "event", "count", title="By reason, source and event")
        kinds.columns[3].justify = "right"
        for r, s, e, n in result.by_kind:
            kinds.add_row(r, escape(ctx.source(s)), escape(e or ""), str(n))
        print_table(kinds)
        hours = listing("hour (UTC)", "count", "", title="By hour received")
        hours.columns[1].justify = "right"
        peak = max((n for _, n in result.by_hour), default=0)
        for h, n in result.by_hour:
            bar = "█" * max(1, round(30 * n / peak)) if peak else ""
            hours.add_row(h.strftime("%Y-%m-%d %H:00"), str(n), bar)
        print_table(hours)
        scope = "" if all_rows else " not yet replayed"
        out.print(f"{plural(result.total, 'dead letter')}{scope}")
    finally:
        ctx.close()


@dlq_app.command("replay")
def replay(
    reason: Reason = None,
    source: SourceName = None,
    event: EventName = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many rows.", show_default=False)
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; change nothing.")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Validate dead letters again against the current tracking plan.

    Fixed events land once (a messageId already accepted is a duplicate); the others go back
    to the queue with their new reason. Rows replayed before are skipped, so an interrupted
    replay resumes where it stopped when run again."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    from clew._datadir import serving_url
    from clew.dlq.replay import ReplayError, replay_dlq

    ctx = DlqContext(data_dir, config)
    try:
        f = ctx.filters(reason, source, event, since, until, limit, False)
    finally:
        ctx.close()
    progress = Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    task: list[TaskID] = []

    def started(report: ReplayReport) -> None:
        task.append(progress.add_task("replay", total=report.selected))

    def advanced(n: int) -> None:
        progress.advance(task[0], n)

    try:
        with progress:
            report = replay_dlq(
                ctx.settings, f, dry_run=dry_run, on_start=started, on_progress=advanced
            )
    except ReplayError as e:
        raise fail(str(e)) from None
    _print_report(report, serving_url(ctx.settings.data_dir) is not None)


def _print_report(report: ReplayReport, serving: bool) -> None:
    from rich.table import Table

    out = console
    verb = "Would replay" if report.dry_run else "Replayed"
    title = f"Replay {report.replay_id}" + (" (dry run: nothing changed)" if report.dry_run else "")
    table = Table("outcome", "events", title=title)
    table.columns[1].justify = "right"
    table.add_row("landed", str(report.landed))
    table.add_row("still bad", str(report.still_bad))
    for reason, n in report.still_bad_reasons.most_common():
        table.add_row(f"  {reason}", str(n))
    table.add_row("duplicates", str(report.duplicates))
    table.add_row("skipped (replayed before)", str(report.skipped))
    if report.recovered:
        table.add_row("finished from an interrupted replay", str(report.recovered))
    if report.unreadable:
        table.add_row("unreadable (left in the queue)", str(report.unreadable))
    out.print(table)
    if report.unreadable:
        more = ", …" if report.unreadable > len(report.unreadable_ids) else ""
        out.print(
            "Rows whose kept event cannot be decoded were skipped (`clew dlq show ID`): "
            + escape(", ".join(report.unreadable_ids))
            + more
        )
    out.print(
        f"{verb} {plural(report.replayed, 'dead letter')} in {report.elapsed_s:.2f}s "
        f"({report.events_per_s:,.0f} events/s)"
    )
    if report.dry_run:
        out.print("Duplicates are checked against the lake only in a dry run.")
        return
    if report.still_bad:
        out.print("The still-bad events are back in the queue with their new reason.")
    if report.replayed and not serving:
        out.print(
            "The replayed events are in the log; they reach the lake (`clew sql`, "
            "`clew dlq list`) when `clew serve` runs."
        )
