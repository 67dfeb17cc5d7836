"""The secret salt behind every identifier hash Clew keeps for privacy (suppression lists,
audit records), and the hash itself.

The salt is ``privacy.salt`` in the settings, or else generated once into
``data_dir/privacy.salt`` (mode 0600). Without the salt a hash cannot be turned back into an
email address by hashing candidate addresses; with it, the same identifier always gives the
same hash, which is what lets the suppression list match new events. Losing the file means the
suppression list no longer matches anything: back it up with the data directory, or set
``privacy.salt`` (``CLEW_PRIVACY__SALT``).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from clew.config import Settings
from clew.identity.identifiers import normalise_identifier

__all__ = ["hash_normalised", "identifier_hash", "load_salt", "normalise_identifier"]

SALT_FILE = "privacy.salt"


def load_salt(settings: Settings) -> bytes:
    """The salt: ``settings.privacy.salt`` when set, else the data directory's salt file,
    created (0600) on first use. Safe when several processes ask at once: one file wins and
    every process reads that one."""
    configured = settings.privacy.salt.get_secret_value()
    if configured:
        return configured.encode()
    path = settings.data_dir / SALT_FILE
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SALT_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
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


def identifier_hash(salt: bytes, id_type: str, value: str) -> str:
    """HMAC-SHA256 (hex) of the normalised identifier under ``salt``.

    >>> identifier_hash(b"s", "email", "Ada@X.test") == identifier_hash(b"s", "email", "ada@x.test")
    True
    """
    return hash_normalised(salt, id_type, normalise_identifier(id_type, value))


def hash_normalised(salt: bytes, id_type: str, value: str) -> str:
    """:func:`identifier_hash` of a value already normalised (as ``extract`` returns it)."""
    return digest_normalised(salt, id_type, value).hex()


def digest_normalised(salt: bytes, id_type: str, value: str) -> bytes:
    """The raw bytes of :func:`hash_normalised` (for the per-event check)."""
    return hmac.digest(salt, f"{id_type}\x00{value}".encode(), "sha256")


class SaltError(RuntimeError):
    """The salt file exists but cannot be used; the message says what to do."""
