"""The settings layer (``clew.config``, ``clew.settings_reference``) imports no domain package,
counting imports inside functions and under ``TYPE_CHECKING`` (docs/architecture.md, "The
edges that must go", 1), and still refuses a bad value at load with the domain's message."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from clew.config import MonitorSettings, Settings
from clew.monitor.volume import MonitorPolicy, MonitorPolicyError

SRC = Path(__file__).resolve().parents[1] / "src" / "clew"
DOMAIN = {
    "audiences",
    "batch",
    "destinations",
    "dlq",
    "identity",
    "imports",
    "lake",
    "monitor",
    "privacy",
    "schema",
    "stages",
}


def _clew_imports(path: Path) -> list[tuple[str, int]]:
    """Every ``clew`` module the file imports, wherever the statement sits (relative imports
    resolved against the package of ``path``)."""
    package = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if package[-1] == "__init__":
        package.pop()
    else:
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.append((".".join([*base, *([node.module] if node.module else [])]), node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "clew"]


def test_the_settings_layer_imports_no_domain_package() -> None:
    files = [*sorted((SRC / "config").rglob("*.py")), SRC / "settings_reference.py"]
    assert len(files) > 2
    found = [
        f"{path.relative_to(SRC)}:{line} imports {name}"
        for path in files
        for name, line in _clew_imports(path)
        if name.split(".")[1:2] and name.split(".")[1] in DOMAIN
    ]
    assert found == []


def test_the_location_module_the_settings_use_imports_nothing_of_clew() -> None:
    assert _clew_imports(SRC / "_locations.py") == []


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        ({"threshold_pct": 0}, "monitor: threshold_pct must be above 0"),
        ({"min_trailing_hours": 30}, "min_trailing_hours must be between 1 and trailing_hours"),
        ({"grace_minutes": -1}, "grace must not be negative"),
    ],
)
def test_monitor_settings_a_policy_cannot_use_are_refused_at_load(
    monitor: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(monitor=monitor)  # type: ignore[arg-type]


def test_the_monitor_policy_of_the_settings_is_the_one_they_describe() -> None:
    settings = MonitorSettings(threshold_pct=25, grace_minutes=10, webhook_url="http://x.test")
    assert MonitorPolicy.from_settings(settings) == MonitorPolicy(
        threshold_pct=25, grace=timedelta(minutes=10)
    )
    assert MonitorPolicy.from_settings(MonitorSettings()) == MonitorPolicy()
    with pytest.raises(MonitorPolicyError, match="grace must not be negative"):
        MonitorPolicy(grace=timedelta(minutes=-1))


def test_a_lake_location_comes_from_the_settings_alone(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lake={"uri": "s3a://bucket/lake/"})  # type: ignore[arg-type]
    assert settings.lake_location.uri == "s3://bucket/lake"
    assert settings.cold_location.local_path("test") == tmp_path / "cold"
