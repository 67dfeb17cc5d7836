"""The settings of the lake: where its tables live and how they are written, the tiers and
retention (docs/lifecycle.md), and the bounds on SQL over it (docs/security.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from clew._locations import check_uri
from clew._redact import redact_options
from clew.config._base import Section, option_text, reveal


def _object_store_uri(value: str | None, setting: str) -> str | None:
    """``value`` checked as a lake location: ``None`` (local default), a local directory, or
    ``s3://bucket[/prefix]`` (``s3a://`` is read as ``s3://``); anything else raises with
    the setting's name."""
    if value is None:
        return None
    try:
        return check_uri(value)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


class LakeSettings(Section):
    """The lake's tables (docs/object-storage.md for object storage)."""

    uri: str | None = Field(
        default=None,
        description=(
            "Where the Delta tables live: unset for `data_dir/lake`, a local directory, or "
            "`s3://bucket/prefix`."
        ),
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Object-store options (credentials, region, endpoint, ...); they win over the `AWS_*` "
            "environment variables."
        ),
    )
    flush_rows: int = Field(
        default=20_000, description="A micro-batch is written when it holds this many rows..."
    )
    flush_interval_ms: int = Field(default=500, description="... or is this many milliseconds old.")
    compact_every_commits: int = Field(
        default=100, description="Small files are compacted after this many appends."
    )
    vacuum_retention_hours: float = Field(
        default=1.0, description="Old table versions are vacuumed after this many hours."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return _object_store_uri(value, "lake.uri")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # AWS_SECRET_ACCESS_KEY and the like stay out of logs and error messages.
        for name, value in super().__repr_args__():
            yield name, redact_options(value) if name == "storage_options" else value

    @field_serializer("storage_options", when_used="json")
    def _options_json(self, value: dict[str, str], info: SerializationInfo) -> dict[str, Any]:
        return value if reveal(info) else redact_options(value)

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_as_text(cls, value: Any) -> Any:
        # TOML and JSON write ``allow_http = true``; the object store wants text.
        if isinstance(value, dict):
            return {k: option_text(v) for k, v in value.items()}
        return value


class LifecycleSettings(Section):
    """Hot / warm / cold tiers and retention; see docs/lifecycle.md."""

    warm_days: float = Field(
        default=90.0,
        gt=0,
        description=(
            "Lake partitions (event dates) younger than this many days stay warm (queried by "
            "default)."
        ),
    )
    cold_path: Path | None = Field(
        default=None, description="Where cold tables live; unset: `data_dir/cold`."
    )
    cold_uri: str | None = Field(
        default=None,
        description=(
            "Or an S3-compatible URI `s3://bucket/prefix` for them (with `lake.storage_options`); "
            "at most one of `cold_path` and `cold_uri`."
        ),
    )
    purge_after_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Cold data older than this many days (since the event) is purged; unset keeps it "
            "forever."
        ),
    )
    run_every_minutes: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Minutes between two lifecycle runs inside `clew serve`; 0 turns the scheduler off."
        ),
    )

    @field_validator("cold_uri")
    @classmethod
    def _cold_uri(cls, value: str | None) -> str | None:
        return _object_store_uri(value, "lifecycle.cold_uri")

    @model_validator(mode="after")
    def _one_cold_location(self) -> LifecycleSettings:
        if self.cold_path is not None and self.cold_uri is not None:
            raise ValueError("lifecycle: set cold_path or cold_uri, not both")
        return self


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB,
    TiB; case ignored), as DuckDB writes memory sizes.

    >>> parse_size("4GB"), parse_size("512 MiB"), parse_size("1000")
    (4000000000, 536870912, 1000)
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 4GB or 512MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class SqlSettings(Section):
    """Bounds on SQL over the lake (``POST /v1/sql`` and ``clew sql``); docs/security.md."""

    timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds a `POST /v1/sql` query may run; then it is interrupted (code query_timeout)."
        ),
    )
    memory_limit: str | None = Field(
        default=None,
        description=(
            "Memory all running queries of one process may use together (such as 4GB), split evenly"
            " between the `max_concurrent` slots; unset: a quarter of the RAM."
        ),
    )
    max_concurrent: int = Field(
        default=4,
        ge=1,
        description=(
            "Queries running at once in the HTTP API; one more waits up to `queue_timeout_s` for a "
            "slot."
        ),
    )
    queue_timeout_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a query waits for a slot, then gets 503 with Retry-After.",
    )
    max_rows: int = Field(
        default=100_000,
        ge=1,
        description=(
            'Rows one `POST /v1/sql` answer holds; beyond them it says `"truncated": true`.'
        ),
    )
    threads: int | None = Field(
        default=None, ge=1, description="DuckDB worker threads per query; unset: one per core."
    )
    max_spill: str = Field(
        default="10GB",
        description="Disk a query may spill to (inside the data dir) once its memory is used up.",
    )

    @field_validator("memory_limit", "max_spill")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    def memory_limit_bytes(self) -> int:
        """``memory_limit`` in bytes (a quarter of this machine's RAM when unset)."""
        if self.memory_limit is None:
            return _physical_memory() // 4
        return parse_size(self.memory_limit)
