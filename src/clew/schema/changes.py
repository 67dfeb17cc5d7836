"""What a compatibility check is asked and reports: the :class:`Direction` checked (from a
subject's :class:`Compatibility` mode) and one :class:`Change` per breaking change."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Direction(StrEnum):
    """Which readers a change can break.

    ``BACKWARD``: readers on the new schema must accept data written under the old one (old
    events, historical data, replays). ``FORWARD``: readers still on the old schema must accept
    data written under the new one. ``FULL``: both."""

    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    FULL = "FULL"


class Compatibility(StrEnum):
    """A subject's compatibility mode (default ``BACKWARD``)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def direction(self) -> Direction | None:
        """The direction checked, ``None`` for ``NONE``."""
        if self is Compatibility.NONE:
            return None
        return Direction(self.value.removesuffix("_TRANSITIVE"))

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @classmethod
    def parse(cls, text: str) -> Compatibility:
        """Case-insensitive; raises ``ValueError`` naming the valid modes."""
        try:
            return cls(text.strip().upper())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown compatibility mode {text!r}; use one of {valid}") from None


class ChangeKind(StrEnum):
    """The kind of a breaking change, named from the old schema to the new one."""

    # Objects and content models (open: undeclared properties allowed; closed:
    # additionalProperties or unevaluatedProperties false; partially open: a schema there).
    PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL = "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL"
    PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL = "PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL"
    PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL = "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"
    PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = (
        "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
    )
    PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = (
        "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
    )
    CONTENT_MODEL_CLOSED = "CONTENT_MODEL_CLOSED"
    CONTENT_MODEL_OPENED = "CONTENT_MODEL_OPENED"
    ADDITIONAL_PROPERTIES_NARROWED = "ADDITIONAL_PROPERTIES_NARROWED"
    ADDITIONAL_PROPERTIES_WIDENED = "ADDITIONAL_PROPERTIES_WIDENED"
    REQUIRED_PROPERTY_ADDED = "REQUIRED_PROPERTY_ADDED"
    REQUIRED_PROPERTY_REMOVED = "REQUIRED_PROPERTY_REMOVED"
    PROPERTY_MADE_REQUIRED = "PROPERTY_MADE_REQUIRED"
    PROPERTY_MADE_OPTIONAL = "PROPERTY_MADE_OPTIONAL"
    DEPENDENT_REQUIRED_ADDED = "DEPENDENT_REQUIRED_ADDED"
    DEPENDENT_REQUIRED_REMOVED = "DEPENDENT_REQUIRED_REMOVED"
    MIN_PROPERTIES_ADDED = "MIN_PROPERTIES_ADDED"
    MIN_PROPERTIES_INCREASED = "MIN_PROPERTIES_INCREASED"
    MIN_PROPERTIES_REMOVED = "MIN_PROPERTIES_REMOVED"
    MIN_PROPERTIES_DECREASED = "MIN_PROPERTIES_DECREASED"
    MAX_PROPERTIES_ADDED = "MAX_PROPERTIES_ADDED"
    MAX_PROPERTIES_DECREASED = "MAX_PROPERTIES_DECREASED"
    MAX_PROPERTIES_REMOVED = "MAX_PROPERTIES_REMOVED"
    MAX_PROPERTIES_INCREASED = "MAX_PROPERTIES_INCREASED"
    # Types and values
    TYPE_NARROWED = "TYPE_NARROWED"
    TYPE_WIDENED = "TYPE_WIDENED"
    TYPE_CHANGED = "TYPE_CHANGED"
    ENUM_VALUE_REMOVED = "ENUM_VALUE_REMOVED"
    ENUM_VALUE_ADDED = "ENUM_VALUE_ADDED"
    ENUM_ADDED = "ENUM_ADDED"
    ENUM_REMOVED = "ENUM_REMOVED"
    VALUE_FORBIDDEN = "VALUE_FORBIDDEN"
    VALUE_ALLOWED = "VALUE_ALLOWED"
    # Numbers
    MINIMUM_ADDED = "MINIMUM_ADDED"
    MINIMUM_INCREASED = "MINIMUM_INCREASED"
    MINIMUM_REMOVED = "MINIMUM_REMOVED"
    MINIMUM_DECREASED = "MINIMUM_DECREASED"
    EXCLUSIVE_MINIMUM_ADDED = "EXCLUSIVE_MINIMUM_ADDED"
    EXCLUSIVE_MINIMUM_INCREASED = "EXCLUSIVE_MINIMUM_INCREASED"
    EXCLUSIVE_MINIMUM_REMOVED = "EXCLUSIVE_MINIMUM_REMOVED"
    EXCLUSIVE_MINIMUM_DECREASED = "EXCLUSIVE_MINIMUM_DECREASED"
    MAXIMUM_ADDED = "MAXIMUM_ADDED"
    MAXIMUM_DECREASED = "MAXIMUM_DECREASED"
    MAXIMUM_REMOVED = "MAXIMUM_REMOVED"
    MAXIMUM_INCREASED = "MAXIMUM_INCREASED"
    EXCLUSIVE_MAXIMUM_ADDED = "EXCLUSIVE_MAXIMUM_ADDED"
    EXCLUSIVE_MAXIMUM_DECREASED = "EXCLUSIVE_MAXIMUM_DECREASED"
    EXCLUSIVE_MAXIMUM_REMOVED = "EXCLUSIVE_MAXIMUM_REMOVED"
    EXCLUSIVE_MAXIMUM_INCREASED = "EXCLUSIVE_MAXIMUM_INCREASED"
    MULTIPLE_OF_ADDED = "MULTIPLE_OF_ADDED"
    MULTIPLE_OF_REMOVED = "MULTIPLE_OF_REMOVED"
    MULTIPLE_OF_CHANGED = "MULTIPLE_OF_CHANGED"
    # Strings
    MIN_LENGTH_ADDED = "MIN_LENGTH_ADDED"
    MIN_LENGTH_INCREASED = "MIN_LENGTH_INCREASED"
    MIN_LENGTH_REMOVED = "MIN_LENGTH_REMOVED"
    MIN_LENGTH_DECREASED = "MIN_LENGTH_DECREASED"
    MAX_LENGTH_ADDED = "MAX_LENGTH_ADDED"
    MAX_LENGTH_DECREASED = "MAX_LENGTH_DECREASED"
    MAX_LENGTH_REMOVED = "MAX_LENGTH_REMOVED"
    MAX_LENGTH_INCREASED = "MAX_LENGTH_INCREASED"
    PATTERN_ADDED = "PATTERN_ADDED"
    PATTERN_REMOVED = "PATTERN_REMOVED"
    PATTERN_CHANGED = "PATTERN_CHANGED"
    FORMAT_ADDED = "FORMAT_ADDED"
    FORMAT_REMOVED = "FORMAT_REMOVED"
    FORMAT_CHANGED = "FORMAT_CHANGED"
    # Arrays
    MIN_ITEMS_ADDED = "MIN_ITEMS_ADDED"
    MIN_ITEMS_INCREASED = "MIN_ITEMS_INCREASED"
    MIN_ITEMS_REMOVED = "MIN_ITEMS_REMOVED"
    MIN_ITEMS_DECREASED = "MIN_ITEMS_DECREASED"
    MAX_ITEMS_ADDED = "MAX_ITEMS_ADDED"
    MAX_ITEMS_DECREASED = "MAX_ITEMS_DECREASED"
    MAX_ITEMS_REMOVED = "MAX_ITEMS_REMOVED"
    MAX_ITEMS_INCREASED = "MAX_ITEMS_INCREASED"
    UNIQUE_ITEMS_ADDED = "UNIQUE_ITEMS_ADDED"
    UNIQUE_ITEMS_REMOVED = "UNIQUE_ITEMS_REMOVED"
    # Composition and keywords Clew can only compare for equality
    COMPOSITION_NARROWED = "COMPOSITION_NARROWED"
    COMPOSITION_WIDENED = "COMPOSITION_WIDENED"
    KEYWORD_CHANGED = "KEYWORD_CHANGED"
    # Found by the semantic containment check when no structural rule explains it
    SCHEMA_NARROWED = "SCHEMA_NARROWED"
    SCHEMA_WIDENED = "SCHEMA_WIDENED"

    @property
    def conservative(self) -> bool:
        """True for kinds reported because Clew cannot prove the change safe (regular
        expressions, formats, composition, uncommon keywords), not because it found data that
        breaks. A semantic containment proof clears them."""
        return self in _CONSERVATIVE


_CONSERVATIVE = frozenset(
    {
        ChangeKind.PATTERN_CHANGED,
        ChangeKind.FORMAT_CHANGED,
        ChangeKind.COMPOSITION_NARROWED,
        ChangeKind.COMPOSITION_WIDENED,
        ChangeKind.KEYWORD_CHANGED,
    }
)


@dataclass(frozen=True, slots=True)
class Change:
    """One breaking change.

    ``path`` is the schema location, dotted (``properties.products.items.properties.price``;
    ``""`` for the root). ``breaks`` is the direction it breaks (``BACKWARD`` or
    ``FORWARD``). ``against`` is, in results of :func:`clew.schema.compat.check_mode`, the
    1-based position in the history of the version it conflicts with (the version number when
    the history comes from the registry). ``rejects_all`` is true for a backward change that
    no event written under the old schema can survive (a SchemaVer MODEL change)."""

    path: str
    kind: ChangeKind
    message: str
    breaks: Direction
    against: int | None = None
    rejects_all: bool = False

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.kind} ({self.breaks}): {self.message}"
