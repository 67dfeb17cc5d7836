"""``clew import``: customer records from a CSV file become profiles, merged automatically
with the profiles they match with confidence, and probable matches queued for a person to
confirm or reject (see docs/import.md).

The commands write to the data directory's log and read its serving store directly, so
they work whether or not ``clew serve`` runs; the profiles stage applies the imported
events when it runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
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
    print_json,
    print_table,
    settings_from,
    time_of_ms,
    unknown_name,
    write_csv,
)

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.imports.importer import ImportReport, ReviewEntry

import_app = typer.Typer(
    help="Import customer records (CSV) and decide the probable matches they raised.",
    no_args_is_help=True,
)

ReviewId = Annotated[
    int, typer.Argument(help="The review's id, from `clew import reviews`.", show_default=False)
]


def _review_doc(r: ReviewEntry) -> dict[str, Any]:
    return {
        "review_id": r.review_id,
        "source": r.source,
        "record_id": r.record_id,
        "other_kind": r.other_kind,
        "other_id": r.other_id,
        "link": f"{r.link_type}:{r.link_value}",
        "probability": r.probability,
        "match_weight": r.match_weight,
        "record": r.record,
        "other": r.other,
        "import_id": r.import_id,
        "created": time_of_ms(r.created_ms),
        "status": r.status,
    }


def _report_doc(report: ImportReport) -> dict[str, Any]:
    return {
        "import_id": report.import_id,
        "source": report.source,
        "dry_run": report.dry_run,
        "rows_read": report.rows_read,
        "imported": report.imported,
        "unchanged": report.unchanged,
        "invalid": [
            {"line": p.line, "row_id": p.row_id, "reason": p.reason} for p in report.invalid
        ],
        "merges": [
            {
                "record_id": m.record_id,
                "other_id": m.other_id,
                "other_kind": "profile" if m.other_is_profile else "record",
                "link": str(m.link),
                "match_weight": m.match_weight,
                "probability": m.probability,
            }
            for m in report.merges
        ],
        "reviews": [_review_doc(r) for r in report.reviews],
    }


def _sides(doc: dict[str, Any]) -> tuple[str, str]:
    def show(fields: dict[str, str]) -> str:
        return "\n".join(f"{k}: {v}" for k, v in fields.items() if k not in ("id", "profile_id"))

    return escape(show(doc["record"])), escape(show(doc["other"]))


def _reviews_table(docs: list[dict[str, Any]]) -> Table:
    table = listing(
        "review", "record", "matches", "probability", "weight", "record fields", "other"
    )
    for d in docs:
        mine, theirs = _sides(d)
        other = f"{d['other_kind']} {d['other_id']}\n(via {d['link']})"
        table.add_row(
            str(d["review_id"] or "-"),
            escape(f"{d['source']}_id:{d['record_id']}"),
            escape(other),
            f"{d['probability']:.4f}",
            f"{d['match_weight']:.2f}",
            mine,
            theirs,
        )
    return table


# The columns of `clew import reviews --format csv` before the fields of either side.
_REVIEW_COLUMNS = (
    "review_id",
    "source",
    "record_id",
    "other_kind",
    "other_id",
    "link",
    "probability",
    "match_weight",
    "import_id",
    "created",
    "status",
)
# Fields of a side that repeat a column (record_id, other_id).
_ID_FIELDS = ("id", "profile_id")


def _write_reviews_csv(docs: list[dict[str, Any]]) -> None:
    """One line per review: :data:`_REVIEW_COLUMNS`, then ``record.<field>`` for every
    field a record has and ``other.<field>`` for every field the other side has (in the
    order first seen; empty where a review lacks the field)."""

    def fields(side: str) -> list[str]:
        seen = dict.fromkeys(k for d in docs for k in d[side] if k not in _ID_FIELDS)
        return list(seen)

    mine, theirs = fields("record"), fields("other")
    header = [*_REVIEW_COLUMNS, *(f"record.{f}" for f in mine), *(f"other.{f}" for f in theirs)]
    write_csv(
        header,
        (
            [
                *(d[c] for c in _REVIEW_COLUMNS),
                *(d["record"].get(f) for f in mine),
                *(d["other"].get(f) for f in theirs),
            ]
            for d in docs
        ),
    )


def _import_sources(settings: Settings) -> set[str]:
    """The sources earlier imports used (none when no import has run), read without
    changing ``imports.db``."""
    path = settings.imports_path
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows: Iterable[tuple[str]] = conn.execute(
            "SELECT source FROM imports UNION SELECT source FROM reviews"
        )
        return {r[0] for r in rows}
    finally:
        conn.close()


@import_app.command("profiles")
def profiles(
    file: Annotated[
        Path, typer.Argument(help="A CSV file, header row first (see docs/import.md).")
    ],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="The system the records come from (e.g. crm); its ids become <source>_id.",
            show_default=False,
        ),
    ],
    merge_threshold: Annotated[
        float, typer.Option(help="Match probability from which records merge automatically.")
    ] = 0.99,
    review_threshold: Annotated[
        float, typer.Option(help="Match probability from which a pair is queued for review.")
    ] = 0.8,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Match and report, but import nothing.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Import customer records from a CSV file as identify events of source SOURCE.

    Rows that match an existing profile (or an earlier row) with a probability of at least
    --merge-threshold are merged into it; pairs from --review-threshold on are listed for
    `clew import confirm` / `reject`. Unchanged rows of an earlier import are skipped."""
    from clew.imports.importer import ProfileImportError, import_profiles
    from clew.imports.matching import MatchingUnavailableError, MatchThresholds

    settings = settings_from(config, data="provision", data_dir=data_dir)
    try:
        thresholds = MatchThresholds(merge=merge_threshold, review=review_threshold)
    except ValueError as e:
        raise fail(f"{e} (--review-threshold, --merge-threshold)", 2) from None
    try:
        report = import_profiles(settings, file, source, thresholds=thresholds, dry_run=dry_run)
    except (ProfileImportError, MatchingUnavailableError) as e:
        raise fail(escape(str(e))) from None
    doc = _report_doc(report)
    if as_json:
        print_json(doc)
        return
    verb = "Would import" if report.dry_run else "Imported"
    console.print(
        f"{verb} {report.imported} of {report.rows_read} rows from {escape(str(file))} as "
        f"source {escape(source)}: {report.unchanged} unchanged since the last import, "
        f"{len(report.invalid)} invalid, {len(report.merges)} merged by match, "
        f"{len(report.reviews)} to review."
    )
    if report.invalid:
        table = listing("line", "id", "skipped because", prose=["skipped because"])
        for p in report.invalid:
            table.add_row(str(p.line), escape(p.row_id or ""), escape(p.reason))
        print_table(table, stderr=True)
    if report.merges:
        table = listing("record", "merged into", "via", "probability", "weight")
        for m in doc["merges"]:
            table.add_row(
                escape(f"{source}_id:{m['record_id']}"),
                escape(f"{m['other_kind']} {m['other_id']}"),
                escape(m["link"]),
                f"{m['probability']:.4f}",
                f"{m['match_weight']:.2f}",
            )
        print_table(table)
    if report.reviews:
        print_table(_reviews_table(doc["reviews"]))
        if not report.dry_run:
            console.print("Decide each with `clew import confirm ID` or `clew import reject ID`.")


@import_app.command("reviews")
def reviews(
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Only this source's (the --source of `clew import profiles`); one no import "
            "used exits 1, naming the closest.",
            show_default=False,
        ),
    ] = None,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List the probable matches waiting for a decision, oldest first.

    As JSON: a list of {review_id, source, record_id, other_kind, other_id, link,
    probability, match_weight, record, other, import_id, created, status}, record and other
    each side's fields; as CSV: the same columns with the sides' fields spread into
    record.FIELD and other.FIELD columns."""
    from clew.imports.importer import pending_reviews

    fmt = output_format(format, as_json)
    settings = settings_from(config, data_dir=data_dir)
    if source is not None:
        known = _import_sources(settings)
        if source not in known:
            raise unknown_name("import source", source, known)
    docs = [_review_doc(r) for r in pending_reviews(settings, source)]
    if fmt is OutputFormat.json:
        print_json(docs)
    elif fmt is OutputFormat.csv:
        _write_reviews_csv(docs)
    elif not docs:
        console.print("No reviews pending.")
    else:
        print_table(_reviews_table(docs))


@import_app.command("confirm")
def confirm(
    review_id: ReviewId,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Merge the review's record with what it matched.

    Sends an identify event with the link and the match weight; the profiles stage applies
    it under the usual identity rules."""
    from clew.imports.importer import ProfileImportError, confirm_review

    settings = settings_from(config, data_dir=data_dir)
    try:
        entry = confirm_review(settings, review_id)
    except ProfileImportError as e:
        raise fail(escape(str(e))) from None
    if as_json:
        print_json(_review_doc(entry))
        return
    console.print(
        escape(
            f"Confirmed review {review_id}: {entry.source}_id:{entry.record_id} is linked to "
            f"{entry.link_type}:{entry.link_value} (event {entry.message_id})."
        )
    )


@import_app.command("reject")
def reject(
    review_id: ReviewId,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Dismiss the review: nothing merges, and later imports do not suggest the pair again."""
    from clew.imports.importer import ProfileImportError, reject_review

    settings = settings_from(config, data_dir=data_dir)
    try:
        entry = reject_review(settings, review_id)
    except ProfileImportError as e:
        raise fail(escape(str(e))) from None
    if as_json:
        print_json(_review_doc(entry))
        return
    console.print(escape(f"Rejected review {review_id}; the pair stays apart."))
