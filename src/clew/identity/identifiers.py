"""Identifiers of an event: which ``(id_type, value)`` pairs it carries, normalised, with
placeholders and unusable values dropped and the reason recorded.

Extraction is a pure function of the event and the rules, so replays and batch rebuilds see
the same identifiers as the speed layer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from clew.events import Event
from clew.identity.rules import DEFAULT_BLOCKED_EMAILS, IdentityRules, IdTypeRule, RuleTable

USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"
EMAIL = "email"
PHONE = "phone"


class Identifier(msgspec.Struct, frozen=True, gc=False):
    id_type: str
    value: str

    def __str__(self) -> str:
        return f"{self.id_type}:{self.value}"


class Dropped(msgspec.Struct, frozen=True, gc=False):
    """An identifier the event carried that was not used, and why."""

    id_type: str
    value: str
    reason: str


class Extraction(msgspec.Struct, frozen=True, gc=False):
    """The usable identifiers of an event (no duplicates, in the order found) and the
    dropped ones."""

    identifiers: tuple[Identifier, ...]
    dropped: tuple[Dropped, ...]
    # A probabilistic match (an imported record, see docs/identity.md): an identifier of the
    # matched profile, used only to find that profile (never attached), and the match weight.
    link: Identifier | None = None
    match_weight: float | None = None


class PhoneSupportMissingError(ImportError):
    def __init__(self) -> None:
        super().__init__(
            "normalising phone identifiers needs the phonenumbers package: "
            "pip install 'phonenumbers==9.0.43'"
        )


def normalise_email(value: str) -> str:
    """Trim and lowercase.

    Provider-specific rules (Gmail ignoring dots and ``+tag``) are deliberately not applied:
    they hold for some domains only, a customer may use ``+tag`` addresses to keep accounts
    apart on purpose, and a wrong merge is as harmful as a missed one.

    >>> normalise_email("  Ada.Lovelace+news@Analytical.TEST ")
    'ada.lovelace+news@analytical.test'
    """
    return value.strip().lower()


def normalise_phone(value: str, region: str | None) -> str:
    """The number in E.164 form; raises ``ValueError`` with the reason if it is not a valid
    number (a number without ``+`` needs ``region``, an ISO country code such as ``GB``).

    >>> normalise_phone("+44 20 7946 0958", None)
    '+442079460958'
    """
    try:
        import phonenumbers
    except ImportError as exc:
        raise PhoneSupportMissingError() from exc
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc})") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_identifier(id_type: str, value: str) -> str:
    """A value as identity resolution stores it, so that people may look one up as typed:
    trimmed, emails lower-cased, phones in E.164 when they can be read without a region
    (others are kept as written).

    >>> normalise_identifier("email", " Ada@X.test ")
    'ada@x.test'
    """
    value = value.strip()
    if id_type == EMAIL:
        return normalise_email(value)
    if id_type == PHONE:
        try:
            return normalise_phone(value, None)
        except (ValueError, ImportError):
            return value
    return value


def extract(
    event: Event,
    rules: IdentityRules,
    *,
    previous_id_type: str = USER_ID,
    table: RuleTable | None = None,
) -> Extraction:
    """Every identifier of ``event``: ``userId``, ``anonymousId``, ``previousId`` (as
    ``previous_id_type``, alias only), ``traits.email`` or ``context.traits.email``,
    ``traits.phone`` or ``context.traits.phone``, ``context.externalIds`` and the rules'
    custom id types. Blocked and unparseable values are dropped with a reason.

    ``table`` is ``rules.table()``, for callers on the per-event hot path that hold it."""
    found: list[Identifier] = []
    dropped: list[Dropped] = []
    seen: set[tuple[str, str]] = set()
    if table is None:
        table = rules.table()

    def add(id_type: str, raw: object) -> None:
        if type(raw) is str:
            got = _normalised(table, id_type, raw)
        elif raw is None:
            return
        elif isinstance(raw, bool | dict | list):
            dropped.append(Dropped(id_type, str(raw), "not a string or number"))
            return
        else:
            got = _normalised(table, id_type, str(raw))
        if got is None:
            return
        if isinstance(got, Dropped):
            dropped.append(got)
            return
        key = (id_type, got.value)
        if key not in seen:
            seen.add(key)
            found.append(got)

    add(USER_ID, event.user_id)
    if event.type == "alias" and event.previous_id is not None:
        add(previous_id_type, event.previous_id)
    add(ANONYMOUS_ID, event.anonymous_id)
    context = event.context
    traits = event.traits
    ctx_traits = context.get("traits") if context else None
    ctx_traits = ctx_traits if isinstance(ctx_traits, dict) else {}
    for key, id_type in (("email", EMAIL), ("phone", PHONE)):
        raw = traits.get(key) if traits else None
        add(id_type, raw if raw is not None else ctx_traits.get(key))
    external = context.get("externalIds") if context else None
    if isinstance(external, list):
        for entry in external:
            if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"]:
                add(entry["type"], entry.get("id"))
    for custom in table.custom_ids:
        for path in custom.paths:
            raw = _at_path(event, path)
            if raw is not None and raw != "":
                add(custom.id_type, raw)
                break
    if context and "clew" in context:
        link, weight = _match(context["clew"])
        return Extraction(tuple(found), tuple(dropped), link, weight)
    return Extraction(tuple(found), tuple(dropped))


@functools.lru_cache(maxsize=1 << 16)
def _normalised(table: RuleTable, id_type: str, raw: str) -> Identifier | Dropped | None:
    """``raw`` as an identifier of ``id_type`` under ``table`` (normalised), dropped (with
    the reason), or ``None`` if blank. Cached: a person's identifiers come back with each of
    their events, and phone numbers are costly to parse."""
    value = raw.strip()
    if not value:
        return None
    if id_type == EMAIL:
        value = normalise_email(value)
        if "@" not in value:
            return Dropped(id_type, value, "not an email address (no @)")
    elif id_type == PHONE:
        try:
            value = normalise_phone(value, table.phone_region)
        except ValueError as exc:
            return Dropped(id_type, value, str(exc))
    if table.is_blocked(id_type, value):
        return Dropped(id_type, value, "blocked value (placeholder, not an id)")
    return Identifier(id_type, value)


def placeholder_rule(ident: Identifier, rules: IdentityRules) -> str | None:
    """The setting that makes ``ident`` a placeholder (events carrying it drop it), or
    ``None`` if it is a usable identifier.

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


def _match(clew: object) -> tuple[Identifier | None, float | None]:
    """``context.clew.match`` = ``{"id_type", "value", "match_weight"}``, written by
    ``clew import profiles`` for a record matched to an existing profile."""
    match = clew.get("match") if isinstance(clew, dict) else None
    if not isinstance(match, dict):
        return None, None
    id_type, value, weight = match.get("id_type"), match.get("value"), match.get("match_weight")
    if not isinstance(id_type, str) or not isinstance(value, str) or not id_type or not value:
        return None, None
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return Identifier(id_type, value), None
    return Identifier(id_type, value), float(weight)


@functools.lru_cache(maxsize=256)
def _split(path: str) -> tuple[str, tuple[str, ...]]:
    root, *keys = path.split(".")
    return root, tuple(keys)


def _at_path(event: Event, path: str) -> Any:
    root, keys = _split(path)
    if root == "traits":
        node: Any = event.traits
    elif root == "properties":
        node = event.properties
    else:
        node = event.context
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
