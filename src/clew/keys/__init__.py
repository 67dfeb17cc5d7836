"""The data keys of the crypto-shredding log (``clew.log.shredding``) and the deployment's
salt: a key store contract (:class:`KeyStore`) with a SQLite backend (``keys.db``,
``_sqlite``) and a Redis one (``_redis``, imported only when named), the :class:`KeyRing`
that wraps and caches keys, and the salt file (``salt``).

This is a backends-layer package: opening the log never imports ``clew.privacy``. The
backend is chosen in :mod:`clew.backends` (:func:`~clew.backends.open_keystore`,
:func:`~clew.backends.open_keyring`)."""

from __future__ import annotations

from clew.keys.ring import KeyRing, KeyStore, KeyStoreError, StoredKey, master_secret

__all__ = ["KeyRing", "KeyStore", "KeyStoreError", "StoredKey", "master_secret"]
