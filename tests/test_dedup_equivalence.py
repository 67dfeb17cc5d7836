"""``DedupIndex.claim`` takes a shortcut when a batch repeats no message id; this property
holds it to the loop it replaced, kept below as the reference: the same duplicates and the
same stored claims for any sequence of batches."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from clew._sqlite import transaction
from clew.dedup import _CHUNK, DedupIndex


class ReferenceDedupIndex(DedupIndex):
    """DedupIndex with its claim as it was before the shortcut."""

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]:
        first: dict[str, str] = {}
        dupes: set[int] = set()
        for idx, (mid, origin) in enumerate(items):
            if first.setdefault(mid, origin) != origin:
                dupes.add(idx)
        rows = sorted((mid, origin, now_ms) for mid, origin in first.items())
        with self._lock, transaction(self._conn) as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO dedup VALUES (?, ?, ?) ON CONFLICT (message_id) DO NOTHING", rows
            )
            if conn.total_changes - before == len(rows):
                return dupes
            owners: dict[str, str] = {}
            ids = [mid for mid, _, _ in rows]
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                owners.update(
                    conn.execute(
                        f"SELECT message_id, origin FROM dedup WHERE message_id IN ({marks})",
                        chunk,
                    ).fetchall()
                )
        return {idx for idx, (mid, origin) in enumerate(items) if owners[mid] != origin}


def _claims(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT message_id, origin, seen_at FROM dedup ORDER BY 1").fetchall()
    finally:
        conn.close()


_items = st.lists(
    st.tuples(
        st.sampled_from(["s/m1", "s/m2", "s/m3", "t/m1", "s/é"]),
        st.sampled_from(["0:1:0", "0:1:1", "1:5:0"]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(_items, max_size=5))
def test_claims_match_the_reference(batches: list[list[tuple[str, str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ours = DedupIndex(Path(tmp) / "ours.db")
        reference = ReferenceDedupIndex(Path(tmp) / "reference.db")
        try:
            for now_ms, items in enumerate(batches):
                assert ours.claim(items, now_ms) == reference.claim(items, now_ms)
        finally:
            ours.close()
            reference.close()
        assert _claims(Path(tmp) / "ours.db") == _claims(Path(tmp) / "reference.db")
