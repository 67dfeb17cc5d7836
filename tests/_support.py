"""Helpers the tests import (fixtures stay in conftest.py, which pytest loads by itself):
the write key of the test source, settings for a fresh data directory, waiting, counting rows
of the lake, `clew serve` as a child process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import httpx

from clew.background import free_port
from clew.config import Settings
from clew.lake.query import Lake

WRITE_KEY = "test-write-key"


def make_settings(data_dir: Path, **updates: object) -> Settings:
    """Settings for tests: a fresh data dir and a short lake flush interval."""
    s = Settings(data_dir=data_dir, port=free_port())
    s.lake.flush_interval_ms = 100
    return s.model_copy(update=updates)


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05
) -> None:
    """Wait until ``predicate()`` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    assert predicate(), f"condition not met within {timeout_s}s"


def lake_count(data_dir: Path, table: str = "events", where: str = "true") -> int:
    return int(
        Lake(data_dir / "lake").sql(f"SELECT count(*) FROM {table} WHERE {where}").rows[0][0]
    )


def drained(url: str) -> bool:
    """Every stage of the server at ``url`` has committed everything in its topics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    lags = re.findall(r"^clew_consumer_lag\{.*\} (\d+(?:\.\d+)?)$", text, re.MULTILINE)
    return bool(lags) and all(float(v) == 0 for v in lags)


def clew_bin() -> str:
    exe = Path(sys.executable).parent / "clew"
    return str(exe) if exe.exists() else shutil.which("clew") or "clew"


class ServeProcess:
    """`clew serve` as a child process (for crash tests and real-SDK tests), run by the
    ``clew`` executable given (by default the one installed next to the test runner)."""

    def __init__(
        self, data_dir: Path, port: int, clew: str | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.clew = clew or clew_bin()
        self.args = tuple(args)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"serve-{port}.log"

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "CLEW_LAKE__FLUSH_INTERVAL_MS": "100"}
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/kill
        self.proc = subprocess.Popen(
            [
                self.clew,
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clew serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"clew serve did not start: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log_file.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log_file.close()


def serve_worker(serve_pid: int, stage: str) -> int | None:
    """The pid of ``serve_pid``'s worker process running ``stage``, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command (field 2) may hold spaces; the parent pid is the 2nd field after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != serve_pid or b"--stage" not in args:
            continue
        if any(a == b"--stage" and b == stage.encode() for a, b in pairwise(args)):
            return int(entry.name)
    return None
