"""Searching raw bytes for a person (used by ``clew.privacy.verify`` and by the SQLite scrub of
``clew.privacy.erase``).

Needles are the person's identifier values and profile ids, as UTF-8 and, where it differs, as
JSON writes them (with ASCII escapes, and with only quotes, backslashes and control characters
escaped); emails are matched in any letter case. Values shorter than
:data:`MIN_RAW` are not searched in raw bytes (a user id ``"7"`` is in every file); they are
still checked wherever records are read as records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from clew._locations import LakeLocation

MIN_RAW = 5
_CHUNK = 32 * 1024 * 1024
_RE2_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


def re2_escape(value: str) -> str:
    """``value`` as a literal in an RE2 pattern (Arrow's regex functions)."""
    return _RE2_SPECIAL.sub(r"\\\1", value)


@dataclass(frozen=True, slots=True)
class Needles:
    exact: tuple[bytes, ...]
    any_case: tuple[bytes, ...]  # lower-cased
    short: int  # values too short to search

    def __bool__(self) -> bool:
        return bool(self.exact or self.any_case)

    @property
    def longest(self) -> int:
        return max((len(n) for n in (*self.exact, *self.any_case)), default=0)


def needles(identifiers: Iterable[tuple[str, str]], profile_ids: Iterable[str]) -> Needles:
    exact: set[bytes] = set()
    any_case: set[bytes] = set()
    short = 0
    values = [(t, v) for t, v in identifiers] + [("profile_id", p) for p in profile_ids]
    for id_type, value in values:
        if len(value) < MIN_RAW:
            short += 1
            continue
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        # surrogatepass: a value read leniently may hold a lone surrogate.
        if id_type == "email":
            any_case.update(f.lower().encode(errors="surrogatepass") for f in forms)
        else:
            exact.update(f.encode(errors="surrogatepass") for f in forms)
    return Needles(tuple(sorted(exact)), tuple(sorted(any_case)), short)


def find(data: bytes, found: Needles) -> int | None:
    """The first offset in ``data`` where a needle starts, or None."""
    hits = [i for n in found.exact if (i := data.find(n)) >= 0]
    if found.any_case:
        lowered = data.lower()
        hits += [i for n in found.any_case if (i := lowered.find(n)) >= 0]
    return min(hits, default=None)


def find_in_file(path: Path, found: Needles) -> int | None:
    """The first byte offset of ``path`` where a needle starts (read in chunks), or None."""
    if not found:
        return None
    overlap = found.longest - 1
    try:
        with path.open("rb") as handle:
            base = 0
            tail = b""
            while chunk := handle.read(_CHUNK):
                data = tail + chunk
                hit = find(data, found)
                if hit is not None:
                    return base - len(tail) + hit
                tail = data[-overlap:] if overlap > 0 else b""
                base += len(chunk)
    except FileNotFoundError:
        return None
    return None


@dataclass(slots=True)
class ObjectScan:
    """What :func:`scan_objects` read, and where it found the person."""

    parquet: int = 0
    other: int = 0
    traces: list[str] = field(default_factory=list)


def scan_objects(
    location: LakeLocation,
    found: Needles,
    table_hits: Callable[[pa.Table], Iterator[tuple[str, int]]],
) -> ObjectScan:
    """Every object under a lake root on object storage, read through the object store:
    Parquet files column by column (``table_hits`` names the columns and rows holding the
    person), anything else (the Delta log) as raw bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    out = ObjectScan()
    filesystem, base = location.filesystem()
    selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type != fs.FileType.File:
            continue
        where = f"{location.uri}/{info.path[len(base) :].lstrip('/')}"
        if info.extension == "parquet":
            out.parquet += 1
            try:
                table = pq.read_table(info.path, filesystem=filesystem)
            except (OSError, pa.ArrowException) as exc:
                out.traces.append(f"{where}: unreadable Parquet ({type(exc).__name__})")
                continue
            for column, rows in table_hits(table):
                out.traces.append(f"{where}, column {column}, {rows} row(s)")
        else:
            out.other += 1
            if not found:
                continue
            with filesystem.open_input_stream(info.path) as stream:
                at = find(stream.read(), found)
            if at is not None:
                out.traces.append(f"{where}, byte {at}")
    return out
