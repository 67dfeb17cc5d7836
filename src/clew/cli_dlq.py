"""``clew dlq``: inspect the dead-letter queue, and replay it against the current tracking plan.

The commands read the ``dlq`` lake table, so they work while ``clew serve`` runs (and see the
rows its lake stage has written).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from clew.cli_common import (
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
    print_json,
    print_listing,
    print_table,
    settings_from,
    unknown_name,
    write_csv,
)

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.dlq.ledger import ReplayLedger
    from clew.dlq.replay import ReplayReport
    from clew.dlq.snapshot import DlqFilter, DlqRow, DlqSnapshot

dlq_app = typer.Typer(
    help="The dead-letter queue: events Clew refused, with the reason; replay them once fixed.",
    no_args_is_help=True,
)

Reason = Annotated[
    list[str] | None,
    typer.Option(
        "--reason",
        help="Only rows with this reason (repeat for several): invalid_json, size_violation, "
        "no_identity, schema_violation, unplanned_event, protocol_violation, stage_failure "
        "(a stage could not process the record and set it aside).",
        show_default=False,
    ),
]
SourceName = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Only this source (name or id); one that does not exist exits 1, naming the closest.",
        show_default=False,
    ),
]
EventName = Annotated[
    str | None,
    typer.Option("--event", help="Only this track event name (or event type).", show_default=False),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Received at or after this ISO-8601 time (UTC if no offset).",
        show_default=False,
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Received before this ISO-8601 time.", show_default=False),
]
AllRows = Annotated[
    bool, typer.Option("--all", help="Include rows already replayed (hidden by default).")
]


class _Context:
    """Settings, the ledger and one lake snapshot for a command, and source names."""

    def __init__(self, data_dir: Path | None, config: Path | None) -> None:
        from clew.dlq.ledger import ReplayLedger
        from clew.sources import Catalog

        self.settings: Settings = settings_from(config, data_dir=data_dir)
        catalog = Catalog(self.settings.meta_path)
        try:
            self.names = {s.id: s.name for s in catalog.sources()}
        finally:
            catalog.close()
        self.ledger: ReplayLedger = ReplayLedger(self.settings.state_path)
        self._snapshot: DlqSnapshot | None = None

    @property
    def snapshot(self) -> DlqSnapshot:
        from clew.dlq.snapshot import DlqSnapshot

        if self._snapshot is None:
            self._snapshot = DlqSnapshot(self.settings.lake_location, self.ledger)
        return self._snapshot

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
        self.ledger.close()

    def source(self, source_id: str) -> str:
        return self.names.get(source_id, source_id)

    def filters(
        self,
        reason: list[str] | None,
        source: str | None,
        event: str | None,
        since: str | None,
        until: str | None,
        limit: int | None,
        include_replayed: bool,
    ) -> DlqFilter:
        from clew.dlq.snapshot import DlqFilter

        source_id = None
        if source is not None:
            # Removed sources too: their dead letters still name them.
            by_name = {name: sid for sid, name in self.names.items()}
            source_id = by_name.get(source, source if source in self.names else None)
            if source_id is None:
                raise unknown_name(
                    "source", source, by_name, hint="`clew sources list --removed` shows them"
                )
        if limit is not None and limit < 1:
            raise fail("--limit must be at least 1", 2)
        return DlqFilter(
            reasons=tuple(reason or ()),
            source_id=source_id,
            event=event,
            since=_time("--since", since),
            until=_time("--until", until),
            limit=limit,
            include_replayed=include_replayed,
        )


def _time(option: str, value: str | None) -> datetime | None:
    from clew.events import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise fail(f"{option} must be an ISO-8601 time such as 2026-01-05T14:00:00Z", 2) from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _event_label(row: DlqRow) -> str:
    if row.event_name:
        return row.event_name
    return row.event_type or ""


def _row_json(ctx: _Context, row: DlqRow) -> dict[str, Any]:
    replay = row.replay
    return {
        "dlq_id": row.dlq_id,
        "received_at": _iso(row.received_at),
        "source_id": row.source_id,
        "source": ctx.source(row.source_id),
        "reason": row.reason,
        "message": row.message,
        "message_id": row.message_id,
        "event_type": row.event_type,
        "event_name": row.event_name,
        "violations": row.violations,
        "schema_versions": row.schema_versions,
        "raw_partition": row.raw_partition,
        "raw_offset": row.raw_offset,
        "index": row.index,
        "replay_of": row.replay_of,
        "stage": row.stage,
        "topic": row.topic,
        "replayed": None
        if replay is None
        else {
            "replay_id": replay.replay_id,
            "outcome": replay.outcome,
            "reason": replay.reason,
            "new_dlq_id": replay.new_dlq_id,
            "replayed_at": _iso(replay.replayed_at),
        },
        "payload": row.payload,
    }


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
    ctx = _Context(data_dir, config)
    try:
        f = ctx.filters(reason, source, event, since, until, limit, all_rows)
        rows = [r for batch in ctx.snapshot.rows(f) for r in batch]
        if fmt is OutputFormat.json:
            print_json([_row_json(ctx, r) for r in rows])
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
                _short_time(r.received_at),
                escape(ctx.source(r.source_id)),
                r.reason,
                escape(_event_label(r)),
                escape(_cut(r.message, 120)),
            ]
            if all_rows:
                cells.append(r.replay.outcome if r.replay is not None else "")
            table.add_row(*cells)
        print_listing(table, fmt, None)
        if fmt is OutputFormat.table:
            hidden = "" if all_rows else " not yet replayed"
            more = "; use --limit to see more" if total > len(rows) else ""
            console.print(f"{len(rows)} of {_count(total, 'dead letter')}{hidden}{more}")
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
    ctx = _Context(data_dir, config)
    try:
        row = ctx.snapshot.get(dlq_id)
        if row is None:
            raise fail(
                escape(f"no dead letter with id {dlq_id!r}; `clew dlq list --all` shows the ids")
            )
        history = ctx.ledger.history(dlq_id)
        if fmt is OutputFormat.table:
            _show_table(ctx, row, history)
        else:
            doc = _row_json(ctx, row)
            doc["history"] = [
                {
                    "dlq_id": h.dlq_id,
                    "replay_id": h.replay_id,
                    "outcome": h.outcome,
                    "reason": h.reason,
                    "new_dlq_id": h.new_dlq_id,
                    "replayed_at": _iso(h.replayed_at),
                }
                for h in history
            ]
            if fmt is OutputFormat.json:
                print_json(doc)
            else:
                write_csv(doc, [[_csv_cell(v) for v in doc.values()]])
    finally:
        ctx.close()


def _csv_cell(value: Any) -> Any:
    """A scalar as is; a list or object as its JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _show_table(ctx: _Context, row: DlqRow, history: list[Any]) -> None:
    from rich.json import JSON
    from rich.table import Table

    out = console
    out.print(f"[bold]Dead letter {escape(row.dlq_id)}[/bold]")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("reason", row.reason)
    facts.add_row("message", escape(row.message))
    facts.add_row("source", escape(f"{ctx.source(row.source_id)} ({row.source_id})"))
    facts.add_row("received at", row.received_at.isoformat())
    event = " ".join(escape(p) for p in (row.event_type, row.event_name) if p)
    facts.add_row("event", event or "-")
    facts.add_row("message id", escape(row.message_id or "-"))
    if row.stage:
        facts.add_row("set aside by", escape(f"the {row.stage} stage"))
    where = f"{row.topic or 'raw'} partition {row.raw_partition}, offset {row.raw_offset}"
    facts.add_row("record", where + (f", event {row.index}" if row.index >= 0 else ""))
    if row.replay_of:
        facts.add_row("replay of", escape(row.replay_of))
    if row.replay is not None:
        facts.add_row("replayed", f"{row.replay.outcome} by {row.replay.replay_id}")
    print_table(facts)
    if row.violations:
        table = listing("path", "keyword", "message", "schema", prose=["message"])
        table.title = "Violations"
        for v in row.violations:
            schema = f"{v.get('subject', '')} {v.get('version', '')}".strip()
            table.add_row(
                escape(v.get("path", "")),
                escape(v.get("keyword", "")),
                escape(v.get("message", "")),
                escape(schema),
            )
        print_table(table)
    if row.schema_versions:
        versions = ", ".join(f"{s} {v}" for s, v in sorted(row.schema_versions.items()))
        out.print(f"[bold]Schema versions:[/bold] {escape(versions)}")
    out.print("[bold]Payload:[/bold]")
    try:
        json.loads(row.payload)
        out.print(JSON(row.payload))
    except ValueError:
        out.print(row.payload, markup=False, highlight=False)
    if history:
        table = listing("row", "replay", "outcome", "new reason", "new row", "at", title="Replays")
        for h in history:
            table.add_row(
                escape(h.dlq_id),
                h.replay_id,
                h.outcome,
                h.reason or "",
                escape(h.new_dlq_id or ""),
                _short_time(h.replayed_at),
            )
        print_table(table)
    else:
        out.print("Not replayed yet.")


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
    ctx = _Context(data_dir, config)
    try:
        f = ctx.filters(reason, source, event, since, until, None, all_rows)
        result = ctx.snapshot.stats(f)
        by_kind = [
            {"reason": r, "source": ctx.source(s), "event": e, "count": n}
            for r, s, e, n in result.by_kind
        ]
        if fmt is OutputFormat.json:
            by_hour = [{"hour": _iso(h), "count": n} for h, n in result.by_hour]
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
        out.print(f"{_count(result.total, 'dead letter')}{scope}")
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

    ctx = _Context(data_dir, config)
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
        f"{verb} {_count(report.replayed, 'dead letter')} in {report.elapsed_s:.2f}s "
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
