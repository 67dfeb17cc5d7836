"""Plain-text reports for people: what `clew schema check` and `clew plan push` print."""

from __future__ import annotations

import difflib
import json
import textwrap
from collections.abc import Mapping, Sequence

from clew.schema.changes import Change
from clew.schema.compat import Compatibility, diff
from clew.schema.registry import PublishResult, SchemaVersion

_WIDTH = 100


def render_check(
    problems: Sequence[tuple[str, Change]],
    *,
    source: str,
    modes: Mapping[str, Compatibility] | None = None,
) -> str:
    """Every breaking change, grouped by subject, with what it breaks and why; or one line
    saying the plan is compatible."""
    if not problems:
        return f"The tracking plan of source {source!r} is compatible: nothing would be refused.\n"
    subjects = list(dict.fromkeys(s for s, _ in problems))
    lines = [
        f"The tracking plan of source {source!r} has {len(problems)} breaking change(s) in "
        f"{len(subjects)} subject(s):",
    ]
    for subject in subjects:
        changes = [c for s, c in problems if s == subject]
        mode = modes.get(subject) if modes else None
        lines += ["", f"{subject}{f'  (compatibility {mode})' if mode else ''}"]
        for change in changes:
            against = f", against version {change.against}" if change.against else ""
            lines.append(
                f"  x {change.path or '(root)'}: {change.kind} (breaks {change.breaks}{against})"
            )
            lines += textwrap.wrap(
                change.message, _WIDTH, initial_indent="      ", subsequent_indent="      "
            )
    lines += [
        "",
        "BACKWARD breaks stop events already written from validating against the new schema "
        "(replays, historical data); FORWARD breaks stop readers still on the old schema from "
        "reading new events. Fix the schema; if a break is intended, publish it under a new "
        "event name or set the subject's `compatibility:` to a weaker mode (NONE) on purpose.",
    ]
    return (
        "\n".join(textwrap.fill(line, _WIDTH) if len(line) > _WIDTH else line for line in lines)
        + "\n"
    )


def render_push(result: PublishResult) -> str:
    """One line per subject: created (with its SchemaVer and bump), unchanged, or retired,
    plus the breaking changes its mode allowed."""
    s = result.settings
    head = "Pushed" if result.changed else "Nothing to push for"
    lines = [
        f"{head} the tracking plan of source {s.source!r} (mode {s.enforcement}, "
        f"default compatibility {s.compatibility}, revision {s.revision}):"
    ]
    width = max((len(p.version.subject) for p in result.published), default=10)
    for p in result.published:
        v = p.version
        if p.created:
            what = f"{v.schemaver} (version {v.version}{f', {v.bump}' if v.bump else ''})"
            state = "created"
        else:
            what = f"{v.schemaver} (version {v.version})"
            state = "restored" if p.reactivated else "unchanged"
        lines.append(f"  {state:<10} {v.subject:<{width}}  {what}")
        for c in p.allowed_changes:
            lines.append(f"{'':13}note: {c.path or '(root)'}: {c.kind} breaks {c.breaks}, allowed")
    for subject in result.retired:
        lines.append(f"  {'retired':<10} {subject}  (no longer in the plan; versions kept)")
    return "\n".join(lines) + "\n"


def render_diff(old: SchemaVersion, new: SchemaVersion) -> str:
    """A unified diff of two versions' schemas, then the breaking changes either way."""
    a = json.dumps(old.schema, indent=2, sort_keys=True).splitlines()
    b = json.dumps(new.schema, indent=2, sort_keys=True).splitlines()
    label_a = f"{old.subject} version {old.version} ({old.schemaver})"
    label_b = f"{new.subject} version {new.version} ({new.schemaver})"
    lines = list(difflib.unified_diff(a, b, label_a, label_b, lineterm=""))
    if not lines:
        return f"{label_a} and {label_b} are identical.\n"
    changes = diff(old.schema, new.schema)
    lines.append("")
    if not changes:
        lines.append("Fully compatible: each schema accepts every event the other accepts.")
    for c in changes:
        lines.append(f"x {c.path or '(root)'}: {c.kind} (breaks {c.breaks})")
        lines += textwrap.wrap(c.message, _WIDTH, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines) + "\n"
