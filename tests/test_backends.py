"""``clew.backends``, the one module that picks each backend from the settings: the small
stores follow the serving store, opening the log (and its shredding wrapper) loads nothing of
the domain, and a worker takes stage locks only on a log whose groups stay in one process."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from clew import backends
from clew.config import Settings
from clew.dedup import DedupIndex, RedisDedupIndex
from clew.definition_store import DirectoryStorage
from clew.destination_store import FileDestinationStore
from clew.keys._sqlite import SqliteKeyStore
from clew.log.embedded import EmbeddedLog
from clew.stages.workers import stage_locks
from clew.suppression_list import SqliteListSource, SuppressionList


def test_the_small_stores_are_files_of_the_data_dir_beside_a_sqlite_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    opened: list[Any] = [
        backends.open_dedup(settings),
        backends.open_suppression_list(settings),
        backends.open_suppression_source(settings),
        backends.open_keystore(settings),
    ]
    try:
        assert [type(o) for o in opened] == [
            DedupIndex,
            SuppressionList,
            SqliteListSource,
            SqliteKeyStore,
        ]
    finally:
        for o in opened:
            o.close()
    storage = backends.open_definitions_storage(settings)
    assert isinstance(storage, DirectoryStorage)
    assert storage.where() == str(tmp_path / "audiences")
    destinations = backends.open_destination_store(settings)
    assert isinstance(destinations, FileDestinationStore)
    assert destinations.where() == str(tmp_path / "destinations")
    assert backends.destinations_folder(settings) == tmp_path / "destinations"
    assert {p.name for p in tmp_path.iterdir()} >= {"state.db", "privacy.db", "keys.db"}
    assert backends.serving_store_file(settings) == tmp_path / "profiles.db"
    assert backends.describe_log(settings) == f"the embedded log in {tmp_path} (this machine only)"


def test_the_small_stores_follow_a_redis_store_into_redis(tmp_path: Path, redis_url: str) -> None:
    from clew.definition_store._redis import RedisStorage
    from clew.destination_store.redis import RedisDestinationStore
    from clew.keys._redis import RedisKeyStore
    from clew.suppression_list._redis import RedisSuppressionList

    prefix = f"wiring-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "store": {"backend": "redis", "redis_url": redis_url, "redis_prefix": prefix},
        }
    )
    opened: list[Any] = [
        backends.open_dedup(settings),
        backends.open_suppression_list(settings),
        backends.open_suppression_source(settings),
        backends.open_keystore(settings),
    ]
    try:
        assert [type(o) for o in opened] == [
            RedisDedupIndex,
            RedisSuppressionList,
            RedisSuppressionList,
            RedisKeyStore,
        ]
    finally:
        for o in opened:
            o.close()
    assert isinstance(backends.open_definitions_storage(settings), RedisStorage)
    destinations = backends.open_destination_store(settings)
    try:
        assert isinstance(destinations, RedisDestinationStore)
        assert destinations.where() == f"redis {prefix}:{{dst}}:defs"
    finally:
        destinations.close()
    assert backends.destinations_folder(settings) is None
    assert backends.serving_store_file(settings) is None
    assert not any(tmp_path.iterdir()), "nothing of them is kept in the data directory"


def test_opening_the_log_and_its_shredding_wrapper_imports_no_domain_package(
    tmp_path: Path,
) -> None:
    # A fresh interpreter: this one has imported everything already.
    script = f"""
import sys
from pathlib import Path
from typing import Any
from clew.backends import open_log, shredding
from clew.config import Settings
from clew.log.embedded import EmbeddedLog

settings = Settings(data_dir=Path({str(tmp_path)!r}))
log = open_log(settings)
sealed = shredding(settings, EmbeddedLog(settings.data_dir / "inner.db"))
assert sealed.encrypts_per_person and not log.encrypts_per_person
sealed.close()
log.close()
domain = ("privacy", "identity", "audiences", "stages", "lake", "batch", "monitor")
print(sorted(m for m in sys.modules if m.split(".")[:2][-1] in domain and m.startswith("clew.")))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "keys.db").exists()


class _SpanningLog(EmbeddedLog):
    """The embedded log claiming Kafka's capability, to see the worker ask it."""

    @property
    def shares_groups_across_processes(self) -> bool:
        return True


def test_a_worker_locks_its_stages_only_when_the_log_keeps_groups_in_one_process(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    stop = threading.Event()
    log = EmbeddedLog(tmp_path / "log.db")
    spanning = _SpanningLog(tmp_path / "other.db")
    try:
        held = stage_locks(settings, log, ["validate", "lake"], stop)
        assert held is not None and len(held) == 2
        assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == [
            "stage-lake.lock",
            "stage-validate.lock",
        ]
        # A second process would wait; told to stop while waiting, it holds nothing.
        stop.set()
        assert stage_locks(settings, log, ["lake"], stop) is None
        assert stage_locks(settings, spanning, ["validate", "lake"], stop) == []
        for handle in held:
            handle.close()
    finally:
        log.close()
        spanning.close()
