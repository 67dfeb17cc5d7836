"""What the `clew dlq` commands share: the filter options, one lake snapshot of the ``dlq``
table with the replay ledger (:class:`DlqContext`), and how a row is shown."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from clew.cli._common import (
    console,
    fail,
    listing,
    print_table,
    settings_from,
    source_names,
    time_option,
    unknown_name,
)

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.dlq.ledger import ReplayLedger
    from clew.dlq.snapshot import DlqFilter, DlqRow, DlqSnapshot

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


class DlqContext:
    """Settings, the ledger and one lake snapshot for a command, and source names."""

    def __init__(self, data_dir: Path | None, config: Path | None) -> None:
        from clew.dlq.ledger import ReplayLedger

        self.settings: Settings = settings_from(config, data_dir=data_dir)
        self.names = source_names(self.settings)
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
            since=time_option("--since", since),
            until=time_option("--until", until),
            limit=limit,
            include_replayed=include_replayed,
        )


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def short_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_label(row: DlqRow) -> str:
    if row.event_name:
        return row.event_name
    return row.event_type or ""


def row_json(ctx: DlqContext, row: DlqRow) -> dict[str, Any]:
    replay = row.replay
    return {
        "dlq_id": row.dlq_id,
        "received_at": iso(row.received_at),
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
            "replayed_at": iso(replay.replayed_at),
        },
        "payload": row.payload,
    }


def csv_cell(value: Any) -> Any:
    """A scalar as is; a list or object as its JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def show_table(ctx: DlqContext, row: DlqRow, history: list[Any]) -> None:
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
                short_time(h.replayed_at),
            )
        print_table(table)
    else:
        out.print("Not replayed yet.")
