"""The data keys of the crypto-shredding log (``clew.log.shredding``) and the deployment's
salt: a key store contract (:class:`KeyStore`) with a SQLite backend (``keys.db``,
``_sqlite``) and a Redis one (``_redis``, imported only when named), the :class:`KeyRing`
that wraps and caches keys, and the salt file (``salt``).

This is a backends-layer package: opening the log never imports ``clew.privacy``. The
backend is chosen in :mod:`clew.backends` (:func:`~clew.backends.open_keystore`,
:func:`~clew.backends.open_keyring`)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clew.keys.ring import KeyRing, KeyStore, KeyStoreError, StoredKey, master_secret

__all__ = ["KeyRing", "KeyStore", "KeyStoreError", "StoredKey", "master_secret"]


def __getattr__(name: str) -> Any:
    # The key ring's names load on first use: the ring imports cryptography (about 10 MB),
    # which a process that only reads the salt (``clew.keys.salt``: the validate stage's
    # suppression and PII checks, `clew serve`) does not need.
    if name in __all__:
        return getattr(import_module("clew.keys.ring"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
