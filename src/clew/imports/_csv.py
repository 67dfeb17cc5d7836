"""Reading a customer-records CSV file for ``clew import profiles`` (format: docs/import.md):
the header, the rows, and what the matcher compares of each row."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from clew.identity.identifiers import EMAIL, PHONE, normalise_email, normalise_phone
from clew.identity.rules import IdentityRules
from clew.imports.ledger import ProfileImportError
from clew.imports.matching import FIELDS, normalise


class ImportFileError(ProfileImportError, ValueError):
    """The file cannot be imported at all (nothing was); the message names the line or
    column to fix."""


@dataclass(slots=True, frozen=True)
class RowProblem:
    """A row that was skipped: its first line in the file, its id if it had one, and why."""

    line: int
    row_id: str | None
    reason: str


@dataclass(slots=True, frozen=True)
class Record:
    row_id: str
    traits: dict[str, str]  # every non-empty cell but the id, by column name
    match_row: dict[str, str]  # the id and the FIELDS as the matcher should compare them
    content_hash: str


def read_records(
    path: Path, id_type: str, rules: IdentityRules
) -> tuple[int, list[Record], list[RowProblem]]:
    """Rows read (blank lines aside), the valid records in file order, the invalid rows."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{path} is not CSV text in UTF-8 (undecodable byte at offset {exc.start}); "
            "export the data as CSV UTF-8"
        ) from None
    if "\x00" in text:
        raise ImportFileError(f"{path} holds NUL bytes, so it is not CSV text; export it as CSV")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    last = 0
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((last + 1, cells))
            last = reader.line_num
    except csv.Error as exc:
        raise ImportFileError(f"{path}, line {last + 1}: not valid CSV ({exc})") from None
    if not rows or rows[0][0] != 1:
        raise ImportFileError(
            f"{path}: the first line must be a header naming the columns, `id` among them"
        )
    columns = _columns(path, rows[0][1])
    by_field = id_fields(rules)
    at = columns.index("id")
    records: list[Record] = []
    invalid: list[RowProblem] = []
    seen: dict[str, int] = {}
    for line, cells in rows[1:]:
        row_id = cells[at].strip() if at < len(cells) else ""
        if len(cells) != len(columns):
            reason = (
                f"{len(cells)} cells but the header names {len(columns)} columns (quote cells "
                "that contain a comma)"
            )
            invalid.append(RowProblem(line, row_id or None, reason))
            continue
        if not row_id:
            raise ImportFileError(
                f"{path}, line {line}: the id cell is empty; every row needs the customer's id "
                "in the source system (fill it in or delete the row)"
            )
        if row_id in seen:
            raise ImportFileError(
                f"{path}, lines {seen[row_id]} and {line}: both rows have id {row_id!r}; ids "
                "must be unique in a file (merge the two rows or correct the id)"
            )
        seen[row_id] = line
        values = {c: v.strip() for c, v in zip(columns, cells, strict=True) if v.strip()}
        del values["id"]
        problem = _problem(row_id, values, id_type, rules)
        if problem is not None:
            invalid.append(RowProblem(line, row_id, problem))
            continue
        digest = json.dumps([row_id, sorted(values.items())], ensure_ascii=False)
        records.append(
            Record(
                row_id,
                values,
                _match_row(row_id, values, by_field, rules),
                hashlib.sha256(digest.encode()).hexdigest()[:32],
            )
        )
    return len(rows) - 1, records, invalid


def _columns(path: Path, header: list[str]) -> list[str]:
    """Column names: the known ones (``id`` and the matching fields) lowercased, others as
    written; raises :class:`ImportFileError` for an unnamed, repeated or missing column."""
    known = {"id", *FIELDS}
    columns: list[str] = []
    for i, raw in enumerate(header, 1):
        name = raw.strip()
        name = name.casefold() if name.casefold() in known else name
        if not name:
            raise ImportFileError(f"{path}, line 1: column {i} has no name; name it or delete it")
        if name in columns:
            raise ImportFileError(
                f"{path}, line 1: columns {columns.index(name) + 1} and {i} are both named "
                f"{name!r}; rename or delete one"
            )
        columns.append(name)
    if "id" not in columns:
        hint = ""
        if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
            hint = " (the header looks separated by something else: Clew reads commas)"
        raise ImportFileError(
            f"{path}, line 1: no `id` column{hint}; the header names {columns[:12]}. Add a "
            "column `id` holding each customer's id in the source system"
        )
    return columns


def _problem(row_id: str, values: dict[str, str], id_type: str, rules: IdentityRules) -> str | None:
    if rules.is_blocked(id_type, row_id):
        return f"id {row_id!r} is a placeholder, never an identifier; give the row its real id"
    dob = values.get("date_of_birth")
    if dob is not None and normalise({"date_of_birth": dob}, "id")["date_of_birth"] is None:
        return (
            f"date_of_birth {dob!r} is not YYYY-MM-DD, YYYYMMDD or DD/MM/YYYY; correct or "
            "empty the cell"
        )
    email = values.get("email")
    if email is not None and "@" not in email:
        return f"email {email!r} is not an email address; correct or empty the cell"
    return None


def id_fields(rules: IdentityRules) -> dict[str, str]:
    """Matching field → the identifier type the rules read from the trait of that name."""
    out = {"email": EMAIL, "phone": PHONE}
    for custom in rules.custom_ids:
        for p in custom.paths:
            name = p.removeprefix("traits.")
            if p.startswith("traits.") and name in FIELDS:
                out.setdefault(name, custom.id_type)
    return out


def _match_row(
    row_id: str, values: dict[str, str], by_field: dict[str, str], rules: IdentityRules
) -> dict[str, str]:
    """Identifier fields as identity resolution would store them, placeholders removed: a
    placeholder shared by strangers (a loyalty id ``0``) is no evidence that they match."""
    row = {"id": row_id}
    for name in FIELDS:
        value = values.get(name)
        id_type = by_field.get(name)
        if value is not None and id_type == EMAIL:
            value = normalise_email(value)
        elif value is not None and id_type == PHONE:
            with contextlib.suppress(ValueError):  # else compared as typed: digits only
                value = normalise_phone(value, rules.phone_region)
        if value and not (id_type is not None and rules.is_blocked(id_type, value)):
            row[name] = value
    return row
