"""Timers and the outbox of the in-memory serving store (used by ``clew.store.memory``):
functions over the store's dicts, called under the store's lock."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping


def set_timers(timers: dict[str, int], due: Mapping[str, int | None]) -> None:
    for pid, ms in due.items():
        if ms is None:
            timers.pop(pid, None)
        else:
            timers[pid] = ms


def due(timers: Mapping[str, int], now_ms: int, limit: int) -> list[tuple[str, int]]:
    ready = ((ms, pid) for pid, ms in timers.items() if ms <= now_ms)
    return [(pid, ms) for ms, pid in heapq.nsmallest(max(limit, 0), ready)]


def put(
    outbox: dict[str, dict[int, bytes]], seqs: dict[str, int], group: str, payload: bytes
) -> int:
    seq = seqs[group] = seqs.get(group, 0) + 1
    outbox.setdefault(group, {})[seq] = bytes(payload)
    return seq


def pending(
    outbox: Mapping[str, dict[int, bytes]], group: str, limit: int
) -> list[tuple[int, bytes]]:
    # Payloads are added in sequence order, and dicts keep that order.
    return list(itertools.islice(outbox.get(group, {}).items(), max(limit, 0)))


def ack(outbox: Mapping[str, dict[int, bytes]], group: str, seq: int) -> None:
    payloads = outbox.get(group, {})
    for done in [n for n in payloads if n <= seq]:
        del payloads[done]
