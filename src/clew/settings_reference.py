"""The settings as a reference: every key with its default, environment variable, meaning and
(for a loaded configuration) value and origin. `clew config docs` writes docs/configuration.md
from it and `clew config show` prints the effective settings with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from clew.config import LoadedSettings, Settings, env_var


@dataclass(frozen=True)
class Key:
    """One setting: ``path`` such as ``("lake", "flush_rows")``, in the table ``section``
    (``()`` for the top level), with its field as the model declares it."""

    path: tuple[str, ...]
    field: FieldInfo

    @property
    def section(self) -> tuple[str, ...]:
        return self.path[:-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return env_var(self.path)

    def default(self) -> Any:
        """The default, as JSON would write it (``None`` when there is none: a required key)."""
        value = self.field.get_default(call_default_factory=True)
        return None if value is PydanticUndefined else to_jsonable_python(value)


def _table_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def sections(
    model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], type[BaseModel]]]:
    """Each table of the settings (the top level first) with the model that defines it."""
    yield prefix, model
    for name, field in model.model_fields.items():
        table = _table_model(field.annotation)
        if table is not None:
            yield from sections(table, (*prefix, name))


def keys(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> Iterator[Key]:
    """Every setting that holds a value (not a table), in declaration order."""
    for name, field in model.model_fields.items():
        table = _table_model(field.annotation)
        if table is None:
            yield Key((*prefix, name), field)
        else:
            yield from keys(table, (*prefix, name))


def models(model: type[BaseModel] = Settings) -> Iterator[type[BaseModel]]:
    """Every model the settings are made of, including those inside lists and tables
    (``identity.rules.id_types`` holds :class:`IdTypeRule` values)."""
    seen: set[type[BaseModel]] = set()

    def visit(current: type[BaseModel]) -> Iterator[type[BaseModel]]:
        if current in seen:
            return
        seen.add(current)
        yield current
        for field in current.model_fields.values():
            stack: list[Any] = [field.annotation]
            while stack:
                annotation = stack.pop()
                table = _table_model(annotation)
                if table is not None:
                    yield from visit(table)
                stack.extend(get_args(annotation))

    return visit(model)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _summary(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def render_docs() -> str:
    """docs/configuration.md: one table per section, each key with its default, environment
    variable and meaning."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from the settings models by `clew config docs > docs/configuration.md`;",
        "     edit the descriptions in the code, not here (a test fails when they differ). -->",
        "",
        "Each setting comes from, in the order each wins over the one before: its default, the",
        "TOML file given with `--config`, its `CLEW_*` environment variable, a command-line",
        "option (`--data-dir`, `--host`, `--port`). `clew config show` prints the settings in",
        "effect and where each came from, secrets masked.",
        "",
        "In the file a key sits under its section (`[lake]`, then `flush_rows = 100`); in the",
        "environment its path is joined by `__` (`CLEW_LAKE__FLUSH_ROWS=100`), and a list or",
        'table is written as JSON (`CLEW_LOG__KAFKA_CLIENT=\'{"client.id": "clew"}\'`). An',
        "unknown key anywhere is an error that names the closest valid one. Defaults are",
        "written as JSON (`null`: unset).",
    ]
    by_section: dict[tuple[str, ...], list[Key]] = {}
    for key in keys():
        by_section.setdefault(key.section, []).append(key)
    for section, model in sections():
        if section not in by_section:
            continue
        title = f"`[{'.'.join(section)}]`" if section else "Top level"
        lines += ["", f"## {title}", ""]
        summary = _summary(model)
        if summary and model is not Settings:
            lines += [summary, ""]
        lines += ["| Key | Default | Environment | Meaning |", "| --- | --- | --- | --- |"]
        for key in by_section[section]:
            default = _cell(f"`{_json(key.default())}`")
            meaning = _cell(key.field.description or "")
            lines.append(f"| `{key.path[-1]}` | {default} | `{key.env}` | {meaning} |")
    return "\n".join(lines) + "\n"


# `clew config show` aligns the origins of lines up to this long.
_ALIGN_UP_TO = 60


@dataclass(frozen=True)
class Shown:
    """One line of `clew config show`: the dotted key, its value as JSON (secrets masked)
    and where it came from."""

    key: str
    value: Any
    origin: str


def effective(loaded: LoadedSettings) -> list[Shown]:
    """Every setting in effect, secrets masked as in any printed settings."""
    values = loaded.settings.model_dump(mode="json")
    shown = []
    for key in keys():
        value: Any = values
        for part in key.path:
            value = value[part]
        shown.append(Shown(key.dotted, value, loaded.origin(key.dotted)))
    return shown


def render_show(rows: list[Shown]) -> str:
    """The rows as ``key = value  # origin`` lines, the origins aligned (after a long value,
    two spaces on)."""
    texts = [f"{row.key} = {_json(row.value)}" for row in rows]
    width = max((len(text) for text in texts if len(text) <= _ALIGN_UP_TO), default=0)
    return "".join(
        f"{text.ljust(width)}  # {row.origin}\n" for text, row in zip(texts, rows, strict=True)
    )
