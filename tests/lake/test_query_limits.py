"""Queries over the lake within bounds: memory, time, and no file but the lake's tables."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from clew.config import Settings, SqlSettings
from clew.lake.query import Interrupt, Lake, QueryError, QueryInterrupted, QueryLimits

# Never finishes in a test's lifetime; grows DuckDB's memory while it runs.
GREEDY = "SELECT i % 1000003 AS k, list(i) FROM range(4000000000) t(i) GROUP BY k"
ENDLESS = "SELECT sum(i * i % 7) FROM range(4000000000) t(i)"


def _lake(data_dir: Path, **sql: object) -> tuple[Lake, Settings]:
    settings = Settings(data_dir=data_dir, sql=SqlSettings.model_validate(sql))
    return Lake(settings.lake_location, None, QueryLimits.from_settings(settings)), settings


def test_sql_cannot_read_the_spill_directory_or_any_file_outside_the_lake(tmp_path: Path) -> None:
    lake, settings = _lake(tmp_path / "data", memory_limit="64MB", threads=1)
    data_dir = settings.data_dir
    data_dir.mkdir()
    (data_dir / "meta.db").write_text("write keys")
    other_query = settings.sql_spill_path / "query-other"
    other_query.mkdir(parents=True)
    (other_query / "block.tmp").write_text("another query's rows")
    spill, other = settings.sql_spill_path.resolve(), other_query.resolve()
    for query in (
        f"SELECT * FROM read_text('{data_dir / 'meta.db'}')",
        f"SELECT * FROM read_text('{other / 'block.tmp'}')",
        f"SELECT * FROM read_blob('{spill}/**')",
        f"SELECT * FROM read_csv_auto('{other / 'block.tmp'}')",
        f"SELECT * FROM glob('{spill}/*')",
        "SELECT * FROM glob('*')",
        "SELECT * FROM read_text('.tmp/*')",
        f"SELECT * FROM read_text('{lake.location.uri}/../meta.db')",
        "SELECT * FROM read_text('/etc/hostname')",
    ):
        with pytest.raises(QueryError, match="Permission Error"):
            lake.sql(query)
    # A query's own spill directory is inside the data dir, private, and gone after it.
    where = lake.sql("SELECT current_setting('temp_directory')").rows[0][0]
    assert Path(where).parent == spill
    assert not Path(where).exists()
    assert sorted(p.name for p in spill.iterdir()) == ["query-other"]


def test_a_query_bigger_than_its_memory_spills_inside_the_data_dir(tmp_path: Path) -> None:
    lake, settings = _lake(tmp_path / "data", memory_limit="100MB", threads=1)
    big = (
        "SELECT count(DISTINCT s) FROM "
        "(SELECT i::VARCHAR || 'padding-padding' AS s FROM range(5000000) t(i))"
    )
    assert lake.sql(big).rows == [(5_000_000,)]
    assert list(settings.sql_spill_path.iterdir()) == []
    without_spill = Lake(lake.location, None, QueryLimits(memory_bytes=100_000_000, threads=1))
    with pytest.raises(QueryError, match="Out of Memory"):
        without_spill.sql(big)


def test_a_query_past_its_timeout_is_interrupted_and_its_memory_returned(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path / "data", memory_limit="4GB")
    me = psutil.Process()
    before = me.memory_info().rss
    peak = before
    started = time.monotonic()
    finished = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not finished.is_set():
            peak = max(peak, me.memory_info().rss)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(QueryInterrupted, match="timeout"):
            lake.sql(GREEDY, timeout_s=1.5)
    finally:
        finished.set()
        watcher.join()
    # Generous (10x the 1.5 s timeout) for a loaded machine; the query alone never ends.
    assert time.monotonic() - started < 15
    after = me.memory_info().rss
    assert peak - before > 100 * 2**20, "the query should have used memory while it ran"
    assert after - before < 60 * 2**20, f"{(after - before) >> 20} MB still held"


def test_an_interrupt_from_another_thread_stops_the_query(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path / "data", threads=1)
    interrupt = Interrupt()
    threading.Timer(0.5, interrupt.interrupt).start()
    # No timeout, and a query that would return its sum had it run to the end: raising
    # QueryInterrupted is the interrupt's doing.
    with pytest.raises(QueryInterrupted):
        lake.sql(ENDLESS, interrupt=interrupt)
    # An interrupted handle refuses to start another query.
    with pytest.raises(QueryInterrupted):
        lake.sql("SELECT 1", interrupt=interrupt)


def test_rows_past_max_rows_are_left_out_and_counted_on_request(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path / "data")
    q = "SELECT i FROM range(25) t(i) ORDER BY i"
    result = lake.sql(q, max_rows=10)
    assert result.rows == [(i,) for i in range(10)] and result.truncated
    assert result.left_out is None
    assert lake.sql(q, max_rows=10, count_rest=True).left_out == 15
    whole = lake.sql(q, max_rows=25, count_rest=True)
    assert len(whole.rows) == 25 and not whole.truncated and whole.left_out == 0


def test_sql_settings_defaults_and_sizes() -> None:
    sql = SqlSettings()
    assert (sql.timeout_s, sql.max_concurrent, sql.max_rows) == (30, 4, 100_000)
    ram = psutil.virtual_memory().total
    assert sql.memory_limit_bytes() == pytest.approx(ram / 4, rel=0.01)
    assert SqlSettings(memory_limit="2GiB").memory_limit_bytes() == 2 * 2**30
    with pytest.raises(ValueError, match="not a size"):
        SqlSettings(memory_limit="lots")
