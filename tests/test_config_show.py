"""`clew config show` tells what is in effect and where it came from, secrets masked; every
setting has a description, and docs/configuration.md is the one the models generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clew.cli import app
from clew.settings_reference import keys, models, render_docs

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert missing == [], "give these settings a Field(description=...)"


def test_docs_configuration_is_generated_from_the_models() -> None:
    assert DOCS.read_text() == render_docs(), (
        "docs/configuration.md is out of date: run `clew config docs > docs/configuration.md`"
    )
    for key in keys():
        assert f"`{key.env}`" in DOCS.read_text()


def test_show_says_where_each_value_came_from_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "clew.toml"
    config.write_text('[lake]\nflush_rows = 100\n[privacy]\nsalt = "hunter2"\n')
    monkeypatch.setenv("CLEW_STORE__REDIS_URL", "redis://:swordfish@cache:6379/0")
    monkeypatch.setenv("CLEW_PORT", "9000")
    out = runner.invoke(
        app, ["config", "show", "--config", str(config), "--data-dir", str(tmp_path)]
    )
    assert out.exit_code == 0, out.stderr
    lines = {line.split(" = ")[0]: line for line in out.stdout.splitlines()}
    assert lines["lake.flush_rows"].startswith("lake.flush_rows = 100 ")
    assert lines["lake.flush_rows"].endswith(f"# config file {config}")
    assert lines["port"].endswith("# environment CLEW_PORT")
    assert lines["data_dir"].endswith("# option --data-dir")
    assert lines["lake.flush_interval_ms"].endswith("# default")
    assert "hunter2" not in out.stdout and "swordfish" not in out.stdout
    assert '"redis://:**********@cache:6379/0"' in lines["store.redis_url"]
    assert lines["privacy.salt"].startswith('privacy.salt = "**********"')
    assert set(lines) == {key.dotted for key in keys()}


def test_show_as_json(tmp_path: Path) -> None:
    out = runner.invoke(app, ["config", "show", "--json", "--data-dir", str(tmp_path)])
    doc = json.loads(out.stdout)
    assert doc["lake.flush_rows"] == {"value": 20_000, "from": "default"}
    assert doc["data_dir"] == {"value": str(tmp_path), "from": "option --data-dir"}


def test_show_refuses_an_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text("[lake]\nflush_row = 100\n")
    out = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert out.exit_code == 2
    assert "did you mean 'flush_rows'?" in out.stderr
