"""`clew import profiles` against a running Clew (docs/import.md).

Ada browses anonymously on her phone and her laptop, buys once on the laptop, signs up there
with her email, logs in on the phone and buys again. Then the CRM export arrives: her row
has another email, a misspelt first name and a loyalty id, but her date of birth, postcode
and address; it must join her profile. The other rows are other people, two rows are
probably one person (a review), and two rows carry the placeholder loyalty id ``0``, which
a web customer also typed in, and must not be merged through it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from _support import WRITE_KEY, make_settings, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.imports.importer import (
    ImportFileError,
    InvalidSourceError,
    import_profiles,
    pending_reviews,
)
from clew.lake.query import Lake
from clew.store import Profile, SQLiteProfileStore
from clew.topics import EVENTS_TOPIC

runner = CliRunner()

HEADER = "id,first_name,last_name,email,phone,date_of_birth,postcode,address,city,loyalty_id,tier"
ROWS = [
    "C-1,Adda,Lovelace,ada.work@analytical.test,,1985-12-10,NW1 6XE,12 Baker Street,London,"
    "L-1001,gold",
    "C-2,Charles,Babbage,charles@engines.test,,1971-12-26,SW1A 1AA,1 Difference Lane,London,"
    "L-2002,",
    "C-3,Grace,Hopper,grace@navy.test,,1966-12-09,BS1 4DJ,7 Cobol Road,Bristol,L-3003,silver",
    "C-4,Alan,Turing,alan@bletchley.test,,,,,Manchester,0,",
    "C-5,Katherine,Johnson,kj@nasa.test,,1968-08-26,LS1 4AP,5 Orbit Street,Leeds,L-5005,",
    "C-6,Katherine,Johnson,,,,,,Leeds,,",
    "C-7,Joan,Clarke,joan@bletchley.test,,,,,Manchester,0,",
    "C-8,Mary,Somerville,mary@science.test,,31.12.1980,,,,,",
    "C-9,Ada,Byron,ada@byron.test,,,,,,,,extra",
    # One person twice in the export: the later row is linked to the earlier one.
    "C-10,Hedy,Lamarr,hedy@film.test,,1914-11-09,W1 2AA,3 Frequency Road,London,L-1010,",
    "C-11,Hedy,Lamar,hedy.l@film.test,,1914-11-09,W1 2AA,3 Frequency Rd,London,,",
]


def csv_text(rows: list[str]) -> str:
    return "\ufeff" + "\r\n".join([HEADER, *rows]) + "\r\n"


def event(kind: str, mid: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": mid, "timestamp": ts, **fields}


ADA = {
    "email": "ada@lovelace.test",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "date_of_birth": "1985-12-10",
    "postcode": "NW1 6XE",
    "address": "12 Baker Street",
}
STORY = [
    event("page", "s1", "2026-03-01T09:00:00Z", anonymousId="phone-anon", name="Home"),
    event("page", "s2", "2026-03-01T09:30:00Z", anonymousId="laptop-anon", name="Home"),
    event(
        "track",
        "s3",
        "2026-03-01T09:40:00Z",
        anonymousId="laptop-anon",
        event="Order Completed",
        properties={"revenue": 30.0},
    ),
    # Signing up creates her account: from then on her user id identifies her.
    event(
        "identify",
        "s4",
        "2026-03-01T10:00:00Z",
        anonymousId="laptop-anon",
        userId="u-ada",
        traits=ADA,
    ),
    event("identify", "s5", "2026-03-02T08:00:00Z", anonymousId="phone-anon", userId="u-ada"),
    event(
        "track",
        "s6",
        "2026-03-02T08:05:00Z",
        userId="u-ada",
        event="Order Completed",
        properties={"revenue": 120.5},
    ),
    # Another web customer, who typed the placeholder 0 as loyalty id.
    event(
        "identify",
        "s7",
        "2026-03-02T09:00:00Z",
        userId="u-dennis",
        traits={
            "first_name": "Dennis",
            "last_name": "Turing",
            "city": "Manchester",
            "loyalty_id": "0",
        },
    ),
]


@dataclass
class Story:
    server: BackgroundServer
    settings: Settings
    csv: Path
    report: dict[str, Any]

    def cli(self, *args: str) -> Result:
        return runner.invoke(
            app, [*args, "--data-dir", str(self.settings.data_dir)], env={"COLUMNS": "200"}
        )

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def settle(self) -> None:
        wait_for(self.server.clew.drained, timeout_s=30)

    def profile(self, id_type: str, value: str) -> Profile | None:
        store = SQLiteProfileStore(self.settings.profiles_path)
        try:
            pid = store.lookup(id_type, value)
            return store.get(pid) if pid is not None else None
        finally:
            store.close()

    def pid(self, id_type: str, value: str) -> str:
        profile = self.profile(id_type, value)
        assert profile is not None, f"no profile holds {id_type}:{value}"
        return profile.profile_id


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("import")
    settings = make_settings(tmp / "data")
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("tests", WRITE_KEY)
        response = httpx.post(
            f"{server.url}/v1/batch", json={"batch": STORY}, auth=(WRITE_KEY, ""), timeout=10
        )
        assert response.status_code == 200, response.text
        wait_for(server.clew.drained, timeout_s=30)
        path = tmp / "crm.csv"
        path.write_text(csv_text(ROWS), encoding="utf-8")
        s = Story(server, server.settings, path, {})
        s.report = s.cli_json("import", "profiles", str(path), "--source", "crm")
        s.settle()
        yield s


def test_report_counts_merges_reviews_and_bad_rows(story: Story) -> None:
    r = story.report
    assert (r["rows_read"], r["imported"], r["unchanged"]) == (11, 9, 0)
    assert [(p["line"], p["row_id"]) for p in r["invalid"]] == [(9, "C-8"), (10, "C-9")]
    assert "date_of_birth '31.12.1980'" in r["invalid"][0]["reason"]
    assert "12 cells but the header names 11 columns" in r["invalid"][1]["reason"]
    merge, twin = r["merges"]
    assert (twin["record_id"], twin["other_kind"], twin["link"]) == (
        "C-11",
        "record",
        "crm_id:C-10",
    )
    assert (merge["record_id"], merge["other_kind"], merge["link"]) == (
        "C-1",
        "profile",
        "user_id:u-ada",
    )
    assert merge["probability"] >= 0.99
    [review] = r["reviews"]
    assert (review["record_id"], review["other_kind"], review["other_id"]) == (
        "C-5",
        "record",
        "C-6",
    )
    assert 0.8 <= review["probability"] < 0.99


def test_crm_row_joins_the_person_reachable_by_every_identifier(story: Story) -> None:
    ada = story.pid("user_id", "u-ada")
    for id_type, value in [
        ("anonymous_id", "phone-anon"),
        ("anonymous_id", "laptop-anon"),
        ("email", "ada@lovelace.test"),
        ("email", "ada.work@analytical.test"),
        ("loyalty_id", "L-1001"),
        ("crm_id", "C-1"),
    ]:
        assert story.pid(id_type, value) == ada, f"{id_type}:{value}"
    assert story.report["merges"][0]["record_id"] == "C-1"
    profile = story.profile("crm_id", "C-1")
    assert profile is not None
    assert profile.computed["total_lifetime_value"] == pytest.approx(150.5)
    assert profile.computed["orders_count"] == 2
    assert profile.traits["tier"] == "gold"  # an unknown column is a trait
    loyalty = next(e for e in profile.identities if e.id_type == "loyalty_id")
    assert loyalty.provenance.source_id == "crm"
    assert loyalty.provenance.match_weight == pytest.approx(
        story.report["merges"][0]["match_weight"]
    )
    deterministic = next(e for e in profile.identities if e.id_type == "user_id")
    assert deterministic.provenance.match_weight is None

    token = story.server.clew.catalog.create_token("support")
    got = httpx.get(
        f"{story.server.url}/v1/profiles/loyalty_id:L-1001",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["profile_id"] == ada
    assert body["computed_traits"]["total_lifetime_value"] == pytest.approx(150.5)
    weights = {i["type"]: i["match_weight"] for i in body["identities"]}
    assert weights["loyalty_id"] is not None and weights["crm_id"] is not None
    assert weights["user_id"] is None

    lake = Lake(story.settings.lake_path)
    query = "SELECT match_weight FROM identities WHERE id_type = 'loyalty_id' AND value = 'L-1001'"
    wait_for(lambda: lake.sql(query).rows == [(loyalty.provenance.match_weight,)], timeout_s=20)


def test_unrelated_rows_are_profiles_of_their_own(story: Story) -> None:
    ada = story.pid("user_id", "u-ada")
    charles, grace = story.pid("crm_id", "C-2"), story.pid("crm_id", "C-3")
    assert len({ada, charles, grace}) == 3
    assert story.pid("loyalty_id", "L-2002") == charles
    assert story.pid("email", "grace@navy.test") == grace
    assert story.profile("crm_id", "C-8") is None  # invalid rows are not imported
    assert story.profile("crm_id", "C-9") is None


def test_rows_of_one_person_in_the_file_become_one_profile(story: Story) -> None:
    hedy = story.pid("crm_id", "C-10")
    assert story.pid("crm_id", "C-11") == hedy
    assert story.pid("email", "hedy.l@film.test") == hedy
    assert hedy != story.pid("user_id", "u-ada")


def test_placeholder_loyalty_id_merges_nothing(story: Story) -> None:
    alan, joan = story.pid("crm_id", "C-4"), story.pid("crm_id", "C-7")
    dennis = story.pid("user_id", "u-dennis")
    assert len({alan, joan, dennis}) == 3
    assert story.profile("loyalty_id", "0") is None


def test_review_is_listed_and_confirming_it_merges(story: Story) -> None:
    [pending] = story.cli_json("import", "reviews", "--source", "crm")
    assert (pending["record_id"], pending["other_id"]) == ("C-5", "C-6")
    assert pending["record"]["email"] == "kj@nasa.test"
    assert pending["other"] == {
        "id": "C-6",
        "first_name": "Katherine",
        "last_name": "Johnson",
        "city": "Leeds",
    }
    assert story.pid("crm_id", "C-5") != story.pid("crm_id", "C-6")

    listed = story.cli("import", "reviews")
    assert listed.exit_code == 0 and "crm_id:C-5" in listed.stdout

    confirmed = story.cli("import", "confirm", str(pending["review_id"]))
    assert confirmed.exit_code == 0, confirmed.output
    story.settle()
    merged = story.profile("crm_id", "C-6")
    assert merged is not None and merged.profile_id == story.pid("crm_id", "C-5")
    assert any(
        r.provenance.match_weight == pytest.approx(pending["match_weight"]) for r in merged.merged
    )
    assert story.cli_json("import", "reviews") == []

    again = story.cli("import", "confirm", str(pending["review_id"]))
    assert again.exit_code == 1 and "confirmed already" in again.stderr
    unknown = story.cli("import", "reject", "999")
    assert unknown.exit_code == 1 and "clew import reviews" in unknown.stderr


def test_reimport_skips_unchanged_rows_and_imports_changed_ones(story: Story) -> None:
    log = story.server.clew.log
    before = log.end_offsets(EVENTS_TOPIC)
    same = story.cli_json("import", "profiles", str(story.csv), "--source", "crm")
    assert (same["imported"], same["unchanged"], len(same["invalid"])) == (0, 9, 2)
    assert same["merges"] == [] and same["reviews"] == []
    assert log.end_offsets(EVENTS_TOPIC) == before

    moved = [row.replace("1 Difference Lane,London", "1 Difference Lane,Cambridge") for row in ROWS]
    story.csv.with_name("crm-2.csv").write_text(csv_text(moved), encoding="utf-8")
    changed = story.cli_json(
        "import", "profiles", str(story.csv.with_name("crm-2.csv")), "--source", "crm"
    )
    assert (changed["imported"], changed["unchanged"]) == (1, 8)
    assert changed["merges"] == []  # not matched to the profile it already is
    story.settle()
    charles = story.profile("crm_id", "C-2")
    assert charles is not None and charles.traits["city"] == "Cambridge"


# -- files that cannot be imported -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"first_name,email\nAda,ada@x.test\n", "line 1: no `id` column"),
        (b"id;first_name;email\n1;Ada;a@x.test\n", "separated by something else"),
        (b"id,first_name\n1,Ada\n2,Bob\n1,Cy\n", "lines 2 and 4: both rows have id '1'"),
        (b"id,first_name\n1,Ada\n,Bob\n", "line 3: the id cell is empty"),
        (b"id,first_name,first_name\n1,Ada,A\n", "columns 2 and 3 are both named 'first_name'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not CSV text in UTF-8"),
        (b"id,name\n1,\x00\n", "NUL bytes"),
        (b"", "the first line must be a header"),
    ],
    ids=["no-id", "semicolons", "duplicate", "empty-id", "repeated-column", "png", "nul", "empty"],
)
def test_bad_file_is_refused_with_where_and_what_to_fix(
    tmp_path: Path, content: bytes, message: str
) -> None:
    settings = make_settings(tmp_path / "data")
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=re.escape(message)):
        import_profiles(settings, path, "crm")
    assert not (settings.data_dir / "imports.db").exists()


def test_bad_file_and_source_fail_the_command(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("first_name\nAda\n", encoding="utf-8")
    args = ["import", "profiles", str(path), "--data-dir", str(tmp_path / "data")]
    result = runner.invoke(app, [*args, "--source", "crm"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "no `id` column" in result.stderr
    result = runner.invoke(app, [*args, "--source", "crm", "--review-threshold", "0.995"])
    assert result.exit_code == 2 and "review <= merge" in result.stderr
    with pytest.raises(InvalidSourceError, match="user_id identifiers, a type Clew already uses"):
        import_profiles(make_settings(tmp_path / "data"), path, "user")


def test_dry_run_reports_and_writes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    path = tmp_path / "crm.csv"
    path.write_text(csv_text(ROWS), encoding="utf-8")
    report = import_profiles(settings, path, "crm", dry_run=True)
    assert (report.rows_read, report.imported, len(report.invalid)) == (11, 9, 2)
    assert [(r.record_id, r.other_id, r.review_id) for r in report.reviews] == [("C-5", "C-6", 0)]
    assert not settings.data_dir.exists() or not any(settings.data_dir.iterdir())


def test_a_pair_a_shared_identifier_joins_is_never_queued_for_review(
    server: BackgroundServer,
) -> None:
    """C-1 shares only Ada's email: the matcher alone would rate it a probable match (a
    review), but the email joins it to her profile anyway. C-2 and C-3 share only an email
    within the file. Neither pair is linked or reviewed, and each ends up as one profile."""
    response = httpx.post(
        f"{server.url}/v1/batch", json={"batch": STORY}, auth=(WRITE_KEY, ""), timeout=10
    )
    assert response.status_code == 200, response.text
    wait_for(server.clew.drained, timeout_s=30)
    settings = server.settings
    path = settings.data_dir.parent / "crm.csv"
    path.write_text(
        csv_text(
            [
                "C-1,,,Ada@Lovelace.test,,,,,,,",
                "C-2,Grace,Hopper,grace@navy.test,,1966-12-09,BS1 4DJ,7 Cobol Road,Bristol,,",
                "C-3,,,grace@navy.test,,,,,,,",
            ]
        ),
        encoding="utf-8",
    )
    report = import_profiles(settings, path, "crm")
    assert (report.imported, report.merges, report.reviews) == (3, [], [])
    assert pending_reviews(settings) == []
    wait_for(server.clew.drained, timeout_s=30)
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        assert store.lookup("crm_id", "C-1") == store.lookup("user_id", "u-ada") is not None
        assert store.lookup("crm_id", "C-3") == store.lookup("crm_id", "C-2") is not None
    finally:
        store.close()
