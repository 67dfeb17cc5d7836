"""The destinations stage (group ``destinations``, topics ``events`` and ``changes``): routes
each record to the outbox of every destination whose filters, ``integrations`` object and
consent allow it (:mod:`clew.destinations.routing`), and counts, per destination, every
record it did not send and why.

Delivery happens off this thread: a :class:`~clew.destinations.Sender` per destination works
through that destination's outbox, so a slow or failing receiver never holds up this stage,
ingestion or the other destinations.

Exactly-once into the outbox, at-least-once to the receiver: the records of a polled batch,
the filtered counts and the log offsets after the batch are written in one outbox transaction,
and ``on_assign`` seeks to the stored offsets, so a crash anywhere neither skips a record nor
enqueues it twice. The log commit that follows (after every record is durably in the outbox of
each destination it is for) keeps the consumer lag figures right. A receiver may still see a
batch twice (an answer lost in a crash); the ``X-Clew-Delivery`` id tells it so.

Destinations are read from where the settings keep them (:class:`Destinations`: the data
directory's ``destinations/``, or the Redis every machine shares); added, changed or removed
destinations take effect within about a second. One that stops parsing keeps its last good
configuration (the problem is logged), so a typo never silently stops a destination; while
the shared store cannot be reached, the stage keeps routing to the destinations it last
read (it refuses to start without having read them once). A destination gets the
records appended to the log (by their append time) after the stage first saw it, even when the
stage is behind or its group is new: adding a destination never replays the log's history.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from clew._errors import ServiceUnavailableError
from clew.destinations.config import (
    DestinationConfig,
    DestinationDirectory,
    Destinations,
    destinations_dir,
    outbox_path,
)
from clew.destinations.outbox import Outbox
from clew.destinations.routing import Item, Route, read_change, read_event
from clew.destinations.sender import POLL_S, Sender
from clew.log.base import Consumer, Record, TopicPartition
from clew.stages.base import Stage
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

if TYPE_CHECKING:
    # Imported where a request is made (see Sender._run in clew.destinations.sender).
    import httpx

logger = logging.getLogger(__name__)

_RELOAD_S = 0.5
_SHUTDOWN_WAIT_S = 2.0


class DestinationsStage(Stage):
    group = "destinations"
    topics = (EVENTS_TOPIC, CHANGES_TOPIC)

    def __init__(
        self,
        data_dir: Path,
        *,
        destinations: Destinations | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        poll_s: float = POLL_S,
        block_private_networks: bool = False,
    ) -> None:
        """``data_dir`` holds the outbox; ``destinations`` (closed with the stage) says where
        the destinations are read, ``data_dir``'s ``destinations/`` when left out."""
        self._block_private_networks = block_private_networks
        if destinations is None:
            destinations = DestinationDirectory(destinations_dir(data_dir))
        self._dir = destinations
        self._outbox_path = outbox_path(data_dir)
        self._outbox = Outbox(self._outbox_path)
        self._clock = clock
        self._transport = transport
        self._poll_s = poll_s
        self._routes: list[Route] = []
        self._configs: dict[str, DestinationConfig] = {}
        self._problems: dict[str, str] = {}
        self._senders: dict[str, Sender] = {}
        self._signature: Hashable = None
        self._unreachable: str | None = None
        self._checked = 0.0
        self._closed = False
        self.counts: Counter[str] = Counter()
        # Senders start now, so a restart resumes delivering the outbox before any new record.
        self._reload()

    @property
    def destinations(self) -> list[str]:
        return [r.name for r in self._routes]

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        stored = self._outbox.stored_offsets()
        for tp in assignment:
            if tp in stored:
                consumer.seek(tp[0], tp[1], stored[tp])

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        self._maybe_reload()
        routes = self._routes
        items: dict[str, list[bytes]] = defaultdict(list)
        counts: Counter[tuple[str, str]] = Counter()
        offsets: dict[TopicPartition, int] = {}
        for rec in records:
            offsets[(rec.topic, rec.partition)] = rec.offset + 1
            if not routes:
                continue
            item = self._read(rec)
            if item is None:
                continue
            for route in routes:
                if rec.timestamp_ms < route.since_ms:
                    continue
                reason = route.reject_reason(item)
                if reason is None:
                    items[route.name].append(rec.value)
                else:
                    counts[(route.name, "filtered:" + reason)] += 1
        limits = {r.name: r.config.max_outbox_events for r in routes}
        now_ms = int(self._clock() * 1000)
        spilled = self._outbox.enqueue(items, offsets, counts, limits, now_ms)
        for name, n in spilled.items():
            logger.warning(
                "destination %s: outbox full; %d records went to its dead-letter store "
                "(`clew destinations replay %s` once it keeps up)",
                name,
                n,
                name,
            )
        for name in items:
            self._senders[name].wake()
        consumer.commit(offsets)

    def tick(self, consumer: Consumer) -> None:
        self._maybe_reload()

    def shutdown(self) -> None:
        """Stop the senders (an attempt in flight gets a moment to finish and be recorded;
        otherwise it is sent again after the restart, with the same delivery id) and close
        the outbox."""
        if self._closed:
            return
        self._closed = True
        for sender in self._senders.values():
            sender.stop()
        deadline = time.monotonic() + _SHUTDOWN_WAIT_S
        for sender in self._senders.values():
            sender.join(max(0.0, deadline - time.monotonic()))
        self._outbox.close()
        self._dir.close()

    def _read(self, rec: Record) -> Item | None:
        try:
            if rec.topic == EVENTS_TOPIC:
                return read_event(rec.value)
            return read_change(rec.value)
        except msgspec.DecodeError as exc:
            logger.error(
                "skipping undecodable record at %s/%d@%d: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                exc,
            )
            self.counts["undecodable"] += 1
            return None

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._checked < _RELOAD_S:
            return
        try:
            self._reload()
        except ServiceUnavailableError as exc:
            self._checked = time.monotonic()
            if self._unreachable is None:
                logger.warning(
                    "destinations: %s; routing to the %d destinations read last",
                    exc,
                    len(self._routes),
                )
            self._unreachable = str(exc)
            return
        if self._unreachable is not None:
            logger.info("destinations: reading them again")
            self._unreachable = None

    def _reload(self) -> None:
        self._checked = time.monotonic()
        signature = self._dir.version()
        if signature == self._signature:
            return
        found, problems = self._dir.load()
        self._signature = signature
        names = {c.name for c in found.values()}
        for path, problem in problems.items():
            if self._problems.get(path) != problem:
                logger.error("destinations: %s", problem)
            kept = self._configs.get(path)
            if kept is not None and kept.name not in names:
                logger.error("destinations: keeping the last good configuration of %s", kept.name)
                found[path] = kept
                names.add(kept.name)
        self._problems = problems
        self._configs = found
        self._apply({c.name: c for c in found.values()})

    def _apply(self, wanted: dict[str, DestinationConfig]) -> None:
        for name in [n for n in self._senders if n not in wanted]:
            self._senders.pop(name).stop()
            dropped = self._outbox.purge(name)
            logger.info(
                "destination %s removed (%d records dropped from its outbox)", name, dropped
            )
        for name, config in wanted.items():
            sender = self._senders.get(name)
            if sender is None:
                sender = Sender(
                    config,
                    self._outbox_path,
                    poll_s=self._poll_s,
                    transport=self._transport,
                    clock=self._clock,
                    block_private_networks=self._block_private_networks,
                )
                self._senders[name] = sender
                sender.start()
                logger.info("destination %s: sending to %s", name, config.url)
            elif sender.config != config:
                sender.update(config)
                logger.info("destination %s: configuration changed", name)
        since = self._outbox.since(wanted, int(self._clock() * 1000))
        self._routes = [Route(c, since[n]) for n, c in sorted(wanted.items())]
