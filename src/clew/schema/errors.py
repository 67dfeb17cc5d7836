"""The exceptions of the schema registry and tracking plans. Each message says what to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clew.schema.changes import Change, Compatibility


class SchemaError(ValueError):
    """Base class of every error raised by :mod:`clew.schema`."""


class InvalidSchemaError(SchemaError):
    """A document is not a JSON Schema (draft 2020-12) that Clew can publish."""


class InvalidSubjectError(SchemaError):
    """A subject name is not ``track:<event name>``, ``identify``, ``page``, ``screen`` or
    ``context``."""


class SubjectNotFoundError(SchemaError, LookupError):
    """The source has no subject (or no such version of it) by that name."""


class IncompatibleSchemaError(SchemaError):
    """Publishing was refused: at least one subject breaks its compatibility mode.

    ``changes`` lists every breaking change as ``(subject, change)``; ``modes`` gives the mode
    each refused subject was checked under. Nothing was published."""

    def __init__(
        self,
        source: str,
        changes: Sequence[tuple[str, Change]],
        modes: Mapping[str, Compatibility],
    ) -> None:
        self.source = source
        self.changes = list(changes)
        self.modes = dict(modes)
        subjects = list(dict.fromkeys(subject for subject, _ in self.changes))
        lines = [
            f"refused to publish {len(subjects)} subject(s) of source {source!r}: "
            f"{len(self.changes)} breaking change(s); nothing was published"
        ]
        for subject, change in self.changes:
            mode = self.modes.get(subject)
            lines.append(f"  {subject} ({mode}): {change}")
        lines.append(
            "Fix the schemas, or publish them as a new event name, or lower the subject's "
            "compatibility mode (e.g. `compatibility: NONE` in its plan file) on purpose."
        )
        super().__init__("\n".join(lines))


class PlanError(SchemaError):
    """A tracking plan directory cannot be loaded."""


class PlanFileError(PlanError):
    """One file of a tracking plan is wrong; ``path`` names it."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PlanSyntaxError(PlanFileError):
    """A plan file is not valid YAML or JSON."""


class PlanSchemaError(PlanFileError):
    """A plan file holds something that is not a valid JSON Schema (draft 2020-12)."""
