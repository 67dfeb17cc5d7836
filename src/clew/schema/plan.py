"""Tracking plans kept as files in the user's repository, pushed to the registry.

A plan is a directory::

    plan.yaml              source: web            # required: the source the plan governs
                           mode: block_violations # allow | omit_unplanned_properties |
                                                  # block_unplanned_events | block_violations
                           compatibility: BACKWARD # default mode of every subject
    defs.yaml              optional shared definitions, name -> JSON Schema; a subject uses
                           one with {"$ref": "#/$defs/<name>"} and gets a copy when pushed
    events/<name>.yaml     one track event each: `event:` (the exact event name, e.g.
                           "Order Completed" in order_completed.yaml), `schema:` (JSON Schema
                           of its properties), optional `compatibility:` and `description:`
    identify.yaml          `schema:` of identify traits   (each optional, with the same
    page.yaml              `schema:` of page properties    optional keys)
    screen.yaml            `schema:` of screen properties
    context.yaml           `schema:` of every event's context

Every file may be YAML (``.yaml``/``.yml``) or JSON (``.json``). Schemas are JSON Schema draft
2020-12. Loading checks everything and names the file at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clew.schema._jsonschema import Schema, check_schema, local_refs
from clew.schema.changes import Change
from clew.schema.compat import Compatibility, check_mode
from clew.schema.enforcement import Enforcement
from clew.schema.errors import (
    InvalidSchemaError,
    InvalidSubjectError,
    PlanError,
    PlanFileError,
    PlanSchemaError,
    PlanSyntaxError,
)
from clew.schema.registry import PublishResult, SchemaRegistry, SubjectUpdate
from clew.schema.subjects import CONTEXT, IDENTIFY, PAGE, SCREEN, subject_order, track_subject

_SUFFIXES = (".yaml", ".yml", ".json")
_FIXED_FILES = {IDENTIFY: IDENTIFY, PAGE: PAGE, SCREEN: SCREEN, CONTEXT: CONTEXT}
_PLAN_KEYS = {"source", "mode", "compatibility", "description"}
_SUBJECT_KEYS = {"compatibility", "description", "schema"}
_DEFS_PREFIX = "#/$defs/"


@dataclass(frozen=True, slots=True)
class PlannedSubject:
    subject: str
    schema: Schema
    path: Path
    compatibility: Compatibility | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    directory: Path
    source: str
    enforcement: Enforcement
    compatibility: Compatibility
    subjects: dict[str, PlannedSubject]
    description: str | None = None

    def updates(self) -> list[SubjectUpdate]:
        return [SubjectUpdate(s.subject, s.schema, s.compatibility) for s in self.subjects.values()]

    def modes(self) -> dict[str, Compatibility]:
        """The compatibility mode each subject is checked under: its file's, or the plan's."""
        return {s.subject: s.compatibility or self.compatibility for s in self.subjects.values()}


def load_plan(directory: Path | str) -> Plan:
    """Read and check a plan directory. Raises :class:`PlanFileError` (or its subclasses
    :class:`PlanSyntaxError` and :class:`PlanSchemaError`) naming the file at fault, or
    :class:`PlanError` for a problem of the directory as a whole."""
    root = Path(directory)
    if not root.is_dir():
        raise PlanError(f"{root} is not a directory holding a tracking plan")
    files = {p.stem: p for p in _plan_files(root)}
    unknown = sorted(set(files) - {"plan", "defs", *_FIXED_FILES})
    if unknown:
        raise PlanFileError(
            files[unknown[0]],
            "is not a plan file: the top level holds plan, defs, identify, page, screen and "
            "context files; track events go in events/",
        )
    if "plan" not in files:
        raise PlanError(f"{root} has no plan.yaml (with at least `source: <source name>`)")
    settings = _mapping(files["plan"], _read(files["plan"]), _PLAN_KEYS, what="plan.yaml")
    source = settings.get("source")
    if not isinstance(source, str) or not 1 <= len(source) <= 100:
        raise PlanFileError(files["plan"], "`source:` must name the source (1 to 100 characters)")
    enforcement = _parse(files["plan"], "mode", settings.get("mode", "allow"), Enforcement.parse)
    default = _parse(
        files["plan"],
        "compatibility",
        settings.get("compatibility", "BACKWARD"),
        Compatibility.parse,
    )
    defs = _load_defs(files["defs"]) if "defs" in files else {}
    subjects: dict[str, PlannedSubject] = {}
    for stem, subject in _FIXED_FILES.items():
        if stem in files:
            subjects[subject] = _load_subject(files[stem], subject, defs, track=False)
    events = root / "events"
    if events.is_dir():
        for path in _plan_files(events):
            planned = _load_subject(path, None, defs, track=True)
            if planned.subject in subjects:
                other = subjects[planned.subject].path
                raise PlanFileError(path, f"describes {planned.subject!r} again (see {other})")
            subjects[planned.subject] = planned
    ordered = dict(sorted(subjects.items(), key=lambda kv: subject_order(kv[0])))
    description = settings.get("description")
    return Plan(
        root,
        source,
        enforcement,
        default,
        ordered,
        description if isinstance(description, str) else None,
    )


def push(registry: SchemaRegistry, plan: Plan) -> PublishResult:
    """Publish the whole plan atomically (see :meth:`SchemaRegistry.publish_all`): its
    settings, a new version of every changed subject, and the retirement of subjects that
    left the plan. Raises :class:`IncompatibleSchemaError` listing every breaking change when
    any subject's mode refuses it; nothing is published then."""
    return registry.publish_all(
        plan.source,
        plan.updates(),
        enforcement=plan.enforcement,
        compatibility=plan.compatibility,
        retire_missing=True,
    )


def check(registry: SchemaRegistry, plan: Plan) -> list[tuple[str, Change]]:
    """Dry run for CI: every ``(subject, change)`` that would make :func:`push` refuse the
    plan, checked under the modes the plan sets. Empty means the push would succeed."""
    return registry.check_all(plan.source, plan.updates(), compatibility=plan.compatibility)


def compare(old: Plan, new: Plan) -> list[tuple[str, Change]]:
    """CI without a registry: every ``(subject, change)`` by which ``new`` breaks the mode it
    sets against ``old`` (say, the plan as checked out from the main branch). Only the one
    version in ``old`` is known, so transitive modes check against it alone."""
    modes = new.modes()
    out = []
    for subject, planned in new.subjects.items():
        before = old.subjects.get(subject)
        if before is not None:
            changes = check_mode([before.schema], planned.schema, modes[subject])
            out += [(subject, c) for c in changes]
    return out


def _plan_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in _SUFFIXES and not path.name.startswith("."):
            yield path


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise PlanSyntaxError(path, f"not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise PlanSyntaxError(path, f"not valid YAML: {e}") from None
    if data is None:
        raise PlanSyntaxError(path, "is empty")
    _check_json(path, data, "")
    return data


def _check_json(path: Path, value: Any, where: str) -> None:
    """YAML can hold dates, sets and non-string keys; a schema may hold only JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PlanSyntaxError(path, f"key {key!r} at {where or '(root)'} must be a string")
            _check_json(path, item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(path, item, f"{where}/{i}")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise PlanSyntaxError(
            path,
            f"the value at {where or '(root)'} is a YAML {type(value).__name__}, not JSON: "
            "put it in quotes",
        )


def _mapping(path: Path, data: Any, allowed: set[str], *, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PlanFileError(path, f"{what} must be a mapping of keys to values")
    unknown = sorted(set(data) - allowed)
    if unknown:
        hint = ""
        if what != "plan.yaml" and ("type" in data or "properties" in data):
            hint = "; put the JSON Schema under `schema:`"
        raise PlanFileError(
            path,
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(sorted(allowed))}{hint}",
        )
    return data


def _parse(path: Path, key: str, value: Any, parse: Any) -> Any:
    try:
        return parse(str(value))
    except ValueError as e:
        raise PlanFileError(path, f"`{key}:` {e}") from None


def _load_defs(path: Path) -> dict[str, Schema]:
    data = _read(path)
    if not isinstance(data, dict):
        raise PlanFileError(path, "defs must map each definition name to a JSON Schema")
    try:
        check_schema({"$defs": data})
    except InvalidSchemaError as e:
        raise PlanSchemaError(path, str(e)) from None
    return data


def _load_subject(
    path: Path, subject: str | None, defs: dict[str, Schema], *, track: bool
) -> PlannedSubject:
    allowed = _SUBJECT_KEYS | ({"event"} if track else set())
    data = _mapping(path, _read(path), allowed, what="a subject file")
    if track:
        name = data.get("event")
        if not isinstance(name, str):
            raise PlanFileError(
                path,
                "needs `event:` with the exact track event name, e.g. `event: Order Completed`",
            )
        try:
            subject = track_subject(name)
        except InvalidSubjectError as e:
            raise PlanFileError(path, str(e)) from None
    assert subject is not None
    if "schema" not in data:
        raise PlanFileError(path, "needs `schema:` holding the JSON Schema")
    schema = _with_shared_defs(path, data["schema"], defs)
    try:
        check_schema(schema)
    except InvalidSchemaError as e:
        raise PlanSchemaError(path, str(e)) from None
    mode = data.get("compatibility")
    description = data.get("description")
    return PlannedSubject(
        subject,
        schema,
        path,
        _parse(path, "compatibility", mode, Compatibility.parse) if mode is not None else None,
        description if isinstance(description, str) else None,
    )


def _with_shared_defs(path: Path, schema: Any, defs: dict[str, Schema]) -> Any:
    """``schema`` with a copy of each shared definition it references (transitively) that it
    does not define itself."""
    if not isinstance(schema, dict):
        return schema
    own = schema.get("$defs", {})
    if not isinstance(own, dict):
        return schema  # the meta-schema check reports it
    added: dict[str, Schema] = {}
    pending: list[Schema] = [schema]
    while pending:
        for ref in local_refs(pending.pop()):
            if not ref.startswith(_DEFS_PREFIX):
                continue
            name = ref[len(_DEFS_PREFIX) :].split("/")[0]
            if name in own or name in added:
                continue
            if name not in defs:
                raise PlanSchemaError(
                    path, f"$ref {ref!r} names no definition in this file's $defs or in defs.yaml"
                )
            added[name] = json.loads(json.dumps(defs[name]))
            pending.append(added[name])
    if not added:
        return schema
    return {**schema, "$defs": {**own, **dict(sorted(added.items()))}}
