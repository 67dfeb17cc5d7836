"""Work handed to a writer thread through a queue, taken in batches (used by the embedded
log's writer and the shredding log's sealer)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(
    work: queue.Queue[T | None] | queue.SimpleQueue[T | None], most: int
) -> Iterator[list[T]]:
    """Each time work arrives, everything waiting (up to ``most`` items) as one batch; ends
    after the batch that precedes ``None``, the signal to stop."""
    while True:
        first = work.get()
        if first is None:
            return
        batch = [first]
        stop = False
        while len(batch) < most:
            try:
                item = work.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        yield batch
        if stop:
            return
