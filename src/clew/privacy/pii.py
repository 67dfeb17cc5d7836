"""PII policies: what the validate stage does with personal fields before an event is written
to the ``events`` topic, so nothing downstream (the lake, profiles, destinations) ever sees
the original value.

A policy maps a field path to an action:

- ``keep``: leave it (the default; useful to document a decision);
- ``hash``: replace a value by its HMAC-SHA256 under the secret salt (hex). Equal values give
  equal hashes, so a hashed email still joins a person's events and identifies a profile;
- ``truncate``: an IP address becomes its network (IPv4 /24, IPv6 /48), an email its domain
  (``*@shop.test``), any other string its first four characters and ``*``;
- ``drop``: remove the field.

Paths start at ``properties``, ``traits`` or ``context`` and go down through objects:
``context.ip``, ``traits.phone``, ``context.traits.email``, ``properties.card.last4``.

>>> policy = PiiPolicy({"context.ip": "truncate"}, salt=b"s")
>>> policy.apply_to({"context": {"ip": "203.0.113.77"}})["context"]
{'ip': '203.0.113.0'}
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from clew.config.privacy import PII_ACTIONS, PII_ROOTS, pii_path_problem
from clew.events import Event

# The ``[privacy] pii`` settings check the same paths (clew.config.privacy).
ROOTS = PII_ROOTS
ACTIONS: tuple[str, ...] = PII_ACTIONS


class PiiPolicyError(ValueError):
    """A PII policy cannot be used; the message says which path and why."""


class PiiPolicy:
    def __init__(self, rules: Mapping[str, str], salt: bytes) -> None:
        self._salt = salt
        self._rules: list[tuple[tuple[str, ...], str]] = []
        for path, action in rules.items():
            problem = pii_path_problem(path)
            if problem is not None:
                raise PiiPolicyError(problem)
            parts = tuple(path.split("."))
            if action not in ACTIONS:
                raise PiiPolicyError(
                    f"PII path {path!r}: action {action!r} is not one of {', '.join(ACTIONS)}"
                )
            if action != "keep":
                self._rules.append((parts, action))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def apply(self, event: Event) -> Event:
        """The event with every policy applied (the same object when nothing matched)."""
        if not self._rules:
            return event
        roots = {r: getattr(event, r) for r in ROOTS}
        changed = self.apply_to(roots)
        if changed is roots:
            return event
        return msgspec.structs.replace(event, **changed)

    def apply_to(self, roots: dict[str, Any]) -> dict[str, Any]:
        """``roots`` (``properties``/``traits``/``context`` dicts) with the policy applied,
        copying only the objects on a changed path; ``roots`` itself when nothing matched."""
        out = roots
        for parts, action in self._rules:
            updated = self._at(out.get(parts[0]), parts[1:], action)
            if updated is not _UNCHANGED:
                if out is roots:
                    out = dict(roots)
                out[parts[0]] = updated
        return out

    def _at(self, node: Any, rest: tuple[str, ...], action: str) -> Any:
        if not isinstance(node, dict) or rest[0] not in node:
            return _UNCHANGED
        if len(rest) > 1:
            inner = self._at(node[rest[0]], rest[1:], action)
            return _UNCHANGED if inner is _UNCHANGED else {**node, rest[0]: inner}
        copy = dict(node)
        if action == "drop":
            del copy[rest[0]]
        else:
            value = copy[rest[0]]
            if value is None:
                return _UNCHANGED
            copy[rest[0]] = self._hash(value) if action == "hash" else truncate(value)
        return copy

    def _hash(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return hmac.new(self._salt, text.encode(), hashlib.sha256).hexdigest()


_UNCHANGED = object()


def truncate(value: Any) -> Any:
    """An IP address to its network, an email to its domain, another string to its first
    four characters; other values unchanged.

    >>> truncate("2001:db8:85a3::8a2e:370:7334"), truncate("ada@shop.test"), truncate("Lovelace")
    ('2001:db8:85a3::', '*@shop.test', 'Love*')
    """
    if not isinstance(value, str):
        return value
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if "@" in value:
            return "*@" + value.rsplit("@", 1)[1]
        return value[:4] + "*"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
