"""Identity resolution: identifiers of an event, the rules that govern them, and the
deterministic resolver that keeps one profile per person in the serving store."""

from clew.identity.identifiers import (
    ANONYMOUS_ID,
    EMAIL,
    PHONE,
    USER_ID,
    Dropped,
    Extraction,
    Identifier,
    PhoneSupportMissingError,
    extract,
    normalise_email,
    normalise_phone,
)
from clew.identity.resolver import (
    Explanation,
    IdentityResolver,
    Resolution,
    ResolutionConflictError,
    canonical_key,
    profile_id_for,
)
from clew.identity.rules import (
    DEFAULT_BLOCKED_EMAILS,
    DEFAULT_BLOCKED_VALUES,
    CustomIdType,
    IdentityRules,
    IdTypeRule,
)

__all__ = [
    "ANONYMOUS_ID",
    "DEFAULT_BLOCKED_EMAILS",
    "DEFAULT_BLOCKED_VALUES",
    "EMAIL",
    "PHONE",
    "USER_ID",
    "CustomIdType",
    "Dropped",
    "Explanation",
    "Extraction",
    "IdTypeRule",
    "Identifier",
    "IdentityResolver",
    "IdentityRules",
    "PhoneSupportMissingError",
    "Resolution",
    "ResolutionConflictError",
    "canonical_key",
    "extract",
    "normalise_email",
    "normalise_phone",
    "profile_id_for",
]
