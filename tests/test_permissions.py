"""The data directory is the owner's alone: `clew` commands create it 0700 with every file in
it 0600 (SQLite's -wal and -shm files and the lake's Parquet files included), and `clew serve`
warns, saying how to fix it, when an existing data directory is open to other users."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx

from _support import WRITE_KEY, ServeProcess, clew_bin, lake_count, wait_for
from _tracking_api import BASIC
from clew.background import free_port


def _clew(*args: str) -> str:
    return subprocess.run([clew_bin(), *args], check=True, capture_output=True, text=True).stdout


def _modes(data_dir: Path) -> dict[str, int]:
    """The permission bits of the data dir and everything in it, by path relative to it."""
    modes = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = Path(root) / name
            modes[str(path.relative_to(data_dir))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def _open_to_others(data_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for rel, mode in _modes(data_dir).items():
        expected = 0o700 if (data_dir / rel).is_dir() else 0o600
        if mode != expected:
            found[rel] = f"{mode:04o}"
    return found


def test_every_file_clew_writes_is_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _clew("sources", "create", "tests", "--write-key", WRITE_KEY, "--data-dir", str(data_dir))
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    try:
        events = [{"type": "track", "event": "Opened", "userId": f"u{i}"} for i in range(20)]
        response = httpx.post(
            serve.url + "/v1/batch", json={"batch": events}, headers={"Authorization": BASIC}
        )
        assert response.status_code == 200
        wait_for(lambda: lake_count(data_dir) == len(events))
        _clew("tokens", "create", "analyst", "--data-dir", str(data_dir))

        # While Clew runs: SQLite's write-ahead logs and the lake's Parquet files exist too.
        names = list(_modes(data_dir))
        assert any(name.endswith("-wal") for name in names)
        assert any(name.endswith(".parquet") for name in names)
        assert _open_to_others(data_dir) == {}
    finally:
        serve.stop()
    assert _open_to_others(data_dir) == {}
    assert "chmod" not in serve.log_path.read_text()


def test_serve_warns_when_the_data_dir_is_open_to_others(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    serve.stop()
    warnings = [line for line in serve.log_path.read_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert f"chmod 700 {data_dir}" in warnings[0]
    assert "0755" in warnings[0]
