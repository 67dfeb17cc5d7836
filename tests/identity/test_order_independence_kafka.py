"""One person, one profile with one id, whatever the order of arrival: on a real Kafka broker
and a real Redis.

The property of ``test_order_independence`` (its shoppers, its schedules, its reference
model), with the log a real Kafka broker instead of an in-test stand-in: each example's events
are appended to the ``events`` topic in arrival order, keyed as the validate stage keys them,
and one to three profiles workers (the real ``ProfilesStage``, each with its own log handle
and its own handle on one Redis serving store) read them as members of the ``profiles``
group, in random batch sizes and interleavings, while Kafka moves partitions between them.
Workers die before the serving store commits a batch, or after it and before the log
commits; a new worker then joins the group and resumes from the group's committed offsets.
Once the group has committed every record, the speed layer must equal ``clew rebuild`` and
the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from _kafka import KafkaBroker, kafka_session
from clew.backends import open_log, open_store
from clew.config import LogSettings, Settings, StoreSettings
from clew.events import Event
from clew.log.base import Consumer, Log, LogError, Message, Record, TopicPartition
from clew.stages.profiles import ProfilesStage
from clew.topics import EVENTS_TOPIC, TOPICS
from identity.test_order_independence import (
    Crash,
    Schedule,
    Worker,
    assert_speed_layer_equals_rebuild_equals_model,
    histories,
    schedules,
)

kafka = pytest.importorskip(
    "confluent_kafka", reason="the Kafka log needs pip install 'clew[kafka]'"
)
kafka_admin = pytest.importorskip("confluent_kafka.admin")
pytest.importorskip("redis", reason="the Redis serving store needs pip install 'clew[redis]'")

pytestmark = pytest.mark.slow

GROUP = ProfilesStage.group
# A worker with no partitions waits this long in each poll; short, so that the schedule's
# steps for such a worker cost little.
POLL_S = 0.1
# The longest a step polls a process that owns records not yet committed.
STEP_S = 5.0
# Bounds for the broker, the workers and the test sharing two loaded cores.
DRAIN_S = 120.0
FORGET_S = 60.0
# Members hear of a rebalance in their next heartbeat: a short interval keeps the joins of
# an example (workers starting, dying and starting again) short. A member closed in the
# middle of a rebalance is sometimes not seen to leave: the group keeps it until its session
# times out (the broker's minimum here, not 45 s), and the next example waits for that.
CONSUMER: dict[str, str | int | float | bool] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
}


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    yield from kafka_session(tmp_path_factory)


def example_settings(
    broker: KafkaBroker, redis_url: str, data_dir: Path, partitions: int
) -> Settings:
    """Kafka with ``partitions`` per topic, and this example's own keys on the Redis server
    (serving store and the log's data keys)."""
    return Settings(
        data_dir=data_dir,
        log=LogSettings(
            backend="kafka",
            bootstrap_servers=broker.bootstrap,
            partitions=partitions,
            replication_factor=1,
            kafka_consumer=CONSUMER,
        ),
        store=StoreSettings(backend="redis", redis_url=redis_url, redis_prefix=data_dir.name),
    )


def forget_earlier_examples(broker: KafkaBroker) -> None:
    """Clew's topic names are fixed and a topic's partition count cannot change, so each
    example starts on a broker without Clew's topics and without the group's offsets."""
    client = kafka_admin.AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    present = [t for t in TOPICS if t in client.list_topics(timeout=10).topics]
    if present:
        for done in client.delete_topics(present, operation_timeout=30).values():
            done.result()
    deadline = time.monotonic() + FORGET_S
    while True:
        # The members of the last example have left, but the coordinator may not have
        # seen every one leave yet.
        try:
            client.delete_consumer_groups([GROUP], request_timeout=30)[GROUP].result()
            break
        except kafka.KafkaException as exc:
            if exc.args[0].code() == kafka.KafkaError.GROUP_ID_NOT_FOUND:
                break
            if exc.args[0].code() != kafka.KafkaError.NON_EMPTY_GROUP:
                raise
        assert time.monotonic() < deadline, "the last example's members never left the group"
        time.sleep(0.1)
    while set(TOPICS) & set(client.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "the broker did not delete the topics"
        time.sleep(0.1)


def append_in_arrival_order(log: Log, arrival: Sequence[Mapping[str, Any]]) -> None:
    """As the validate stage writes them: normalised events keyed by ``Event.identity_key``."""
    events = [msgspec.convert(e, Event) for e in arrival]
    log.append_sync(EVENTS_TOPIC, [Message(msgspec.json.encode(e), e.identity_key) for e in events])


class Member(Consumer):
    """A worker's member of the ``profiles`` group, which can die after the serving store
    committed a batch and before the log commits it."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner
        self.crash_on_commit = False

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        return self.inner.poll(max_records, timeout_s)

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        if self.crash_on_commit:
            raise Crash("died after the store committed, before the log did")
        self.inner.commit(offsets, produce)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return self.inner.assignment()

    def close(self) -> None:
        self.inner.close()


class Process:
    """One profiles worker process: its log handle, its store handle, its stage and its
    member of the group, driven as ``clew.stages.runner`` drives a stage."""

    def __init__(self, settings_: Settings) -> None:
        self.log = open_log(settings_)
        self.worker = Worker(open_store(settings_))
        self.stage = ProfilesStage(self.worker.store)
        self.member: Member | None = None
        self.assignment: list[TopicPartition] = []

    def join(self) -> None:
        self.member = Member(self.log.consumer(GROUP, list(ProfilesStage.topics)))
        self.assignment = self.member.assignment()
        self.stage.on_assign(self.member, self.assignment)

    def serve(self) -> None:
        """Takes part in a rebalance, as a running process does between its polls."""
        if self.member is not None:
            self.member.assignment()

    def poll(self, size: int) -> list[Record]:
        assert self.member is not None
        records = self.member.poll(size, POLL_S)
        # A rebalance happens inside a poll: the stage hears of it before it handles more.
        current = self.member.assignment()
        if current != self.assignment:
            self.assignment = current
            self.stage.on_assign(self.member, current)
        # Even with the assignment as it was: a partition gained while serving the group
        # (another worker joining) and lost again leaves records this process does not own.
        owned = set(current)
        return [r for r in records if (r.topic, r.partition) in owned]

    def step(self, size: int, fate: str, behind: Callable[[list[TopicPartition]], bool]) -> str:
        """Handles the next batch, up to ``size`` records, of the partitions this process
        owns, if ``behind`` says the group has not committed all of theirs: "ok", "died", or
        "refused" when the log refused the commit (the member lost a partition meanwhile)."""
        assert self.member is not None
        deadline = time.monotonic() + STEP_S
        # Fetching from Kafka takes a while: keep polling while there is something to read.
        while not (records := self.poll(size)) and behind(self.assignment):
            if time.monotonic() > deadline:
                break
        if not records:
            return "ok"
        self.worker.crash_in_write_back = fate == "crash"
        self.member.crash_on_commit = fate == "crash-after"
        try:
            self.stage.handle(records, self.member)
        except Crash:
            return "died"
        except LogError as exc:
            note(f"commit refused: {exc}")
            return "refused"
        return "ok"

    def leave(self) -> None:
        """Leaves the group with nothing more committed."""
        if self.member is not None:
            self.member.close()
            self.member = None

    def close(self) -> None:
        try:
            self.leave()
        finally:
            self.worker.store.close()
            self.log.close()


class Workers:
    """The profiles workers of one deployment, run side by side."""

    def __init__(self, settings_: Settings, log: Log, count: int) -> None:
        self.settings = settings_
        self.log = log
        self.processes: list[Process] = []
        self.crashes = self.refusals = 0
        for _ in range(count):
            self.processes.append(self._joined(Process(settings_)))

    def _joined(self, process: Process) -> Process:
        """``process`` once it has joined the group. A rebalance waits for every member, so
        the others keep serving the group meanwhile, as processes running side by side do."""
        others = [p for p in self.processes if p is not process]
        with ThreadPoolExecutor(1) as pool:
            joining = pool.submit(process.join)
            while not wait([joining], timeout=0.05).done:
                for other in others:
                    other.serve()
            joining.result()
        return process

    def behind(self, partitions: list[TopicPartition]) -> bool:
        """Whether the group has records of ``partitions`` it has not committed."""
        lag = self.log.lag(GROUP, EVENTS_TOPIC)
        return any(lag.end[p] > lag.committed.get(p, 0) for _, p in partitions)

    def step(self, w: int, size: int, fate: str) -> None:
        process = self.processes[w]
        outcome = process.step(size, fate, self.behind)
        if outcome == "died":
            # A new process joins and resumes from the group's committed offsets.
            self.crashes += 1
            process.close()
            self.processes[w] = Process(self.settings)
            self._joined(self.processes[w])
        elif outcome == "refused":
            # As the runner does: leave, join again, resume from the last commit.
            self.refusals += 1
            process.leave()
            self._joined(process)

    def close(self) -> None:
        for process in self.processes:
            process.close()


def run_speed_layer_on_kafka(
    settings_: Settings, arrival: Sequence[Mapping[str, Any]], plan: Schedule
) -> None:
    log = open_log(settings_)
    try:
        append_in_arrival_order(log, arrival)
        workers = Workers(settings_, log, plan.workers)
        try:
            for w, size, fate in plan.steps:
                workers.step(w, size, fate)
            deadline = time.monotonic() + DRAIN_S
            while log.lag(GROUP, EVENTS_TOPIC).total:
                assert time.monotonic() < deadline, "the group never committed every record"
                for w in range(plan.workers):
                    workers.step(w, plan.drain_batch, "ok")
            note(f"{workers.crashes} crashes, {workers.refusals} refused commits")
        finally:
            workers.close()
    finally:
        log.close()


# Each example costs seconds of group joins and rebalances: a fixed set of examples, and no
# shrinking (it takes minutes on a broker); a failing example is reported as drawn.
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(events=histories(), plan=schedules(), data=st.data())
def test_speed_layer_on_kafka_equals_rebuild_equals_model_in_any_order(
    kafka_broker: KafkaBroker,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    events: list[dict[str, Any]],
    plan: Schedule,
    data: st.DataObject,
) -> None:
    forget_earlier_examples(kafka_broker)
    data_dir = tmp_path_factory.mktemp("clew")
    settings_ = example_settings(kafka_broker, redis_url, data_dir, plan.partitions)
    arrival = data.draw(st.permutations(events), label="arrival order")
    run_speed_layer_on_kafka(settings_, arrival, plan)
    assert_speed_layer_equals_rebuild_equals_model(settings_, events)
