"""Executable documentation: every fenced block of README.md and docs/*.md is run or checked
here, or marked illustrative with a reason (tests/_docblocks.py says how blocks are marked).

Per document, the blocks that need a server run in order against a `clew serve` of their own
(a free loopback port, a fresh data directory ``./.clew`` of a working directory that also
holds ``.venv`` and ``examples`` as links into the repository, so commands run as a user
types them). The venv's ``bin`` is on the PATH (as after ``source .venv/bin/activate``), and
placeholders are substituted: ``127.0.0.1:8088`` / ``localhost:8088`` by the server's
address, ``WRITE_KEY`` by the write key of the ``default`` source, ``TOKEN`` by an access
token with every scope (also in the environment as ``$TOKEN``), plus each document's own in
:data:`SETUP`. ``curl`` fails on an HTTP error answer (``--fail-with-body``), so a request
the server refuses fails its block. Shell blocks run with ``sh -e``; ``console`` blocks run
each ``$`` line and check the output shown under it (numbers, widths of tables and ``…``
are wildcards). Blocks that need no server (settings files, definitions) are checked
without one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from _docblocks import ROOT, Block, blocks, documents, problem
from _services import unavailable
from _support import ServeProcess, clew_bin, drained, wait_for
from clew.audiences.definitions import AudienceCatalog as Definitions
from clew.audiences.definitions import parse_audience, parse_document, parse_trait
from clew.background import free_port
from clew.config import Settings, load_settings
from clew.destinations.config import parse_destination
from clew.lake.query import Lake
from clew.monitor.alerts import decode_alert, encode_alert
from clew.sources import Catalog

ALL = [b for doc in documents() for b in blocks(doc)]
VENV_BIN = Path(clew_bin()).parent
DOC_TIMEOUT_S = 120


def test_every_block_is_run_checked_or_marked_illustrative() -> None:
    problems = [f"{b.where}: {p}" for b in ALL if (p := problem(b))]
    assert not problems, "documentation blocks neither tested nor marked:\n" + "\n".join(problems)


def test_every_illustrative_reason_says_something() -> None:
    short = [b.where for b in ALL if b.illustrative is not None and len(b.illustrative) < 12]
    assert not short, f"give a reason, not a word: {short}"


# -- blocks checked without a server -------------------------------------------------------


def _static(b: Block) -> bool:
    if b.illustrative is not None or problem(b):
        return False
    return b.lang == "toml" or any(
        k in b.options
        for k in ("alert", "definitions", "where", "conditions", "condition", "destination")
    )


@pytest.mark.parametrize("block", [b for b in ALL if _static(b)], ids=lambda b: b.where)
def test_static_block(block: Block, tmp_path: Path) -> None:
    text, o = block.text, block.options
    if block.lang == "toml":
        config = tmp_path / "clew.toml"
        config.write_text(text)
        load_settings(config)  # raises naming the key that does not exist or does not fit
    elif "alert" in o:
        doc = json.loads(text)
        alert = decode_alert(text.encode())
        assert set(json.loads(encode_alert(alert))) == set(doc), "an alert has these fields"
    elif "definitions" in o:
        Definitions.of(parse_document(yaml.safe_load(text)))
    elif "where" in o:
        parse_trait({"name": "t", "kind": "count", "event": "Order Completed", **_yaml(text)})
    elif "conditions" in o:
        for i, cond in enumerate(yaml.safe_load(text)):
            parse_audience({"name": f"a{i}", "condition": cond})
    elif "condition" in o:
        parse_audience({"name": "a", **_yaml(text)})
    elif "destination" in o:
        parse_destination(_yaml(text), block.where)


def _yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


# -- documents run against a server --------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class Session:
    """One document's working directory, `clew serve` and credentials."""

    def __init__(self, tmp: Path, substitutions: dict[str, str]) -> None:
        real_curl = shutil.which("curl")
        if real_curl is None:
            unavailable("the documentation's examples use curl: apt-get install curl")
        self.cwd = tmp / "work"
        self.cwd.mkdir()
        (self.cwd / ".venv").symlink_to(VENV_BIN.parent)  # the venv running the tests
        (self.cwd / "examples").symlink_to(ROOT / "examples")
        shims = tmp / "shims"
        shims.mkdir()
        curl = shims / "curl"
        curl.write_text(
            f'#!/bin/sh\nexec {real_curl} --fail-with-body --silent --show-error "$@"\n'
        )
        curl.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLEW_")}
        self.env["PATH"] = os.pathsep.join([str(shims), str(VENV_BIN), os.environ["PATH"]])
        self.env["COLUMNS"] = "160"  # a wide terminal: documented lines are not wrapped
        self.data_dir = self.cwd / ".clew"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.substitutions = substitutions
        self.server = ServeProcess(self.data_dir, self.port)
        try:
            self.server.start()
        except BaseException:
            self.close()
            raise
        catalog = Catalog.open(Settings(data_dir=self.data_dir))
        try:
            self.write_key = catalog.source("default").write_key
            self.token = catalog.create_token("docs", ["all"])
        finally:
            catalog.close()
        self.env |= {"TOKEN": self.token, "WRITE_KEY": self.write_key}

    def close(self) -> None:
        self.server.stop()
        log = getattr(self.server, "log_file", None)
        if log is not None and not log.closed:  # the server had exited by itself
            log.close()

    def settle(self, timeout_s: float = 60) -> None:
        """Wait until every stage has consumed everything (what a block reads is in place)."""
        deadline = time.monotonic() + timeout_s
        while not drained(self.url):
            if time.monotonic() > deadline:
                metrics = httpx.get(self.url + "/metrics").text
                lags = [x for x in metrics.splitlines() if x.startswith("clew_consumer_lag{")]
                raise AssertionError(f"the stages did not catch up in {timeout_s} s: {lags}")
            time.sleep(0.05)

    def substitute(self, text: str) -> str:
        text = re.sub(r"\b(127\.0\.0\.1|localhost):8088\b", rf"\g<1>:{self.port}", text)
        text = re.sub(r"(?<![$\w])WRITE_KEY\b", self.write_key, text)
        text = re.sub(r"(?<![$\w])TOKEN\b", self.token, text)
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def run_sh(self, script: str, check: bool = True) -> Result:
        proc = subprocess.run(
            ["sh", "-e", "-c", script],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DOC_TIMEOUT_S,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert proc.returncode == 0, _failure(script, result)
        return result

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def send(self, *events: dict[str, Any]) -> None:
        r = httpx.post(
            self.url + "/v1/batch", json={"batch": list(events)}, auth=(self.write_key, "")
        )
        assert r.status_code == 200, r.text


def _failure(script: str, r: Result) -> str:
    return f"exit {r.returncode}\n$ {script}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


# What each document needs before its blocks run, and what it checks after some of them.
Hook = Callable[[Session, Result], None]


@dataclass
class Setup:
    before: Callable[[Session], None] | None = None
    substitutions: dict[str, str] = field(default_factory=dict)
    # by the block's id: run before it, and check after it
    before_block: dict[str, Callable[[Session], None]] = field(default_factory=dict)
    after_block: dict[str, Hook] = field(default_factory=dict)
    python_checks: dict[str, str] = field(default_factory=dict)


def _demo(s: Session) -> None:
    s.run_sh(".venv/bin/clew demo")
    s.settle()


def _contains(*parts: str) -> Hook:
    def check(_: Session, r: Result) -> None:
        for part in parts:
            assert part in r.stdout, f"{part!r} not in the output:\n{r.stdout}"

    return check


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _readme_text() -> str:
    return (ROOT / "README.md").read_text()


def _readme_most_viewed(_: Session, r: Result) -> None:
    """The README's sentence about the demo's answers, against the demo's answers."""
    m = re.search(
        r"Product pages are the most viewed \(([\d,]+) views, then Home with ([\d,]+)\)",
        " ".join(_readme_text().split()),
    )
    assert m, "the README states the demo's most viewed pages"
    assert [(row[0], row[1]) for row in r.rows[:2]] == [
        ("Product", _number(m[1])),
        ("Home", _number(m[2])),
    ]


def _readme_cta(_: Session, r: Result) -> None:
    m = re.search(
        r"(\d+) of (\d+) Home visitors clicked \"Shop now\", a click-through rate of\s+"
        r"([\d.]+) %",
        " ".join(_readme_text().split()),
    )
    assert m, "the README states the demo's click-through rate"
    [(saw_home, clicked, ctr)] = r.rows
    assert (clicked, saw_home, ctr) == (int(m[1]), int(m[2]), float(m[3]))


def _privacy_before(s: Session) -> None:
    for who, user in (("ada@shop.test", "ada-1815"), ("bob@shop.test", "bob-1")):
        s.send(
            {
                "type": "identify",
                "userId": user,
                "traits": {"email": who, "name": who.split("@")[0]},
                "messageId": f"signup-{who[0]}",
            }
        )
    s.settle()
    # The documented request id stands for one of this data directory's requests.
    request = s.run_sh("clew privacy request suppress email:bob@shop.test --json")
    s.substitutions["pr_3f9a1c0d2b7e4a61"] = json.loads(request.stdout)["id"]


PROFILE_API_AUDIENCE = """
audiences:
  - name: big_spenders
    condition: {event: Order Completed, sum: revenue, op: gte, value: 100}
"""


def _profile_api_before(s: Session) -> None:
    (s.cwd / "big_spenders.yaml").write_text(PROFILE_API_AUDIENCE)
    s.run_sh("clew audiences push big_spenders.yaml")
    base = {"userId": "42", "anonymousId": "ada-laptop", "context": {"locale": "en-GB"}}
    s.send(
        {
            **base,
            "type": "identify",
            "traits": {"email": "ada@shop.test", "name": "Ada", "plan": "pro"},
            "messageId": "ajs-5d1",
        },
        *(
            {
                **base,
                "type": "track",
                "event": "Order Completed",
                "properties": {"revenue": revenue},
                "messageId": f"ajs-order-{i}",
            }
            for i, revenue in enumerate((30, 40.5, 50))
        ),
    )
    s.settle()
    wait_for(lambda: s.get("/v1/profiles/user_id:42")["audiences"] == ["big_spenders"])


def _lifecycle_before(s: Session) -> None:
    """Events over the last 200 days, then one lifecycle run: warm and cold partitions, as
    the documented status shows."""
    now = time.time()
    s.send(
        *(
            {
                "type": "track",
                "event": "Page Viewed",
                "anonymousId": f"a-{day}",
                "messageId": f"m-{day}",
                "timestamp": time.strftime("%Y-%m-%dT12:00:00Z", time.gmtime(now - day * 86400)),
            }
            for day in range(0, 200, 5)
        )
    )
    s.settle()
    s.run_sh("clew lifecycle run")


def _destinations_before(s: Session) -> None:
    s.env["CRM_HOOK_SECRET"] = "a-secret-for-the-docs"


def _plan_from_the_doc(s: Session, _: Result) -> None:
    """plan.yaml and the subject file the page shows, with the example's shared definitions,
    are a plan the registry accepts."""
    shutil.copy(ROOT / "examples" / "tracking-plan" / "defs.yaml", s.cwd / "plan" / "defs.yaml")
    s.run_sh("clew schema check plan")


def _security_before(s: Session) -> None:
    s.run_sh("clew sources create web")


SETUP: dict[str, Setup] = {
    "README.md": Setup(
        before_block={"most-viewed": _demo},
        after_block={
            "readme-sql": _contains("Product Viewed"),
            "readme-profile": _contains('"user-42"', "user-42"),
            "most-viewed": _readme_most_viewed,
            "cta": _readme_cta,
        },
    ),
    "docs/questions.md": Setup(before=_demo),
    "docs/identity.md": Setup(before=_demo),
    "docs/audiences.md": Setup(before=_demo),
    "docs/privacy.md": Setup(before=_privacy_before),
    "docs/profile-api.md": Setup(before=_profile_api_before),
    "docs/lifecycle.md": Setup(before=_lifecycle_before),
    "docs/destinations.md": Setup(
        before=_destinations_before,
        python_checks={
            "verify-signature": (
                "from clew.destinations.webhook import sign\n"
                "body = b'{\"batch\": []}'\n"
                "assert verified(body, sign(b'k', body), b'k')\n"
                "assert not verified(body, sign(b'other', body), b'k')\n"
            )
        },
    ),
    "docs/security.md": Setup(before=_security_before),
    "docs/schema-registry.md": Setup(
        substitutions={"path/to/plan": "examples/tracking-plan"},
        after_block={"plan-subject": _plan_from_the_doc},
    ),
}


def _needs_server(b: Block) -> bool:
    skipped = b.illustrative is not None or b.lang in {"text", "toml"}
    return not (problem(b) or skipped or _static(b))


SERVED = {doc: bs for doc in documents() if (bs := [b for b in blocks(doc) if _needs_server(b)])}


def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


@pytest.fixture
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    setup = SETUP.get(_doc_id(request.param), Setup())
    s = Session(tmp_path, dict(setup.substitutions))
    try:
        yield s
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("doc", "session"),
    [pytest.param(d, d, id=_doc_id(d)) for d in SERVED],
    indirect=["session"],
)
def test_document_runs_as_written(doc: Path, session: Session) -> None:
    setup = SETUP.get(_doc_id(doc), Setup())
    if setup.before:
        setup.before(session)
    todo = SERVED[doc]
    ordered = [b for b in todo if "at-end" not in b.options] + [
        b for b in todo if "at-end" in b.options
    ]
    for block in ordered:
        block_id = block.options.get("id", "")
        if block_id in setup.before_block:
            setup.before_block[block_id](session)
        session.settle()
        try:
            result = run_block(session, block, setup)
            if block_id in setup.after_block:
                setup.after_block[block_id](session, result)
        except AssertionError as exc:
            raise AssertionError(f"{block.where} ({block.lang} block): {exc}") from None


def run_block(s: Session, b: Block, setup: Setup) -> Result:
    text = s.substitute(b.text)
    o = b.options
    if "file" in o:
        target = s.cwd / o["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return Result(0, "", "")
    if b.lang == "sh":
        r = s.run_sh(text, check=False)
        assert r.returncode == int(o.get("exit", "0")), _failure(text, r)
        return r
    if b.lang == "console":
        return run_console(s, text)
    if b.lang == "python":
        code = text + "\n" + setup.python_checks.get(o.get("id", ""), "")
        proc = subprocess.run(
            [str(VENV_BIN / "python"), "-c", code],
            cwd=s.cwd,
            env=s.env,
            capture_output=True,
            text=True,
            timeout=DOC_TIMEOUT_S,
        )
        r = Result(proc.returncode, proc.stdout, proc.stderr)
        assert r.returncode == 0, _failure(code, r)
        return r
    if b.lang == "sql":
        lake = Lake(s.data_dir / "lake")
        rows: list[tuple[Any, ...]] = []
        for statement in filter(str.strip, re.split(r";\s*(?:\n|$)", text)):
            rows = lake.sql(statement).rows
        return Result(0, "", "", rows)
    if b.lang == "json":
        return run_json(s, b, text)
    raise AssertionError(f"no way to run a {b.lang} block with {o}")


def run_json(s: Session, b: Block, text: str) -> Result:
    o = b.options
    headers = {"Authorization": f"Bearer {s.token}"}
    if "shape" in o:
        doc = json.loads("{" + text + "}" if text.lstrip().startswith('"') else text)
        answer = s.get(o["shape"])
        missing = _missing(doc, answer, "")
        assert not missing, f"not in the answer to GET {o['shape']}: {missing}\n{answer}"
        return Result(0, json.dumps(answer), "")
    if "post" in o:
        r = httpx.post(s.url + o["post"], content=text, headers=headers)
        assert 200 <= r.status_code < 300, f"POST {o['post']}: {r.status_code} {r.text}"
        return Result(0, r.text, "")
    if "event-part" in o:
        event = {
            "type": "track",
            "event": "Docs Example",
            "anonymousId": "docs",
            **json.loads(text),
        }
        r = httpx.post(s.url + "/v1/track", json=event, auth=(s.write_key, ""))
        assert r.status_code == 200, r.text
        return Result(0, r.text, "")
    raise AssertionError(f"no way to run a json block with {o}")


def _missing(doc: Any, answer: Any, path: str) -> list[str]:
    """The keys ``doc`` shows that ``answer`` lacks, as JSON paths."""
    if isinstance(doc, dict):
        if not isinstance(answer, dict):
            return [f"{path or '$'} (an object in the doc, {type(answer).__name__} here)"]
        out = [f"{path}.{k}" for k in doc if k not in answer]
        for k, v in doc.items():
            if k in answer:
                out += _missing(v, answer[k], f"{path}.{k}")
        return out
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        if not isinstance(answer, list) or not answer:
            return [f"{path}[] (the answer has no items to compare)"]
        return [m for item in doc for m in _missing(item, answer[0], f"{path}[]")]
    return []


# -- console blocks ------------------------------------------------------------------------


def run_console(s: Session, text: str) -> Result:
    """Run each ``$ command`` and check the lines shown under it against its output."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"console output before any $ command: {line!r}"
            steps[-1][1].append(line)
    last = Result(0, "", "")
    for command, shown in steps:
        last = s.run_sh(command)
        expected = [_line_pattern(x) for x in shown if x.strip()]
        assert _matches(expected, last.stdout.splitlines()), (
            f"$ {command}\n--- the doc shows\n"
            + "\n".join(shown)
            + f"\n--- it printed\n{last.stdout}"
        )
    return last


_SKIP = None
_TOKENS = re.compile(
    r"(?P<size>\d(?:[\d,.]*\d)? [KMGT]?B\b)|(?P<num>\d(?:[\d,.]*\d)?)|(?P<ell>…)|(?P<ws>\s+)"
    r"|(?P<box>(?P<b>[─━═])(?P=b)*)|(?P<c>.)"
)


def _line_pattern(line: str) -> re.Pattern[str] | None:
    if line.strip() == "…":
        return _SKIP
    pattern = ""
    for m in _TOKENS.finditer(line.strip()):
        if m["size"]:  # a size in any unit
            pattern += r"\d(?:[\d,.]*\d)? [KMGT]?B"
        elif m["num"]:
            pattern += r"\d(?:[\d,.]*\d)?"
        elif m["ell"]:
            pattern += ".*"
        elif m["ws"]:
            pattern += r"\s+"
        elif m["box"]:
            pattern += re.escape(m["box"][0]) + "+"
        else:
            pattern += re.escape(m["c"])
    return re.compile(pattern)


def _matches(expected: list[re.Pattern[str] | None], actual: list[str]) -> bool:
    lines = [a.strip() for a in actual]

    def from_(i: int, j: int) -> bool:
        if i == len(expected):
            return True
        pattern = expected[i]
        if pattern is _SKIP:
            return any(from_(i + 1, k) for k in range(j, len(lines) + 1))
        return j < len(lines) and bool(pattern.fullmatch(lines[j])) and from_(i + 1, j + 1)

    if not expected:
        return True
    return any(from_(0, start) for start in range(len(lines)))


def test_console_output_matching() -> None:
    shown = ["rebuilt in 4.4 s (read 0.4 s)", "…", "the batch and speed layers agree"]
    printed = ["x", "rebuilt in 12.0 s (read 1.25 s)", "a", "b", "the batch and speed layers agree"]
    assert _matches([_line_pattern(x) for x in shown], printed)
    assert not _matches([_line_pattern(x) for x in shown], printed[:3])
    table = ["┃ table  ┃ rows    ┃ bytes   ┃", "│ events │ 445,000 │ 38.7 MB │"]
    printed = ["┃ table  ┃ rows  ┃ bytes   ┃", "│ events │ 3 │ 95.8 KB │"]
    assert _matches([_line_pattern(x) for x in table], printed)
    assert not _matches([_line_pattern(x) for x in table], ["┃ table  ┃ rows  ┃", "│ dlq │ 3 │"])
