"""The worker processes `clew serve` starts: each runs only its stages' code (not the command
line's, nor pandas once it wrote to the lake), with the allocator settings that keep its
memory near what its batches hold, and an operator's own allocator setting wins. A real
`clew serve`, so marked slow."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from _support import WRITE_KEY, ServeProcess, lake_count, wait_for
from clew.stages.memory import WORKER_ALLOCATOR_ENV
from clew.stages.workers import SERVE_WORKERS

pytestmark = pytest.mark.slow


def _environ(pid: int) -> dict[str, str]:
    raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    pairs = (item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    return dict(pairs)


def _libraries(pid: int) -> str:
    return (Path("/proc") / str(pid) / "maps").read_text()


def test_workers_run_their_stages_alone_with_the_allocator_settings(
    serve_process: ServeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_process.stop()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    serve_process.start()
    assert serve_process.proc is not None
    parent = psutil.Process(serve_process.proc.pid)
    wait_for(lambda: len(parent.children()) == len(SERVE_WORKERS))
    for worker in parent.children():
        env = _environ(worker.pid)
        assert env["MALLOC_ARENA_MAX"] == "4"
        for name, value in WORKER_ALLOCATOR_ENV.items():
            if name != "MALLOC_ARENA_MAX":
                assert env[name] == value
        argv = worker.cmdline()
        assert argv[1:3] == ["-m", "clew.stages"], argv
        if argv[3:5] == ["--stage", "validate"]:
            # Neither the lake's libraries nor the key ring's cryptography (tens of MB).
            libraries = _libraries(worker.pid)
            for library in ("deltalake", "pyarrow", "cryptography"):
                assert f"/{library}/" not in libraries

    batch = [{"type": "track", "event": "Viewed", "userId": f"u{i}"} for i in range(50)]
    answer = httpx.post(
        serve_process.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, "")
    )
    assert answer.status_code == 200
    wait_for(lambda: lake_count(serve_process.data_dir) == len(batch))
    lake = next(w for w in parent.children() if "lake" in w.cmdline())
    # The lake's worker converted rows with pyarrow without loading pandas.
    assert "/pandas/" not in _libraries(lake.pid)
