"""Webhook destinations end to end: events sent over the Tracking API reach real HTTP receivers
on loopback ports, signed, batched, filtered, consent-checked, retried, dead-lettered and
replayed, and survive a restart; a hanging receiver holds up nobody else."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, lake_count, make_settings, wait_for
from clew.background import BackgroundServer, free_port
from clew.cli import app
from clew.config import Settings
from clew.destinations import DestinationConfig, DestinationDirectory, destinations_dir
from clew.log.base import Message
from clew.topics import CHANGES_TOPIC
from destinations._receiver import Receiver

SECRET = "shh-test-secret"
cli = CliRunner()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.release()
        r.stop()


def _receiver(made: list[Receiver], **kwargs: Any) -> Receiver:
    r = Receiver(**kwargs)
    made.append(r)
    return r


def _destination(settings: Settings, name: str, url: str, **options: Any) -> None:
    fast = {"max_batch_wait_ms": 100, "retry_initial_s": 0.05, "retry_max_delay_s": 0.3}
    config = DestinationConfig(name=name, url=url, **{**fast, **options})
    DestinationDirectory(destinations_dir(settings.data_dir)).save(config, replace=True)


def _start(settings: Settings) -> BackgroundServer:
    server = BackgroundServer(settings).__enter__()
    if "tests" not in {s.name for s in server.clew.catalog.sources()}:
        server.clew.catalog.create_source("tests", WRITE_KEY)
    return server


def _track(
    n: int, name: str = "Order Completed", prefix: str = "m", **extra: Any
) -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": name, "userId": "u1", "messageId": f"{prefix}{i}", **extra}
        for i in range(n)
    ]


def _send(server: BackgroundServer, events: list[dict[str, Any]]) -> None:
    r = httpx.post(server.url + "/v1/batch", json={"batch": events}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200, r.text


def _metric(server: BackgroundServer, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _dlq(data_dir: Path, name: str) -> list[dict[str, Any]]:
    out = cli.invoke(app, ["destinations", "dlq", name, "--json", "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _in_flight(data_dir: Path, name: str) -> dict[str, Any] | None:
    out = cli.invoke(
        app, ["destinations", "deliveries", name, "--json", "--data-dir", str(data_dir)]
    )
    assert out.exit_code == 0, out.output
    in_flight: dict[str, Any] | None = json.loads(out.stdout)["in_flight"]
    return in_flight


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def test_batches_are_signed_and_hold_only_the_selected_events(
    settings: Settings, receivers: list[Receiver]
) -> None:
    hook = _receiver(receivers).start()
    _destination(
        settings,
        "orders",
        hook.url,
        secret=SECRET,
        events=["Order Completed", "identify"],
        batch_size=3,
        max_batch_wait_ms=300,
    )
    server = _start(settings)
    try:
        _send(
            server,
            _track(7)
            + _track(2, "Product Viewed", prefix="v")
            + [{"type": "page", "name": "Home", "userId": "u1", "messageId": "p0"}],
        )
        wait_for(lambda: len(hook.events()) == 7, timeout_s=10)
        assert [len(r.batch) for r in hook.accepted()] == [3, 3, 1]
        assert [e["messageId"] for e in hook.events()] == [f"m{i}" for i in range(7)]
        for r in hook.accepted():
            expected = hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
            assert r.headers["x-clew-signature"] == f"sha256={expected}"
            assert r.headers["content-type"] == "application/json"
            assert json.loads(r.body)["sentAt"].endswith("Z")
        assert len({r.delivery for r in hook.accepted()}) == 3
        wait_for(
            lambda: (
                _metric(
                    server, "clew_destination_filtered_total", destination="orders", reason="event"
                )
                == 3
            )
        )
        assert (
            _metric(
                server,
                "clew_destination_deliveries_total",
                destination="orders",
                outcome="delivered",
            )
            == 3
        )
        assert (
            _metric(
                server, "clew_destination_events_total", destination="orders", outcome="delivered"
            )
            == 7
        )
        assert _metric(server, "clew_destination_outbox", destination="orders") == 0
    finally:
        server.__exit__()


def _consented(mid: str, consent: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "event": "Ad Clicked",
        "userId": "u1",
        "messageId": mid,
        **extra,
    }
    if consent is not None:
        event["context"] = {"consent": consent}
    return event


def test_consent_categories_decide_per_event_and_filtered_events_are_counted(
    settings: Settings, receivers: list[Receiver]
) -> None:
    ads, both, anyone = (_receiver(receivers).start() for _ in range(3))
    _destination(settings, "ads", ads.url, categories=["Advertising"])
    _destination(settings, "both", both.url, categories=["Advertising", "Analytics"])
    _destination(settings, "anyone", anyone.url)
    server = _start(settings)
    granted = {"categoryPreferences": {"Advertising": True, "Analytics": False}}
    revoked = {"categoryPreferences": {"Advertising": False, "Analytics": True}}
    try:
        _send(
            server,
            [
                _consented("no-consent", None),
                _consented("granted", granted),
                _consented("revoked", revoked),
                _consented("empty-prefs", {"categoryPreferences": {}}),
                _consented("off-for-ads", granted, integrations={"ads": False}),
                _consented("granted-again", granted),
            ],
        )
        wait_for(lambda: len(anyone.events()) == 6, timeout_s=10)
        wait_for(lambda: len(ads.events()) == 3 and len(both.events()) == 1, timeout_s=5)

        def ids(r: Receiver) -> list[str]:
            return [e["messageId"] for e in r.events()]

        # No consent object: sent (Segment's policy); revoked: not sent from that event on.
        assert ids(ads) == ["no-consent", "granted", "granted-again"]
        # A destination in two categories needs both granted.
        assert ids(both) == ["no-consent"]

        def filtered(dest: str, reason: str) -> float:
            return _metric(
                server, "clew_destination_filtered_total", destination=dest, reason=reason
            )

        wait_for(lambda: filtered("ads", "consent") == 2, timeout_s=5)
        assert filtered("ads", "integrations") == 1
        assert filtered("both", "consent") == 5
        assert filtered("anyone", "consent") == 0
    finally:
        server.__exit__()


def test_a_failed_attempt_is_retried_with_the_same_delivery_id_honouring_retry_after(
    settings: Settings, receivers: list[Receiver]
) -> None:
    hook = _receiver(receivers, script=[(500, {}), (429, {"Retry-After": "1"})]).start()
    _destination(settings, "flaky", hook.url, secret=SECRET)
    server = _start(settings)
    try:
        _send(server, _track(2))
        wait_for(lambda: len(hook.accepted()) == 1, timeout_s=10)
        assert [r.status for r in hook.requests] == [500, 429, 200]
        assert len({r.delivery for r in hook.requests}) == 1
        assert len({json.dumps(r.batch) for r in hook.requests}) == 1
        assert hook.requests[2].at - hook.requests[1].at >= 0.9
        assert [e["messageId"] for e in hook.events()] == ["m0", "m1"]

        def deliveries(outcome: str) -> float:
            return _metric(
                server, "clew_destination_deliveries_total", destination="flaky", outcome=outcome
            )

        assert deliveries("retried") == 2 and deliveries("delivered") == 1
    finally:
        server.__exit__()


def test_a_receiver_that_was_down_gets_everything_once_it_is_back(
    settings: Settings, receivers: list[Receiver]
) -> None:
    hook = _receiver(receivers)  # not started: connections are refused
    _destination(settings, "later", hook.url, batch_size=10)
    server = _start(settings)
    try:
        _send(server, _track(25))
        wait_for(
            lambda: (
                _metric(
                    server,
                    "clew_destination_deliveries_total",
                    destination="later",
                    outcome="retried",
                )
                >= 3
            ),
            timeout_s=10,
        )
        assert _metric(server, "clew_destination_outbox", destination="later") == 25
        hook.start()
        wait_for(lambda: len(hook.events()) == 25, timeout_s=10)
        assert [e["messageId"] for e in hook.events()] == [f"m{i}" for i in range(25)]
        assert [len(r.batch) for r in hook.accepted()] == [10, 10, 5]
        wait_for(lambda: _metric(server, "clew_destination_outbox", destination="later") == 0)
    finally:
        server.__exit__()


def test_a_refused_batch_goes_to_the_dead_letter_store_and_replay_sends_it(
    settings: Settings, receivers: list[Receiver]
) -> None:
    hook = _receiver(receivers, script=[(400, {})]).start()
    _destination(settings, "strict", hook.url)
    server = _start(settings)
    d = str(settings.data_dir)
    try:
        _send(server, _track(3))
        wait_for(lambda: len(_dlq(settings.data_dir, "strict")) == 1, timeout_s=10)
        time.sleep(0.3)
        assert len(hook.requests) == 1, "a 400 is not retried"
        (letter,) = _dlq(settings.data_dir, "strict")
        assert letter["status"] == 400 and "HTTP 400" in letter["reason"]
        assert letter["events"] == 3 and letter["delivery_id"] == hook.requests[0].delivery
        shown = cli.invoke(
            app, ["destinations", "dlq", "--show", letter["delivery_id"], "--data-dir", d]
        )
        assert [e["messageId"] for e in json.loads(shown.stdout)] == ["m0", "m1", "m2"]

        # The receiver is fixed (it answers 200 from now on); replay sends the same batch.
        out = cli.invoke(app, ["destinations", "replay", "strict", "--data-dir", d])
        assert out.exit_code == 0 and "1 dead letters (3 records)" in out.stdout
        wait_for(lambda: len(hook.accepted()) == 1, timeout_s=10)
        assert hook.accepted()[0].delivery == letter["delivery_id"]
        assert [e["messageId"] for e in hook.events()] == ["m0", "m1", "m2"]
        assert _dlq(settings.data_dir, "strict") == []
        missing = cli.invoke(app, ["destinations", "replay", "nope", "--data-dir", d])
        assert missing.exit_code == 1 and "clew destinations list" in missing.stderr
    finally:
        server.__exit__()


def test_a_hanging_receiver_delays_neither_other_destinations_nor_the_lake(
    settings: Settings, receivers: list[Receiver]
) -> None:
    slow = _receiver(receivers, hang_s=30).start()
    fast = _receiver(receivers).start()
    _destination(settings, "slow", slow.url, timeout_s=60)
    _destination(settings, "fast", fast.url)
    server = _start(settings)
    try:
        for wave in range(3):
            started = time.monotonic()
            _send(server, _track(5, prefix=f"w{wave}-"))
            wait_for(lambda w=wave: len(fast.events()) == 5 * (w + 1), timeout_s=5)
            wait_for(
                lambda w=wave: lake_count(settings.data_dir) == 5 * (w + 1),
                timeout_s=5,
            )
            assert time.monotonic() - started < 3.0
        assert len(slow.requests) == 0, "the slow receiver is still holding its first request"
        assert _metric(server, "clew_destination_outbox", destination="slow") == 15
    finally:
        slow.release()
        server.__exit__()


def test_delivery_resumes_after_a_restart_with_a_full_outbox(
    settings: Settings, receivers: list[Receiver]
) -> None:
    hook = _receiver(receivers)
    _destination(settings, "resume", hook.url, batch_size=4, retry_initial_s=0.2)
    server = _start(settings)
    try:
        _send(server, _track(10))
        wait_for(
            lambda: _metric(server, "clew_destination_outbox", destination="resume") == 10,
            timeout_s=10,
        )
        wait_for(lambda: (_in_flight(settings.data_dir, "resume") or {}).get("attempts", 0) >= 1)
    finally:
        server.__exit__()
    in_flight = _in_flight(settings.data_dir, "resume")
    assert in_flight is not None and in_flight["events"] == 4
    hook.start()
    server = _start(settings.model_copy(update={"port": free_port()}))
    try:
        wait_for(lambda: len(hook.events()) == 10, timeout_s=10)
        assert [e["messageId"] for e in hook.events()] == [f"m{i}" for i in range(10)]
        assert hook.accepted()[0].delivery == in_flight["delivery_id"]
    finally:
        server.__exit__()


def test_change_records_are_selected_by_kind_audience_and_trait(
    settings: Settings, receivers: list[Receiver]
) -> None:
    vip, traits, profiles = (_receiver(receivers).start() for _ in range(3))
    _destination(
        settings,
        "vip",
        vip.url,
        events=[],
        changes=["audience_entered", "audience_exited"],
        audiences=["vip"],
    )
    _destination(
        settings, "plan", traits.url, events=[], changes=["trait_changed"], traits=["plan"]
    )
    _destination(settings, "profiles", profiles.url, events=[], changes=["profile"])
    server = _start(settings)
    try:
        records = [
            {"kind": "audience_entered", "profile_id": "p1", "audience": "vip"},
            {"kind": "audience_entered", "profile_id": "p2", "audience": "churn-risk"},
            {"kind": "audience_exited", "profile_id": "p1", "audience": {"key": "vip"}},
            {"kind": "trait_changed", "profile_id": "p1", "trait": "plan", "value": "pro"},
            {"kind": "trait_changed", "profile_id": "p1", "trait": "city", "value": "Oslo"},
            {"kind": "volume_alert", "alert_id": "a1"},
        ]
        server.clew.log.append_sync(
            CHANGES_TOPIC,
            [Message(json.dumps(r).encode(), key=b"p1") for r in records],
        )
        # A real event: the profiles stage announces the profile it touched.
        _send(server, [{"type": "identify", "userId": "u9", "traits": {"plan": "pro"}}])
        wait_for(lambda: len(vip.events()) == 2 and len(traits.events()) == 1, timeout_s=10)
        wait_for(lambda: len(profiles.events()) >= 1, timeout_s=10)
        assert [(e["kind"], e["profile_id"]) for e in vip.events()] == [
            ("audience_entered", "p1"),
            ("audience_exited", "p1"),
        ]
        assert traits.events()[0]["trait"] == "plan"
        assert {e["kind"] for e in profiles.events()} == {"profile"}
        assert profiles.events()[0]["identities"][0]["value"] == "u9"
    finally:
        server.__exit__()
