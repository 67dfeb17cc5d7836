"""Tracking plans load from files with errors that name the file, push atomically, and the
CI check explains every breaking change."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clew.schema import (
    Compatibility,
    Enforcement,
    IncompatibleSchemaError,
    PlanError,
    PlanFileError,
    PlanSchemaError,
    PlanSyntaxError,
    SchemaRegistry,
    load_plan,
    push,
    render_check,
    render_push,
)
from clew.schema.plan import check, compare

EXAMPLE = Path(__file__).parents[2] / "examples" / "tracking-plan"
ORDER = "track:Order Completed"


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "plan"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SchemaRegistry]:
    reg = SchemaRegistry(tmp_path / "registry.db")
    yield reg
    reg.close()


def test_example_plan_loads(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    assert plan.source == "default"
    assert plan.enforcement is Enforcement.BLOCK_VIOLATIONS
    assert plan.compatibility is Compatibility.BACKWARD
    assert list(plan.subjects)[:3] == ["context", "identify", "page"]
    assert {
        "track:Product Viewed",
        "track:Product Added",
        "track:Cart Viewed",
        "track:Checkout Started",
        ORDER,
    } <= set(plan.subjects)
    order = plan.subjects[ORDER]
    assert order.path == plan_dir / "events" / "order_completed.yaml"
    # Shared definitions are copied in, so each published version stands alone.
    assert set(order.schema["$defs"]) == {"currency", "money", "product"}
    assert order.schema["required"] == ["order_id", "revenue", "currency", "products"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("file", "text", "error", "match"),
    [
        ("events/broken.yaml", "event: Broken\nschema: {type: object\n", PlanSyntaxError, "line"),
        ("events/broken.json", '{"event": "Broken",', PlanSyntaxError, "not valid JSON"),
        (
            "events/broken.yaml",
            "event: Broken\nschema: {type: objekt}\n",
            PlanSchemaError,
            "not a valid JSON Schema",
        ),
        (
            "events/broken.yaml",
            "event: Broken\nschema: {properties: {p: {$ref: '#/$defs/nope'}}}\n",
            PlanSchemaError,
            "no definition",
        ),
        ("events/broken.yaml", "schema: {type: object}\n", PlanFileError, "needs `event:`"),
        (
            "events/broken.yaml",
            "event: Broken\ntype: object\n",
            PlanFileError,
            "put the JSON Schema under `schema:`",
        ),
        (
            "events/broken.yaml",
            "event: Broken\nschema: {type: string, default: 2024-01-01}\n",
            PlanSyntaxError,
            "YAML date",
        ),
        (
            "events/order_completed_copy.yaml",
            "event: Order Completed\nschema: {}\n",
            PlanFileError,
            "again",
        ),
        ("identity.yaml", "schema: {}\n", PlanFileError, "not a plan file"),
        ("plan.yaml", "source: web\nmode: strict\n", PlanFileError, "block_violations"),
        ("plan.yaml", "mode: allow\n", PlanFileError, "`source:`"),
        (
            "identify.yaml",
            "schema: {type: object}\ncompatibility: sometimes\n",
            PlanFileError,
            "FULL_TRANSITIVE",
        ),
    ],
)
def test_errors_name_the_file(
    plan_dir: Path, file: str, text: str, error: type[PlanFileError], match: str
) -> None:
    path = write(plan_dir / file, text)
    with pytest.raises(error, match=match) as raised:
        load_plan(plan_dir)
    assert raised.value.path == path
    assert str(path) in str(raised.value)


def test_a_directory_without_plan_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"no plan\.yaml"):
        load_plan(tmp_path)
    with pytest.raises(PlanError, match="not a directory"):
        load_plan(tmp_path / "missing")


def test_json_files_work_like_yaml(tmp_path: Path) -> None:
    write(tmp_path / "plan.json", '{"source": "api", "mode": "allow"}')
    write(
        tmp_path / "events" / "signed_up.json",
        '{"event": "Signed Up", "schema": {"type": "object"}}',
    )
    plan = load_plan(tmp_path)
    assert list(plan.subjects) == ["track:Signed Up"]


def test_push_publishes_then_is_a_no_op(plan_dir: Path, registry: SchemaRegistry) -> None:
    plan = load_plan(plan_dir)
    first = push(registry, plan)
    assert all(p.created for p in first.published)
    assert first.settings.enforcement is Enforcement.BLOCK_VIOLATIONS
    again = push(registry, plan)
    assert not again.changed
    assert not any(p.created for p in again.published)
    assert "unchanged" in render_push(again)
    assert "created" in render_push(first)


def test_check_explains_each_breaking_change(plan_dir: Path, registry: SchemaRegistry) -> None:
    push(registry, load_plan(plan_dir))
    order_file = plan_dir / "events" / "order_completed.yaml"
    text = order_file.read_text()
    text = text.replace("required: [order_id, revenue, currency, products]", "required: [order_id]")
    text = text.replace("    coupon: {type: string}\n", "")
    order_file.write_text(text)
    # Compatible in BACKWARD mode (required -> optional), but not FORWARD: make it FULL.
    order_file.write_text(
        text.replace("event: Order Completed", "event: Order Completed\ncompatibility: FULL")
    )
    plan = load_plan(plan_dir)
    problems = check(registry, plan)
    assert [(s, c.path, c.kind.value, c.breaks.value) for s, c in problems] == [
        (ORDER, "properties.coupon", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", "BACKWARD"),
        (ORDER, "required.revenue", "PROPERTY_MADE_OPTIONAL", "FORWARD"),
        (ORDER, "required.currency", "PROPERTY_MADE_OPTIONAL", "FORWARD"),
        (ORDER, "required.products", "PROPERTY_MADE_OPTIONAL", "FORWARD"),
    ]
    text = render_check(problems, source=plan.source)
    assert "4 breaking change(s) in 1 subject(s)" in text
    assert "x required.revenue: PROPERTY_MADE_OPTIONAL (breaks FORWARD, against version 1)" in text
    assert "'revenue' is no longer required" in text
    with pytest.raises(IncompatibleSchemaError):
        push(registry, plan)
    assert registry.get("default", ORDER).version == 1


def test_check_of_a_compatible_plan_is_empty(plan_dir: Path, registry: SchemaRegistry) -> None:
    push(registry, load_plan(plan_dir))
    write(
        plan_dir / "events" / "order_refunded.yaml",
        "event: Order Refunded\nschema: {type: object, properties: {order_id: {type: string}}}\n",
    )
    plan = load_plan(plan_dir)
    assert check(registry, plan) == []
    assert "is compatible" in render_check([], source=plan.source)


def test_removing_a_file_retires_its_subject(plan_dir: Path, registry: SchemaRegistry) -> None:
    push(registry, load_plan(plan_dir))
    (plan_dir / "events" / "cta_clicked.yaml").unlink()
    result = push(registry, load_plan(plan_dir))
    assert result.retired == ("track:CTA Clicked",)
    assert "track:CTA Clicked" not in registry.latest_versions("default")


def test_compare_two_checkouts_without_a_registry(plan_dir: Path) -> None:
    before = load_plan(plan_dir)
    order_file = plan_dir / "events" / "order_completed.yaml"
    text = order_file.read_text().replace("currency, products]", "currency, products, checkout_id]")
    order_file.write_text(text)
    after = load_plan(plan_dir)
    assert after.modes()[ORDER] is Compatibility.BACKWARD
    assert [(s, c.path, c.kind.value) for s, c in compare(before, after)] == [
        (ORDER, "required.checkout_id", "PROPERTY_MADE_REQUIRED")
    ]
    assert compare(after, after) == []
