"""`clew tokens create|list|revoke` and `clew sources create|list|rotate|remove`, against a
running Clew where the change must show (the command is another process's catalog handle)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from _support import WRITE_KEY
from clew.background import BackgroundServer
from clew.cli import app

runner = CliRunner()
EVENT = {"type": "track", "event": "Signed Up", "userId": "u1"}


def _clew(data_dir: Path, *args: str) -> tuple[int, str, str]:
    out = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    # Messages on stderr are wrapped to the terminal's width.
    return out.exit_code, out.stdout, " ".join(out.stderr.split())


def test_tokens_get_scopes_an_expiry_and_a_listing_without_secrets(
    tmp_path: Path, cli_store: str
) -> None:
    code, token, said = _clew(tmp_path, "tokens", "create", "bi")
    assert code == 0 and token.strip().startswith("clew_")
    assert "scopes sql, profiles" in said
    code, _, _ = _clew(tmp_path, "tokens", "create", "ops", "--scope", "admin,privacy")
    assert code == 0
    code, _, _ = _clew(
        tmp_path, "tokens", "create", "prom", "--scope", "metrics", "--expires", "30d"
    )
    assert code == 0
    code, _, said = _clew(tmp_path, "tokens", "create", "x", "--scope", "write")
    assert code == 1 and "unknown scope write" in said
    code, _, said = _clew(tmp_path, "tokens", "create", "y", "--expires", "soon")
    assert code == 2 and "not a duration" in said

    code, listing, _ = _clew(tmp_path, "tokens", "list")
    assert code == 0 and token.strip() not in listing
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if "│" in line}
    assert "sql, profiles" in rows["bi"] and "admin, privacy" in rows["ops"]
    assert "metrics" in rows["prom"] and len(re.findall(r"\d{4}-\d\d-\d\d", rows["prom"])) == 2

    assert _clew(tmp_path, "tokens", "revoke", "bi")[0] == 0
    assert "bi" not in _clew(tmp_path, "tokens", "list")[1]
    code, _, said = _clew(tmp_path, "tokens", "revoke", "bi")
    assert code == 1 and "no token named 'bi'" in said


def test_a_revoked_token_is_refused_by_the_running_server(server: BackgroundServer) -> None:
    data_dir = server.settings.data_dir
    token = _clew(data_dir, "tokens", "create", "analyst", "--scope", "sql")[1].strip()
    headers = {"Authorization": f"Bearer {token}"}
    query = {"query": "SELECT 1"}
    assert httpx.post(server.url + "/v1/sql", json=query, headers=headers).status_code == 200
    profile = httpx.get(server.url + "/v1/profiles/user_id:1", headers=headers)
    assert profile.status_code == 403 and profile.json()["scope"] == "profiles"
    assert _clew(data_dir, "tokens", "revoke", "analyst")[0] == 0
    r = httpx.post(server.url + "/v1/sql", json=query, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"


def test_a_rotated_key_stops_in_the_running_collector_within_a_second(
    server: BackgroundServer,
) -> None:
    data_dir = server.settings.data_dir
    url = server.url + "/v1/track"
    assert httpx.post(url, json=EVENT, auth=(WRITE_KEY, "")).status_code == 200
    code, new_key, said = _clew(data_dir, "sources", "rotate", "TESTS")
    assert code == 0 and "the old key works no more" in said
    rotated_at = time.monotonic()
    new_key = new_key.strip()
    assert httpx.post(url, json=EVENT, auth=(new_key, "")).status_code == 200
    while httpx.post(url, json=EVENT, auth=(WRITE_KEY, "")).status_code == 200:
        assert time.monotonic() - rotated_at < 1.0, "the old key still works after 1 s"
    r = httpx.post(url, json=EVENT, auth=(WRITE_KEY, ""))
    assert r.status_code == 401 and r.json()["code"] == "invalid_write_key"


def test_a_grace_period_keeps_the_old_key_working_for_a_while(server: BackgroundServer) -> None:
    data_dir = server.settings.data_dir
    url = server.url + "/v1/track"
    code, new_key, said = _clew(data_dir, "sources", "rotate", "tests", "--grace", "1h")
    assert code == 0 and "works for 1h more" in said
    for key in (WRITE_KEY, new_key.strip()):
        assert httpx.post(url, json=EVENT, auth=(key, "")).status_code == 200


def test_a_removed_source_stops_sending_and_its_name_stays_taken(
    server: BackgroundServer,
) -> None:
    data_dir = server.settings.data_dir
    code, said, _ = _clew(data_dir, "sources", "remove", "tests")
    assert code == 0 and "its events stay" in said
    removed_at = time.monotonic()
    url = server.url + "/v1/track"
    while httpx.post(url, json=EVENT, auth=(WRITE_KEY, "")).status_code == 200:
        assert time.monotonic() - removed_at < 1.0, "the removed key still works after 1 s"
    assert "tests" not in _clew(data_dir, "sources", "list")[1]
    assert "tests" in _clew(data_dir, "sources", "list", "--removed")[1]
    code, _, said = _clew(data_dir, "sources", "create", "Tests")
    assert code == 1 and "its name stays taken" in said


def test_source_names_differing_only_in_case_are_refused(tmp_path: Path, cli_store: str) -> None:
    assert _clew(tmp_path, "sources", "create", "Web")[0] == 0
    code, _, said = _clew(tmp_path, "sources", "create", "web")
    assert code == 1 and "unique ignoring case" in said
