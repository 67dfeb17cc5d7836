"""The stage contract: a consumer group that reads topics and commits what it finished."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from clew.log.base import Consumer, Record, TopicPartition


class Stage(ABC):
    """One processing stage. The runner calls the hooks from a single thread:

    - ``on_assign`` after joining the group and whenever the assignment changes; a stage that
      keeps its own progress (the lake sink keeps it in Delta commits) seeks here;
    - ``handle`` with each polled batch; it must commit (through ``consumer.commit``) what it
      has durably finished, possibly later, from ``tick``;
    - ``tick`` at least every poll timeout, with or without new records (timers, flushes);
    - ``settle`` only while the runner isolates a record that makes the stage fail: right
      after ``handle`` of a few records, to make them durable and committed now (a stage that
      buffers flushes), so that a failure is tied to the records just handled;
    - ``close`` on shutdown: finish or drop in-flight work; uncommitted records are
      re-delivered to the next member, so dropping is safe.

    An exception from a hook is logged by the runner, which then rebuilds the consumer and
    resumes from the last commit (or the stage's own progress, sought in ``on_assign``). So
    every stage must accept being handed again, in smaller batches, any records after that
    point without applying one twice. After a few failures in a row the runner hands the
    records over in ever smaller parts and sets aside the one that keeps failing (see
    :mod:`clew.stages.setaside`); the stage never sees it again.
    """

    group: str
    topics: tuple[str, ...]
    # Records per poll when the stage says nothing else; a raw record holds a whole request
    # (up to 2,500 events), so the validate stage asks for fewer.
    max_poll_records: int | None = None

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        return None

    @abstractmethod
    def handle(self, records: list[Record], consumer: Consumer) -> None: ...

    def tick(self, consumer: Consumer) -> None:
        return None

    def settle(self, consumer: Consumer) -> None:
        """Make everything handled so far durable and commit it; a stage whose ``handle``
        already does so keeps this default."""
        return None

    def close(self, consumer: Consumer) -> None:
        return None
