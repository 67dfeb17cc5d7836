"""The benches still run: each in-process bench once with tiny sizes (a few seconds each), so
an API change that breaks one is caught here, not when someone next measures. The figures
are not checked. Benches that need servers (HTTP, Kafka, Redis, Spark, S3) or run for long
whatever their sizes (matching.py) are left out; mypy type-checks every bench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

TINY = {
    "backfill.py": ["--events", "300", "--people", "50"],
    "lake_catchup.py": ["--events", "2000", "--rounds", "1"],
    "validation.py": ["--events", "200", "--rounds", "1"],
    "profiles.py": ["--events", "300", "--people", "50"],
    "privacy.py": ["--events", "500", "--days", "3", "--per-user", "10"],
    "replay.py": ["--events", "300", "--batch-size", "100"],
}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bench", sorted(TINY))
def test_bench_runs_with_tiny_sizes(bench: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / bench), *TINY[bench]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.strip(), "the bench printed no figures"
