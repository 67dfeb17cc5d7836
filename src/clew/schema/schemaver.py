"""SchemaVer (MODEL-REVISION-ADDITION) versions, bumped from what a change does to the data
already written (see docs/schema-registry.md):

- **MODEL**: no event written under the previous version validates any more;
- **REVISION**: some events written under the previous version may no longer validate;
- **ADDITION**: every event written under the previous version still validates.

>>> SchemaVer.parse("1-0-2").bump(Bump.REVISION)
SchemaVer(model=1, revision=1, addition=0)
>>> str(SchemaVer.FIRST)
'1-0-0'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from clew.schema._jsonschema import Schema
from clew.schema.changes import Change, Direction
from clew.schema.compat import check, disjoint

_FORMAT = re.compile(r"^([1-9][0-9]*)-(0|[1-9][0-9]*)-(0|[1-9][0-9]*)$")


class Bump(StrEnum):
    MODEL = "MODEL"
    REVISION = "REVISION"
    ADDITION = "ADDITION"


@dataclass(frozen=True, order=True, slots=True)
class SchemaVer:
    model: int
    revision: int
    addition: int

    FIRST: ClassVar[SchemaVer]

    @classmethod
    def parse(cls, text: str) -> SchemaVer:
        """Parse ``MODEL-REVISION-ADDITION``; raises ``ValueError`` otherwise."""
        m = _FORMAT.match(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not a SchemaVer such as 1-0-0")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def bump(self, level: Bump) -> SchemaVer:
        if level is Bump.MODEL:
            return SchemaVer(self.model + 1, 0, 0)
        if level is Bump.REVISION:
            return SchemaVer(self.model, self.revision + 1, 0)
        return SchemaVer(self.model, self.revision, self.addition + 1)

    def __str__(self) -> str:
        return f"{self.model}-{self.revision}-{self.addition}"


SchemaVer.FIRST = SchemaVer(1, 0, 0)


def classify(backward_changes: Sequence[Change], *, shares_no_value: bool = False) -> Bump:
    """The bump for a new version, given its backward changes against the previous one."""
    if shares_no_value or any(c.rejects_all for c in backward_changes):
        return Bump.MODEL
    return Bump.REVISION if backward_changes else Bump.ADDITION


def bump_for(previous: Schema, new: Schema) -> Bump:
    """The SchemaVer bump from ``previous`` to ``new``."""
    changes = check(previous, new, Direction.BACKWARD)
    return classify(changes, shares_no_value=bool(changes) and disjoint(previous, new))
