"""The examples in ``src/clew``'s docstrings run as tests: pytest collects them by default
(``--doctest-modules`` and ``testpaths`` in pyproject.toml), none is invisible to the doctest
finder, and a wrong one fails the run."""

from __future__ import annotations

import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PROMPT = re.compile(r"^\s*>>> ", re.MULTILINE)


def _with_examples() -> list[str]:
    names = []
    for path in sorted((SRC / "clew").rglob("*.py")):
        if PROMPT.search(path.read_text()):
            names.append(".".join(path.relative_to(SRC).with_suffix("").parts))
    return names


def test_pytest_collects_the_docstring_examples_of_src(pytestconfig: pytest.Config) -> None:
    assert "src/clew" in pytestconfig.getini("testpaths")
    assert "--doctest-modules" in pytestconfig.getini("addopts")


@pytest.mark.parametrize("name", _with_examples())
def test_every_example_is_found(name: str) -> None:
    """An example where the finder does not look (a nested function, an object imported from
    elsewhere) would never run, silently: each ``>>>`` line must be a found example."""
    module = importlib.import_module(name.removesuffix(".__init__"))
    found = sum(len(t.examples) for t in doctest.DocTestFinder().find(module))
    assert found == len(PROMPT.findall(Path(module.__file__ or "").read_text()))


def test_a_wrong_example_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(
        'def double(x: int) -> int:\n    """\n    >>> double(2)\n    5\n    """\n    return 2 * x\n'
    )
    # The project's settings (-c), on a module of its own.
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *config, "-p", "no:cacheprovider", "sample.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout and "sample.double" in run.stdout, run.stdout
