"""``clew demo``: a simulated web shop sends a week of traffic through the Tracking API, then
the README's example questions are answered in SQL over the lake.

The traffic is a pure function of ``users`` and ``seed`` (times are relative to the start
of the run), and the simulator keeps a :class:`Truth` of what it sent, so the SQL answers can
be checked against it. Only the ``messageId`` prefix is fresh on every run: a second run adds
a second week of the same traffic instead of being dropped as duplicates.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from clew.events import format_time
from clew.lake.query import Lake, QueryResult
from clew.sources import DEFAULT_SOURCE, Catalog

BATCH_SIZE = 100
LAKE_TIMEOUT_S = 60.0
SITE = "https://shop.test"
HERO_CTA = "hero_shop_now"
FUNNEL = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")


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


@dataclass(frozen=True, slots=True)
class _Product:
    id: str
    sku: str
    name: str
    category: str
    cents: int
    popularity: int

    def item(self, quantity: int = 1) -> dict[str, Any]:
        return {
            "product_id": self.id,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "price": self.cents / 100,
            "quantity": quantity,
        }


_PRODUCTS = (
    _Product("P1001", "TNT-2P", "Two-Person Tent", "Tents", 18900, 9),
    _Product("P1002", "TNT-UL1", "Ultralight Solo Tent", "Tents", 24900, 4),
    _Product("P1003", "BAG-DWN", "Down Sleeping Bag", "Sleeping", 15900, 6),
    _Product("P1004", "PAD-INS", "Insulated Sleeping Pad", "Sleeping", 8900, 7),
    _Product("P1005", "PCK-45L", "45 L Backpack", "Packs", 13900, 8),
    _Product("P1006", "PCK-DAY", "Daypack", "Packs", 5900, 10),
    _Product("P1007", "STV-CAN", "Canister Stove", "Cooking", 4900, 6),
    _Product("P1008", "POT-TI", "Titanium Pot", "Cooking", 3900, 5),
    _Product("P1009", "LMP-HDL", "Headlamp", "Accessories", 2999, 12),
    _Product("P1010", "BTL-1L", "Water Bottle", "Accessories", 1999, 11),
    _Product("P1011", "FLT-SQZ", "Water Filter", "Accessories", 3499, 7),
    _Product("P1012", "JKT-RAIN", "Rain Jacket", "Clothing", 11900, 8),
)
_PAGES = {
    "Home": ("/", "Trailhead Outfitters"),
    "Shop": ("/shop", "Shop all gear"),
    "Cart": ("/cart", "Your cart"),
    "Checkout": ("/checkout", "Checkout"),
    "Order Confirmation": ("/checkout/done", "Thank you for your order"),
    "Sign Up": ("/signup", "Create an account"),
    "Sign In": ("/signin", "Sign in"),
}
_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
_CHROME_MOBILE = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
_SAFARI_MOBILE = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
_DEVICES = (  # device type, os, weight, user agent platform and browser
    ("desktop", "Windows", 30, "Windows NT 10.0; Win64; x64", _CHROME),
    ("desktop", "Mac OS X", 15, "Macintosh; Intel Mac OS X 14_5", _SAFARI),
    ("desktop", "Linux", 5, "X11; Linux x86_64", _CHROME),
    ("mobile", "iOS", 25, "iPhone; CPU iPhone OS 17_5 like Mac OS X", _SAFARI_MOBILE),
    ("mobile", "Android", 18, "Linux; Android 14; Pixel 8", _CHROME_MOBILE),
    ("tablet", "iOS", 7, "iPad; CPU OS 17_5 like Mac OS X", _SAFARI_MOBILE),
)
_FIRST = ("Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kai")
_LAST = ("Ng", "Okafor", "Silva", "Novak", "Berg", "Rossi", "Kim", "Dubois", "Haddad", "Moreau")


@dataclass(slots=True)
class Truth:
    """What the simulator sent, counted as it sent it (visitors are anonymous ids)."""

    events: int = 0
    page_views: Counter[str] = field(default_factory=Counter)
    home_visitors: set[str] = field(default_factory=set)
    cta_clickers: set[str] = field(default_factory=set)
    funnel: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in FUNNEL})
    revenue_cents: Counter[str] = field(default_factory=Counter)
    units: Counter[str] = field(default_factory=Counter)

    def record(self, event: dict[str, Any]) -> None:
        self.events += 1
        anon = event["anonymousId"]
        props = event.get("properties", {})
        if event["type"] == "page":
            self.page_views[event["name"]] += 1
            if event["name"] == "Home":
                self.home_visitors.add(anon)
        elif event["type"] == "track":
            name = event["event"]
            if name == "CTA Clicked" and props.get("cta_id") == HERO_CTA:
                self.cta_clickers.add(anon)
            if name in self.funnel:
                self.funnel[name].add(anon)
            if name == "Order Completed":
                for item in props["products"]:
                    self.revenue_cents[item["product_id"]] += (
                        round(item["price"] * 100) * item["quantity"]
                    )
                    self.units[item["product_id"]] += item["quantity"]


@dataclass(slots=True)
class _Device:
    anonymous_id: str
    context: dict[str, Any]
    user_id: str | None = None
    page: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Person:
    user_id: str
    name: str
    email: str
    wants_account: bool
    devices: list[_Device]
    signed_up: bool = False


class _Shop:
    """Simulates the visitors of a small outdoor-gear shop; ``events`` are Segment-spec
    messages, each sent a few seconds after the one before it in its session."""

    def __init__(self, seed: int, now: datetime, run_id: str) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.run_id = run_id
        self.events: list[dict[str, Any]] = []
        self.truth = Truth()
        self.devices = 0
        self._orders = 0
        self._clock = now

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _product(self, k: int = 1) -> list[_Product]:
        return self.rng.choices(_PRODUCTS, [p.popularity for p in _PRODUCTS], k=k)

    def person(self, index: int) -> None:
        rng = self.rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        devices = []
        for _ in range(rng.choices((1, 2, 3), (55, 30, 15))[0]):
            spec = rng.choices(_DEVICES, [d[2] for d in _DEVICES])[0]
            kind, os_name, _weight, platform, browser = spec
            context = {
                "userAgent": f"Mozilla/5.0 ({platform}) {browser}",
                "device": {"type": kind},
                "os": {"name": os_name},
                "locale": "en-US",
            }
            devices.append(_Device(self._uuid(), context))
        self.devices += len(devices)
        p = _Person(
            user_id=f"user_{index + 1:05d}",
            name=f"{first} {last}",
            email=f"{first}.{last}.{index + 1}@shop.test".lower(),
            wants_account=rng.random() < 0.45,
            devices=devices,
        )
        sessions = [
            (self.now - timedelta(seconds=rng.uniform(2 * 3600, 7 * 86400)), d)
            for d in devices
            for _ in range(rng.choices((1, 2, 3), (50, 35, 15))[0])
        ]
        for start, device in sorted(sessions, key=lambda s: s[0]):
            self._clock = start
            self._session(p, device)

    def _session(self, p: _Person, d: _Device) -> None:
        rng = self.rng
        d.page = {}
        if p.signed_up and d.user_id is None and rng.random() < 0.6:
            self._sign_in(p, d)
        products = self._product()
        if rng.random() < 0.75:
            self._page(d, "Home")
            if rng.random() < 0.15:
                cta = {"cta_id": HERO_CTA, "location": "home", "text": "Shop now"}
                self._track(d, "CTA Clicked", cta)
                self._page(d, "Shop")
            elif rng.random() < 0.5:
                self._page(d, "Shop")
            elif rng.random() < 0.5:
                return  # bounced
        products += self._product(rng.randrange(4))
        cart_id = self._uuid()
        cart: list[dict[str, Any]] = []
        for prod in products:
            self._page(d, "Product", f"/products/{prod.sku.lower()}", prod.name)
            self._track(d, "Product Viewed", {**prod.item(), "currency": "USD"})
            if rng.random() < 0.15:
                item = prod.item(rng.choices((1, 2), (85, 15))[0])
                self._track(d, "Product Added", {"cart_id": cart_id, **item})
                cart.append(item)
        if p.wants_account and not p.signed_up and rng.random() < 0.5:
            self._sign_up(p, d)
        if not cart or rng.random() < 0.3:
            return
        self._page(d, "Cart")
        self._track(d, "Cart Viewed", {"cart_id": cart_id, "products": cart})
        if rng.random() < 0.4:
            return
        if d.user_id is None and p.signed_up and rng.random() < 0.7:
            self._sign_in(p, d)
        elif d.user_id is None and p.wants_account and rng.random() < 0.5:
            self._sign_up(p, d)
        self._orders += 1
        cents = sum(round(i["price"] * 100) * i["quantity"] for i in cart)
        order = {
            "order_id": f"order_{self._orders:05d}",
            "value": cents / 100,
            "revenue": cents / 100,
            "currency": "USD",
            "products": cart,
        }
        self._page(d, "Checkout")
        self._track(d, "Checkout Started", order)
        if rng.random() < 0.25:
            return
        shipping = 0 if cents >= 10000 else 695
        tax = round(cents * 0.08)
        self._page(d, "Order Confirmation")
        completed = {
            **order,
            "checkout_id": cart_id,
            "shipping": shipping / 100,
            "tax": tax / 100,
            "total": (cents + shipping + tax) / 100,
        }
        self._track(d, "Order Completed", completed)

    def _sign_up(self, p: _Person, d: _Device) -> None:
        self._page(d, "Sign Up")
        d.user_id = p.user_id
        p.signed_up = True
        traits = {"email": p.email, "name": p.name, "createdAt": format_time(self._clock)}
        self._emit(d, {"type": "identify", "traits": traits})
        self._track(d, "Signed Up", {"method": "email"})

    def _sign_in(self, p: _Person, d: _Device) -> None:
        self._page(d, "Sign In")
        d.user_id = p.user_id
        self._emit(d, {"type": "identify", "traits": {"email": p.email}})
        self._track(d, "Signed In", {"method": "email"})

    def _page(self, d: _Device, name: str, path: str = "", title: str = "") -> None:
        default_path, default_title = _PAGES.get(name, ("", ""))
        path, title = path or default_path, title or default_title
        referrer = d.page.get("url", "https://www.google.com/")
        d.page = {"path": path, "url": SITE + path, "title": title, "referrer": referrer}
        self._emit(d, {"type": "page", "name": name, "properties": dict(d.page)})

    def _track(self, d: _Device, event: str, properties: dict[str, Any]) -> None:
        self._emit(d, {"type": "track", "event": event, "properties": properties})

    def _emit(self, d: _Device, body: dict[str, Any]) -> None:
        self._clock += timedelta(seconds=self.rng.uniform(3, 90))
        body["messageId"] = f"demo-{self.run_id}-{len(self.events):06d}"
        body["timestamp"] = format_time(self._clock)
        body["anonymousId"] = d.anonymous_id
        if d.user_id is not None:
            body["userId"] = d.user_id
        body["context"] = {**d.context, "page": dict(d.page)}
        self.events.append(body)
        self.truth.record(body)


@dataclass(slots=True)
class Traffic:
    events: list[dict[str, Any]]
    truth: Truth
    devices: int


def simulate(users: int, seed: int, now: datetime, run_id: str) -> Traffic:
    """A week of shop traffic before ``now`` from ``users`` people, sorted by time."""
    shop = _Shop(seed, now, run_id)
    for i in range(users):
        shop.person(i)
    events = sorted(shop.events, key=lambda e: str(e["timestamp"]))
    return Traffic(events, shop.truth, shop.devices)


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
        catalog = Catalog(settings.meta_path)
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
    packaged = Path(__file__).parent / "examples" / "tracking-plan"
    checkout = Path(__file__).parents[2] / "examples" / "tracking-plan"
    return next((p for p in (packaged, checkout) if (p / "plan.yaml").is_file()), None)


def _push_example_plan(settings: Settings, console: Console) -> None:
    """Enforce the example plan on the demo's source (a no-op when it is already pushed)."""
    from clew.schema import IncompatibleSchemaError, SchemaRegistry, load_plan, push

    directory = example_plan_dir()
    if directory is None:
        console.print("[yellow]The example tracking plan is not installed; not enforcing one.")
        return
    plan = load_plan(directory)
    with SchemaRegistry(settings.registry_path) as registry:
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
