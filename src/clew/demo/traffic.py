"""The simulated shop of ``clew demo``: a week of traffic from ``users`` people, a pure
function of ``users`` and ``seed`` (times relative to ``now``; only the ``messageId`` prefix,
``run_id``, is fresh on every run), and the :class:`Truth` of what was sent, to check the SQL
answers against."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clew.events import format_time

SITE = "https://shop.test"
HERO_CTA = "hero_shop_now"
FUNNEL = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")


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
