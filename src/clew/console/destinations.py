"""Destinations: each webhook's settings (secrets masked), its deliveries by outcome and
the records waiting in its outbox; one destination's page adds the latest deliveries, the
batch in flight and its dead letters (each with its records), which a form sends again."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clew._redact import MASK, is_secret_option, redact_url
from clew.console._kit import BASE, ConsoleKit
from clew.console._session import Session
from clew.destinations import (
    Batch,
    Delivery,
    DestinationConfig,
    DestinationError,
    Outbox,
    UndeliverableBatch,
)
from clew.destinations.status import destination_figures
from clew.sources import ADMIN

PATH = f"{BASE}/destinations"
DELIVERIES = 20
DEAD_LETTERS = 50
# Query parameters that, besides the names _redact knows, often carry a credential.
_SECRET_PARAMS = ("key", "sig", "auth", "code")
# A dead letter's records shown on its page at most (the batch may hold thousands).
RECORDS = 20


def masked_url(url: str) -> str:
    """``url`` with its password and the values of secret-looking query parameters masked.

    >>> masked_url("https://u:pw@hooks.example/in?token=abc&api_key=k&sig=s&team=7")
    'https://u:**********@hooks.example/in?token=**********&api_key=**********&sig=**********&team=7'
    """
    shown = redact_url(url)
    parts = urlsplit(shown)
    if not parts.query:
        return shown
    query = [
        (k, MASK if is_secret_option(k) or any(w in k.lower() for w in _SECRET_PARAMS) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def settings_shown(config: DestinationConfig) -> dict[str, Any]:
    """The destination's settings as the console shows them: never a secret's value."""
    shown = config.model_dump(mode="json", exclude={"secret", "secret_env"})
    shown["url"] = masked_url(config.url)
    shown["secret"] = config.describe_secret()
    return shown


def _listing(kit: ConsoleKit) -> dict[str, Any]:
    found, problems = kit.ctx.destinations.load()
    figures = {
        f.name: f for f in destination_figures(kit.ctx.settings.outbox_path, kit.ctx.destinations)
    }
    dead: dict[str, int] = {}
    known: dict[str, int] = {}
    if kit.ctx.settings.outbox_path.exists():
        outbox = Outbox(kit.ctx.settings.outbox_path)
        try:
            for letter in outbox.dead_letters():
                dead[letter.dest] = dead.get(letter.dest, 0) + 1
            known = outbox.known()
        finally:
            outbox.close()
    configured = sorted(found.values(), key=lambda c: c.name)
    names = {c.name for c in configured}
    return {
        "destinations": [
            {
                "name": c.name,
                "settings": settings_shown(c),
                "active": c.name in known,
                "figures": figures.get(c.name),
                "dead": dead.get(c.name, 0),
            }
            for c in configured
        ],
        # Removed destinations keep their history and dead letters.
        "removed": [f for n, f in sorted(figures.items()) if n not in names],
        "problems": [str(p) for p in problems.values()],
    }


def _records(body: bytes | None) -> tuple[list[str], int]:
    """The first records of a dead letter, pretty, and how many it holds."""
    if body is None:
        return [], 0
    try:
        records = json.loads(body)
    except ValueError:
        return [body.decode(errors="replace")], 1
    if not isinstance(records, list):
        records = [records]
    pretty = [json.dumps(r, indent=2, ensure_ascii=False) for r in records[:RECORDS]]
    return pretty, len(records)


def _detail(kit: ConsoleKit, name: str, show: str | None) -> dict[str, Any] | None:
    try:
        config: DestinationConfig | None = kit.ctx.destinations.get(name)
    except DestinationError:
        config = None
    figures = next(
        (
            f
            for f in destination_figures(kit.ctx.settings.outbox_path, kit.ctx.destinations)
            if f.name == name
        ),
        None,
    )
    letters: list[UndeliverableBatch] = []
    head: Batch | None = None
    deliveries: list[Delivery] = []
    records: list[str] = []
    count = 0
    if kit.ctx.settings.outbox_path.exists():
        outbox = Outbox(kit.ctx.settings.outbox_path)
        try:
            letters = outbox.dead_letters(name)
            head = outbox.head(name)
            deliveries = outbox.deliveries(name, DELIVERIES)
            if show:
                records, count = _records(outbox.dead_letter_body(show))
        finally:
            outbox.close()
    if config is None and figures is None and not letters:
        return None
    return {
        "problem": None,
        "name": name,
        "settings": settings_shown(config) if config is not None else None,
        "figures": figures,
        "head": head,
        "deliveries": deliveries,
        # Newest first, as every other list of the console.
        "letters": letters[::-1][:DEAD_LETTERS],
        "more_letters": max(len(letters) - DEAD_LETTERS, 0),
        "letter_count": len(letters),
        "show": show,
        "records": records,
        "record_count": count,
        "when": _when,
    }


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _replay(kit: ConsoleKit, name: str, delivery_id: str | None) -> tuple[int, int]:
    outbox = Outbox(kit.ctx.settings.outbox_path)
    try:
        return outbox.replay(name, int(time.time() * 1000), delivery_id)
    finally:
        outbox.close()


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def listing(request: Request, session: Session) -> Response:
        values = await run_in_threadpool(_listing, kit)
        return kit.render(request, "destinations.html", session, **values)

    async def detail(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        show = request.query_params.get("show") or None
        values = await run_in_threadpool(_detail, kit, name, show)
        if values is None:
            what = f"destination named {name!r}"
            return kit.render(request, "missing.html", session, 404, what=what, back=PATH)
        try:
            replayed = tuple(int(request.query_params[k]) for k in ("replayed", "records"))
        except (KeyError, ValueError):
            replayed = None
        return kit.render(request, "destination.html", session, replayed=replayed, **values)

    async def replay(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        delivery_id = str(form.get("delivery_id") or "") or None
        try:
            await run_in_threadpool(kit.ctx.destinations.get, name)
        except DestinationError as exc:
            values = await run_in_threadpool(_detail, kit, name, None)
            if values is None:
                what = f"destination named {name!r}"
                return kit.render(request, "missing.html", session, 404, what=what, back=PATH)
            values["problem"] = f"{exc} (add it again to replay its dead letters)"
            return kit.render(request, "destination.html", session, 409, replayed=None, **values)
        batches, records = await run_in_threadpool(_replay, kit, name, delivery_id)
        done = urlencode({"replayed": batches, "records": records})
        return RedirectResponse(f"{PATH}/{quote(name)}?{done}", status_code=303)

    return [
        Route(PATH, kit.page(ADMIN, listing), methods=["GET"]),
        Route(PATH + "/{name}", kit.page(ADMIN, detail), methods=["GET"]),
        Route(PATH + "/{name}/replay", kit.action(ADMIN, replay), methods=["POST"]),
    ]
