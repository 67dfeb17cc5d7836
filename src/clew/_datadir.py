"""The data directory: its layout (every file, folder and lock in it, named once), who may
read it, how a command knows a directory is one, its serve
lock (one `clew serve` per data directory), and a way for other commands (the demo, an
error message) to find the URL of the one that runs and the data directory it serves."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# The layout of a data directory: every file, folder and lock Clew keeps in it, named here
# once. The path properties of `Settings` (clew.config.settings) join these to its
# `data_dir`; code handed a data directory rather than settings joins them itself.
LOG_FILE = "log.db"
META_FILE = "meta.db"  # the source catalog and API tokens
STATE_FILE = "state.db"
MONITOR_FILE = "monitor.db"
REGISTRY_FILE = "registry.db"  # the schema registry
PROFILES_FILE = "profiles.db"  # the SQLite serving store
PRIVACY_FILE = "privacy.db"
IMPORTS_FILE = "imports.db"
KEYS_FILE = "keys.db"  # the per-person keys of crypto-shredding (SQLite key store)
SALT_FILE = "privacy.salt"
LAKE_INDEX_FILE = "lake_index.db"  # which lake files hold which person
OUTBOX_FILE = "destinations.db"  # destination outboxes, delivery history, dead letters
CLOCK_FILE = "clock.json"  # the anchor of a scaled clock
CONSOLE_KEY_FILE = "console.key"  # signs the web console's session cookies
LAKE_DIR = "lake"
COLD_DIR = "cold"
SQL_SPILL_DIR = "sql-spill"
DESTINATIONS_DIR = "destinations"  # one file per destination
AUDIENCES_DIR = "audiences"  # the audience definitions
LOCKS_DIR = "locks"

# The locks, each a file ``locks/<name>.lock`` (:func:`lock_path`).
SERVE_LOCK = "serve"  # one `clew serve` per data directory
DLQ_REPLAY_LOCK = "dlq-replay"
LIFECYCLE_LOCK = "lifecycle"
AUDIENCES_LOCK = "audiences"


def stage_lock(stage: str) -> str:
    """The lock a process holds while it runs ``stage`` (one process per stage)."""
    return f"stage-{stage}"


def lock_path(data_dir: Path, name: str) -> Path:
    """The file of lock ``name`` (:data:`SERVE_LOCK`, ...) in ``data_dir``.

    >>> lock_path(Path("d"), DLQ_REPLAY_LOCK).as_posix()
    'd/locks/dlq-replay.lock'
    """
    return data_dir / LOCKS_DIR / f"{name}.lock"


# The file that makes a directory a Clew data directory. `clew serve`, `clew collector` and
# the commands that provision a new data directory (`sources create`, `tokens create`, ...)
# write it; a directory written before it existed is recognised by its catalog, log or lake.
MARKER_FILE = "clew-data-dir"
_RECOGNISED_FILES = (MARKER_FILE, META_FILE, LOG_FILE, LAKE_DIR)

# The data directory holds every event, profile and write key: it and everything in it are
# for the owner alone. Every `clew` command runs under this umask, so each file it, SQLite
# (with its -wal and -shm files), the lake's Parquet writer or DuckDB creates is 0600 and
# each directory 0700.
OWNER_ONLY_UMASK = 0o077
DATA_DIR_MODE = 0o700


def restrict_new_files() -> None:
    """Make every file and directory this process creates from now on owner-only (see
    :data:`OWNER_ONLY_UMASK`); child processes inherit it."""
    os.umask(OWNER_ONLY_UMASK)


def open_to_others(data_dir: Path) -> str | None:
    """A one-line warning, saying how to fix it, when ``data_dir`` exists and its group or
    other users may read, write or enter it; None when it is private or does not exist yet
    (it will be created ``DATA_DIR_MODE``)."""
    try:
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & ~DATA_DIR_MODE:
        return None
    return (
        f"the data directory {data_dir} is open to other users (mode {mode:04o}) and holds "
        f"every event, profile and write key: run `chmod 700 {data_dir}` "
        f"(and `chmod -R go-rwx {data_dir}` for the files already in it)"
    )


class NoDataDirError(RuntimeError):
    """A command that reads a data directory was pointed at one that does not exist or is not
    a Clew data directory; the message names it, and the one a running `clew serve` uses."""

    def __init__(self, data_dir: Path, serving: list[tuple[str, Path]]) -> None:
        where = f"no Clew data directory at {data_dir.absolute()}"
        if serving:
            url, path = serving[0]
            hint = f"clew serve on {url} uses {path}: pass --data-dir {path}"
        else:
            hint = "no clew serve is running: start one, or pass the --data-dir of an existing one"
        super().__init__(f"{where} ({hint})")
        self.data_dir = data_dir


def is_data_dir(data_dir: Path) -> bool:
    """Whether ``data_dir`` is a Clew data directory (holds :data:`MARKER_FILE`, or the
    catalog, log or lake of a data directory written before the marker existed)."""
    return any((data_dir / name).exists() for name in _RECOGNISED_FILES)


def claim_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` (owner-only) if needed and mark it as a Clew data directory."""
    data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    (data_dir / MARKER_FILE).touch()


def require_data_dir(data_dir: Path, port: int | None = None) -> None:
    """Return when ``data_dir`` is a Clew data directory; else raise :class:`NoDataDirError`
    naming the data directory of a running `clew serve` (the one on ``port`` first)."""
    if is_data_dir(data_dir):
        return
    serving = sorted(running_servers(), key=lambda s: not s[0].endswith(f":{port}"))
    raise NoDataDirError(data_dir, serving)


def user_temp_dir(tmp: str | None = None) -> Path:
    """This user's folder of Clew's per-machine files (which servers run, the log's
    doorbells): ``clew-<uid>`` under ``tmp``, by default the system's temp directory. Outside
    every data directory, so that processes started from any folder meet there."""
    return Path(tmp or tempfile.gettempdir()) / f"clew-{os.getuid()}"


def _registry() -> Path:
    # Entries of servers that stopped are ignored and removed.
    return user_temp_dir() / "serving"


def _register(data_dir: Path, url: str) -> None:
    registry = _registry()
    registry.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    path = data_dir.resolve()
    entry = registry / hashlib.sha256(str(path).encode()).hexdigest()[:16]
    entry.write_text(f"{path}\n")


def running_servers() -> Iterator[tuple[str, Path]]:
    """``(url, data directory)`` of every `clew serve` of this user running now."""
    registry = _registry()
    if not registry.is_dir():
        return
    for entry in sorted(registry.iterdir()):
        try:
            path = Path(entry.read_text().strip())
        except OSError:
            continue
        url = serving_url(path)
        if url is None:
            entry.unlink(missing_ok=True)
        elif url.startswith("http"):
            yield url, path


class DataDirInUseError(RuntimeError):
    def __init__(self, data_dir: Path, url: str | None) -> None:
        where = f" on {url}" if url else ""
        super().__init__(
            f"another Clew process is serving {data_dir}{where}; stop it, or use another --data-dir"
        )
        self.url = url


def lock_data_dir(data_dir: Path, url: str) -> IO[str]:
    """Hold the serve lock of ``data_dir`` (released when the returned file is closed, or
    when the process dies) and record ``url`` in it."""
    path = lock_path(data_dir, SERVE_LOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUseError(data_dir, serving_url(data_dir)) from None
    handle.truncate(0)
    handle.write(url)
    handle.flush()
    if url.startswith("http"):
        _register(data_dir, url)
    return handle


def serving_url(data_dir: Path) -> str | None:
    """The URL of the `clew serve` holding ``data_dir``'s lock, or None when none does."""
    path = lock_path(data_dir, SERVE_LOCK)
    try:
        handle = path.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
