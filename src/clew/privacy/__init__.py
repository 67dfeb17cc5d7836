"""Privacy: data-subject requests as durable jobs, the suppression list, deletion across every
store and its verification (docs/privacy.md).

Only the light pieces are exported here; the runner, erasure and verification are imported
from their modules, so a process that only checks suppression loads nothing more."""

from clew.privacy._salt import identifier_hash, load_salt
from clew.privacy.requests import REQUEST_TYPES, PrivacyRequest, RequestStore
from clew.privacy.suppression import Suppression, SuppressionList

__all__ = [
    "REQUEST_TYPES",
    "PrivacyRequest",
    "RequestStore",
    "Suppression",
    "SuppressionList",
    "identifier_hash",
    "load_salt",
]
