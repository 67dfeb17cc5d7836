"""The data directory: who may read it, its serve lock (one `clew serve` per data
directory), and a way for other commands (the demo) to find the URL of the one that runs."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import IO

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


class DataDirInUseError(RuntimeError):
    def __init__(self, data_dir: Path, url: str | None) -> None:
        where = f" on {url}" if url else ""
        super().__init__(
            f"another Clew process is serving {data_dir}{where}; stop it, or use another --data-dir"
        )
        self.url = url


def _lock_file(data_dir: Path) -> Path:
    return data_dir / "locks" / "serve.lock"


def lock_data_dir(data_dir: Path, url: str) -> IO[str]:
    """Hold the serve lock of ``data_dir`` (released when the returned file is closed, or
    when the process dies) and record ``url`` in it."""
    path = _lock_file(data_dir)
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
    return handle


def serving_url(data_dir: Path) -> str | None:
    """The URL of the `clew serve` holding ``data_dir``'s lock, or None when none does."""
    path = _lock_file(data_dir)
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
