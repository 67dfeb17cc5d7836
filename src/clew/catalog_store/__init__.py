"""Where the catalog of sources, write keys and access tokens is kept (a small store of the
backends layer): the contract :class:`CatalogStore` (``base``), ``meta.db`` in the data
directory (:class:`SqliteCatalogStore`, the embedded default) and a Redis one every machine
shares (``redis``, imported only when named). :func:`clew.backends.open_catalog_store` picks
one; the rules (names, key shapes, scopes, caching) are :class:`clew.sources.Catalog`'s.
"""

from __future__ import annotations

from clew.catalog_store.base import (
    ADMIN,
    METRICS,
    PRIVACY,
    PROFILES,
    SCOPES,
    SQL,
    CatalogStore,
    CatalogUnavailableError,
    Source,
    SourceNameTakenError,
    Token,
    TokenNameTakenError,
    WriteKeyTakenError,
    copy_catalog,
)
from clew.catalog_store.sqlite import SqliteCatalogStore

__all__ = [
    "ADMIN",
    "METRICS",
    "PRIVACY",
    "PROFILES",
    "SCOPES",
    "SQL",
    "CatalogStore",
    "CatalogUnavailableError",
    "Source",
    "SourceNameTakenError",
    "SqliteCatalogStore",
    "Token",
    "TokenNameTakenError",
    "WriteKeyTakenError",
    "copy_catalog",
]
