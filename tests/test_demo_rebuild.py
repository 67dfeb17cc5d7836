"""The single customer view is exact from outside: `clew demo` against a running server, then
`clew rebuild --dry-run --check`, agrees every time, whatever the seed, the number of log
partitions and how many demos send at once; and every view of the profiles says the same
(one `customer_profiles` row per live profile, `audience_members` == `clew audiences size`).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from _support import make_settings, wait_for
from clew.audiences.status import audience_size
from clew.background import BackgroundServer
from clew.cli import app
from clew.demo import run_demo
from clew.lake.query import Lake
from clew.store import SQLiteProfileStore

pytestmark = pytest.mark.slow

AUDIENCES = Path(__file__).resolve().parents[1] / "examples" / "audiences"
PARTITIONS = (1, 2, 4, 8)


def clew(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize("run", range(10))
def test_demo_then_rebuild_check_agrees(tmp_path: Path, run: int) -> None:
    settings = make_settings(tmp_path / "data")
    settings.log.partitions = PARTITIONS[run % len(PARTITIONS)]
    code, out = clew(settings.data_dir, "audiences", "push", *map(str, AUDIENCES.glob("*.yaml")))
    assert code == 0, out
    seeds = [100 + 10 * run + k for k in range(1 + run % 3)]  # 1 to 3 demos at once
    with BackgroundServer(settings) as server:
        errors: list[BaseException] = []

        def demo(seed: int) -> None:
            try:
                run_demo(settings, Console(file=io.StringIO()), users=60, seed=seed)
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=demo, args=(seed,)) for seed in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        wait_for(server.clew.drained, timeout_s=60)

        code, out = clew(settings.data_dir, "rebuild", "--dry-run", "--check")
        assert code == 0, out
        assert "the batch and speed layers agree" in out

        store = SQLiteProfileStore(settings.profiles_path)
        try:
            live = {p.profile_id for p in store.scan(None, 1 << 30)}
            sizes = {a.stem: audience_size(store, a.stem) for a in AUDIENCES.glob("*.yaml")}
        finally:
            store.close()
    lake = Lake(settings.lake_path)
    rows = lake.sql("SELECT profile_id FROM customer_profiles").rows
    assert sorted(r[0] for r in rows) == sorted(live), "one row per live profile, no other"
    owners = lake.sql("SELECT DISTINCT profile_id FROM identities").rows
    assert {r[0] for r in owners} <= live
    members = dict(lake.sql("SELECT audience, count(*) FROM audience_members GROUP BY ALL").rows)
    assert {name: members.get(name, 0) for name in sizes} == sizes
