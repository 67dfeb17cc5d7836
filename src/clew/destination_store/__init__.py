"""Where destination settings are kept (a small store of the backends layer): the contract
:class:`DestinationStore` (``base``), one file per destination in the data directory's
``destinations/`` (:class:`FileDestinationStore`, the embedded default) and a Redis hash
every machine shares (``redis``, imported only when named).
:func:`clew.backends.open_destination_store` picks one; what the settings mean is
:mod:`clew.destinations.config`'s business.
"""

from __future__ import annotations

from clew.destination_store.base import DestinationStore, DestinationTakenError, StoredDestination
from clew.destination_store.files import FileDestinationStore, read_settings

__all__ = [
    "DestinationStore",
    "DestinationTakenError",
    "FileDestinationStore",
    "StoredDestination",
    "read_settings",
]
