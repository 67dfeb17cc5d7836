"""Tracking plans, the schema registry and compiled validation.

- :mod:`~clew.schema.registry`: durable, versioned (SchemaVer), immutable schemas per source
  and subject, with a compatibility mode each;
- :mod:`~clew.schema.compat`: compatibility rules for JSON Schema draft 2020-12;
- :mod:`~clew.schema.plan`: tracking plans as files, pushed and checked;
- :mod:`~clew.schema.validator`: compiled validation and enforcement for the validate stage;
- :mod:`~clew.schema.report`: the texts the CLI prints.
"""

from clew.schema.changes import Change, ChangeKind, Direction
from clew.schema.compat import Compatibility, check, check_mode, diff
from clew.schema.enforcement import Enforcement
from clew.schema.errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    InvalidSubjectError,
    PlanError,
    PlanFileError,
    PlanSchemaError,
    PlanSyntaxError,
    SchemaError,
    SubjectNotFoundError,
)
from clew.schema.plan import Plan, PlannedSubject, load_plan, push
from clew.schema.registry import (
    PlanSettings,
    Published,
    PublishResult,
    SchemaRegistry,
    SchemaVersion,
    SubjectInfo,
    SubjectUpdate,
)
from clew.schema.report import render_check, render_diff, render_push
from clew.schema.schemaver import Bump, SchemaVer
from clew.schema.subjects import track_subject
from clew.schema.validator import CompiledPlan, Verdict, Violation

__all__ = [
    "Bump",
    "Change",
    "ChangeKind",
    "Compatibility",
    "CompiledPlan",
    "Direction",
    "Enforcement",
    "IncompatibleSchemaError",
    "InvalidSchemaError",
    "InvalidSubjectError",
    "Plan",
    "PlanError",
    "PlanFileError",
    "PlanSchemaError",
    "PlanSettings",
    "PlanSyntaxError",
    "PlannedSubject",
    "PublishResult",
    "Published",
    "SchemaError",
    "SchemaRegistry",
    "SchemaVer",
    "SchemaVersion",
    "SubjectInfo",
    "SubjectNotFoundError",
    "SubjectUpdate",
    "Verdict",
    "Violation",
    "check",
    "check_mode",
    "diff",
    "load_plan",
    "push",
    "render_check",
    "render_diff",
    "render_push",
    "track_subject",
]
