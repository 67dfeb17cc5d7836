"""Compiled validation of events against a source's tracking plan (jsonschema-rs; the
reference ``jsonschema`` validator is never used). A :class:`CompiledPlan` is built once from
the registry's latest versions and is then read-only, so threads may share it; rebuild it when
:meth:`SchemaRegistry.revision` changes.

Events are dicts with Segment field names (``type``, ``event``, ``properties``, ``traits``,
``context``). Violation paths are JSONPath into the event: ``$.properties.products[0].price``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema_rs
import msgspec

from clew.schema._jsonschema import Schema, compile_validator
from clew.schema._normalize import flatten
from clew.schema.enforcement import Enforcement
from clew.schema.subjects import CONTEXT, FIELD_OF, IDENTIFY, PAGE, SCREEN, TRACK_PREFIX

if TYPE_CHECKING:
    from clew.schema.plan import Plan
    from clew.schema.registry import SchemaRegistry

_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_Kind = jsonschema_rs.ValidationErrorKind
_NO_VIOLATIONS: list[Violation] = []


class Violation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One way an event breaks its schema: where (JSONPath into the event), which JSON Schema
    keyword, a readable message, and the subject and SchemaVer of the schema used."""

    path: str
    keyword: str
    message: str
    subject: str = ""
    version: str = ""


class Verdict(msgspec.Struct, omit_defaults=True):
    """What :meth:`CompiledPlan.enforce` decided. ``event`` is what to emit when accepted (with
    unplanned properties omitted and violations recorded in ``context.violations`` as the mode
    says) or the checked event when blocked; ``reason`` is the dead-letter reason
    (``unplanned_event`` or ``schema_violation``) when blocked."""

    accepted: bool
    event: dict[str, Any]
    reason: str | None = None
    violations: list[Violation] = []
    omitted: list[str] = []
    schema_versions: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class _Subject:
    subject: str
    version: str
    field: str
    validator: jsonschema_rs.Validator
    declared: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    keeps_others: bool

    def planned(self, name: str) -> bool:
        return (
            self.keeps_others or name in self.declared or any(p.search(name) for p in self.patterns)
        )


class CompiledPlan:
    """A source's plan, compiled. ``schemas`` maps each subject to its schema and a version
    label (the SchemaVer)."""

    def __init__(
        self,
        source: str,
        enforcement: Enforcement,
        schemas: Mapping[str, tuple[Schema, str]],
        *,
        revision: int = 0,
    ) -> None:
        self.source = source
        self.enforcement = enforcement
        self.revision = revision
        self._omit = enforcement.at_least(Enforcement.OMIT_UNPLANNED_PROPERTIES)
        self._block_unplanned = enforcement.at_least(Enforcement.BLOCK_UNPLANNED_EVENTS)
        self._block_violations = enforcement is Enforcement.BLOCK_VIOLATIONS
        self._track: dict[str, _Subject] = {}
        self._by_type: dict[str, _Subject] = {}
        self._context: _Subject | None = None
        for subject, (schema, version) in schemas.items():
            compiled = _compile(subject, schema, version)
            if subject.startswith(TRACK_PREFIX):
                self._track[subject[len(TRACK_PREFIX) :]] = compiled
            elif subject == CONTEXT:
                self._context = compiled
            elif subject in (IDENTIFY, PAGE, SCREEN):
                self._by_type[subject] = compiled

    @classmethod
    def from_registry(cls, registry: SchemaRegistry, source: str) -> CompiledPlan:
        """The latest version of every active subject of ``source``, with its enforcement.

        The revision is read first, so a plan published meanwhile makes the next revision
        check rebuild rather than be missed."""
        settings = registry.settings(source)
        versions = registry.latest_versions(source)
        schemas = {s: (v.schema, str(v.schemaver)) for s, v in versions.items()}
        return cls(source, settings.enforcement, schemas, revision=settings.revision)

    @classmethod
    def from_plan(cls, plan: Plan) -> CompiledPlan:
        """A plan straight from its files (version label ``local``), e.g. to test events in CI
        before pushing."""
        schemas = {s.subject: (s.schema, "local") for s in plan.subjects.values()}
        return cls(plan.source, plan.enforcement, schemas)

    @property
    def subjects(self) -> list[str]:
        out = [TRACK_PREFIX + name for name in self._track]
        out += list(self._by_type)
        return out + ([CONTEXT] if self._context else [])

    def is_planned(self, event: Mapping[str, Any]) -> bool:
        """False only for a track event whose name has no schema in the plan."""
        return event.get("type") != "track" or event.get("event") in self._track

    def validate(self, event: Mapping[str, Any]) -> list[Violation]:
        """Every violation of the event's subject schema and of the ``context`` schema; an
        event without a schema (unplanned, or a type the plan does not describe) has none."""
        out = _NO_VIOLATIONS
        target = self._target(event)
        if target is not None:
            value = event.get(target.field)
            value = {} if value is None else value
            if not target.validator.is_valid(value):
                out = _violations(target, value)
        ctx = self._context
        if ctx is not None:
            value = event.get("context")
            value = {} if value is None else value
            if not ctx.validator.is_valid(value):
                out = out + _violations(ctx, value)
        return out if out is not _NO_VIOLATIONS else []

    def strip_unplanned(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event without the top-level properties (or traits) its schema does not declare
        in ``properties`` or ``patternProperties``; a schema that sets ``additionalProperties``
        (or ``unevaluatedProperties``) to anything but ``false`` plans every other property
        explicitly, so nothing is removed. Returns the same object when there is nothing to
        remove, else a shallow copy; the input is never modified."""
        target = self._target(event)
        value = event.get(target.field) if target is not None else None
        if (
            target is None
            or not isinstance(value, dict)
            or target.keeps_others
            or target.declared.issuperset(value)
        ):
            return event if isinstance(event, dict) else dict(event)
        keep = {k: v for k, v in value.items() if target.planned(k)}
        if len(keep) == len(value):
            return event if isinstance(event, dict) else dict(event)
        out = dict(event)
        out[target.field] = keep
        return out

    def enforce(self, event: Mapping[str, Any]) -> Verdict:
        """Apply the plan's enforcement mode (see :mod:`clew.schema.enforcement`). The input
        is never modified; ``Verdict.event`` is the input itself when nothing had to change."""
        versions = self._versions(event)
        unplanned: list[Violation] = []
        if not self.is_planned(event):
            unplanned = [
                Violation(
                    "$.event",
                    "unplanned",
                    f"track event {event.get('event')!r} is not in the tracking plan of "
                    f"source {self.source!r}",
                )
            ]
            if self._block_unplanned:
                return Verdict(False, dict(event), "unplanned_event", unplanned, [], versions)
        checked = event if isinstance(event, dict) else dict(event)
        omitted: list[str] = []
        if self._omit:
            stripped = self.strip_unplanned(checked)
            if stripped is not checked:
                field = self._field(event)
                before, after = checked[field], stripped[field]
                omitted = [_join(f"$.{field}", k) for k in before if k not in after]
                checked = stripped
        violations = unplanned + self.validate(checked)
        if violations and self._block_violations:
            return Verdict(False, checked, "schema_violation", violations, omitted, versions)
        if violations:
            checked = dict(checked)
            context = checked.get("context")
            context = dict(context) if isinstance(context, dict) else {}
            context["violations"] = msgspec.to_builtins(violations)
            checked["context"] = context
        return Verdict(True, checked, None, violations, omitted, versions)

    def _target(self, event: Mapping[str, Any]) -> _Subject | None:
        etype = event.get("type")
        if etype == "track":
            return self._track.get(event.get("event"))  # type: ignore[arg-type]
        return self._by_type.get(etype)  # type: ignore[arg-type]

    def _field(self, event: Mapping[str, Any]) -> str:
        target = self._target(event)
        return target.field if target is not None else "properties"

    def _versions(self, event: Mapping[str, Any]) -> dict[str, str]:
        out = {}
        target = self._target(event)
        if target is not None:
            out[target.subject] = target.version
        if self._context is not None:
            out[CONTEXT] = self._context.version
        return out


def _compile(subject: str, schema: Schema, version: str) -> _Subject:
    names: set[str] = set()
    patterns: list[str] = []
    root = flatten(schema, schema)
    _collect_declared(root, schema, names, patterns, depth=0)
    others = (
        root.get("additionalProperties", root.get("unevaluatedProperties"))
        if isinstance(root, dict)
        else None
    )
    return _Subject(
        subject=subject,
        version=version,
        field=FIELD_OF.get(subject, "properties"),
        validator=compile_validator(schema),
        declared=frozenset(names),
        patterns=tuple(re.compile(p) for p in dict.fromkeys(patterns)),
        keeps_others=others is not None and others is not False,
    )


def _collect_declared(
    node: Schema, root: Schema, names: set[str], patterns: list[str], depth: int
) -> None:
    if not isinstance(node, dict) or depth > 8:
        return
    names.update(node.get("properties", {}))
    patterns.extend(node.get("patternProperties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(key, []):
            _collect_declared(flatten(branch, root), root, names, patterns, depth + 1)


def _join(base: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{base}[{part}]"
    if _IDENT.match(part):
        return f"{base}.{part}"
    return f"{base}[{part!r}]"


def _violations(target: _Subject, value: Any) -> list[Violation]:
    out = []
    for error in target.validator.iter_errors(value):
        path = f"$.{target.field}"
        for part in error.instance_path:
            path = _join(path, part)
        kind = error.kind
        found: list[tuple[str, str]]
        if isinstance(kind, _Kind.Required):
            found = [
                (_join(path, kind.property), f"required property {kind.property!r} is missing")
            ]
        elif isinstance(kind, _Kind.AdditionalProperties | _Kind.UnevaluatedProperties):
            found = [
                (
                    _join(path, name),
                    f"property {name!r} is not in the schema, which allows no others",
                )
                for name in kind.unexpected
            ]
        else:
            found = [(path, error.message)]
        out += [Violation(p, kind.name, m, target.subject, target.version) for p, m in found]
    return out
