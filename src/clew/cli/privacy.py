"""``clew privacy``: data-subject requests (suppress, unsuppress, delete, suppress with
delete), their status and audit records, and ``verify`` (is anything of a person left?).

Requests are written straight into the data directory's ``privacy.db``, so the commands work
with or without a running server. With `clew serve` running, its runner picks a request up
within ``privacy.poll_interval_s``; ``--wait`` then waits for it to end. With no server,
a request stays queued until `clew serve` next starts, unless ``--wait`` is given: then it
runs here and now, holding the data directory like a server would (a `clew serve` started
meanwhile refuses to start until it is done). See docs/privacy.md.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from clew.cli._common import (
    AsJson,
    ConfigFile,
    DataDir,
    Format,
    console,
    fail,
    listing,
    output_format,
    print_json,
    print_listing,
    settings_from,
)

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.privacy.requests import PrivacyRequest, RequestStore

privacy_app = typer.Typer(
    help="Data-subject requests: suppress, unsuppress and delete a person; verify deletions.",
    no_args_is_help=True,
)

Identifier = Annotated[
    str,
    typer.Argument(
        help="Any identifier of the person as id_type:value, e.g. email:ada@shop.test or "
        "user_id:42.",
        show_default=False,
    ),
]


def _store(settings: Settings) -> RequestStore:
    from clew.privacy._salt import load_salt
    from clew.privacy.requests import RequestStore

    return RequestStore(settings.privacy_path, load_salt(settings))


@privacy_app.command("request")
def request(
    type_: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            help="suppress, unsuppress, delete or suppress_with_delete.",
            show_default=False,
        ),
    ],
    identifier: Identifier,
    since: Annotated[
        str | None,
        typer.Option(help="Delete only events at or after this ISO-8601 time.", show_default=False),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Delete only events before this ISO-8601 time.", show_default=False),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the request has ended; without a running server, run it here.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait and a server: seconds to wait at most.")
    ] = 300.0,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Queue a data-subject request for the person behind IDENTIFIER (all of their identifiers).

    Exit code with --wait: 0 finished, 1 partial or failed."""
    from clew._datadir import DataDirInUseError, serving_url
    from clew.privacy.requests import InvalidRequestError

    settings = settings_from(config, data="provision", data_dir=data_dir)
    store = _store(settings)
    try:
        try:
            created = store.create(
                type_.replace("-", "_"), identifier, requested_by="cli", since=since, until=until
            )
        except InvalidRequestError as e:
            raise fail(escape(str(e)), 2) from None
        url = serving_url(settings.data_dir)
        if not wait:
            _queued(created, url, as_json)
            return
        final: PrivacyRequest | None = None
        if url is None:
            try:
                final = _run_here(settings, store, created.id)
            except DataDirInUseError:
                url = serving_url(settings.data_dir) or "another process"
        if final is None:
            if not as_json:
                console.print(f"request {created.id} queued; waiting for `clew serve` on {url}")
            final = _wait(store, created.id, timeout)
        _show(final, as_json)
        if final.status != "finished":
            raise typer.Exit(1)
    finally:
        store.close()


def _queued(created: PrivacyRequest, url: str | None, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"id": created.id, "status": created.status}))
        return
    console.print(f"request [bold]{created.id}[/bold] {created.status}")
    if url is not None:
        console.print(f"`clew serve` on {url} runs it; `clew privacy status {created.id}`")
    else:
        console.print(
            "no `clew serve` runs on this data directory: the request runs when it next "
            "starts (or add --wait to run it now)"
        )


def _run_here(settings: Settings, store: RequestStore, request_id: str) -> PrivacyRequest:
    """Run the request in this process, holding the data directory's serve lock."""
    from clew._datadir import lock_data_dir
    from clew.backends import open_log, open_store
    from clew.privacy.runner import PrivacyRunner

    lock = lock_data_dir(settings.data_dir, "(clew privacy request --wait: no server)")
    try:
        log = open_log(settings)
        profiles = open_store(settings)
        runner = PrivacyRunner(settings, log=log, store=profiles, requests=store, settle_s=None)
        try:
            return runner.run(request_id)
        finally:
            runner.close()
            profiles.close()
            log.close()
    finally:
        lock.close()


def _wait(store: RequestStore, request_id: str, timeout_s: float) -> PrivacyRequest:
    deadline = time.monotonic() + timeout_s
    while True:
        found = store.get(request_id)
        assert found is not None
        if found.ended:
            return found
        if time.monotonic() > deadline:
            raise fail(
                f"request {request_id} is still {found.status} after {timeout_s:.0f} s; "
                f"follow it with `clew privacy status {request_id}`"
            )
        time.sleep(0.2)


@privacy_app.command("status")
def status(
    request_id: Annotated[str, typer.Argument(metavar="ID", show_default=False)],
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Show one request: its status and audit record."""
    settings = settings_from(config, data_dir=data_dir)
    store = _store(settings)
    try:
        found = store.get(request_id)
    finally:
        store.close()
    if found is None:
        raise fail(f"no privacy request {escape(request_id)}; `clew privacy list` shows them")
    _show(found, as_json)


@privacy_app.command("list")
def list_requests(
    status: Annotated[
        str | None, typer.Option(help="Only requests with this status.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).", min=1)] = 50,
    format: Format = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List the newest requests.

    As JSON: a list of requests as `clew privacy status ID --json` shows each."""
    fmt = output_format(format, as_json)
    settings = settings_from(config, data_dir=data_dir)
    store = _store(settings)
    try:
        found = store.recent(limit, status)
    finally:
        store.close()
    table = listing("id", "type", "status", "subject", "requested by", "created", "finished")
    for r in found:
        p = r.public()
        table.add_row(
            r.id,
            r.type,
            r.status,
            f"{r.id_type} {r.subject_hash[:12]}…",
            r.requested_by,
            p["created_at"],
            p["finished_at"] or "",
        )
    print_listing(table, fmt, [r.public() for r in found])


@privacy_app.command("verify")
def verify(
    identifiers: Annotated[
        list[str],
        typer.Argument(
            metavar="IDENTIFIER...",
            help="Identifiers of the person (id_type:value); give every one you know, a "
            "deleted profile no longer links them.",
            show_default=False,
        ),
    ],
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Scan every store for what is left of the person behind IDENTIFIER.

    Every identifier of their profile is looked for while the profile exists. Prints zero
    traces, or where something remains (exit 1)."""
    from clew.backends import open_log, open_store
    from clew.privacy.erase import Subject, resolve_person
    from clew.privacy.requests import InvalidRequestError, parse_subject_identifier
    from clew.privacy.verify import verify as run_verify

    settings = settings_from(config, data_dir=data_dir)
    try:
        parsed = [parse_subject_identifier(i) for i in identifiers]
    except InvalidRequestError as e:
        raise fail(escape(str(e)), 2) from None
    log = open_log(settings)
    profiles = open_store(settings)
    try:
        subjects = [resolve_person(settings, profiles, t, v) for t, v in parsed]
        subject = Subject(
            profile_ids=tuple(dict.fromkeys(p for s in subjects for p in s.profile_ids)),
            identifiers=tuple(dict.fromkeys(i for s in subjects for i in s.identifiers)),
        )
        report = run_verify(settings, subject, store=profiles, log=log)
    finally:
        profiles.close()
        log.close()
    traces = [{"store": t.store, "where": t.where} for t in report.traces]
    unreadable = [{"store": t.store, "where": t.where} for t in report.unreadable]
    if as_json:
        doc = {"clean": report.clean, "checked": report.checked, "traces": traces}
        print(json.dumps(doc | {"unreadable": unreadable}))
    else:
        _print_verify(report.clean, report.checked, traces, unreadable, len(subject.identifiers))
    if not report.clean:
        raise typer.Exit(1)


def _print_verify(
    clean: bool,
    checked: list[str],
    traces: list[dict[str, str]],
    unreadable: list[dict[str, str]],
    identifiers: int,
) -> None:
    if clean:
        console.print(
            f"[green]zero traces[/green] of {identifiers} identifier(s) in {', '.join(checked)}"
        )
    else:
        console.print(f"[red]{len(traces)} trace(s) remain[/red]:")
        for t in traces:
            console.print(f"  - {escape(t['store'])}: {escape(t['where'])}", highlight=False)
    if unreadable:
        console.print(f"{len(unreadable)} record(s) could not be read and were searched as bytes:")
        for u in unreadable:
            console.print(f"  - {escape(u['store'])}: {escape(u['where'])}", highlight=False)


def _show(found: PrivacyRequest, as_json: bool) -> None:
    public = found.public()
    if as_json:
        print_json(public)
        return
    colour = {"finished": "green", "partial": "yellow", "failed": "red"}.get(found.status, "cyan")
    console.print(f"request [bold]{found.id}[/bold] ({found.type}): [{colour}]{found.status}[/]")
    console.print(f"  subject: {found.id_type} (hash {found.subject_hash[:16]}…)")
    audit: dict[str, Any] = found.audit or {}
    for s in (audit.get("erasure") or {}).get("stores", []):
        line = f"  {s['store']}: removed {s['removed']}"
        if s.get("error"):
            line += f" — error: {s['error']}"
        console.print(escape(line), highlight=False)
    check = audit.get("verify")
    if isinstance(check, dict) and "clean" in check:
        console.print("  verify: " + ("zero traces" if check["clean"] else "traces remain"))
    for where in audit.get("remaining", []):
        console.print(f"  remaining: {escape(where)}", highlight=False)
    if audit.get("error"):
        console.print(f"  error: {escape(audit['error'])}", highlight=False)
