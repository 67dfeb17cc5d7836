"""Destination configuration files and `clew destinations add|list|remove`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clew.cli import app
from clew.destinations import (
    DestinationConfig,
    DestinationConfigError,
    DestinationDirectory,
    SecretUnavailableError,
    parse_destination,
)

cli = CliRunner()


def test_settings_are_checked_with_messages_that_name_the_fix() -> None:
    with pytest.raises(DestinationConfigError, match=r"url: .*http:// or https://"):
        parse_destination({"name": "x", "url": "ftp://h/"}, "x.yaml")
    with pytest.raises(DestinationConfigError, match="either secret or secret_env"):
        parse_destination({"name": "x", "url": "http://h/", "secret": "a", "secret_env": "B"}, "x")
    with pytest.raises(DestinationConfigError, match=r"changes\.0: Input should be 'profile'"):
        parse_destination({"name": "x", "url": "http://h/", "changes": ["audience"]}, "x")
    with pytest.raises(DestinationConfigError, match=r"name: .*letters, digits"):
        parse_destination({"name": "../etc", "url": "http://h/"}, "x")
    with pytest.raises(DestinationConfigError, match="batch_siz: Extra inputs"):
        parse_destination({"name": "x", "url": "http://h/", "batch_siz": 5}, "x")


def test_a_secret_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DestinationConfig(name="x", url="http://h/", secret_env="HOOK_KEY")
    monkeypatch.delenv("HOOK_KEY", raising=False)
    with pytest.raises(SecretUnavailableError, match=r"set it in the environment"):
        config.signing_key()
    monkeypatch.setenv("HOOK_KEY", "k1")
    assert config.signing_key() == b"k1"
    assert DestinationConfig(name="x", url="http://h/").signing_key() is None


def test_files_round_trip_and_bad_files_are_reported(tmp_path: Path) -> None:
    directory = DestinationDirectory(tmp_path)
    config = DestinationConfig(
        name="crm", url="https://h/x", secret="s", categories=["Advertising"]
    )
    path = Path(directory.save(config))
    assert path == tmp_path / "crm.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold a secret
    (tmp_path / "other.json").write_text(json.dumps({"url": "http://h/o", "batch_size": 5}))
    (tmp_path / "broken.yaml").write_text("url: [")
    found, problems = directory.load()
    assert sorted(c.name for c in found.values()) == ["crm", "other"]
    assert directory.get("crm") == config
    assert directory.get("other").batch_size == 5  # the name defaults to the file name
    (problem,) = problems.values()
    assert "broken.yaml" in problem and "cannot read" in problem


def test_cli_add_list_remove(tmp_path: Path, cli_store: str) -> None:
    d = str(tmp_path)
    out = cli.invoke(
        app,
        [
            "destinations",
            "add",
            "ads",
            "--url",
            "http://127.0.0.1:9/hook",
            "--category",
            "Advertising",
            "--event",
            "Order Completed",
            "--change",
            "audience_entered",
            "--audience",
            "vip",
            "--secret-env",
            "ADS_KEY",
            "--data-dir",
            d,
        ],
    )
    assert out.exit_code == 0, out.output
    again = cli.invoke(app, ["destinations", "add", "ads", "--url", "http://h/", "--data-dir", d])
    assert again.exit_code == 2 and "--replace" in again.stderr
    bad = cli.invoke(
        app, ["destinations", "add", "b", "--url", "http://h/", "--change", "x", "--data-dir", d]
    )
    assert bad.exit_code == 2 and "changes.0" in bad.stderr
    listed = json.loads(cli.invoke(app, ["destinations", "list", "--json", "--data-dir", d]).stdout)
    (ads,) = listed["destinations"]
    assert ads["categories"] == ["Advertising"] and ads["changes"] == ["audience_entered"]
    assert ads["secret"] == "$ADS_KEY" and ads["outbox"] == 0
    assert ads["active_since"] is None  # no server has picked it up
    table = cli.invoke(app, ["destinations", "list", "--data-dir", d]).stdout
    assert "ads" in table
    # The embedded store keeps today's file; the shared one keeps nothing on this machine.
    assert (tmp_path / "destinations" / "ads.yaml").exists() == (cli_store == "sqlite")
    removed = cli.invoke(app, ["destinations", "remove", "ads", "--data-dir", d])
    assert removed.exit_code == 0 and "dropped" in removed.stdout
    gone = cli.invoke(app, ["destinations", "remove", "ads", "--data-dir", d])
    assert gone.exit_code == 1 and "clew destinations list" in gone.stderr


def test_the_documented_example_is_a_valid_destination(tmp_path: Path, cli_store: str) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "destinations.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "crm.yaml").write_text(example)
    d = str(tmp_path / "data")
    out = cli.invoke(
        app,
        [
            "destinations",
            "add",
            "crm",
            "--file",
            str(tmp_path / "crm.yaml"),
            "--batch-size",
            "50",
            "--data-dir",
            d,
        ],
    )
    assert out.exit_code == 0, out.output
    listed = json.loads(cli.invoke(app, ["destinations", "list", "--json", "--data-dir", d]).stdout)
    (crm,) = listed["destinations"]
    assert crm["batch_size"] == 50 and crm["audiences"] == ["vip", "churn-risk"]
    assert crm["events"] == ["Order Completed", "identify"] and crm["secret"] == "$CRM_HOOK_SECRET"
