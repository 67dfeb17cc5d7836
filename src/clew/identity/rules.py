"""Identity-resolution rules: how much each identifier type is trusted, how many of each a
profile may hold, which values are never identifiers, and where custom ids are found.

The models are settings (:mod:`clew.config.identity`, the ``[identity.rules]`` table) and are
re-exported here; built once (from settings or code) and passed to
:func:`~clew.identity.extract` and :class:`~clew.identity.IdentityResolver`. Every default
there can be overridden per id type.
"""

from __future__ import annotations

from clew.config.identity import (
    DEFAULT_BLOCKED_EMAILS,
    DEFAULT_BLOCKED_VALUES,
    CustomIdType,
    IdentityRules,
    IdTypeRule,
    RuleTable,
)

__all__ = [
    "DEFAULT_BLOCKED_EMAILS",
    "DEFAULT_BLOCKED_VALUES",
    "CustomIdType",
    "IdTypeRule",
    "IdentityRules",
    "RuleTable",
]
