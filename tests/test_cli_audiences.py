"""``clew audiences``: push, list, show, size and remove, with their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from clew.audiences.definitions import parse_document
from clew.audiences.status import BACKFILL_GROUP, backfill_key
from clew.cli import app
from clew.store import SQLiteProfileStore

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audiences"


def clew(data_dir: Path, *args: str) -> Result:
    return runner.invoke(app, ["audiences", *args, "--data-dir", str(data_dir)])


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    pushed = clew(d, "push", *map(str, sorted(EXAMPLES.glob("*.yaml"))))
    assert pushed.exit_code == 0, pushed.output
    return d


def test_push_says_what_changed_and_that_serve_picks_it_up(tmp_path: Path) -> None:
    d = tmp_path / "data"
    example = str(EXAMPLES / "high_value_customer.yaml")
    dry = clew(d, "push", example, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would add trait ltv_365d" in one_line(dry.stdout)
    assert "nothing was written" in dry.stdout
    assert not (d / "audiences").exists()

    first = clew(d, "push", example)
    assert first.exit_code == 0, first.output
    out = one_line(first.stdout)
    assert "added trait ltv_365d" in out and "added audience high_value_customer" in out
    assert "`clew serve` picks them up within a second" in out
    assert sorted(p.name for p in (d / "audiences").glob("*.json")) == [
        "high_value_customer.json",
        "ltv_365d.json",
    ]

    again = clew(d, "push", example)
    assert "unchanged trait ltv_365d" in one_line(again.stdout)
    assert "stored" not in again.stdout

    changed = tmp_path / "ltv.yaml"
    changed.write_text(
        "type: trait\nname: ltv_365d\nkind: sum\nevent: Order Completed\n"
        "property: revenue\nwindow: 30d\n"
    )
    assert "replaced trait ltv_365d" in one_line(clew(d, "push", str(changed)).stdout)


def test_a_bad_file_exits_2_and_stores_nothing(tmp_path: Path) -> None:
    d = tmp_path / "data"
    good = EXAMPLES / "cart_abandoner.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("audiences:\n  - name: x\n    condition: {audience: nobody}\n")
    out = clew(d, "push", str(good), str(bad))
    assert out.exit_code == 2
    assert "refers to audience 'nobody', which is not defined" in one_line(out.stderr)
    assert not list(d.glob("audiences/*.json"))

    broken = tmp_path / "broken.yaml"
    broken.write_text("audiences:\n  - name: [x\n")
    out = clew(d, "push", str(broken))
    assert out.exit_code == 2 and "broken.yaml, line" in one_line(out.stderr)
    assert clew(d, "push", str(tmp_path / "missing.yaml")).exit_code == 2


def test_push_refuses_an_audience_reading_an_undefined_trait(
    data_dir: Path, tmp_path: Path
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "type: audience\nname: big\ncondition: {computed: ltv_365, op: gte, value: 500}\n"
    )
    out = clew(data_dir, "push", str(typo))
    assert out.exit_code == 2
    assert one_line(out.stderr) == (
        "error: audience 'big' reads computed trait 'ltv_365', which is not defined (did you "
        "mean 'ltv_365d'?); push the trait first (or in the same document), or read an "
        "event's trait with 'trait:'"
    )
    assert "big" not in clew(data_dir, "list").stdout


def test_list_shows_every_definition_with_its_backfill_state(data_dir: Path) -> None:
    out = clew(data_dir, "list", "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [(r["type"], r["name"]) for r in rows] == [
        ("trait", "ltv_365d"),
        ("audience", "active_last_7_days"),
        ("audience", "cart_abandoner"),
        ("audience", "high_value_customer"),
    ]
    assert {r["backfill"] for r in rows} == {"pending"}

    table = runner.invoke(
        app, ["audiences", "list", "--data-dir", str(data_dir)], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0
    assert "sum(revenue) of 'Order Completed'" in table.stdout
    assert "did 'Product Added', then not 'Order Completed' within 1h" in table.stdout
    assert "365d" in table.stdout and rows[0]["fingerprint"] in table.stdout


def test_show_prints_yaml_with_size_and_backfill_state(data_dir: Path) -> None:
    (audience,) = [
        d
        for d in parse_document(yaml.safe_load((EXAMPLES / "high_value_customer.yaml").read_text()))
        if d.name == "high_value_customer"
    ]
    store = SQLiteProfileStore(data_dir / "profiles.db")
    for pid, members in (
        ("p1", ["high_value_customer"]),
        ("p2", []),
        ("p3", ["high_value_customer"]),
    ):
        store.touch(pid, 1)
        store.update_computed(pid, lambda c, m=members: {**c, "audiences": m})
    store.save_offsets(BACKFILL_GROUP, {backfill_key(audience): 1_700_000_000_000})
    store.close()

    out = clew(data_dir, "show", "high_value_customer")
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.stdout)
    assert shown["type"] == "audience"
    assert shown["condition"] == {"computed": "ltv_365d", "op": "gte", "value": 500}
    assert "# size: 2 profiles" in out.stdout
    assert "# backfill: done 2023-11-14T22:13:20.000Z" in out.stdout

    trait = clew(data_dir, "show", "ltv_365d")
    assert yaml.safe_load(trait.stdout)["window"] == "365d"
    assert "size" not in trait.stdout and "# backfill: pending" in trait.stdout
    missing = clew(data_dir, "show", "nope")
    assert missing.exit_code == 1 and "no trait or audience named 'nope'" in missing.stderr


def test_size_counts_members_and_refuses_what_is_not_an_audience(data_dir: Path) -> None:
    assert clew(data_dir, "size", "cart_abandoner").stdout.strip() == "0"
    store = SQLiteProfileStore(data_dir / "profiles.db")
    store.touch("p1", 1)
    store.update_computed("p1", lambda c: {**c, "audiences": ["cart_abandoner"]})
    store.close()
    out = clew(data_dir, "size", "cart_abandoner")
    assert out.exit_code == 0 and out.stdout.strip() == "1"

    unknown = clew(data_dir, "size", "nope")
    assert unknown.exit_code == 1 and "no trait or audience named 'nope'" in unknown.stderr
    trait = clew(data_dir, "size", "ltv_365d")
    assert trait.exit_code == 1 and "is a computed trait, not an audience" in trait.stderr


def test_remove_refuses_what_an_audience_uses(data_dir: Path) -> None:
    used = clew(data_dir, "remove", "ltv_365d")
    assert used.exit_code == 1
    assert "used by audience(s) 'high_value_customer'" in one_line(used.stderr)
    assert clew(data_dir, "remove", "nope").exit_code == 1

    gone = clew(data_dir, "remove", "high_value_customer")
    assert gone.exit_code == 0 and "removed high_value_customer" in gone.stdout
    assert clew(data_dir, "remove", "ltv_365d").exit_code == 0
    names = [r["name"] for r in json.loads(clew(data_dir, "list", "--json").stdout)]
    assert names == ["active_last_7_days", "cart_abandoner"]
