"""The texts `clew schema diff|check` and `clew plan push` print."""

from __future__ import annotations

from pathlib import Path

from clew.schema import (
    Compatibility,
    SchemaRegistry,
    SubjectUpdate,
    render_check,
    render_diff,
    render_push,
)
from clew.schema.changes import Change, ChangeKind, Direction

ORDER = "track:Order Completed"


def test_diff_shows_the_json_and_the_breaking_changes(tmp_path: Path) -> None:
    with SchemaRegistry(tmp_path / "registry.db") as reg:
        reg.publish("web", ORDER, {"type": "object", "properties": {"price": {"type": "integer"}}})
        reg.publish("web", ORDER, {"type": "object", "properties": {"price": {"type": "number"}}})
        text = render_diff(reg.get("web", ORDER, 1), reg.get("web", ORDER, 2))
        same = render_diff(reg.get("web", ORDER, 1), reg.get("web", ORDER, 1))
    assert "--- track:Order Completed version 1 (1-0-0)" in text
    assert "+++ track:Order Completed version 2 (1-0-1)" in text
    assert '-      "type": "integer"' in text and '+      "type": "number"' in text
    assert "x properties.price: TYPE_WIDENED (breaks FORWARD)" in text
    assert "identical" in same


def test_check_report_groups_changes_by_subject_with_modes() -> None:
    change = Change(
        "required.revenue",
        ChangeKind.PROPERTY_MADE_REQUIRED,
        "'revenue' became required: old events without 'revenue' fail the new one",
        Direction.BACKWARD,
        against=3,
    )
    text = render_check(
        [(ORDER, change), ("identify", change)],
        source="web",
        modes={ORDER: Compatibility.FULL, "identify": Compatibility.BACKWARD},
    )
    assert text.startswith("The tracking plan of source 'web' has 2 breaking change(s) in 2")
    assert "track:Order Completed  (compatibility FULL)" in text
    assert (
        "  x required.revenue: PROPERTY_MADE_REQUIRED (breaks BACKWARD, against version 3)" in text
    )
    assert all(len(line) <= 100 for line in text.splitlines())


def test_push_report_names_each_version(tmp_path: Path) -> None:
    with SchemaRegistry(tmp_path / "registry.db") as reg:
        reg.publish("web", ORDER, {"type": "object"}, compatibility=Compatibility.NONE)
        result = reg.publish_all("web", [])
        assert "Nothing to push" in render_push(result)
        update = SubjectUpdate(ORDER, {"type": "array"}, Compatibility.NONE)
        result = reg.publish_all("web", [update])
    text = render_push(result)
    assert "created    track:Order Completed  2-0-0 (version 2, MODEL)" in text
    assert "note: (root): TYPE_CHANGED breaks BACKWARD, allowed" in text
