"""The example deploy files in deploy/ stay true (docs/operations.md): the compose file has
the services it promises, the systemd units parse, every `clew` command line in them is one
the CLI accepts, no secret is written inline (environment files are referenced instead), the
example settings load, and every metric the Prometheus alert rules name is in the /metrics of
a running `clew serve`, each rule pointing at a section of the runbook."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
import yaml
from typer._click.exceptions import ClickException

from clew.background import BackgroundServer
from clew.cli import app
from clew.config import load_settings
from clew.topics import STAGE_NAMES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ALERTS = DEPLOY / "prometheus" / "clew-alerts.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
SECRET_NAMES = re.compile(r"salt|master_key|password|secret|token|credential", re.IGNORECASE)
ROLES = {"serve", "collector", "worker"}


def accepted(argv: list[str]) -> dict[str, Any]:
    """The parameters the `clew` CLI parses from ``argv`` (``clew`` first), without running
    the command; a usage error fails the test with the CLI's own message."""
    assert Path(argv[0]).name == "clew", f"not a clew command: {argv}"
    group = typer.main.get_command(app)
    name, args = argv[1], argv[2:]
    assert name in ROLES, f"{name!r} is not one of the roles {sorted(ROLES)}"
    try:
        params = group.commands[name].make_context(name, list(args)).params  # type: ignore[attr-defined]
    except ClickException as exc:
        pytest.fail(f"`{shlex.join(argv)}` is refused by the CLI: {exc.format_message()}")
    unknown = set(params.get("stage") or ()) - set(STAGE_NAMES)
    assert not unknown, f"unknown stage(s) {unknown} in `{shlex.join(argv)}`"
    assert params.get("config") is not None, f"`{shlex.join(argv)}` names no --config file"
    return dict(params)


def test_the_compose_file_runs_each_role_with_a_command_the_cli_accepts() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "collector", "workers", "serve"}
    assert "--appendonly" in services["redis"]["command"], "Redis holds the data keys"
    for name in ("collector", "workers", "serve"):
        service = services[name]
        assert service["env_file"] == "clew.env", f"{name}: secrets come from clew.env"
        accepted(service["command"])
        assert any(v.endswith(":/etc/clew/clew.toml:ro") for v in service["volumes"])
    assert accepted(services["serve"]["command"])["data_dir"] == Path("/var/lib/clew")
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert not SECRET_NAMES.search(key), f"{name}: {key} inline; use clew.env"
            credentials = re.search(r"://[^/@\s]+@", str(value))
            assert not credentials, f"{name}: {key} is a URL with credentials; use clew.env"
    example = DEPLOY / "compose" / "clew.env.example"
    assert {line.split("=")[0] for line in example.read_text().splitlines() if "=" in line} >= {
        "CLEW_PRIVACY__SALT",
        "CLEW_PRIVACY__MASTER_KEY",
    }


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_each_systemd_unit_starts_a_clew_command_line_the_cli_accepts(path: Path) -> None:
    parsed = unit(path)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service["EnvironmentFile"] == "/etc/clew/clew.env"
    assert "Environment" not in service, "secrets belong in the EnvironmentFile"
    exec_start = service["ExecStart"]
    # A template unit's instance name (%i) is the stage: try every stage.
    instances = STAGE_NAMES if "%i" in exec_start else ("",)
    assert ("@" in path.name) == ("%i" in exec_start)
    for instance in instances:
        params = accepted(shlex.split(exec_start.replace("%i", instance)))
        assert params["config"] == Path("/etc/clew/clew.toml")


def test_units_and_compose_cover_every_role() -> None:
    roles = {shlex.split(unit(p)["Service"]["ExecStart"])[1] for p in UNITS}
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = [s["command"] for s in compose.values() if s.get("command", [""])[0] == "clew"]
    roles_in_compose = {command[1] for command in commands}
    assert roles == roles_in_compose == ROLES


@pytest.mark.parametrize(
    ("settings", "env"),
    [
        (DEPLOY / "clew.toml", DEPLOY / "clew.env.example"),
        (DEPLOY / "compose" / "clew.toml", DEPLOY / "compose" / "clew.env.example"),
    ],
    ids=["systemd", "compose"],
)
def test_the_example_settings_load_and_hold_no_secret(
    settings: Path, env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for line in env.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    loaded = load_settings(settings, data_dir=tmp_path)
    assert loaded.log.backend == "kafka" and loaded.store.backend == "redis"
    assert loaded.privacy.master_key.get_secret_value().startswith("replace-with")
    text = settings.read_text()
    assert not re.search(r"^\s*(salt|master_key|redis_url)\s*=", text, re.MULTILINE)


# -- the Prometheus alert rules ------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left"}
_BUILTIN = {"up"}


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: identifiers not followed by ``(`` (which
    would make them functions) and not inside a label matcher or a string.

    >>> sorted(metric_names('sum by (group) (rate(clew_x_total{a="b"}[5m])) > up'))
    ['clew_x_total', 'up']
    """
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "", no_strings)
    no_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", no_matchers)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_grouping)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", no_ranges)
    return {n for n in names if n not in _PROMQL_WORDS and not n.isdigit()}


def exposed_metrics(text: str) -> set[str]:
    """Every family of a /metrics text (its TYPE lines), with a summary's and a histogram's
    series (``_sum``, ``_count``, ``_bucket``)."""
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    out = set()
    for name, kind in families:
        out.add(name)
        if kind in ("summary", "histogram"):
            out |= {f"{name}_sum", f"{name}_count", f"{name}_bucket"}
    return out


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of ``markdown``."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_name_only_metrics_clew_exposes(server: BackgroundServer) -> None:
    exposed = exposed_metrics(httpx.get(server.url + "/metrics", timeout=10).text) | _BUILTIN
    sections = anchors(RUNBOOK.read_text())
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Clew[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        missing = metric_names(rule["expr"]) - exposed
        assert not missing, f"{rule['alert']} names metrics Clew does not expose: {missing}"
        runbook = rule["annotations"].get("runbook")
        if runbook is not None:
            path, _, anchor = runbook.partition("#")
            assert path == "docs/operations.md" and anchor in sections, (rule["alert"], runbook)
