"""`clew rebuild --engine spark`: the batch layer on PySpark over the lake's Delta tables gives
the same `customer_profiles` and `identities`, row by row, as the DuckDB rebuild, and writes
them where `clew sql` reads them, in a local directory or in an S3 bucket (a moto server)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from _s3 import S3
from _services import ServiceUnavailable, require_module, unavailable
from _spark import pom_versions, spark_session
from clew._datadir import claim_data_dir
from clew.batch import _spark_session, spark_rebuild
from clew.batch.rebuild import RebuildReport, rebuild
from clew.batch.spark_rebuild import rebuild_spark
from clew.cli import app
from clew.config import LakeSettings, Settings
from clew.events import Event, format_time
from clew.identity import Identifier, profile_id_for
from clew.identity.rules import IdentityRules, IdTypeRule
from clew.identity.unifier import Unifier
from clew.lake.query import Lake
from clew.lake.tables import CUSTOMER_PROFILES_SCHEMA, EVENTS, to_arrow
from clew.store import Provenance, Separation, SQLiteProfileStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

START = datetime(2026, 3, 1, tzinfo=UTC)
_ids = itertools.count()

PROFILES = (
    "SELECT profile_id, identifiers, user_id, email, first_seen, last_seen, "
    "total_lifetime_value, orders_count, last_purchase_date, traits, merged_ids "
    "FROM customer_profiles ORDER BY profile_id"
)
IDENTITIES = (
    "SELECT id_type, value, profile_id, message_id, source_id, time, match_weight, "
    "probabilistic FROM identities ORDER BY id_type, value"
)
_LTV = 6  # column of total_lifetime_value in PROFILES


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    try:
        with spark_session() as session:
            yield session
    except ServiceUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def ev(type_: str, at: float, received: float | None = None, **fields: Any) -> dict[str, Any]:
    """A normalised event ``at`` seconds after START (received ``received`` seconds after)."""
    ts = format_time(START + timedelta(seconds=at))
    got = format_time(START + timedelta(seconds=at if received is None else received))
    return {
        "type": type_,
        "messageId": f"m{next(_ids):07d}",
        "timestamp": ts,
        "receivedAt": got,
        "sourceId": "web",
        **fields,
    }


def to_lake(settings: Settings, docs: list[dict[str, Any]]) -> None:
    table = to_arrow(EVENTS, [orjson.dumps(d) for d in docs])
    location = settings.lake_location.table(EVENTS.name)
    if location.is_local:
        write_deltalake(location.uri, table, mode="append", partition_by=["event_date"])
    else:
        location.write(table, mode="append", partition_by=["event_date"])


def tables(settings: Settings) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    lake = Lake(settings.lake_location)
    return lake.sql(PROFILES).rows, lake.sql(IDENTITIES).rows


def assert_same(
    duck: list[tuple[Any, ...]], spark: list[tuple[Any, ...]], what: str, ltv: int | None
) -> None:
    """Row by row; a lifetime value may differ in its last bits (the engines add up a
    profile's orders in different orders)."""
    assert len(spark) == len(duck), what
    for d, s in zip(duck, spark, strict=True):
        if ltv is not None:
            assert math.isclose(d[ltv], s[ltv], rel_tol=1e-12, abs_tol=1e-9), (what, d, s)
            d, s = d[:ltv] + d[ltv + 1 :], s[:ltv] + s[ltv + 1 :]
        assert s == d, what


def both_engines(
    settings: Settings, spark: SparkSession
) -> tuple[RebuildReport, RebuildReport, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rebuild with DuckDB, then with Spark; assert the tables equal; return both reports
    and DuckDB's tables."""
    duck_report = rebuild(settings)
    duck_profiles, duck_ids = tables(settings)
    spark_report = rebuild_spark(settings, session=spark)
    spark_profiles, spark_ids = tables(settings)
    assert_same(duck_profiles, spark_profiles, "customer_profiles", _LTV)
    assert_same(duck_ids, spark_ids, "identities", None)
    for name in ("events", "profiles", "identities"):
        assert getattr(spark_report, name) == getattr(duck_report, name), name
    assert spark_report.written
    return duck_report, spark_report, duck_profiles, duck_ids


def story() -> list[dict[str, Any]]:
    """Anonymous visits, sign-ups, a second device, aliases, a shared computer and a shared
    email (merge protection), placeholders, external and custom ids, a phone, a late event,
    orders in every spelling, and one person merged from three anonymous profiles."""
    order = "Order Completed"
    crm = [{"type": "crm_id", "id": "C-9", "collection": "users"}]
    return [
        ev("page", 1, anonymousId="a-1", name="Home"),
        ev("page", 2, anonymousId="a-1", name="Product"),
        ev("identify", 3, userId="u-1", anonymousId="a-1", traits={"email": "Ada@Mail.test"}),
        ev("identify", 3.5, userId="u-1", traits={"name": "Ada"}),
        ev("track", 4, userId="u-1", event=order, properties={"revenue": 19.99}),
        ev("track", 5, anonymousId="a-1", event=order, properties={"revenue": "5.01"}),
        # a late identify: older than the one above, received after it
        ev("identify", 0.5, received=40, userId="u-1", traits={"name": "Old Ada", "vip": True}),
        # a second device, then the login that merges it
        ev("page", 6, anonymousId="a-2"),
        ev("identify", 7, userId="u-2", anonymousId="a-3", traits={"email": "bo@mail.test"}),
        ev("identify", 8, userId="u-2", anonymousId="a-2", traits={"plan": "pro"}),
        ev("track", 9, anonymousId="a-2", event="order_completed", properties={"total": 30}),
        # an alias of an anonymous id, and one of a known user id (refused: two user ids)
        ev("page", 10, anonymousId="a-4"),
        ev("track", 11, anonymousId="a-4", event=order, properties={"revenue": 12.5}),
        ev("alias", 12, userId="u-3", previousId="a-4"),
        ev("alias", 13, userId="u-3b", previousId="u-3"),
        # a shared computer: the second login must not merge two customers
        ev("identify", 14, userId="u-4", anonymousId="family-pc", traits={"email": "c@mail.test"}),
        ev("identify", 15, userId="u-5", anonymousId="family-pc", traits={"name": "Kid"}),
        ev("page", 16, anonymousId="family-pc"),
        ev("track", 16.5, userId="u-5", event=order, properties={"revenue": "7"}),
        # a shared email: the same protection
        ev("identify", 17, userId="u-6", traits={"email": "shared@mail.test"}),
        ev("identify", 18, userId="u-7", traits={"email": "shared@mail.test"}),
        # placeholders are never identifiers
        ev("page", 19, userId="undefined", anonymousId="a-8"),
        ev("identify", 20, userId="u-8", anonymousId="a-8", traits={"email": "test@test.com"}),
        ev("page", 20.5, anonymousId="null"),
        # an external id links a device to a user
        ev("track", 21, anonymousId="a-9", event="Viewed", context={"externalIds": crm}),
        ev("identify", 22, userId="u-9", context={"externalIds": crm}),
        # a custom id (traits.loyalty_id / properties.loyalty_id) and a phone
        ev("identify", 23, userId="u-10", traits={"loyalty_id": "L-1"}),
        ev("track", 24, anonymousId="a-10", event="Coupon", properties={"loyalty_id": "L-1"}),
        ev("identify", 25, userId="u-11", traits={"phone": "+44 20 7946 0958"}),
        ev("track", 25.5, userId="u-11", event=order, properties={"revenue": "abc", "total": 3}),
        # three anonymous profiles merged into one person, the last one by alias
        ev("page", 27, anonymousId="a-11"),
        ev("page", 28, anonymousId="a-12"),
        ev("page", 29, anonymousId="a-13"),
        ev("identify", 30, userId="u-12", anonymousId="a-11"),
        ev("identify", 31, userId="u-12", anonymousId="a-12"),
        ev("alias", 32, userId="u-12", previousId="a-13"),
        ev("track", 33, anonymousId="a-13", event=order, properties={"revenue": 100}),
    ]


def test_story_equals_duckdb_through_the_cli(settings: Settings, spark: SparkSession) -> None:
    """Both engines from `clew rebuild`, with a serving store holding an operator's split:
    the same tables row by row, the same reconciliation."""
    to_lake(settings, story())
    store = SQLiteProfileStore(settings.profiles_path)
    store.add_separation(
        Separation(("anonymous_id", "a-13"), ("user_id", "u-12"), Provenance("split", "", 0))
    )
    store.close()
    cli = CliRunner()
    data = ["--data-dir", str(settings.data_dir)]
    result = cli.invoke(app, ["rebuild", *data])
    assert result.exit_code == 0, result.output
    duck_profiles, duck_ids = tables(settings)
    result = cli.invoke(app, ["rebuild", "--engine", "spark", *data])
    assert result.exit_code == 0, result.output
    assert "wrote lake tables customer_profiles and identities" in result.output
    spark_profiles, spark_ids = tables(settings)
    assert_same(duck_profiles, spark_profiles, "customer_profiles", _LTV)
    assert_same(duck_ids, spark_ids, "identities", None)

    by_user = {row[2]: row for row in spark_profiles if row[2] is not None}
    assert by_user["u-1"][1] == ["anonymous_id:a-1", "email:ada@mail.test", "user_id:u-1"]
    assert by_user["u-1"][_LTV] == pytest.approx(25.0)
    assert orjson.loads(by_user["u-1"][9]) == {"email": "Ada@Mail.test", "name": "Ada", "vip": True}
    assert by_user["u-2"][7] == 1 and by_user["u-2"][_LTV] == 30.0
    assert len(by_user["u-2"][10]) == 1, "a-2's profile merged into u-2's"
    assert by_user["u-3"][1] == ["anonymous_id:a-4", "user_id:u-3"]
    assert by_user["u-3b"][1] == ["user_id:u-3b"], "an alias never joins two user ids"
    assert "anonymous_id:family-pc" in by_user["u-4"][1]
    assert by_user["u-5"][1] == ["user_id:u-5"], "a shared computer merges no one"
    assert by_user["u-7"][1] == ["user_id:u-7"], "a shared email merges no one"
    assert by_user["u-8"][1] == ["anonymous_id:a-8", "user_id:u-8"]
    assert by_user["u-9"][1] == ["anonymous_id:a-9", "crm_id:C-9", "user_id:u-9"]
    assert by_user["u-10"][1] == ["anonymous_id:a-10", "loyalty_id:L-1", "user_id:u-10"]
    assert by_user["u-11"][1] == ["phone:+442079460958", "user_id:u-11"]
    assert by_user["u-11"][_LTV] == 3.0
    assert by_user["u-12"][1] == ["anonymous_id:a-11", "anonymous_id:a-12", "user_id:u-12"]
    # a-11's profile took u-12's id, a-12's merged in; a-13 was split from u-12 by an operator.
    assert set(by_user["u-12"][10]) == {
        profile_id_for(Identifier("anonymous_id", "a-11")),
        profile_id_for(Identifier("anonymous_id", "a-12")),
    }
    # The reconciliation with the (empty) serving store is reported by both engines alike.
    assert f"batch layer: {len(spark_profiles)} profiles" in result.output


def consent(prefs: dict[str, Any]) -> dict[str, Any]:
    """An event context carrying consent preferences."""
    return {"consent": {"categoryPreferences": prefs}}


def consent_story() -> list[dict[str, Any]]:
    """People choosing and changing their consent: a later choice that arrives before an
    earlier one, an anonymous visitor's choice kept when they log in, preferences that are
    not true/false or not an object, and a person who never chose."""
    viewed = {"event": "Viewed"}
    return [
        ev("page", 1, anonymousId="c-1", context=consent({"marketing": True, "analytics": True})),
        ev("identify", 2, userId="cu-1", anonymousId="c-1", traits={"email": "cu1@mail.test"}),
        ev("track", 20, userId="cu-1", **viewed, context=consent({"marketing": False})),
        # older than the choice above, received after it: the choice at 20 s stays
        ev("track", 10, received=30, userId="cu-1", **viewed, context=consent({"ads": True})),
        ev("identify", 3, userId="cu-2", anonymousId="c-3", traits={"name": "Bo"}),
        ev("page", 4, anonymousId="c-2", context=consent({"ads": False, "note": "later"})),
        ev("identify", 5, userId="cu-2", anonymousId="c-2"),
        ev("page", 6, userId="cu-3", context={"consent": {"categoryPreferences": "all"}}),
        ev("page", 7, userId="cu-3", context=consent({"ads": "yes"})),
        ev("track", 8, userId="cu-4", event="Order Completed", properties={"revenue": 5}),
    ]


def serve(settings: Settings, docs: list[dict[str, Any]]) -> SQLiteProfileStore:
    """A serving store holding what the speed layer makes of ``docs`` (in arrival order)."""
    store = SQLiteProfileStore(settings.profiles_path)
    unifier = Unifier(store, settings.identity.rules, settings.identity.traits)
    for doc in sorted(docs, key=lambda d: d["receivedAt"]):
        unifier.apply(msgspec.convert(doc, Event))
    return store


def test_consent_is_derived_and_compared_like_duckdb(
    settings: Settings, spark: SparkSession
) -> None:
    """The Spark rebuild derives each profile's current consent (the latest by event time)
    and compares it with the serving store's, as the DuckDB rebuild does; consent is no
    column of `customer_profiles`."""
    docs = consent_story()
    to_lake(settings, docs)
    store = serve(settings, docs)
    want = {
        "cu-1": {"categoryPreferences": {"marketing": False}},
        "cu-2": {"categoryPreferences": {"ads": False}},
        "cu-3": {},
        "cu-4": {},
    }
    for user, state in want.items():
        profile = store.get(store.lookup("user_id", user) or "")
        assert profile is not None and profile.computed.get("consent", {}) == state, user
    store.close()

    duck, spark_report, _, _ = both_engines(settings, spark)
    for report in (duck, spark_report):
        recon = report.reconciliation
        assert recon is not None and recon.agree, recon and recon.differences
        assert recon.identical == recon.batch_profiles == len(want)
    columns = Lake(settings.lake_location).sql("SELECT * FROM customer_profiles").columns
    assert columns == CUSTOMER_PROFILES_SCHEMA.names

    # The serving store says cu-2 agreed to ads: both engines report that profile.
    store = SQLiteProfileStore(settings.profiles_path)
    pid = store.lookup("user_id", "cu-2")
    assert pid is not None
    store.update_computed(pid, lambda c: {**c, "consent": {"categoryPreferences": {"ads": True}}})
    store.close()
    for report in (
        rebuild(settings, dry_run=True),
        rebuild_spark(settings, session=spark, dry_run=True),
    ):
        recon = report.reconciliation
        assert recon is not None and recon.difference_count == 1
        (difference,) = recon.differences
        assert "consent {'categoryPreferences': {'ads': False}} (batch)" in difference
        assert "{'categoryPreferences': {'ads': True}} (speed)" in difference


def shop(people: int, n: int, seed: int) -> Iterator[dict[str, Any]]:
    """A web shop's traffic: several devices per person, logins, logouts, shared family
    computers, orders, trait updates, aliases, placeholder emails and user ids; a few events
    arrive late."""
    rng = random.Random(seed)
    anons = itertools.count()
    devices = [[f"anon-{next(anons)}" for _ in range(rng.randint(1, 3))] for _ in range(people)]
    for p in range(0, people - 1, 10):
        devices[p + 1][0] = devices[p][0]
    logged_in: dict[str, int] = {}
    for i in range(n):
        p = rng.randrange(people)
        d = rng.randrange(len(devices[p]))
        anon = devices[p][d]
        at = i * 20.0 - (3600 if rng.random() < 0.02 else 0)
        doc = ev("page", at, received=i * 20.0, anonymousId=anon, name="Home")
        who = logged_in.get(anon)
        r = rng.random()
        if (who is not None and who != p) or (who is None and r < 0.12):
            logged_in[anon] = p
            email = "test@test.com" if rng.random() < 0.08 else f"p{p}.{rng.randint(0, 2)}@m.test"
            doc |= {"type": "identify", "userId": f"u-{p}", "traits": {"email": email}}
        elif who is not None and r < 0.03:
            del logged_in[anon]
            devices[p][d] = f"anon-{next(anons)}"
        elif r < 0.10:
            value: Any = round(rng.uniform(1, 200), 2)
            props = {"revenue": str(value) if rng.random() < 0.2 else value}
            doc |= {"type": "track", "event": "Order Completed", "properties": props}
        elif who is not None and r < 0.11:
            del doc["anonymousId"]
            doc |= {"type": "alias", "userId": f"u-{p}", "previousId": anon}
        elif who is not None and r < 0.13:
            doc |= {"type": "identify", "traits": {"plan": rng.choice(("free", "pro"))}}
        if who is not None and doc["type"] != "alias":
            doc["userId"] = f"u-{logged_in.get(anon, who)}"
        elif doc["type"] == "page" and rng.random() < 0.05:
            doc["userId"] = "undefined"
        yield doc


def test_shop_traffic_under_tight_rules_equals_duckdb(
    settings: Settings, spark: SparkSession
) -> None:
    """Thousands of events in several commits, with limits that bite often (two devices per
    person, one email per day): every drop and merge must come out the same."""
    settings.identity.rules = IdentityRules(
        id_types={
            "anonymous_id": IdTypeRule(priority=9, limit=2),
            "email": IdTypeRule(priority=2, limit=1, window_s=86400),
        }
    )
    docs = list(shop(people=150, n=2500, seed=11))
    for part in range(0, len(docs), 1000):
        to_lake(settings, docs[part : part + 1000])
    duck, _, profiles, _ = both_engines(settings, spark)
    assert duck.profiles > 100
    assert any(len(row[10]) > 0 for row in profiles), "some profiles were merged"
    assert sum(row[7] for row in profiles) > 50, "orders were counted"


def test_dry_run_writes_nothing_and_an_empty_lake_gives_empty_tables(
    settings: Settings, spark: SparkSession
) -> None:
    report = rebuild_spark(settings, session=spark)
    assert (report.events, report.profiles, report.written) == (0, 0, True)
    assert tables(settings) == ([], [])
    to_lake(settings, [ev("identify", 1, userId="u-1", anonymousId="a-1")])
    report = rebuild_spark(settings, session=spark, dry_run=True)
    assert (report.events, report.profiles, report.identities) == (1, 1, 2)
    assert not report.written
    assert tables(settings) == ([], [])


def test_a_lake_in_an_s3_bucket_equals_duckdb(tmp_path: Path, s3: S3, spark: SparkSession) -> None:
    """The story in a bucket of an S3-compatible server: Spark reads `events` and writes both
    tables there through S3A, and they equal DuckDB's."""
    bucket = s3.bucket()
    lake = LakeSettings(uri=f"s3://{bucket}/lake", storage_options=s3.storage_options)
    settings = Settings(data_dir=tmp_path / "data", lake=lake)
    to_lake(settings, story())
    duck, _, profiles, ids = both_engines(settings, spark)
    assert duck.profiles > 10 and len(ids) > 20
    by_user = {row[2]: row for row in profiles if row[2] is not None}
    assert by_user["u-1"][1] == ["anonymous_id:a-1", "email:ada@mail.test", "user_id:u-1"]
    # Spark made the latest commit of both tables, in the bucket.
    client = s3.client()
    for name in ("customer_profiles", "identities"):
        log = [k for k in s3.keys(bucket, f"lake/{name}/_delta_log/") if k.endswith(".json")]
        latest = client.get_object(Bucket=bucket, Key=max(log))["Body"].read()
        assert b"Apache-Spark" in latest, name
    assert not (tmp_path / "data" / "lake").exists(), "nothing was written locally"


def test_the_fetch_script_and_the_engine_agree_on_versions() -> None:
    versions = pom_versions()
    assert versions["delta.version"] == _spark_session.DELTA_VERSION
    assert versions["spark.version"] == _spark_session.SPARK_VERSION
    assert versions["hadoop.version"] == _spark_session.HADOOP_VERSION
    pyspark = require_module("pyspark")
    # hadoop-aws only works with the Hadoop it was built with: the one inside pyspark.
    jars = Path(pyspark.__file__).parent / "jars"
    assert (jars / f"hadoop-client-api-{_spark_session.HADOOP_VERSION}.jar").is_file()


def test_a_lake_on_object_storage_needs_the_s3a_jars(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_module("pyspark")
    monkeypatch.setenv("CLEW_SPARK_JARS", str(tmp_path))
    for name in _spark_session.DELTA_JARS:
        (tmp_path / name).touch()
    if (base := _spark_session.missing()) is not None:
        unavailable(base)  # no Java here: nothing else to check
    reason = _spark_session.missing(object_storage=True)
    assert reason is not None
    assert "hadoop-aws" in reason and "sh scripts/spark.sh" in reason


def test_missing_jars_name_the_command_that_fetches_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_module("pyspark")
    monkeypatch.setenv("CLEW_SPARK_JARS", str(tmp_path))
    # The module's session is still running: the command must start its own.
    monkeypatch.setattr(spark_rebuild, "_active_session", lambda: None)
    reason = _spark_session.missing()
    assert reason is not None and "sh scripts/spark.sh" in reason
    claim_data_dir(tmp_path / "data")
    result = CliRunner().invoke(
        app, ["rebuild", "--engine", "spark", "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 1
    assert "sh scripts/spark.sh" in result.output


def test_spark_options_are_checked_before_any_work(tmp_path: Path) -> None:
    claim_data_dir(tmp_path / "data")
    data = ["--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(app, ["rebuild", "--spark-conf", "a=b", *data])
    assert result.exit_code == 1
    assert "--spark-conf needs --engine spark" in result.output
    result = CliRunner().invoke(app, ["rebuild", "--engine", "spark", "--spark-conf", "x", *data])
    assert result.exit_code == 1
    assert "is not KEY=VALUE" in result.output
