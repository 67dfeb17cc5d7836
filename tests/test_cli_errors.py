"""Each common mistake gets one line that says what to do, and an exit code from the one
table in docs/cli.md; a traceback only with --debug."""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clew._datadir import NoDataDirError, lock_data_dir
from clew.background import free_port
from clew.cli import app
from clew.cli._errors import EXIT_CODES, ExitCode

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


@pytest.fixture(autouse=True)
def _own_server_registry(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Running servers are found through a per-user registry in the temporary directory;
    # these tests see only the servers they start.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("registry")))


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_the_exit_code_table_in_the_docs_is_the_one_in_the_code() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", DOCS.read_text(), re.M)
    assert {int(code): meaning for code, meaning in rows} == {
        int(code): meaning for code, meaning in EXIT_CODES.items()
    }


def test_sql_on_a_missing_data_dir_says_so_instead_of_answering_zero(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    out = runner.invoke(app, ["sql", "SELECT count(*) FROM events", "--data-dir", str(missing)])
    assert out.exit_code == ExitCode.UNAVAILABLE
    line = _one_error_line(out.stderr)
    assert f"no Clew data directory at {missing}" in line
    assert "no clew serve is running" in line
    assert out.stdout == ""


def test_sql_from_another_folder_names_the_data_dir_the_server_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with lock_data_dir(served, "http://127.0.0.1:8088"):
        out = runner.invoke(app, ["sql", "SELECT count(*) FROM events"])
    assert out.exit_code == ExitCode.UNAVAILABLE
    line = _one_error_line(out.stderr)
    assert f"no Clew data directory at {elsewhere / '.clew'}" in line
    assert f"clew serve on http://127.0.0.1:8088 uses {served.resolve()}" in line
    assert f"pass --data-dir {served.resolve()}" in line


def test_tokens_create_without_a_data_dir_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["tokens", "create", "me"])
    assert out.exit_code == ExitCode.UNAVAILABLE
    assert "no Clew data directory at" in _one_error_line(out.stderr)
    assert not (tmp_path / ".clew").exists()


def test_a_named_data_dir_is_created_by_commands_that_add_and_then_read(tmp_path: Path) -> None:
    d = str(tmp_path / "new")
    assert runner.invoke(app, ["sources", "create", "web", "--data-dir", d]).exit_code == 0
    out = runner.invoke(app, ["sql", "SELECT 1 AS one", "--format", "json", "--data-dir", d])
    assert out.exit_code == 0 and '"one": 1' in out.stdout


def test_an_unknown_key_in_a_section_names_the_closest_one(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text("[lake]\nflush_row = 100\n")
    out = runner.invoke(app, ["sql", "SELECT 1", "--config", str(config)])
    assert out.exit_code == ExitCode.USAGE
    line = _one_error_line(out.stderr)
    assert "unknown key 'flush_row' in [lake]" in line
    assert f"config file {config}" in line and "did you mean 'flush_rows'?" in line


def test_a_top_level_typo_is_one_line_without_pydantic_internals(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text('data_dri = "x"\n[identity.rules]\nphone_regoin = "DE"\n')
    out = runner.invoke(app, ["sql", "SELECT 1", "--config", str(config)])
    assert out.exit_code == ExitCode.USAGE
    assert "Traceback" not in out.stderr and "_FromFile" not in out.stderr
    assert sorted(out.stderr.strip().splitlines()) == [
        f"error: unknown key 'data_dri' at the top level (config file {config}); "
        "did you mean 'data_dir'?",
        f"error: unknown key 'phone_regoin' in [identity.rules] (config file {config}); "
        "did you mean 'phone_region'?",
    ]


def test_an_unknown_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEW_LAKE__FLUSH_ROW", "100")
    out = runner.invoke(app, ["sql", "SELECT 1", "--data-dir", str(tmp_path)])
    assert out.exit_code == ExitCode.USAGE
    line = _one_error_line(out.stderr)
    assert "environment CLEW_LAKE__FLUSH_ROW" in line and "'flush_rows'" in line


def test_a_wrong_value_names_the_key_and_where_it_was_set(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text('[sql]\ntimeout_s = "soon"\n')
    out = runner.invoke(app, ["sql", "SELECT 1", "--config", str(config)])
    assert out.exit_code == ExitCode.USAGE
    line = _one_error_line(out.stderr)
    assert line.startswith("error: sql.timeout_s: ") and f"config file {config}" in line


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = runner.invoke(app, ["serve", "--port", str(port), "--data-dir", str(tmp_path / "d")])
    assert out.exit_code == ExitCode.UNAVAILABLE
    line = _one_error_line(out.stderr)
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line


def test_serve_with_the_example_site_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = runner.invoke(
            app,
            [
                *("serve", "--port", str(free_port()), "--data-dir", str(tmp_path)),
                *("--examples", "--examples-port", str(port)),
            ],
        )
    assert out.exit_code == ExitCode.UNAVAILABLE
    line = _one_error_line(out.stderr)
    assert f"port {port} on 127.0.0.1 is in use" in line and "--examples-port" in line


def test_a_sql_error_is_duckdbs_message_without_a_traceback(tmp_path: Path) -> None:
    d = str(tmp_path)
    runner.invoke(app, ["tokens", "create", "ci", "--data-dir", d])
    out = runner.invoke(app, ["sql", "SELEC 1", "--data-dir", d])
    assert out.exit_code == ExitCode.FAILED
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith('error: Parser Error: syntax error at or near "SELEC"')


def test_unknown_names_get_the_closest_valid_one(tmp_path: Path) -> None:
    d = str(tmp_path)
    runner.invoke(app, ["tokens", "create", "ci", "--data-dir", d])
    runner.invoke(app, ["sources", "create", "checkout", "--data-dir", d])
    token = runner.invoke(app, ["tokens", "revoke", "cii", "--data-dir", d])
    assert token.exit_code == ExitCode.FAILED
    assert "there is no token named 'cii' (did you mean 'ci'?)" in _one_error_line(token.stderr)
    source = runner.invoke(app, ["sources", "remove", "chekout", "--data-dir", d])
    assert "(did you mean 'checkout'?)" in _one_error_line(source.stderr)
    destination = runner.invoke(app, ["destinations", "remove", "crm", "--data-dir", d])
    assert destination.exit_code == ExitCode.FAILED
    assert "no destination named 'crm'" in _one_error_line(destination.stderr)


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "nonexistent")
    out = runner.invoke(app, ["--debug", "sql", "SELECT 1", "--data-dir", missing])
    assert isinstance(out.exception, NoDataDirError)
    monkeypatch.setenv("CLEW_DEBUG", "1")
    out = runner.invoke(app, ["sql", "SELECT 1", "--data-dir", missing])
    assert isinstance(out.exception, NoDataDirError)
