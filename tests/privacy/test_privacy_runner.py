"""The request runner with stand-ins for erasure and verification: what each request type
does to the suppression list, which status it ends with, retries, and an audit record (and
privacy.db) without personal data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import wait_for
from clew.config import Settings
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.privacy.runner import PrivacyRunner
from clew.store.memory import MemoryProfileStore

from ._fakes import FakeOperations, Trace

EMAIL = ("email", "ada.lovelace@analytical.test")
USER = ("user_id", "ada-1815")
PHONE_DEVICE = ("anonymous_id", "device-phone-77")
LAPTOP = ("anonymous_id", "device-laptop-78")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", privacy={"poll_interval_s": 0.05})


@pytest.fixture
def log(settings: Settings) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(settings.log_path)
    log.create_topic(TopicSpec("raw", 2))
    yield log
    log.close()


@pytest.fixture
def ops() -> FakeOperations:
    fake = FakeOperations()
    fake.person(EMAIL, USER, PHONE_DEVICE, LAPTOP)
    return fake


@pytest.fixture
def runner(settings: Settings, log: EmbeddedLog, ops: FakeOperations) -> Iterator[PrivacyRunner]:
    r = PrivacyRunner(
        settings, log=log, store=MemoryProfileStore(), settle_s=None, operations=ops.operations()
    )
    yield r
    r.close()


def suppressed(runner: PrivacyRunner, ident: tuple[str, str]) -> bool:
    from clew.privacy._salt import identifier_hash, load_salt

    salt = load_salt(runner._settings)
    return runner.suppressions.contains(identifier_hash(salt, *ident))


def privacy_bytes(settings: Settings) -> bytes:
    files = settings.privacy_path.parent.glob(settings.privacy_path.name + "*")
    return b"".join(p.read_bytes() for p in files)


def test_suppress_covers_every_identifier_of_the_profile_and_unsuppress_lifts_them(
    runner: PrivacyRunner,
) -> None:
    req = runner.requests.create(
        "suppress", "email:Ada.Lovelace@analytical.test", requested_by="cli"
    )
    assert runner.run_pending() == 1
    done = runner.requests.get(req.id)
    assert done is not None and done.status == "finished"
    assert all(suppressed(runner, i) for i in (EMAIL, USER, PHONE_DEVICE, LAPTOP))
    assert done.audit is not None
    assert done.audit["subject"]["identifiers"] == {"anonymous_id": 2, "email": 1, "user_id": 1}
    assert done.audit["suppression"] == {"added": 4, "temporary": False}

    # Unsuppressing by another of the person's identifiers lifts all four.
    lift = runner.requests.create("unsuppress", "anonymous_id:device-laptop-78", requested_by="cli")
    assert runner.run(lift.id).status == "finished"
    assert not any(suppressed(runner, i) for i in (EMAIL, USER, PHONE_DEVICE, LAPTOP))


def test_suppress_with_delete_keeps_the_suppression_and_ends_finished_when_verify_is_clean(
    runner: PrivacyRunner, ops: FakeOperations
) -> None:
    seen: list[bool] = []
    ops.on_erase = lambda subject: seen.append(suppressed(runner, PHONE_DEVICE))
    req = runner.requests.create(
        "suppress_with_delete", "user_id:ada-1815", requested_by="token:ops"
    )
    done = runner.run(req.id)
    assert done.status == "finished"
    assert seen == [True], "identifiers are suppressed while erasure runs"
    assert suppressed(runner, EMAIL)
    assert ops.erased[0]["since_ms"] is None and ops.erased[0]["until_ms"] is None
    audit = done.audit
    assert audit is not None
    assert audit["requested_by"] == "token:ops" and audit["status"] == "finished"
    assert audit["erasure"]["stores"][0] == {
        "store": "log",
        "removed": 3,
        "detail": "",
        "error": None,
    }
    assert audit["verify"] == {"clean": True, "checked": ["log", "lake", "serving"], "traces": []}


def test_delete_suppresses_only_while_it_runs(runner: PrivacyRunner, ops: FakeOperations) -> None:
    seen: list[bool] = []
    ops.on_erase = lambda subject: seen.append(suppressed(runner, EMAIL))
    done = runner.run(
        runner.requests.create(
            "delete", "email:ada.lovelace@analytical.test", requested_by="cli"
        ).id
    )
    assert done.status == "finished" and seen == [True]
    assert not suppressed(runner, EMAIL)
    assert done.audit is not None
    assert done.audit["suppression"] == {"added": 4, "temporary": True, "lifted": 4}


def test_delete_does_not_lift_a_suppression_the_person_already_had(runner: PrivacyRunner) -> None:
    runner.run(runner.requests.create("suppress", "user_id:ada-1815", requested_by="cli").id)
    done = runner.run(runner.requests.create("delete", "user_id:ada-1815", requested_by="cli").id)
    assert done.status == "finished"
    assert suppressed(runner, USER) and suppressed(runner, EMAIL)


def test_a_time_range_deletion_keeps_the_profile_and_is_not_verified(
    runner: PrivacyRunner, ops: FakeOperations
) -> None:
    req = runner.requests.create(
        "delete",
        "user_id:ada-1815",
        requested_by="cli",
        since="2024-01-01",
        until="2024-02-01T00:00:00+01:00",
    )
    done = runner.run(req.id)
    assert done.status == "finished"
    assert ops.erased[0]["since_ms"] == 1_704_067_200_000
    assert ops.erased[0]["until_ms"] == 1_706_742_000_000
    assert ops.verified == [] and "suppression" not in (done.audit or {})
    assert (done.audit or {})["time_range"] == {
        "since": "2024-01-01T00:00:00.000Z",
        "until": "2024-01-31T23:00:00.000Z",
    }


def test_a_store_error_or_a_remaining_trace_ends_partial_and_says_where_without_the_identifier(
    runner: PrivacyRunner, ops: FakeOperations, settings: Settings
) -> None:
    ops.erase_error = "cannot vacuum table for ada.lovelace@analytical.test"
    ops.erase_detail = "removed events of user ada-1815 in 2 partitions"
    ops.traces = [Trace("dlq", "dlq partition 1 offset 7 (anonymous_id device-phone-77)")]
    done = runner.run(
        runner.requests.create(
            "suppress_with_delete", "email:ada.lovelace@analytical.test", requested_by="cli"
        ).id
    )
    assert done.status == "partial"
    audit = done.audit
    assert audit is not None
    assert audit["remaining"] == [
        "lake: erasure failed: cannot vacuum table for <redacted>",
        "dlq: dlq partition 1 offset 7 (anonymous_id <redacted>)",
    ]
    assert (
        audit["erasure"]["stores"][0]["detail"]
        == "removed events of user <redacted> in 2 partitions"
    )
    text = json.dumps(audit)
    for _, value in (EMAIL, USER, PHONE_DEVICE, LAPTOP):
        assert value not in text
    raw = privacy_bytes(settings)
    for _, value in (EMAIL, USER, PHONE_DEVICE, LAPTOP):
        assert value.encode() not in raw


def test_an_exception_is_retried_then_the_request_fails_without_personal_data(
    runner: PrivacyRunner, ops: FakeOperations, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setattr("clew.privacy.runner.RETRY_DELAYS_S", (0.01, 0.01))
    ops.raises = 1
    done = runner.run(runner.requests.create("delete", "user_id:ada-1815", requested_by="cli").id)
    assert done.status == "finished" and done.attempts == 2

    ops.raises = 5
    failed = runner.run(
        runner.requests.create("suppress_with_delete", "user_id:ada-1815", requested_by="cli").id
    )
    assert failed.status == "failed" and failed.attempts == 3 and failed.value is None
    assert failed.audit is not None
    assert failed.audit["error"].startswith("RuntimeError: lake unavailable while deleting")
    assert "ada-1815" not in json.dumps(failed.audit)
    # The suppression asked for stays; the deletion can be asked for again.
    assert suppressed(runner, USER)
    runner.requests.checkpoint()
    assert b"ada-1815" not in privacy_bytes(settings)


def test_a_retry_erases_every_identifier_recorded_before_the_profile_graph_went(
    runner: PrivacyRunner, ops: FakeOperations, settings: Settings
) -> None:
    request = runner.requests.create("delete", "user_id:ada-1815", requested_by="cli")
    ops.raises = 1
    assert runner.run_pending() == 1
    waiting = runner.requests.get(request.id)
    assert waiting is not None and waiting.status == "received"
    assert waiting.subject is not None and set(waiting.subject.identifiers) == {
        EMAIL,
        USER,
        PHONE_DEVICE,
        LAPTOP,
    }
    ops.subjects.clear()  # the first attempt had deleted the profile graph

    done = runner.run(request.id)

    assert done.status == "finished" and done.attempts == 2
    assert set(ops.erased[0]["subject"].identifiers) == {EMAIL, USER, PHONE_DEVICE, LAPTOP}
    assert set(ops.verified[0].identifiers) == {EMAIL, USER, PHONE_DEVICE, LAPTOP}
    assert done.subject is None
    raw = privacy_bytes(settings)
    for _, value in (EMAIL, USER, PHONE_DEVICE, LAPTOP):
        assert value.encode() not in raw


class _Crash(BaseException):
    """The process dies in the middle of an erasure."""


def test_a_request_resumed_after_a_restart_erases_the_recorded_identifiers(
    settings: Settings, log: EmbeddedLog, runner: PrivacyRunner, ops: FakeOperations
) -> None:
    def crash(subject: object) -> None:
        raise _Crash

    ops.on_erase = crash
    request = runner.requests.create(
        "delete", "email:ada.lovelace@analytical.test", requested_by="cli"
    )
    with pytest.raises(_Crash):
        runner.run_pending()
    ops.on_erase = None
    ops.subjects.clear()
    ops.erased.clear()

    restarted = PrivacyRunner(
        settings, log=log, store=MemoryProfileStore(), settle_s=None, operations=ops.operations()
    )
    try:
        assert restarted.requests.requeue_running() == 1
        done = restarted.run(request.id)
    finally:
        restarted.close()
    assert done.status == "finished" and done.attempts == 2
    assert set(ops.erased[0]["subject"].identifiers) == {EMAIL, USER, PHONE_DEVICE, LAPTOP}


def test_a_person_without_a_profile_is_suppressed_by_the_identifier_alone(
    runner: PrivacyRunner,
) -> None:
    done = runner.run(runner.requests.create("suppress", "user_id:stranger", requested_by="cli").id)
    assert done.status == "finished"
    assert done.audit is not None and done.audit["subject"]["profiles"] == 0
    assert suppressed(runner, ("user_id", "stranger"))


def test_the_thread_runs_requests_as_they_arrive(runner: PrivacyRunner) -> None:
    runner.start()
    try:
        req = runner.requests.create("suppress", "user_id:ada-1815", requested_by="cli")
        runner.wake()
        wait_for(lambda: runner.requests.get(req.id).status == "finished", 5)  # type: ignore[union-attr]
    finally:
        runner.stop()


def test_erasure_waits_for_stages_to_process_what_was_in_flight(
    settings: Settings, log: EmbeddedLog, ops: FakeOperations
) -> None:
    log.append_sync("raw", [Message(value=b"{}", key=b"k")])
    runner = PrivacyRunner(
        settings,
        log=log,
        store=MemoryProfileStore(),
        settle_s=0.8,
        stage_topics={"validate": ("raw",)},
        operations=ops.operations(),
    )
    try:
        done = runner.run(
            runner.requests.create("delete", "user_id:ada-1815", requested_by="cli").id
        )
        assert done.status == "finished"
        assert (done.audit or {})["in_flight"]["settled"] is False  # nothing consumed "raw"

        consumer = log.consumer("validate", ["raw"])
        while consumer.poll(10, 0.1):
            consumer.commit()
        consumer.close()
        done = runner.run(
            runner.requests.create("delete", "user_id:ada-1815", requested_by="cli").id
        )
        assert (done.audit or {})["in_flight"]["settled"] is True
    finally:
        runner.close()


def test_a_request_left_running_by_a_crash_is_resumed(runner: PrivacyRunner) -> None:
    req = runner.requests.create("suppress", "user_id:ada-1815", requested_by="cli")
    assert runner.requests.claim() is not None
    runner.start()
    try:
        wait_for(lambda: runner.requests.get(req.id).status == "finished", 5)  # type: ignore[union-attr]
    finally:
        runner.stop()


def test_stopping_while_waiting_for_the_stages_puts_the_request_back_in_the_queue(
    settings: Settings, log: EmbeddedLog, ops: FakeOperations
) -> None:
    log.append_sync("raw", [Message(value=b"{}", key=b"k")])
    runner = PrivacyRunner(
        settings,
        log=log,
        store=MemoryProfileStore(),
        settle_s=30,
        stage_topics={"validate": ("raw",)},
        operations=ops.operations(),
    )
    req = runner.requests.create("suppress_with_delete", "user_id:ada-1815", requested_by="cli")
    runner.start()
    wait_for(lambda: runner.requests.get(req.id).status == "running", 5)  # type: ignore[union-attr]
    runner.stop()
    assert ops.erased == []
    reopened = PrivacyRunner(settings, log=log, store=MemoryProfileStore(), settle_s=None)
    try:
        again = reopened.requests.get(req.id)
        assert again is not None and again.status == "received" and again.value == "ada-1815"
    finally:
        reopened.close()


def test_a_suppression_that_cannot_be_lifted_runs_the_request_again_never_stays_running(
    runner: PrivacyRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("clew.privacy.runner.RETRY_DELAYS_S", (0.01, 0.01))
    lift = runner.suppressions.lift_request
    calls: list[str] = []

    def flaky(request_id: str) -> int:
        calls.append(request_id)
        if len(calls) == 1:
            raise OSError("the suppression list is unreachable")
        return lift(request_id)

    monkeypatch.setattr(runner.suppressions, "lift_request", flaky)
    req = runner.requests.create("delete", "user_id:ada-1815", requested_by="cli")
    assert runner.run_pending() >= 1
    done = runner.run(req.id)
    assert done.status == "finished" and len(calls) == 2
    assert not suppressed(runner, EMAIL), "the temporary suppression was lifted in the end"
    assert done.audit is not None and done.audit["attempts"] == 2
