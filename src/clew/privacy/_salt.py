"""The secret salt behind every identifier hash Clew keeps for privacy (suppression lists,
audit records), and the hash itself.

The salt is ``privacy.salt`` in the settings, or else generated once into
``data_dir/privacy.salt`` (mode 0600) by :func:`clew.keys.salt.load_salt` (re-exported here;
it is in the backends layer because the key ring uses it too). Without the salt a hash cannot
be turned back into an email address by hashing candidate addresses; with it, the same
identifier always gives the same hash, which is what lets the suppression list match new
events. Losing the file means the suppression list no longer matches anything: back it up
with the data directory, or set ``privacy.salt`` (``CLEW_PRIVACY__SALT``).
"""

from __future__ import annotations

import hmac

from clew.identity.identifiers import normalise_identifier

# Re-exported: the salt file is read by the key ring too, so it lives in clew.keys.salt.
from clew.keys.salt import SaltError, load_salt

__all__ = [
    "SaltError",
    "hash_normalised",
    "identifier_hash",
    "load_salt",
    "normalise_identifier",
]


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
