"""`clew serve` with the serving store in Redis (``CLEW_STORE__BACKEND=redis``), end to end
against a real `redis-server`: the profiles stage's worker processes and the Profile API share
one identity graph in Redis, audiences (timers included) run on it, and a data-subject deletion
removes the person from Redis and is verified there.

Each test has its own key prefix on the module's server, so tests never see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _services import require_module
from _support import WRITE_KEY, ServeProcess, drained, wait_for
from clew.audiences.repository import load_file, open_repository
from clew.background import free_port
from clew.cli import app
from clew.clock import ScaledClock, to_datetime
from clew.config import Settings
from clew.events import format_time
from clew.sources import Catalog

redis = require_module("redis", "pip install -e '.[redis]'")

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "examples" / "audiences"
MINUTE_MS = 60_000
# An hour of the fast clock passes in 2 s, so a cart is abandoned soon after it is filled.
SPEED = 1800


@dataclass
class Shop:
    """A running `clew serve` whose serving store is Redis under ``prefix``."""

    serve: ServeProcess
    clock: ScaledClock
    token: str
    client: Any  # redis.Redis
    prefix: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def at(self, offset_ms: int = 0) -> str:
        """The fast clock's time now, plus ``offset_ms``, as an event timestamp."""
        return format_time(to_datetime(self.clock.now_ms() + offset_ms))

    def send(self, *events: dict[str, Any]) -> None:
        batch = [{"messageId": str(uuid.uuid4()), "timestamp": self.at(), **e} for e in events]
        r = httpx.post(
            self.serve.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""), timeout=10
        )
        assert r.status_code == 200, r.text

    def profile(self, ref: str) -> httpx.Response:
        return httpx.get(f"{self.serve.url}/v1/profiles/{ref}", headers=self.headers, timeout=10)

    def found(self, ref: str) -> dict[str, Any] | None:
        r = self.profile(ref)
        return r.json() if r.status_code == 200 else None

    def settle(self) -> None:
        wait_for(lambda: drained(self.serve.url), 60)

    def mentions(self, *values: str) -> list[str]:
        """Keys under this shop's prefix whose name or content holds one of ``values``."""
        needles = [v.lower().encode() for v in values]
        hits = []
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            kind = self.client.type(key)
            if kind == b"string":
                parts = [self.client.get(key) or b""]
            elif kind == b"hash":
                parts = [b for kv in self.client.hgetall(key).items() for b in kv]
            elif kind == b"zset":
                parts = self.client.zrange(key, 0, -1)
            else:
                parts = [kind]
            text = b"\0".join([key, *parts]).lower()
            if any(n in text for n in needles):
                hits.append(key.decode())
        return hits


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[Shop]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    # `clew serve` and the stage workers it starts read these from the environment.
    monkeypatch.setenv("CLEW_STORE__BACKEND", "redis")
    monkeypatch.setenv("CLEW_STORE__REDIS_URL", redis_url)
    monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", prefix)
    monkeypatch.setenv("CLEW_CLOCK__SPEED", str(SPEED))
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.store.backend == "redis"
    catalog = Catalog.open(settings)
    try:
        catalog.create_source("shop", WRITE_KEY)
        token = catalog.create_token("support", ["profiles", "admin", "privacy"])
    finally:
        catalog.close()
    open_repository(settings).push(
        [
            *load_file(EXAMPLES / "high_value_customer.yaml"),
            *load_file(EXAMPLES / "cart_abandoner.yaml"),
        ]
    )
    clock = ScaledClock.anchored(SPEED, settings.data_dir / "clock.json")
    client = redis.Redis.from_url(redis_url)
    serve = ServeProcess(settings.data_dir, free_port())
    try:
        serve.start()
        s = Shop(serve, clock, token, client, prefix)

        def backfilled() -> bool:
            r = httpx.get(f"{serve.url}/v1/admin/audiences", headers=s.headers, timeout=10)
            return r.status_code == 200 and all(d["backfilled_at"] for d in r.json()["definitions"])

        wait_for(backfilled, 40)
        yield s
    finally:
        serve.stop()
        client.close()


def _order(revenue: int, **who: str) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "properties": {"revenue": revenue}, **who}


def test_profiles_merged_and_audiences_computed_in_redis(shop: Shop) -> None:
    # Ada shops anonymously on her phone and on her laptop, signs in on the phone, and the
    # laptop's visitor is aliased to her: three identities, one person, 550 spent.
    shop.send(
        {"type": "page", "name": "Home", "anonymousId": "ada-phone"},
        _order(200, anonymousId="ada-phone"),
        _order(350, anonymousId="ada-laptop"),
    )
    wait_for(lambda: shop.found("anonymous_id:ada-phone") and shop.found("anonymous_id:ada-laptop"))
    shop.send(
        {
            "type": "identify",
            "anonymousId": "ada-phone",
            "userId": "ada-1",
            "traits": {"email": "Ada@Example.test", "name": "Ada"},
        }
    )
    wait_for(lambda: shop.found("user_id:ada-1"))
    shop.send({"type": "alias", "previousId": "ada-laptop", "userId": "ada-1"})
    # A shopper who fills a cart and leaves: the cart's timer (in Redis) moves them in an
    # hour of the fast clock later, without another event.
    shop.send({"type": "track", "event": "Product Added", "userId": "cart-1"})

    def merged() -> bool:
        p = shop.found("email:ada@example.test")
        return p is not None and p["computed_traits"].get("total_lifetime_value") == 550

    wait_for(merged, 30)
    refs = ["email:ada@example.test", "user_id:ada-1", "anonymous_id:ada-laptop"]
    profiles = [shop.found(ref) for ref in refs]
    assert all(p is not None for p in profiles)
    assert len({p["profile_id"] for p in profiles if p}) == 1  # one person, whichever way asked
    ada = profiles[0]
    assert ada is not None
    assert ada["traits"]["name"] == "Ada"
    assert ada["computed_traits"]["orders_count"] == 2
    wait_for(
        lambda: "high_value_customer" in (shop.found("user_id:ada-1") or {}).get("audiences", [])
    )
    held = {(i["type"], i["value"]) for i in ada["identities"]}
    assert {
        ("user_id", "ada-1"),
        ("email", "ada@example.test"),
        ("anonymous_id", "ada-phone"),
        ("anonymous_id", "ada-laptop"),
    } <= held

    def abandoned() -> bool:
        p = shop.found("user_id:cart-1")
        return p is not None and p["audiences"] == ["cart_abandoner"]

    wait_for(abandoned, 30)

    # It all lives in Redis, under this shop's prefix: no SQLite serving store was made.
    assert not (shop.serve.data_dir / "profiles.db").exists()
    assert shop.client.get(f"{shop.prefix}:{{i:user_id:ada-1}}") == ada["profile_id"].encode()
    assert shop.mentions("cart-1")


def test_a_deleted_person_is_gone_from_redis(shop: Shop) -> None:
    ada = ("ada-2", "ada.lovelace@example.test", "ada-laptop")
    shop.send(
        {"type": "identify", "userId": ada[0], "anonymousId": ada[2], "traits": {"email": ada[1]}},
        _order(42, userId=ada[0]),
        {"type": "identify", "userId": "bob-1", "traits": {"email": "bob@example.test"}},
    )
    wait_for(lambda: shop.found(f"user_id:{ada[0]}") and shop.found("user_id:bob-1"))
    shop.settle()
    found = shop.found(f"user_id:{ada[0]}")
    assert found is not None
    profile_id = found["profile_id"]
    assert shop.mentions(*ada, profile_id)

    r = httpx.post(
        f"{shop.serve.url}/v1/privacy/requests",
        json={"type": "suppress_with_delete", "identifier": f"email:{ada[1]}"},
        headers=shop.headers,
        timeout=10,
    )
    assert r.status_code == 202, r.text
    status: dict[str, Any] = {}

    def ended() -> bool:
        reply = httpx.get(
            f"{shop.serve.url}/v1/privacy/requests/{r.json()['id']}",
            headers=shop.headers,
            timeout=10,
        )
        status.update(reply.json())
        return status["status"] in ("finished", "partial", "failed")

    wait_for(ended, 120, 0.2)
    assert status["status"] == "finished", status["audit"]
    checked = " ".join(status["audit"]["verify"]["checked"])
    assert "serving store (redis)" in checked

    assert shop.mentions(*ada, profile_id) == []
    for ref in (f"user_id:{ada[0]}", f"email:{ada[1]}", f"profile_id:{profile_id}"):
        assert shop.profile(ref).status_code == 404, ref
    assert shop.found("user_id:bob-1") is not None  # nobody else is touched

    ids = [f"user_id:{ada[0]}", f"email:{ada[1]}", f"anonymous_id:{ada[2]}"]
    data = ["--data-dir", str(shop.serve.data_dir)]
    verified = CliRunner().invoke(app, ["privacy", "verify", *ids, *data])
    assert verified.exit_code == 0, verified.output
    assert "zero traces" in verified.output
