"""`clew collector` as a process: it stops on a signal like `clew serve` does."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from _support import clew_bin, wait_for
from clew.background import free_port


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_collector_stops_on_a_signal_with_exit_0_and_no_traceback(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    argv = [clew_bin(), "collector", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/health"
        wait_for(lambda: _answers(url) or proc.poll() is not None, timeout_s=30)
        assert proc.poll() is None, proc.communicate(timeout=10)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
