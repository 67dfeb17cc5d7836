"""Verifying the Kafka log after crypto-shredding (used by ``clew.privacy.verify``).

Every retained record of every topic is read as Kafka stores it and checked twice: its stored
bytes (key, value, header names and values) must not contain one of the person's identifiers
in clear, and, if its data key is still live (looked up in the key store, not in a cache), the
decrypted record must not be the person's (the same test as the erasure).
"""

from __future__ import annotations

from collections.abc import Callable

from clew.log.base import Record
from clew.log.shredding import ShreddingLog
from clew.privacy._erase_match import Matcher
from clew.privacy._verify_bytes import Needles, find
from clew.topics import RAW_TOPIC


def _bytes(rec: Record) -> bytes:
    parts = [rec.key or b"", rec.value]
    for name, value in rec.headers:
        parts += [name.encode(), value]
    return b"\x00".join(parts)


def verify_log(
    log: ShreddingLog, matcher: Matcher, needles: Needles, trace: Callable[[str, str], None]
) -> str:
    """Report each trace through ``trace(store, where)``; returns what was checked."""
    total = shredded = clear = 0
    topics = log.topics()
    for topic in sorted(topics):
        for batch in log.stored_records(topic):
            for stored, env, plain in log.opened(batch, fresh=True):
                total += 1
                where = f"topic {topic}, partition {stored.partition}, offset {stored.offset}"
                if env is None:
                    clear += 1
                if needles and find(_bytes(stored), needles) is not None:
                    trace("log", f"{where}: an identifier in clear")
                    continue
                if plain is None:
                    shredded += 1
                    continue
                hit = matcher.raw(plain)[0] > 0 if topic == RAW_TOPIC else matcher.record(plain)
                if not hit and needles and env is not None:
                    hit = find(_bytes(plain), needles) is not None
                if hit:
                    trace("log", f"{where}: readable with a live data key")
    return (
        f"log (Kafka, sealed): {total} record(s) in {len(topics)} topic(s), {shredded} "
        f"shredded, {clear} stored unencrypted; stored bytes searched for identifiers in clear, "
        "readable records decrypted and matched"
    )
