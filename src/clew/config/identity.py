"""The settings of identity resolution and profiles (docs/identity.md): the identity-resolution
rules (how much each identifier type is trusted, how many of each a profile may hold, which
values are never identifiers, where custom ids are found) and how profile traits merge.

The rules are built once from the settings (or in code) and passed to
:func:`~clew.identity.extract` and :class:`~clew.identity.IdentityResolver`; every default
here can be overridden per id type. :mod:`clew.identity.rules` and
:mod:`clew.identity.traits` re-export these models for the identity code.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from clew.config._base import Section

Strategy = Literal["latest", "first", "sum", "union"]

# Values that mean "no id" in every tool we have seen, matched after trimming, whole value,
# case-insensitive. "0", "-1" and all-zero UUIDs are what SDKs and databases send for unset ids.
DEFAULT_BLOCKED_VALUES: tuple[str, ...] = (
    r"\s*",
    r"null|nil|none|undefined|nan|unknown|anonymous|n/?a|\[object object\]",
    r"[0-]+",
    r"-1",
)

# Placeholder emails typed into forms to get past a required field. example.com/.org/.net
# are reserved by RFC 2606 and can never reach a person.
DEFAULT_BLOCKED_EMAILS: tuple[str, ...] = (
    r"[^@]*@example\.(com|org|net)",
    r"test@test\.com",
    r"(no-?e?-?mail|no_email|null|none|nobody|undefined|no-?reply|do-?not-?reply)@.*",
    r"[^@]*@(mailinator|noemail|nomail)\.[a-z.]+",
)


class IdTypeRule(BaseModel):
    """The rule for one identifier type.

    ``priority``: lower is more trusted; it decides which identifier an event loses when a
    merge would break a limit, and which profile survives a merge. ``limit``: the most
    identifiers of this type one profile may hold (``None``: unlimited), counted over the last
    ``window_s`` seconds of event time (``None``: ever). ``blocked``: extra regexes (whole
    value, case-insensitive) that are never identifiers of this type.
    """

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(
        default=4,
        description=(
            "Lower is more trusted: decides which identifier an event loses when a merge would "
            "break a limit, and which profile survives a merge."
        ),
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Most identifiers of this type one profile may hold; unset: unlimited.",
    )
    window_s: int | None = Field(
        default=None, ge=1, description="Seconds of event time the limit counts over; unset: ever."
    )
    blocked: list[str] = Field(
        default=[],
        description=(
            "Extra regexes (whole value, case-insensitive) that are never identifiers of this type."
        ),
    )

    @field_validator("blocked")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)


class CustomIdType(BaseModel):
    """An identifier type read from event fields, first non-empty path wins.

    Paths are dotted, starting at ``traits``, ``properties`` or ``context``, e.g.
    ``traits.loyalty_id``."""

    model_config = ConfigDict(extra="forbid")

    id_type: str = Field(description="The identifier type.")
    paths: list[str] = Field(
        description=(
            "Dotted event fields starting at traits, properties or context; the first non-empty one"
            " wins."
        ),
    )

    @field_validator("paths")
    @classmethod
    def _paths_have_known_root(cls, value: list[str]) -> list[str]:
        for path in value:
            root = path.split(".", 1)[0]
            if root not in ("traits", "properties", "context") or "." not in path:
                raise ValueError(
                    f"custom id path {path!r} must start with traits., properties. or context."
                )
        return value


def _default_id_types() -> dict[str, IdTypeRule]:
    week = 7 * 24 * 3600
    return {
        "user_id": IdTypeRule(priority=1, limit=1),
        "email": IdTypeRule(priority=2, limit=5, window_s=week),
        "phone": IdTypeRule(priority=3, limit=5, window_s=week),
        "loyalty_id": IdTypeRule(priority=4, limit=1),
        "anonymous_id": IdTypeRule(priority=9),
    }


def _default_custom_ids() -> list[CustomIdType]:
    return [
        CustomIdType(id_type="loyalty_id", paths=["traits.loyalty_id", "properties.loyalty_id"])
    ]


class IdentityRules(BaseModel):
    """All identity-resolution rules. Types not listed in ``id_types`` (e.g. from
    ``context.externalIds``) use ``default_rule``.

    ``previous_id_type`` fixes the id type of an alias's ``previousId``; ``None`` (default)
    means: ``user_id`` if that value is already known as a user id, else ``anonymous_id``.
    ``phone_region`` is the ISO country code assumed for phone numbers without ``+``;
    ``None`` drops such numbers.
    """

    model_config = ConfigDict(extra="forbid")

    id_types: dict[str, IdTypeRule] = Field(
        default_factory=_default_id_types,
        description="Identifier type -> its rule (priority, limit, window_s, blocked).",
    )
    default_rule: IdTypeRule = Field(
        default=IdTypeRule(priority=4),
        description=(
            "The rule of identifier types not listed in `id_types` (such as those from "
            "`context.externalIds`)."
        ),
    )
    blocked_values: list[str] = Field(
        default=list(DEFAULT_BLOCKED_VALUES),
        description=(
            "Regexes (whole value, case-insensitive) that are never identifiers, such as "
            "placeholder emails."
        ),
    )
    custom_ids: list[CustomIdType] = Field(
        default_factory=_default_custom_ids,
        description="Identifier types read from event fields (id_type, paths).",
    )
    phone_region: str | None = Field(
        default=None,
        description=(
            "ISO country code assumed for phone numbers without `+`; unset drops such numbers."
        ),
    )
    previous_id_type: str | None = Field(
        default=None,
        description=(
            "Id type of an alias's previousId; unset: user_id if that value is known as a user id, "
            "else anonymous_id."
        ),
    )
    max_merges_per_profile: int = Field(
        default=100, ge=0, description="Most merges one profile may take part in."
    )
    max_identifiers_per_profile: int = Field(
        default=1000, ge=1, description="Most identifiers one profile may hold."
    )

    _blocked: dict[str, re.Pattern[str]] = PrivateAttr(default_factory=dict)
    _table: RuleTable | None = PrivateAttr(default=None)

    @field_validator("blocked_values")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @field_validator("id_types")
    @classmethod
    def _over_defaults(cls, value: dict[str, IdTypeRule]) -> dict[str, IdTypeRule]:
        # Configuring one type must not silently drop the defaults of the others (a user_id
        # without its limit of 1 would let a shared device merge two customers).
        return {**_default_id_types(), **value}

    def model_post_init(self, context: object, /) -> None:
        common = list(self.blocked_values)
        # Placeholder emails are always blocked; an email rule's own `blocked` adds to them.
        self._blocked = {
            id_type: _compile(
                common + (list(DEFAULT_BLOCKED_EMAILS) if id_type == "email" else []) + rule.blocked
            )
            for id_type, rule in self.id_types.items()
        }
        self._blocked[""] = _compile(common + self.default_rule.blocked)

    def table(self) -> RuleTable:
        """The rules as plain lookups for the per-event hot path (built once)."""
        if self._table is None:
            self._table = RuleTable(self, self._blocked)
        return self._table

    def rule(self, id_type: str) -> IdTypeRule:
        return self.id_types.get(id_type, self.default_rule)

    def priority(self, id_type: str) -> int:
        return self.rule(id_type).priority

    def is_blocked(self, id_type: str, value: str) -> bool:
        """Whether ``value`` (already normalised) is a placeholder, never an identifier."""
        pattern = self._blocked.get(id_type, self._blocked[""])
        return pattern.fullmatch(value.strip()) is not None


def _compile(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns) or r"(?!)", re.IGNORECASE)


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"blocked value regex {pattern!r} does not compile: {exc}") from exc
    return patterns


class RuleTable:
    """:class:`IdentityRules` flattened into dicts, with a bounded memo of blocked-value
    checks (the same identifiers come back on every event of a person)."""

    __slots__ = ("_blocked", "_default", "_memo", "_rules", "custom_ids", "phone_region")

    _MEMO_SIZE = 200_000

    def __init__(self, rules: IdentityRules, blocked: dict[str, re.Pattern[str]]) -> None:
        self._rules = dict(rules.id_types)
        self._default = rules.default_rule
        self._blocked = blocked
        self._memo: dict[tuple[str, str], bool] = {}
        self.custom_ids = list(rules.custom_ids)
        self.phone_region = rules.phone_region

    def rule(self, id_type: str) -> IdTypeRule:
        return self._rules.get(id_type, self._default)

    def priority(self, id_type: str) -> int:
        return self._rules.get(id_type, self._default).priority

    def is_blocked(self, id_type: str, value: str) -> bool:
        key = (id_type, value)
        hit = self._memo.get(key)
        if hit is None:
            pattern = self._blocked.get(id_type, self._blocked[""])
            hit = pattern.fullmatch(value.strip()) is not None
            if len(self._memo) >= self._MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = hit
        return hit


class TraitPolicy(BaseModel):
    """Per-field merge strategies; fields not listed use ``default``."""

    model_config = ConfigDict(extra="forbid")

    default: Strategy = Field(
        default="latest", description="Merge strategy of fields not listed in `fields`."
    )
    fields: dict[str, Strategy] = Field(default={}, description="Trait name -> merge strategy.")

    def strategy(self, name: str) -> Strategy:
        return self.fields.get(name, self.default)


class IdentitySettings(Section):
    """Identity resolution and profiles; see docs/identity.md."""

    rules: IdentityRules = Field(
        default_factory=IdentityRules, description="Identity-resolution rules."
    )
    traits: TraitPolicy = Field(
        default_factory=TraitPolicy, description="How profile traits are merged."
    )
    history: int = Field(
        default=100,
        ge=0,
        description=(
            "Recent events kept per profile in the serving store (the Profile API's /events)."
        ),
    )
