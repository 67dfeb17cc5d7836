"""The `clew` command line: sources, tokens and SQL."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, ServeProcess, clew_bin, lake_count, wait_for
from clew._datadir import claim_data_dir
from clew.cli import app
from clew.config import Settings
from clew.sources import Catalog

runner = CliRunner()


def test_sources_create_prints_the_key_and_list_shows_it(tmp_path: Path, cli_store: str) -> None:
    d = str(tmp_path)
    out = runner.invoke(app, ["sources", "create", "web", "--data-dir", d])
    assert out.exit_code == 0
    key = out.stdout.strip()
    assert len(key) >= 20
    out = runner.invoke(
        app, ["sources", "create", "ios", "--write-key", "ios-key-123", "--data-dir", d]
    )
    assert out.stdout.strip() == "ios-key-123"
    listing = runner.invoke(app, ["sources", "list", "--data-dir", d]).stdout
    assert "web" in listing and key in listing and "ios-key-123" in listing
    again = runner.invoke(app, ["sources", "create", "web", "--data-dir", d])
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_tokens_are_shown_once_and_stored_hashed(tmp_path: Path, cli_store: str) -> None:
    out = runner.invoke(app, ["tokens", "create", "ci", "--data-dir", str(tmp_path)])
    token = out.stdout.strip()
    assert out.exit_code == 0 and token.startswith("clew_")
    catalog = Catalog.open(Settings(data_dir=tmp_path))
    try:
        assert catalog.verify_token(token)
        assert not catalog.verify_token(token + "x")
        assert token not in repr(catalog.store.token_hashes())
    finally:
        catalog.close()
    meta = tmp_path / "meta.db"
    assert meta.exists() == (cli_store == "sqlite")
    assert not meta.exists() or token.encode() not in meta.read_bytes()


def test_sql_formats_and_errors(tmp_path: Path) -> None:
    d = str(tmp_path)
    claim_data_dir(tmp_path)
    q = "SELECT 1 AS one, 'a,b' AS text, DATE '2026-11-28' AS day"
    as_json = runner.invoke(app, ["sql", q, "--format", "json", "--data-dir", d])
    assert json.loads(as_json.stdout) == [{"one": 1, "text": "a,b", "day": "2026-11-28"}]
    as_csv = runner.invoke(app, ["sql", q, "-f", "csv", "--data-dir", d])
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["one", "text", "day"],
        ["1", "a,b", "2026-11-28"],
    ]
    table = runner.invoke(app, ["sql", q, "--data-dir", d])
    assert table.exit_code == 0 and "2026-11-28" in table.stdout
    bad = runner.invoke(app, ["sql", "DELETE FROM events", "--data-dir", d])
    assert bad.exit_code == 1 and "read-only" in bad.stderr
    fmt = runner.invoke(app, ["sql", "SELECT 1", "--format", "xml", "--data-dir", d])
    assert fmt.exit_code == 2


@pytest.mark.slow
def test_sql_runs_while_serve_is_writing(serve_process: ServeProcess) -> None:
    stop = threading.Event()
    sent = 0

    def send() -> None:
        nonlocal sent
        with httpx.Client(auth=(WRITE_KEY, "")) as client:
            while not stop.is_set():
                batch = [
                    {"type": "track", "event": "Tick", "userId": "u", "messageId": f"t{sent + i}"}
                    for i in range(20)
                ]
                assert (
                    client.post(serve_process.url + "/v1/batch", json={"batch": batch}).status_code
                    == 200
                )
                sent += 20

    writer = threading.Thread(target=send)
    writer.start()
    try:
        counts = []
        for _ in range(5):
            out = subprocess.run(
                [
                    clew_bin(),
                    "sql",
                    "SELECT count(*) AS n FROM events",
                    "-f",
                    "json",
                    "--data-dir",
                    str(serve_process.data_dir),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            counts.append(json.loads(out.stdout)[0]["n"])
    finally:
        stop.set()
        writer.join()
    assert counts == sorted(counts) and counts[-1] > 0
    wait_for(lambda: lake_count(serve_process.data_dir) == sent)


def test_wrong_arguments_get_clear_errors(tmp_path: Path) -> None:
    d = str(tmp_path)
    worker = runner.invoke(app, ["worker", "--stage", "bogus", "--data-dir", d])
    assert worker.exit_code == 2 and "unknown stage 'bogus'" in worker.stderr
    push = runner.invoke(app, ["plan", "push", str(tmp_path / "missing"), "--data-dir", d])
    assert push.exit_code == 2 and "tracking plan" in push.stderr
    show = runner.invoke(app, ["schema", "show", "track:Nope", "--data-dir", d])
    assert show.exit_code == 1 and "no subject 'track:Nope'" in show.stderr


def test_sql_prints_at_most_a_thousand_rows_and_says_how_many_were_left_out(
    tmp_path: Path,
) -> None:
    d = str(tmp_path)
    claim_data_dir(tmp_path)
    q = "SELECT i FROM range(2500) t(i) ORDER BY i"
    table = runner.invoke(app, ["sql", q, "--data-dir", d])
    assert table.exit_code == 0
    assert "│ 999 │" in table.stdout and "│ 1000 │" not in table.stdout
    assert "1,500 more rows left out" in table.stderr
    limited = runner.invoke(app, ["sql", q, "--limit", "10", "-f", "csv", "--data-dir", d])
    assert limited.stdout.split() == ["i", *map(str, range(10))]
    assert "2,490 more rows left out" in limited.stderr
    everything = runner.invoke(app, ["sql", q, "-f", "json", "--data-dir", d])
    assert len(json.loads(everything.stdout)) == 2500 and everything.stderr == ""
