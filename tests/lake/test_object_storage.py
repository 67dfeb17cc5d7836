"""The lake on S3-compatible object storage (a moto server on loopback): the lake sink
writes Delta tables to the bucket, `clew sql` and /v1/sql read them back, a rebuild writes
customer_profiles there, a privacy deletion leaves no trace of the person in the bucket, a
tier move reaches a cold tier in the bucket, and `clew serve` runs end to end on it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from _s3 import S3
from _support import WRITE_KEY, ServeProcess, clew_bin, wait_for
from _tcp_proxy import TcpProxy
from clew._locations import ObjectStorageUnsupported
from clew.backends import open_log
from clew.background import free_port
from clew.config import LakeSettings, LifecycleSettings, Settings, load_settings
from clew.lake.query import Lake, LakeUnavailableError
from clew.log.base import Log, Message
from clew.stages.lake_sink import LakeSinkStage

ADA_USER = "user-ada-1815"
ADA_EMAIL = "ada@analytical.test"
BOB_USER = "user-bob-2001"


@pytest.fixture
def bucket(s3: S3) -> str:
    return s3.bucket()


@pytest.fixture
def settings(tmp_path: Path, s3: S3, bucket: str) -> Settings:
    lake = LakeSettings(uri=f"s3://{bucket}/lake", storage_options=s3.storage_options)
    return Settings(data_dir=tmp_path / "data", lake=lake)


def _event(mid: str, day: int, **fields: Any) -> Message:
    doc = {
        "type": "identify",
        "messageId": mid,
        "timestamp": f"2026-03-{day:02d}T10:00:00.000Z",
        "receivedAt": f"2026-03-{day:02d}T10:00:01.000Z",
        "sourceId": "web",
        **fields,
    }
    return Message(orjson.dumps(doc), key=mid.encode())


def _story() -> list[Message]:
    """Ada and Bob, each identified with an email, then a purchase each on another day."""
    return [
        _event("a1", 1, userId=ADA_USER, traits={"email": ADA_EMAIL, "name": "Ada"}),
        _event("b1", 1, userId=BOB_USER, traits={"email": "bob@analytical.test"}),
        _event(
            "a2", 2, type="track", event="Order Completed", userId=ADA_USER,
            properties={"revenue": 30.0},
        ),
        _event(
            "b2", 3, type="track", event="Order Completed", userId=BOB_USER,
            properties={"revenue": 12.5},
        ),
    ]  # fmt: skip


def _sink(settings: Settings, log: Log, flush_rows: int = 2) -> LakeSinkStage:
    lake = settings.lake.model_copy(update={"flush_rows": flush_rows})
    stage = LakeSinkStage(settings.lake_location, lake, index_dir=settings.data_dir)
    consumer = log.consumer("lake", ["events", "dlq"])
    try:
        stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(100, 0.05):
            stage.handle(records, consumer)
        stage.close(consumer)
    finally:
        consumer.close()
    return stage


@pytest.fixture
def log(settings: Settings) -> Iterator[Log]:
    log = open_log(settings)
    yield log
    log.close()


def _clew(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [clew_bin(), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


# -- configuration ------------------------------------------------------------------------


def test_configuration_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEW_LAKE__URI", "s3a://clew-lake/prod/")
    monkeypatch.setenv("CLEW_LAKE__STORAGE_OPTIONS", '{"AWS_REGION": "eu-west-1"}')
    monkeypatch.setenv("CLEW_LIFECYCLE__COLD_URI", "s3://clew-archive")
    settings = load_settings(data_dir=tmp_path)
    assert str(settings.lake_location) == "s3://clew-lake/prod"
    assert settings.lake_location.table("events").uri == "s3://clew-lake/prod/events"
    # Commits need the conditional create of S3; Clew asks for it unless told otherwise.
    assert settings.lake_location.options == {
        "AWS_REGION": "eu-west-1",
        "aws_conditional_put": "etag",
    }
    assert str(settings.cold_location) == "s3://clew-archive"
    with pytest.raises(ObjectStorageUnsupported, match=r"lake\.uri = s3://clew-lake/prod"):
        _ = settings.lake_path


def test_configuration_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text(
        '[lake]\nuri = "s3://clew/lake"\n\n'
        '[lake.storage_options]\nAWS_ENDPOINT_URL = "http://minio.internal:9000"\n'
        "AWS_ALLOW_HTTP = true\n\n"
        '[lifecycle]\ncold_uri = "s3://clew/cold"\n'
    )
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.lake.storage_options == {
        "AWS_ENDPOINT_URL": "http://minio.internal:9000",
        "AWS_ALLOW_HTTP": "true",
    }
    assert settings.cold_location.table("dlq").uri == "s3://clew/cold/dlq"
    assert settings.cold_location.options == settings.lake_location.options


def test_a_commit_mode_the_user_chose_is_kept(tmp_path: Path) -> None:
    lake = LakeSettings(uri="s3://b-1/x", storage_options={"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    options = Settings(data_dir=tmp_path, lake=lake).lake_location.options
    assert options == {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}


def test_the_default_lake_stays_in_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.lake_location.is_local
    assert settings.lake_path == tmp_path / "lake"
    assert settings.cold_path == tmp_path / "cold"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "CLEW_LAKE__URI",
            "gs://bucket/lake",
            r"lake\.uri: 'gs://bucket/lake': unsupported",
        ),
        ("CLEW_LAKE__URI", "s3:///lake", r"lake\.uri: 's3:///lake' names no bucket"),
        ("CLEW_LIFECYCLE__COLD_URI", "ftp://x/y", r"lifecycle\.cold_uri: .*unsupported scheme"),
    ],
)
def test_a_bad_uri_is_refused_at_load_naming_the_setting(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    result = _clew("sql", "SELECT 1", "--data-dir", str(tmp_path), env={setting: value})
    assert result.returncode == 2
    assert re.search(message, " ".join(result.stderr.split())), result.stderr


# -- writing and reading ------------------------------------------------------------------


def test_the_sink_writes_delta_tables_to_the_bucket_and_clew_sql_reads_them(
    settings: Settings, log: Log, s3: S3, bucket: str
) -> None:
    log.append_sync("events", _story())
    stage = _sink(settings, log)
    assert stage.rows_written["events"] == 4

    keys = s3.keys(bucket, "lake/events/")
    assert any(k.startswith("lake/events/_delta_log/") for k in keys)
    assert any(k.startswith("lake/events/event_date=2026-03-01/") for k in keys)
    assert not (settings.data_dir / "lake").exists()
    # The person index stays in the data directory.
    assert (settings.data_dir / "lake_index.db").exists()

    # The CLI in another process, configured by the environment only: storage options as
    # JSON and the standard AWS variables.
    env = {
        "CLEW_LAKE__URI": f"s3://{bucket}/lake",
        "CLEW_LAKE__STORAGE_OPTIONS": json.dumps({"AWS_ALLOW_HTTP": "true"}),
        "AWS_ACCESS_KEY_ID": s3.storage_options["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3.storage_options["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }
    query = (
        "SELECT event_date::VARCHAR AS day, count(*) AS n, "
        "sum(json_extract(properties, '$.revenue')::DOUBLE) AS revenue "
        "FROM events GROUP BY 1 ORDER BY 1"
    )
    result = _clew("sql", query, "--format", "json", "--data-dir", str(settings.data_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"day": "2026-03-01", "n": 2, "revenue": None},
        {"day": "2026-03-02", "n": 1, "revenue": 30.0},
        {"day": "2026-03-03", "n": 1, "revenue": 12.5},
    ]


def test_a_restarted_sink_resumes_from_the_delta_log_in_the_bucket(
    settings: Settings, log: Log
) -> None:
    log.append_sync("events", _story())
    _sink(settings, log)
    # The log's committed offsets are forgotten: only the Delta transactions in the bucket
    # say what is written, and nothing is written twice.
    fresh = open_log(settings.model_copy(update={"data_dir": settings.data_dir / "other"}))
    try:
        fresh.create_topic(log.topics()["events"])
        fresh.create_topic(log.topics()["dlq"])
        fresh.append_sync("events", _story())
        _sink(settings, fresh)
    finally:
        fresh.close()
    lake = Lake(settings.lake_location)
    assert lake.sql("SELECT count(*), count(DISTINCT message_id) FROM events").rows == [(4, 4)]


def test_concurrent_writers_commit_without_losing_a_row(settings: Settings) -> None:
    """Several lake workers append to one table: conditional creates decide each race."""
    import threading

    import pyarrow as pa

    table = settings.lake_location.table("race")
    # The table exists before the race (creating it is a race of its own, which a losing
    # sink survives by the runner restarting it).
    table.write(pa.table({"writer": [-1], "i": [-1]}), mode="append")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(8):
            try:
                table.write(pa.table({"writer": [n] * 5, "i": [i] * 5}), mode="append")
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    dt = table.open()
    assert dt.version() == 24  # 25 commits: versions 0 to 24
    rows = dt.to_pyarrow_table()
    assert rows.num_rows == 121
    pairs = sorted(set(zip(rows["writer"].to_pylist(), rows["i"].to_pylist(), strict=True)))
    assert pairs == [(-1, -1)] + [(n, i) for n in range(3) for i in range(8)]


def test_sql_over_object_storage_is_read_only_and_filters_push_down(
    settings: Settings, log: Log
) -> None:
    log.append_sync("events", _story())
    _sink(settings, log)
    lake = Lake(settings.lake_location)
    assert sorted(lake.tables()) == ["events"]
    rows = lake.sql("SELECT message_id FROM events WHERE user_id = 'user-bob-2001' ORDER BY 1")
    assert rows.rows == [("b1",), ("b2",)]
    explain = "EXPLAIN SELECT message_id FROM events WHERE user_id = 'user-bob-2001'"
    plan = "\n".join(str(r[1]) for r in lake.sql(explain).rows)
    # DuckDB hands the filter and the column list to the Arrow scan of the Delta snapshot.
    assert "PYTHON_ARROW_SCAN" in plan, plan
    assert "Filters: \"user_id\" = 'user-bob-2001'" in plan, plan
    assert "Projections: message_id" in plan, plan
    with pytest.raises(Exception, match="read-only"):
        lake.sql("CREATE TABLE x AS SELECT 1")


def test_a_bucket_gone_during_a_query_is_an_outage_not_a_bad_query(
    tmp_path: Path, s3: S3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket goes away between opening the tables and reading their files: the query
    fails as the storage's outage (the SQL API's 503), not as the query's fault (400)."""
    proxy = TcpProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        lake_settings = LakeSettings(
            uri=f"s3://{bucket}/lake",
            storage_options={**S3(proxy.url).storage_options, "max_retries": "0"},
        )
        settings = Settings(data_dir=tmp_path / "data", lake=lake_settings)
        log = open_log(settings)
        log.append_sync("events", _story())
        _sink(settings, log)
        log.close()
        lake = Lake(settings.lake_location)
        connect = Lake.connect

        def connect_then_cut(self: Lake, *args: Any, **kwargs: Any) -> Any:
            conn = connect(self, *args, **kwargs)
            proxy.cut()
            return conn

        monkeypatch.setattr(Lake, "connect", connect_then_cut)
        with pytest.raises(LakeUnavailableError):
            lake.sql("SELECT count(*) FROM events")
    finally:
        proxy.close()


def test_rebuild_writes_customer_profiles_to_the_bucket(
    settings: Settings, log: Log, s3: S3, bucket: str
) -> None:
    from clew.batch.rebuild import rebuild

    log.append_sync("events", _story())
    _sink(settings, log)
    report = rebuild(settings)
    assert report.written and report.profiles == 2
    assert any(k.startswith("lake/customer_profiles/_delta_log/") for k in s3.keys(bucket))
    rows = (
        Lake(settings.lake_location)
        .sql(
            "SELECT user_id, email, total_lifetime_value, orders_count "
            "FROM customer_profiles ORDER BY user_id"
        )
        .rows
    )
    assert rows == [
        (ADA_USER, ADA_EMAIL, 30.0, 1),
        (BOB_USER, "bob@analytical.test", 12.5, 1),
    ]


def test_a_backfill_reads_its_history_from_the_bucket(settings: Settings, log: Log) -> None:
    from clew.batch._lake_events import read_lake_types

    log.append_sync("events", _story())
    _sink(settings, log)
    partitions = sorted(log.end_offsets("events"))
    snapshot = read_lake_types(
        settings.lake_location, partitions, {"track"}, settings.cold_location
    )
    assert sorted(e.message_id for e in snapshot.events) == ["a2", "b2"]
    # The offsets the snapshot covers come from the Delta log in the bucket.
    assert sum(v + 1 for v in snapshot.offsets.values()) == 4


# -- privacy ------------------------------------------------------------------------------


def test_erasure_removes_the_person_from_the_bucket_and_verify_finds_nothing(
    settings: Settings, log: Log, s3: S3, bucket: str
) -> None:
    from clew.privacy.erase import erase, resolve_subject
    from clew.privacy.verify import verify
    from clew.store import Provenance, SQLiteProfileStore

    log.append_sync("events", _story())
    _sink(settings, log)
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        for pid, user, email in (
            ("p-ada", ADA_USER, ADA_EMAIL),
            ("p-bob", BOB_USER, "bob@analytical.test"),
        ):
            store.attach(pid, "user_id", user, Provenance("m", "web", 1))
            store.attach(pid, "email", email, Provenance("m", "web", 1))
        ada = resolve_subject(store, "user_id", ADA_USER)

        before = verify(settings, ada, store=store, log=log)
        lake_traces = [t.where for t in before.traces if t.store == "lake"]
        assert any(w.startswith(f"s3://{bucket}/lake/events/event_date=") for w in lake_traces)

        report = erase(settings, ada, store=store, log=log)
        assert report.ok, report
        lake_report = next(s for s in report.stores if s.store == "lake")
        assert lake_report.removed == 2

        after = verify(settings, ada, store=store, log=log)
        assert after.clean, after.traces
        assert any(f"s3://{bucket}/lake" in c for c in after.checked), after.checked
    finally:
        store.close()
    lake = Lake(settings.lake_location)
    assert lake.sql("SELECT message_id FROM events ORDER BY 1").rows == [("b1",), ("b2",)]
    # No object left in the bucket holds Ada: not a data file, not an old log entry.
    client = s3.client()
    for key in s3.keys(bucket):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if not key.endswith(".parquet"):
            assert ADA_USER.encode() not in body and ADA_EMAIL.encode() not in body, key


# -- tiers --------------------------------------------------------------------------------


def test_old_partitions_move_to_a_cold_tier_in_the_bucket(
    tmp_path: Path, s3: S3, bucket: str
) -> None:
    from datetime import UTC, datetime

    from clew.lake.tiers import run_lifecycle

    lake = LakeSettings(uri=f"s3://{bucket}/lake", storage_options=s3.storage_options)
    cold = LifecycleSettings(cold_uri=f"s3://{bucket}/cold", warm_days=30)
    settings = Settings(data_dir=tmp_path / "data", lake=lake, lifecycle=cold)
    log = open_log(settings)
    try:
        log.append_sync("events", _story())
        _sink(settings, log)
    finally:
        log.close()
    now = int(datetime(2026, 4, 2, 12, tzinfo=UTC).timestamp() * 1000)
    report = run_lifecycle(settings, now)
    assert report.rows_moved == 3  # 2026-03-01 and 03-02 are more than 30 days old on 04-02
    assert any(k.startswith("cold/events/event_date=2026-03-01/") for k in s3.keys(bucket))
    both = Lake(settings.lake_location, settings.cold_location)
    assert both.sql("SELECT count(*) FROM events").rows == [(1,)]
    assert both.sql("SELECT count(*) FROM events", include_cold=True).rows == [(4,)]


def test_a_lifecycle_run_while_the_bucket_is_away_fails_and_the_next_one_finishes(
    tmp_path: Path, s3: S3, bucket: str
) -> None:
    from datetime import UTC, datetime

    from clew.clock import ManualClock
    from clew.lake.lifecycle import LifecycleScheduler

    proxy = TcpProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        options = {**S3(proxy.url).storage_options, "max_retries": "0"}
        lake = LakeSettings(uri=f"s3://{bucket}/lake", storage_options=options)
        cold = LifecycleSettings(cold_uri=f"s3://{bucket}/cold", warm_days=30)
        settings = Settings(data_dir=tmp_path / "data", lake=lake, lifecycle=cold)
        log = open_log(settings)
        try:
            log.append_sync("events", _story())
            _sink(settings, log)
            # 2026-03-01 and 03-02 are more than 30 days old on 04-02.
            now = int(datetime(2026, 4, 2, 12, tzinfo=UTC).timestamp() * 1000)
            scheduler = LifecycleScheduler(settings, log, ManualClock(now))
            proxy.cut()
            scheduler.run_once()
            assert scheduler.failing is not None and scheduler.runs["failed"] == 1
            proxy.restore()
            scheduler.run_once()
            assert scheduler.failing is None and scheduler.runs["ok"] == 1
        finally:
            log.close()
        both = Lake(settings.lake_location, settings.cold_location)
        assert both.sql("SELECT count(*) FROM events").rows == [(1,)]
        assert both.sql("SELECT count(*) FROM events", include_cold=True).rows == [(4,)]
    finally:
        proxy.close()


# -- clew serve, end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_clew_serve_on_object_storage_end_to_end(
    tmp_path: Path, s3: S3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "CLEW_LAKE__URI": f"s3://{bucket}/prod/lake",
        "AWS_ACCESS_KEY_ID": s3.storage_options["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3.storage_options["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    created = _clew(
        "sources", "create", "tests", "--write-key", WRITE_KEY, "--data-dir", str(data_dir),
        env={},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    proc = ServeProcess(data_dir, free_port())
    proc.start(timeout_s=60)
    try:
        batch = {
            "batch": [
                {
                    "type": "track",
                    "event": "Signed Up",
                    "userId": f"user-{i % 5}",
                    "messageId": f"serve-{i}",
                    "timestamp": "2026-03-05T09:00:00.000Z",
                    "properties": {"plan": "pro" if i % 2 else "free"},
                }
                for i in range(40)
            ]
        }
        # One event without any identity: a dead letter, for the dlq table in the bucket.
        batch["batch"].append({"type": "track", "event": "Lost", "messageId": "serve-dead"})
        response = httpx.post(
            proc.url + "/v1/batch", content=orjson.dumps(batch), auth=(WRITE_KEY, ""), timeout=10
        )
        assert response.status_code == 200, response.text

        def landed() -> bool:
            result = _clew(
                "sql", "SELECT count(*) AS n FROM events", "--format", "json",
                "--data-dir", str(data_dir), env={},
            )  # fmt: skip
            return result.returncode == 0 and json.loads(result.stdout) == [{"n": 40}]

        wait_for(landed, timeout_s=90, interval_s=1.0)
        result = _clew(
            "sql",
            "SELECT properties->>'plan' AS plan, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
            "--format", "json", "--data-dir", str(data_dir),
            env={},
        )  # fmt: skip
        assert json.loads(result.stdout) == [{"plan": "free", "n": 20}, {"plan": "pro", "n": 20}]
        dead = _clew("dlq", "list", "--format", "json", "--data-dir", str(data_dir), env={})
        assert dead.returncode == 0, dead.stderr
        assert [(r["reason"], r["event_name"]) for r in json.loads(dead.stdout)] == [
            ("no_identity", "Lost")
        ]
        # The profiles-lake stage writes its tables to the bucket too.
        wait_for(
            lambda: any(k.startswith("prod/lake/customer_profiles/") for k in s3.keys(bucket)),
            timeout_s=60,
        )
        assert not (data_dir / "lake").exists()
    finally:
        proc.stop()
