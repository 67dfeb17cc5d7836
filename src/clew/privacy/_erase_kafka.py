"""Erasing a person from the Kafka log by crypto-shredding (used by ``clew.privacy.erase``;
docs/privacy.md, "Kafka").

Kafka cannot remove one record, so the records are made unreadable instead
(``clew.log.shredding``): in each topic, every record that carries the person is shredded, a
record with a data key of its own by destroying that key (``raw``, ``dlq``), a record keyed by
one of the person's identifiers or profile ids by destroying the data key of that key, which
all their records in every topic share. The person's keys are destroyed even where no record
is left (retention dropped them), so a copy of the topics taken earlier opens no better.

What cannot be shredded alone is kept and reported as an error of the ``log`` store: a ``raw``
record not yet validated that also holds other people's events (as on the embedded log), a
time range's events (they share the person's key with events outside the range), and records
stored before encryption was turned on.

No Clew topic is compacted (they are created with Kafka's default ``cleanup.policy=delete``),
so there is no tombstone to write: a tombstone would only make a compacted topic drop older
records of the key, and every sealed record of the person is unreadable already.

Afterwards the erasure waits for the key cache of every other process to expire
(``privacy.key_cache_s``), so that when the request ends no process can still read, or seal
new records with, a destroyed key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from clew.log.base import Record
from clew.log.shredding import ShreddingLog
from clew.privacy._erase_report import StoreReport
from clew.topics import RAW_TOPIC


def erase_log(
    log: ShreddingLog,
    match_for: Callable[[str], Callable[[Record], bool]],
    person_keys: Collection[bytes],
    kept_raw: Collection[Record],
) -> StoreReport:
    """Shred the records ``match_for(topic)`` selects, then destroy the data keys of
    ``person_keys`` (empty for a time range). ``kept_raw`` is filled by the ``raw`` match with
    the mixed records it had to keep."""
    counts: dict[str, int] = {}
    keys = kept_shared = kept_clear = 0
    mine = frozenset(person_keys)
    for topic in sorted(log.topics()):
        match = match_for(topic)
        if mine and topic != RAW_TOPIC:
            match = _or_keyed(match, mine)
        outcome = log.shred_where(topic, match)
        counts[topic] = outcome.removed
        keys += outcome.keys
        kept_shared += outcome.kept_shared
        kept_clear += outcome.kept_clear
    unseen = log.shred_keys(mine) if mine else 0
    waited = log.keys.settle()
    detail = (
        f"{keys + unseen} data key(s) destroyed ({unseen} more of the person's identifiers and "
        f"profile ids with no record left); records made unreadable: "
        + ", ".join(f"{t} {n}" for t, n in counts.items())
        + f"; their ciphertext stays in Kafka until retention; waited {waited:.1f} s for "
        "other processes' key caches"
    )
    errors = []
    if kept_raw:
        errors.append(
            f"{len(kept_raw)} raw record(s) not yet validated also hold other people's events, "
            "so they were kept; run the request again once the validate stage has caught up"
        )
    if kept_shared:
        errors.append(
            f"{kept_shared} record(s) share the person's data key with records that are not "
            "to be erased (a time range), so they stay readable until retention drops them"
        )
    if kept_clear:
        errors.append(
            f"{kept_clear} record(s) were stored before encryption was on and cannot be made "
            "unreadable; they stay until retention drops them"
        )
    return StoreReport("log", keys + unseen, detail, "; ".join(errors) or None)


def _or_keyed(match: Callable[[Record], bool], keys: frozenset[bytes]) -> Callable[[Record], bool]:
    """``match``, or keyed by one of ``keys`` (so all records under a person's key match)."""
    return lambda rec: rec.key in keys or match(rec)
