"""bench/sustained.py still runs: its smoke size (5 s at 500 events/s) against a real
``clew serve`` and the bare endpoint, about 20 s. The figures are not checked, only that the
run took place: every event acknowledged, every stage sampled and drained, the targets
printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sustained.py"

pytestmark = pytest.mark.slow


def test_sustained_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "sustained.json"
    smoke = ["--seconds", "5", "--rate", "500", "--baseline-seconds", "1", "--drain-timeout", "20"]
    run = subprocess.run(
        [sys.executable, str(BENCH), *smoke, "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=90,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "target >= 10,000 events/s sustained" in run.stdout
    figures = json.loads(out.read_text())
    clew = figures["clew"]
    assert clew["acked_events"] == clew["sent_events"] == 2_500
    assert clew["drained"]
    assert set(clew["stages"]) >= {"validate", "lake", "profiles"}
    assert all(stage["drain_s"] is not None for stage in clew["stages"].values())
    assert len(clew["per_second"]) >= 5
