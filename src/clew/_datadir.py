"""The data directory's serve lock: one `clew serve` per data directory, and a way for other
commands (the demo) to find the URL of the one that runs."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


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
