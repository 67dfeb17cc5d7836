"""The fenced blocks of README.md and docs/*.md, with the marker comment that says what the
documentation tests do with each (tests/test_docs_examples.py).

A marker is an HTML comment on the line directly above the opening fence:

- ``<!-- illustrative: REASON -->``: the block is not run; the reason is required.
- ``<!-- doc-test: OPTION ... -->``: how the block is run or checked. Options are words or
  ``key=value`` pairs (see :data:`OPTIONS`).

Blocks without a marker get the default of their language: ``sh``, ``console`` and
``python`` run, ``toml`` loads into the settings and ``sql`` runs against the document's
lake. ``json``, ``jsonc`` and ``yaml`` blocks need a marker (what they are: a request body,
an answer, a file...), and ``text`` blocks (output, diagrams) are not checked. A block
without a language is an error: name one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Languages whose blocks the tests run or check without a marker.
DEFAULT_RUN = frozenset({"sh", "console", "python", "toml", "sql"})
#: Languages whose blocks need a ``doc-test`` or ``illustrative`` marker.
NEEDS_MARKER = frozenset({"json", "jsonc", "yaml"})
#: Output, diagrams and file listings: never run.
TEXT = frozenset({"text"})

#: Every option a ``doc-test`` marker may carry, with what it means.
OPTIONS = {
    "id": "names the block for the per-block hooks of tests/test_docs_examples.py",
    "file": "write the block, placeholders substituted, to this file of the working directory",
    "exit": "the exit status the sh block ends with (default 0)",
    "at-end": "run after the document's other blocks",
    "shape": "json: every key it shows is in the answer to GET this path (with a token)",
    "post": "json: POST it to this path (with a token); a 2xx answer expected",
    "event-part": "json: part of an event: sent in a track event, a 2xx answer expected",
    "alert": "json: a volume alert; decodes as one and has its fields",
    "definitions": "yaml: an audiences/traits document; parses and checks as a catalog",
    "where": "yaml: a `where:` filter; parses inside a trait",
    "conditions": "yaml: a list of audience conditions; each parses inside an audience",
    "condition": "yaml: a `condition:` mapping; parses as an audience's",
    "destination": "yaml: a destination file; validates as one",
}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^<!--\s*(?P<kind>illustrative|doc-test)\s*:(?P<body>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    illustrative: str | None = None  # the reason
    options: dict[str, str] = field(default_factory=dict)
    marker_error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def marked(self) -> bool:
        return self.illustrative is not None or bool(self.options)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` in order, each with its marker."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(lines[i + 1 : end]) + "\n"
        lang = m["info"].strip().split(" ", 1)[0]
        out.append(_with_marker(path, i + 1, lang, body, lines[i - 1] if i else ""))
        i = end + 1
    return out


def _with_marker(path: Path, line: int, lang: str, text: str, above: str) -> Block:
    m = _MARKER.match(above.strip())
    if not m:
        if "<!--" in above and ("illustrative" in above or "doc-test" in above):
            return Block(path, line, lang, text, marker_error=f"unreadable marker {above!r}")
        return Block(path, line, lang, text)
    body = m["body"].strip()
    if m["kind"] == "illustrative":
        if not body:
            return Block(path, line, lang, text, marker_error="illustrative without a reason")
        return Block(path, line, lang, text, illustrative=body)
    options: dict[str, str] = {}
    for word in body.split():
        key, _, value = word.partition("=")
        if key not in OPTIONS:
            return Block(path, line, lang, text, marker_error=f"unknown doc-test option {key!r}")
        options[key] = value
    if not options:
        return Block(path, line, lang, text, marker_error="doc-test marker without options")
    return Block(path, line, lang, text, options=options)


def problem(block: Block) -> str | None:
    """Why ``block`` is neither run nor marked illustrative, or None."""
    if block.marker_error:
        return block.marker_error
    if not block.lang:
        return "a block without a language: name one (`text` for output or a diagram)"
    if block.illustrative is not None or block.lang in TEXT:
        return None
    if block.lang in NEEDS_MARKER and not block.options:
        return (
            f"a {block.lang} block without a marker: say what it is (<!-- doc-test: ... -->, "
            "see tests/_docblocks.py) or mark it <!-- illustrative: REASON -->"
        )
    if block.lang not in DEFAULT_RUN | NEEDS_MARKER:
        return f"no test runs {block.lang!r} blocks: mark it <!-- illustrative: REASON -->"
    return None
