"""``clew demo``: a simulated web shop sends a week of traffic through the Tracking API, then
the README's example questions are answered in SQL over the lake.

The traffic is a pure function of ``users`` and ``seed`` (times are relative to the start
of the run), and the simulator keeps a :class:`Truth` of what it sent, so the SQL answers can
be checked against it. Only the ``messageId`` prefix is fresh on every run: a second run adds
a second week of the same traffic instead of being dropped as duplicates. The simulation is
:mod:`clew.demo.traffic`; this module sends it and asks the questions.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.syntax import Syntax
from rich.table import Table

from clew._datadir import serving_url
from clew.background import BackgroundServer
from clew.config import Settings
from clew.demo.traffic import Traffic as Traffic
from clew.demo.traffic import Truth as Truth
from clew.demo.traffic import simulate as simulate
from clew.events import format_time
from clew.lake.query import Lake, QueryResult
from clew.sources import DEFAULT_SOURCE, Catalog

BATCH_SIZE = 100
LAKE_TIMEOUT_S = 60.0


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    sql: str


MOST_VIEWED_PAGE = Question(
    "Which page is most viewed?",
    """SELECT name AS page, count(*) AS views
FROM events
WHERE type = 'page'
GROUP BY name
ORDER BY views DESC""",
)
CTA_CLICK_THROUGH = Question(
    "What is the click-through rate of the main call-to-action button?",
    """SELECT
    count(DISTINCT anonymous_id)
        FILTER (WHERE type = 'page' AND name = 'Home') AS saw_home,
    count(DISTINCT anonymous_id)
        FILTER (WHERE type = 'track' AND event = 'CTA Clicked'
                AND json_extract_string(properties, '$.cta_id') = 'hero_shop_now') AS clicked,
    round(100.0 * clicked / saw_home, 1) AS ctr_percent
FROM events""",
)
PURCHASE_FUNNEL = Question(
    "How many visitors make it through each step of the purchase funnel?",
    """WITH steps(step_no, step) AS (
    VALUES (1, 'Product Viewed'), (2, 'Product Added'),
           (3, 'Checkout Started'), (4, 'Order Completed')
)
SELECT
    step,
    count(DISTINCT anonymous_id) AS visitors,
    round(100.0 * visitors / first(visitors) OVER (ORDER BY step_no), 1) AS percent
FROM steps
LEFT JOIN events ON events.type = 'track' AND events.event = steps.step
GROUP BY step_no, step
ORDER BY step_no""",
)
TOP_PRODUCTS = Question(
    "Which products bring in the most revenue?",
    """SELECT
    item->>'$.product_id' AS product_id,
    item->>'$.name' AS product,
    sum((item->>'$.quantity')::INTEGER) AS units,
    round(sum((item->>'$.price')::DOUBLE * (item->>'$.quantity')::INTEGER), 2) AS revenue
FROM (
    SELECT unnest(json_extract(properties, '$.products[*]')) AS item
    FROM events
    WHERE type = 'track' AND event = 'Order Completed'
)
GROUP BY ALL
ORDER BY revenue DESC
LIMIT 5""",
)
QUESTIONS = (MOST_VIEWED_PAGE, CTA_CLICK_THROUGH, PURCHASE_FUNNEL, TOP_PRODUCTS)


@dataclass(slots=True)
class DemoResult:
    events_sent: int
    answers: dict[str, QueryResult]
    truth: Truth
    url: str
    send_seconds: float
    lake_seconds: float


def run_demo(settings: Settings, console: Console, users: int = 300, seed: int = 7) -> DemoResult:
    """Send the simulated traffic to the Clew answering on ``settings.host:port`` (which must
    use ``settings.data_dir``) or, if none does, to one started for the demo; wait until the
    lake holds every event; print and return the answers to :data:`QUESTIONS`.

    Raises :class:`DemoError` when the server refuses the events or the lake does not catch up
    within a minute."""
    if users < 1:
        raise DemoError("the demo needs at least one visitor: pass --users 1 or more")
    url = serving_url(settings.data_dir) or f"http://{settings.host}:{settings.port}"
    if _healthy(url):
        catalog = Catalog.open(settings)
        try:
            write_key = catalog.ensure_source(DEFAULT_SOURCE).write_key
        finally:
            catalog.close()
        console.print(f"Using the Clew server running on {url}.")
        return _run(settings, console, users, seed, url, write_key)
    with BackgroundServer(settings.model_copy(update={"port": 0})) as srv:
        console.print(f"Started Clew on {srv.url} for the demo (data in {settings.data_dir}).")
        return _run(settings, console, users, seed, srv.url, srv.clew.default_source.write_key)


def _healthy(url: str) -> bool:
    try:
        status = httpx.get(url + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return False
    if status != 200:
        raise DemoError(
            f"something answers on {url} but its /health says {status}; fix or stop it, or "
            "run the demo with another port (CLEW_PORT)"
        )
    return True


def example_plan_dir() -> Path | None:
    """The shipped e-commerce tracking plan: inside the installed package, or in the
    repository checkout for an editable install."""
    packaged = Path(__file__).parents[1] / "examples" / "tracking-plan"  # clew/examples/…
    checkout = Path(__file__).parents[3] / "examples" / "tracking-plan"
    return next((p for p in (packaged, checkout) if (p / "plan.yaml").is_file()), None)


def _push_example_plan(settings: Settings, console: Console) -> None:
    """Enforce the example plan on the demo's source (a no-op when it is already pushed)."""
    from clew.schema import IncompatibleSchemaError, SchemaRegistry, load_plan, push

    directory = example_plan_dir()
    if directory is None:
        console.print("[yellow]The example tracking plan is not installed; not enforcing one.")
        return
    plan = load_plan(directory)
    with SchemaRegistry.open(settings) as registry:
        try:
            result = push(registry, plan)
        except IncompatibleSchemaError:
            console.print(
                f"[yellow]Source {plan.source!r} already has an incompatible plan; keeping it."
            )
            return
    if result.changed:
        console.print(
            f"Pushed the example tracking plan ({len(plan.subjects)} subjects, "
            f"mode {plan.enforcement.value}) for source {plan.source!r}."
        )


def _run(
    settings: Settings, console: Console, users: int, seed: int, url: str, write_key: str
) -> DemoResult:
    lake = Lake(settings.lake_location)
    before = _count(lake, "true")
    _push_example_plan(settings, console)
    run_id = secrets.token_hex(4)
    traffic = simulate(users, seed, datetime.now(UTC), run_id)
    sent = len(traffic.events)

    started = time.monotonic()
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with (
        httpx.Client(base_url=url, auth=(write_key, ""), timeout=30) as http,
        Progress(*columns, console=console) as progress,
    ):
        task = progress.add_task(f"Sending {users} visitors' events", total=sent)
        context = {"library": _library()}
        for i in range(0, sent, BATCH_SIZE):
            batch = traffic.events[i : i + BATCH_SIZE]
            # sentAt is now, so clock-skew correction keeps each event's simulated timestamp.
            sent_at = format_time(datetime.now(UTC))
            _post(http, {"batch": batch, "sentAt": sent_at, "context": context})
            progress.advance(task, len(batch))
    send_seconds = time.monotonic() - started

    started = time.monotonic()
    mine = f"starts_with(message_id, 'demo-{run_id}-')"
    with console.status("Waiting for the lake to hold every event…"):
        while (landed := _count(lake, mine)) < sent:
            if time.monotonic() - started > LAKE_TIMEOUT_S:
                raise DemoError(
                    f"only {landed} of {sent} events reached the lake within "
                    f"{LAKE_TIMEOUT_S:.0f} s; is the server on {url} using {settings.data_dir}? "
                    'Its log and `clew sql "SELECT reason, count(*) FROM dlq GROUP BY ALL"` '
                    "may tell why"
                )
            time.sleep(0.1)
    lake_seconds = time.monotonic() - started
    console.print(
        f"Sent [bold]{sent:,}[/bold] events from {users} visitors on {traffic.devices} devices "
        f"in {send_seconds:.1f} s; all in the lake {lake_seconds:.1f} s later."
    )
    if landed > sent:
        console.print(
            f"[red]The lake holds {landed:,} rows for the {sent:,} events sent: another Clew "
            f"process is writing {settings.data_dir} too. Run one Clew per data dir."
        )
    if before:
        console.print(f"[yellow]The lake already held {before:,} events; the answers include them.")

    answers: dict[str, QueryResult] = {}
    for q in QUESTIONS:
        result = lake.sql(q.sql)
        answers[q.text] = result
        _print_answer(console, q, result)
    console.print(
        f'\nAsk your own: clew sql "SELECT event, count(*) FROM events GROUP BY ALL" '
        f"--data-dir {settings.data_dir}   (more in docs/questions.md)"
    )
    return DemoResult(sent, answers, traffic.truth, url, send_seconds, lake_seconds)


def _print_answer(console: Console, q: Question, result: QueryResult) -> None:
    console.print()
    console.rule(f"[bold]{q.text}")
    console.print(Syntax(q.sql, "sql", theme="ansi_dark", background_color="default"))
    table = Table()
    for i, name in enumerate(result.columns):
        numeric = bool(result.rows) and isinstance(result.rows[0][i], int | float)
        table.add_column(name, justify="right" if numeric else "left")
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(table)


def _count(lake: Lake, where: str) -> int:
    return int(lake.sql(f"SELECT count(*) FROM events WHERE {where}").rows[0][0])


def _library() -> dict[str, str]:
    try:
        return {"name": "clew-demo", "version": version("clew")}
    except PackageNotFoundError:
        return {"name": "clew-demo", "version": "unknown"}


def _post(http: httpx.Client, body: dict[str, Any]) -> None:
    for _ in range(30):
        r = http.post("/v1/batch", json=body)
        if r.status_code == 200:
            return
        if r.status_code != 503:
            hint = (
                " (the server does not know the write key of the data dir's default source: "
                "is it running with the same --data-dir?)"
                if r.status_code == 401
                else ""
            )
            raise DemoError(f"the server refused a batch: {r.status_code} {r.text}{hint}")
        time.sleep(float(r.headers.get("retry-after", "1")))
    raise DemoError("the server stayed overloaded (503) for 30 retries; try again later")
