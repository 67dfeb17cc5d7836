"""Identity-resolution rules: how much each identifier type is trusted, how many of each a
profile may hold, which values are never identifiers, and where custom ids are found.

The models are settings (:mod:`clew.config.identity`, the ``[identity.rules]`` table) and are
re-exported here; built once (from settings or code) and passed to
:func:`~clew.identity.extract` and :class:`~clew.identity.IdentityResolver`. Every default
there can be overridden per id type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clew.config.identity import (
    DEFAULT_BLOCKED_EMAILS,
    DEFAULT_BLOCKED_VALUES,
    CustomIdType,
    IdentityRules,
    IdTypeRule,
    RuleTable,
)

if TYPE_CHECKING:
    from clew.identity.identifiers import Identifier

__all__ = [
    "DEFAULT_BLOCKED_EMAILS",
    "DEFAULT_BLOCKED_VALUES",
    "CustomIdType",
    "IdTypeRule",
    "IdentityRules",
    "RuleTable",
    "placeholder_rule",
]


def placeholder_rule(ident: Identifier, rules: IdentityRules) -> str | None:
    """The setting that makes ``ident`` a placeholder (events carrying it drop it), or
    ``None`` if it is a usable identifier.

    >>> from clew.identity.identifiers import Identifier
    >>> placeholder_rule(Identifier("email", "ada@example.com"), IdentityRules())
    'DEFAULT_BLOCKED_EMAILS, always blocked'
    >>> placeholder_rule(Identifier("email", "ada@shop.test"), IdentityRules()) is None
    True
    """
    if not rules.is_blocked(ident.id_type, ident.value):
        return None
    value = ident.value.strip()

    def matches(patterns: Sequence[str]) -> bool:
        return any(re.fullmatch(p, value, re.IGNORECASE) for p in patterns)

    if ident.id_type == "email" and matches(DEFAULT_BLOCKED_EMAILS):
        return "DEFAULT_BLOCKED_EMAILS, always blocked"
    if matches(rules.blocked_values):
        return "identity.rules.blocked_values"
    rule: IdTypeRule = rules.rule(ident.id_type)
    where = f"id_types.{ident.id_type}" if ident.id_type in rules.id_types else "default_rule"
    return f"identity.rules.{where}.blocked" if matches(rule.blocked) else "identity rules"
