"""`clew rebuild`, the batch layer: profiles re-derived from the lake's events equal what the
speed layer built event by event, and the rebuilt lake tables equal the ones the
profiles-lake stage keeps."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from _support import WRITE_KEY, make_settings, wait_for
from clew.background import BackgroundServer
from clew.batch.rebuild import rebuild
from clew.cli import app
from clew.config import Settings
from clew.events import Event, format_time
from clew.identity.rules import IdentityRules, IdTypeRule
from clew.identity.traits import is_order, revenue
from clew.identity.unifier import Unifier
from clew.lake.query import Lake
from clew.lake.tables import EVENTS, to_arrow
from clew.store import MemoryProfileStore, Provenance, Separation, SQLiteProfileStore

_ids = itertools.count()
START = datetime(2026, 3, 1, tzinfo=UTC)


def ev(type_: str, at: int, **fields: Any) -> dict[str, Any]:
    """A normalised event (as the lake stage stores it) ``at`` seconds after START."""
    ts = format_time(START + timedelta(seconds=at))
    return {
        "type": type_,
        "messageId": f"m{next(_ids):07d}",
        "timestamp": ts,
        "receivedAt": ts,
        "sourceId": "src",
        **fields,
    }


def to_lake(settings: Settings, docs: list[dict[str, Any]]) -> None:
    table = to_arrow(EVENTS, [orjson.dumps(d) for d in docs])
    write_deltalake(
        str(settings.lake_path / EVENTS.name), table, mode="append", partition_by=["event_date"]
    )


def rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    return Lake(settings.lake_path).sql(sql).rows


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def test_empty_lake_rebuilds_empty_queryable_tables(settings: Settings) -> None:
    report = rebuild(settings)
    assert (report.events, report.profiles, report.identities) == (0, 0, 0)
    assert report.written and report.reconciliation is None
    assert rows(
        settings,
        "SELECT count(*) FROM customer_profiles UNION ALL SELECT count(*) FROM identities",
    ) == [(0,), (0,)]


def test_events_without_usable_identifiers_make_no_profile(settings: Settings) -> None:
    to_lake(
        settings,
        [
            ev("page", 1, anonymousId="undefined"),
            ev("identify", 2, anonymousId="null", traits={"email": "test@test.com"}),
            ev("track", 3, anonymousId="0", event="Order Completed", properties={"revenue": 9}),
            ev("track", 4, anonymousId="a-1", event="Order Completed", properties={"revenue": 5}),
        ],
    )
    report = rebuild(settings)
    assert (report.events, report.profiles, report.identities) == (4, 1, 1)
    assert rows(
        settings,
        "SELECT identifiers, total_lifetime_value, orders_count FROM customer_profiles",
    ) == [(["anonymous_id:a-1"], 5.0, 1)]


def test_a_split_made_by_an_operator_is_honoured(settings: Settings) -> None:
    to_lake(
        settings,
        [
            ev("identify", 1, userId="u-1", anonymousId="family-pc", traits={"name": "One"}),
            ev("track", 2, userId="u-2", anonymousId="kid-phone", event="Game Played"),
            ev("alias", 3, userId="u-2", previousId="family-pc"),
        ],
    )
    assert rebuild(settings, dry_run=True).profiles == 2, "the alias is refused anyway: 2 users"
    store = SQLiteProfileStore(settings.profiles_path)
    store.add_separation(
        Separation(("anonymous_id", "family-pc"), ("user_id", "u-1"), Provenance("split", "", 0))
    )
    store.close()
    report = rebuild(settings)
    got = rows(settings, "SELECT identifiers FROM customer_profiles ORDER BY user_id")
    assert got == [
        (["user_id:u-1"],),
        (["anonymous_id:family-pc", "anonymous_id:kid-phone", "user_id:u-2"],),
    ]
    assert report.profiles == 2


def test_check_fails_and_lists_differences_when_the_layers_disagree(settings: Settings) -> None:
    to_lake(
        settings,
        [
            ev("identify", 1, userId="u-1", anonymousId="a-1", traits={"name": "Ada"}),
            ev("page", 2, anonymousId="a-2"),
        ],
    )
    store = SQLiteProfileStore(settings.profiles_path)
    store.attach("speed-1", "user_id", "u-1", Provenance("m", "src", 0))
    store.close()
    result = CliRunner().invoke(
        app, ["rebuild", "--check", "--dry-run", "--data-dir", str(settings.data_dir)]
    )
    assert result.exit_code == 1, result.output
    assert "3 differences" in result.output
    assert (
        "{anonymous_id:a-1, user_id:u-1} is split differently: in speed profiles speed-1; "
        "unknown to the speed layer: anonymous_id:a-1"
    ) in result.output
    assert "{anonymous_id:a-2}" in result.output
    assert "no table written" in result.output
    assert rows(settings, "SELECT count(*) FROM customer_profiles") == [(0,)]

    # Without --dry-run, a check that fails still writes nothing, unless forced.
    args = ["rebuild", "--check", "--data-dir", str(settings.data_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "no table written: the layers disagree" in result.output
    assert rows(settings, "SELECT count(*) FROM customer_profiles") == [(0,)]
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 1, result.output
    assert "wrote lake tables" in result.output
    assert rows(settings, "SELECT count(*) FROM customer_profiles") == [(2,)]


# Order events as SDKs send them: (event name, properties, what the order adds to the lifetime
# value). The speed layer's definition, written out: an order is "Order Completed" in any case,
# with "_" for " " and surrounding blanks; its amount is ``revenue``, else ``total``, when
# float() reads a finite number from it (not a bool); else 0. None: not an order.
PURCHASES: list[tuple[str, dict[str, Any], float | None]] = [
    ("Order Completed", {"revenue": 19.9}, 19.9),
    ("order_completed", {"revenue": "19.90", "total": 1.5}, 19.9),
    (" ORDER COMPLETED\t", {"revenue": " 7 "}, 7.0),
    ("Order Complete", {"revenue": "1_000", "total": 1.5}, None),
    # Arabic-Indic digits: float() reads 12; it strips a no-break space.
    ("Order Completed", {"revenue": "\u0661\u0662"}, 12.0),
    ("order_completed", {"revenue": "\u00a05", "total": 1.5}, 5.0),
    (" ORDER COMPLETED\t", {"revenue": "+-5"}, 0.0),
    ("Order Complete", {"revenue": "inf", "total": 1.5}, None),
    ("Order Completed", {"revenue": "nan"}, 0.0),
    ("order_completed", {"revenue": "1e400", "total": 1.5}, 1.5),  # inf: the total instead
    (" ORDER COMPLETED\t", {"revenue": True}, 0.0),
    ("Order Complete", {"revenue": None, "total": 1.5}, None),
    ("Order Completed", {"revenue": {"amount": 3}}, 0.0),
    ("order_completed", {"revenue": [4], "total": 1.5}, 1.5),
    (" ORDER COMPLETED\t", {"revenue": -2}, -2.0),
    ("Order Complete", {"revenue": 10**6, "total": 1.5}, None),
    ("Order Completed", {"revenue": "abc"}, 0.0),
    ("order_completed", {"revenue": "", "total": 1.5}, 1.5),
]


def test_purchase_totals_follow_the_speed_layers_definition(settings: Settings) -> None:
    docs = [
        ev("track", n, userId="u-1", event=name, properties=props)
        for n, (name, props, _) in enumerate(PURCHASES)
    ]
    to_lake(settings, docs)
    rebuild(settings)
    ((ltv, orders),) = rows(
        settings, "SELECT total_lifetime_value, orders_count FROM customer_profiles"
    )
    # 14 orders; 19.9 + 19.9 + 7 + 12 + 5 + 1.5 + 1.5 - 2 + 1.5, the table's amounts summed.
    assert orders == 14
    assert math.isclose(ltv, 66.3, abs_tol=1e-9)
    # The speed layer agrees with the same table, row by row.
    assert [is_order("track", name) for name, _, _ in PURCHASES] == [
        amount is not None for _, _, amount in PURCHASES
    ]
    assert [revenue(props) for _, props, amount in PURCHASES if amount is not None] == [
        amount for _, _, amount in PURCHASES if amount is not None
    ]


class Shop:
    """Traffic of a web shop in time order: several devices per person, sign-ups and logins,
    orders, trait updates, aliases, logouts (a new anonymous id), shared computers (another
    person logs in on top), placeholder emails and placeholder user ids."""

    def __init__(self, people: int, seed: int, start: datetime) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.anons = itertools.count()
        self.devices = [
            [f"anon-{next(self.anons)}" for _ in range(self.rng.randint(1, 3))]
            for _ in range(people)
        ]
        for p in range(0, people - 1, 10):  # a family computer
            self.devices[p + 1][0] = self.devices[p][0]
        self.logged_in: dict[str, int] = {}

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for i in range(n):
            p = rng.randrange(len(self.devices))
            d = rng.randrange(len(self.devices[p]))
            anon = self.devices[p][d]
            doc: dict[str, Any] = {
                "messageId": f"m-{i:07d}",
                "timestamp": format_time(self.start + timedelta(milliseconds=37 * i)),
                "anonymousId": anon,
                "context": {"library": {"name": "analytics.js", "version": "5.2.0"}},
            }
            who = self.logged_in.get(anon)
            r = rng.random()
            if (who is not None and who != p) or (who is None and r < 0.12):
                self.logged_in[anon] = p
                email = "test@test.com" if rng.random() < 0.08 else f"p{p}@mail.test"
                doc |= {"type": "identify", "userId": f"u-{p}", "traits": {"email": email}}
                doc["traits"]["name"] = f"Person {p}"
            elif who is not None and r < 0.03:
                del self.logged_in[anon]
                self.devices[p][d] = f"anon-{next(self.anons)}"  # logout
                doc |= {"type": "page", "name": "Bye"}
            elif r < 0.10:
                value: Any = round(rng.uniform(1, 200), 2)
                props = {"revenue": str(value) if rng.random() < 0.2 else value}
                doc |= {"type": "track", "event": "Order Completed", "properties": props}
            elif who is not None and r < 0.11:
                doc = {k: v for k, v in doc.items() if k != "anonymousId"}
                doc |= {"type": "alias", "userId": f"u-{p}", "previousId": anon}
            elif who is not None and r < 0.13:
                doc |= {"type": "identify", "traits": {"plan": rng.choice(("free", "pro"))}}
            else:
                doc |= {"type": "page", "name": rng.choice(("Home", "Product", "Cart"))}
            if who is not None and doc["type"] != "alias":
                doc["userId"] = f"u-{self.logged_in.get(anon, who)}"
            elif doc["type"] == "page" and rng.random() < 0.05:
                doc["userId"] = "undefined"  # a buggy SDK: a placeholder, not an id
            yield doc


@pytest.mark.parametrize(("seed", "tight"), [(3, False), (4, False), (5, True), (6, True)], ids=str)
def test_skipping_events_gives_what_applying_every_event_gives(
    settings: Settings, seed: int, tight: bool
) -> None:
    """The rebuild skips most events; applying all of them with the unifier must give the
    same profiles. Tight rules (two devices and one email per person per day) make many
    events lose identifiers to rules, which the rebuild must then apply again."""
    if tight:
        settings.identity.rules = IdentityRules(
            id_types={
                "anonymous_id": IdTypeRule(priority=9, limit=2),
                "email": IdTypeRule(priority=2, limit=1, window_s=86400),
            }
        )
    shop = Shop(300, seed=seed, start=START)
    docs = []
    for doc in shop.events(6000):
        doc |= {"receivedAt": doc["timestamp"], "sourceId": "src"}
        docs.append(doc)
    to_lake(settings, docs)
    report = rebuild(settings)
    assert report.applied < report.events / 2

    store = MemoryProfileStore(history=0)
    unifier = Unifier(store, settings.identity.rules, settings.identity.traits)
    for doc in docs:
        unifier.apply(Event(**_snake(doc)))
    want = {
        p.profile_id: (
            sorted(f"{e.id_type}:{e.value}" for e in p.identities),
            START + timedelta(milliseconds=p.first_seen_ms - _START_MS),
            START + timedelta(milliseconds=p.last_seen_ms - _START_MS),
            p.computed.get("orders_count", 0),
            p.computed.get("total_lifetime_value", 0.0),
            orjson.dumps(p.traits, option=orjson.OPT_SORT_KEYS).decode(),
            sorted(r.from_id for r in p.merged),
        )
        for p in store.scan(None, 1 << 30)
    }
    got = {
        pid: rest
        for pid, *rest in rows(
            settings,
            "SELECT profile_id, identifiers, first_seen, last_seen, orders_count, "
            "total_lifetime_value, traits, merged_ids FROM customer_profiles",
        )
    }
    assert got.keys() == want.keys()
    for pid, (ids, first, last, orders, ltv, traits, merged) in want.items():
        g_ids, g_first, g_last, g_orders, g_ltv, g_traits, g_merged = got[pid]
        assert (g_ids, g_first, g_last, g_orders, g_traits, g_merged) == (
            ids,
            first,
            last,
            orders,
            traits,
            merged,
        ), pid
        assert math.isclose(g_ltv, ltv, abs_tol=1e-6), pid


_START_MS = int(START.timestamp() * 1000)


def _snake(doc: dict[str, Any]) -> dict[str, Any]:
    names = {
        "messageId": "message_id",
        "receivedAt": "received_at",
        "sourceId": "source_id",
        "userId": "user_id",
        "anonymousId": "anonymous_id",
        "previousId": "previous_id",
    }
    return {names.get(k, k): v for k, v in doc.items()}


def _profiles_table(settings: Settings) -> tuple[list[tuple[Any, ...]], list[float]]:
    """The rows without ``updated_at`` and lifetime value; the lifetime values apart (sums in
    another order may differ in the last bits)."""
    got = rows(
        settings,
        "SELECT * EXCLUDE (updated_at, total_lifetime_value), total_lifetime_value "
        "FROM customer_profiles ORDER BY profile_id",
    )
    return [r[:-1] for r in got], [r[-1] for r in got]


def _same_profiles(
    a: tuple[list[tuple[Any, ...]], list[float]], b: tuple[list[tuple[Any, ...]], list[float]]
) -> bool:
    return a[0] == b[0] and all(
        math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a[1], b[1], strict=True)
    )


def _identities_table(settings: Settings) -> list[tuple[Any, ...]]:
    return rows(settings, "SELECT * EXCLUDE (updated_at) FROM identities ORDER BY id_type, value")


@pytest.mark.slow
def test_batch_layer_equals_speed_layer_over_100k_events_sent_over_http(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data")
    settings.log.partitions = 1  # arrival order is event-time order (see docs/identity.md)
    shop = Shop(8000, seed=11, start=datetime.now(UTC) - timedelta(days=3))
    total = 100_000
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("tests", WRITE_KEY)
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=30) as http:
            batch: list[dict[str, Any]] = []
            for doc in shop.events(total):
                batch.append(doc)
                if len(batch) == 500:
                    assert http.post("/v1/batch", json={"batch": batch}).status_code == 200
                    batch = []
        started = time.monotonic()
        wait_for(server.clew.drained, timeout_s=180, interval_s=0.5)
        drained_s = time.monotonic() - started
        sink_profiles = _profiles_table(server.settings)
        sink_identities = _identities_table(server.settings)

        report = rebuild(server.settings, max_differences=10)
        assert report.events == total
        recon = report.reconciliation
        assert recon is not None
        assert recon.agree, "\n".join(recon.differences)
        assert recon.batch_profiles == recon.speed_profiles == report.profiles > 1000
        assert report.seconds < 30, report.timings
        # The lake tables the rebuild wrote are the ones the profiles-lake stage kept.
        assert _same_profiles(_profiles_table(server.settings), sink_profiles)
        assert _identities_table(server.settings) == sink_identities

        result = CliRunner().invoke(
            app, ["rebuild", "--dry-run", "--check", "--data-dir", str(settings.data_dir)]
        )
        assert result.exit_code == 0, result.output
        assert "the batch and speed layers agree" in result.output
    print(f"drained {drained_s:.1f} s after the last request; rebuild {report.timings}")
    print(result.output)
