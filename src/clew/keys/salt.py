"""The secret salt behind every identifier hash Clew keeps (suppression lists, audit records;
``clew.privacy._salt``), which is also the key ring's default master secret (``clew.keys``).

The salt is ``privacy.salt`` in the settings, or else generated once into
``data_dir/privacy.salt`` (mode 0600). Losing the file means the suppression list no longer
matches anything and sealed Kafka records without ``privacy.master_key`` no longer open: back
it up with the data directory, or set ``privacy.salt`` (``CLEW_PRIVACY__SALT``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clew.config import Settings

__all__ = ["SaltError", "load_salt"]


def load_salt(settings: Settings) -> bytes:
    """The salt: ``settings.privacy.salt`` when set, else the data directory's salt file,
    created (0600) on first use. Safe when several processes ask at once: one file wins and
    every process reads that one."""
    configured = settings.privacy.salt.get_secret_value()
    if configured:
        return configured.encode()
    path = settings.salt_path
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # A hard link is atomic and refuses to replace: a concurrent creator's file wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    salt = _read(path)
    if salt is None:
        raise SaltError(f"{path} is empty; delete it or set privacy.salt")
    return salt


def _read(path: Path) -> bytes | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text.encode() if text else None


class SaltError(RuntimeError):
    """The salt file exists but cannot be used; the message says what to do."""
