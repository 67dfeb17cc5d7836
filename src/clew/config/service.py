"""The settings of the HTTP side and the stages: Tracking API limits, HTTP server limits,
where destinations may send, the stages that read the log, ``/metrics`` and ``/health``."""

from __future__ import annotations

from pydantic import Field

from clew.config._base import Section


class Limits(Section):
    """Tracking API limits. Defaults match Segment's HTTP API."""

    max_event_bytes: int = Field(
        default=32 * 1024, description="Largest event accepted, in bytes; a larger one is rejected."
    )
    max_request_bytes: int = Field(
        default=500 * 1024,
        description="Largest request body accepted, in bytes (answered 400 beyond it).",
    )
    max_batch_events: int = Field(default=2500, description="Most events in one batch request.")
    max_pending_appends: int = Field(
        default=2000,
        description="Requests waiting for a durable append; beyond this the collector answers 503.",
    )


class HttpSettings(Section):
    """Limits of the HTTP server of `clew serve` and `clew collector`, so that no client can
    hold it hostage; see docs/security.md ("HTTP limits")."""

    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a client has to send a whole request head (request line and headers), counted "
            "from the connection opening or from its first byte after the previous response."
        ),
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="A request head larger than this many bytes is answered 431.",
    )
    max_headers: int = Field(
        default=100, ge=1, description="A request with more headers than this is answered 431."
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description=(
            "Open connections served; a request on any connection beyond them is answered 503."
        ),
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        ge=1,
        description="Whole seconds a kept-alive connection may stay idle after a response.",
    )
    enforce: bool = Field(
        default=True,
        description=(
            "false: only the keep-alive timeout holds (for a proxy in front that enforces the "
            "rest)."
        ),
    )


class DestinationSettings(Section):
    """Where destinations may send; see docs/destinations.md ("Addresses"). Link-local and
    cloud metadata addresses are refused always; ``block_private_networks`` refuses
    loopback, private and other non-public addresses too."""

    block_private_networks: bool = Field(
        default=False,
        description=(
            "Refuse loopback, private and other non-public addresses too (link-local and cloud "
            "metadata addresses are refused always)."
        ),
    )


class StageSettings(Section):
    """The stages that read the log: validation, lake, profiles, destinations, monitors."""

    dedup_window_hours: float = Field(
        default=24.0, description="Hours a messageId is remembered to drop a repeated event."
    )
    poll_max_records: int = Field(
        default=500, description="Records a stage reads from the log at most at a time."
    )
    worker_nice: int = Field(
        default=10,
        description=(
            "Unix nice of the stage worker processes of `clew serve`, so that on a saturated "
            "machine acknowledging requests wins over processing them."
        ),
    )
    stalled_after_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Seconds a stage may have records waiting without committing any before `/health` "
            "calls it stalled."
        ),
    )
    worker_http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Port on which `clew worker` serves `/health` and `/metrics` of its stages (on "
            "`host`); none by default. `clew worker --http-port` sets it too."
        ),
    )


class MetricsSettings(Section):
    """``require_token``: ``/metrics`` needs an access token with the ``metrics`` scope (what
    Prometheus sends as ``bearer_token``), and ``/health`` tells only ``ok``/``status``
    without one. Off by default: ``/metrics`` names sources, events and destinations."""

    require_token: bool = Field(
        default=False,
        description=(
            "`/metrics` needs an access token with the `metrics` scope, and `/health` tells only "
            "ok/status without one (off by default: `/metrics` names sources, events and "
            "destinations)."
        ),
    )
