"""Secrets stay in their file: with the privacy master key, the salt, a Redis password, an S3
secret key and a Kafka SASL password configured, none of them shows in the command line or
the environment of any process of `clew serve`, in ``/health`` or in its log, and printed
settings mask them."""

from __future__ import annotations

import secrets
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from _services import ServiceUnavailable, redis_server, unavailable
from _support import WRITE_KEY, ServeProcess, clew_bin, drained, wait_for
from _tracking_api import BASIC
from clew.background import free_port
from clew.config import Settings, load_settings, settings_json_with_secrets
from clew.stages.workers import SERVE_WORKERS

REDIS_PASSWORD = "redis-pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server that requires REDIS_PASSWORD; its URL without the password."""
    with ExitStack() as stack:
        try:
            workdir = tmp_path_factory.mktemp("redis-auth")
            server = stack.enter_context(redis_server(workdir, password=REDIS_PASSWORD))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield server.url


def _secrets() -> dict[str, str]:
    token = secrets.token_hex(8)
    return {
        "master_key": f"master-{token}",
        "salt": f"salt-{token}",
        "redis": REDIS_PASSWORD,
        "s3": f"s3-secret-{token}",
        "sasl": f"sasl-{token}",
    }


def _config(path: Path, redis_url: str, prefix: str, hidden: dict[str, str]) -> Path:
    host = redis_url.removeprefix("redis://")
    path.write_text(
        f"""
[privacy]
master_key = "{hidden["master_key"]}"
salt = "{hidden["salt"]}"

[store]
backend = "redis"
redis_url = "redis://:{hidden["redis"]}@{host}/0"
redis_prefix = "{prefix}"

[lake.storage_options]
AWS_ACCESS_KEY_ID = "clew-test"
AWS_SECRET_ACCESS_KEY = "{hidden["s3"]}"

[log.kafka_client]
"sasl.username" = "clew"
"sasl.password" = "{hidden["sasl"]}"
"""
    )
    path.chmod(0o600)
    return path


def _exposed(hidden: dict[str, str], text: bytes) -> list[str]:
    return [name for name, value in hidden.items() if value.encode() in text]


def test_no_secret_in_any_command_line_environment_health_or_log(
    tmp_path: Path, private_redis: str
) -> None:
    hidden = _secrets()
    prefix = "secrets-" + secrets.token_hex(4)
    config = _config(tmp_path / "clew.toml", private_redis, prefix, hidden)
    data_dir = tmp_path / "data"
    # The source goes where the server reads it: the shared Redis of the settings.
    create_source = [clew_bin(), "sources", "create", "tests", "--write-key", WRITE_KEY]
    create_source += ["--config", str(config), "--data-dir", str(data_dir)]
    subprocess.run(create_source, check=True, capture_output=True)
    serve = ServeProcess(data_dir, free_port(), args=["--config", str(config)])
    serve.start()
    try:
        assert serve.proc is not None
        parent = psutil.Process(serve.proc.pid)
        wait_for(lambda: len(parent.children()) == len(SERVE_WORKERS))
        processes = [parent, *parent.children(recursive=True)]
        for process in processes:
            proc_dir = Path("/proc") / str(process.pid)
            cmdline = (proc_dir / "cmdline").read_bytes()
            assert _exposed(hidden, cmdline) == [], cmdline
            # The environment is readable by the same user only; nothing was put there.
            environ = proc_dir / "environ"
            assert stat.S_IMODE(environ.stat().st_mode) & 0o077 == 0
            assert _exposed(hidden, environ.read_bytes()) == []

        events = [{"type": "identify", "userId": f"u{i}", "messageId": f"m{i}"} for i in range(5)]
        response = httpx.post(
            serve.url + "/v1/batch",
            json={"batch": events},
            headers={"Authorization": BASIC},
        )
        assert response.status_code == 200
        wait_for(lambda: drained(serve.url))
        # The workers got the Redis password through their pipe: profiles are in Redis.
        client = redis.Redis.from_url(
            f"redis://:{hidden['redis']}@{private_redis.removeprefix('redis://')}/0"
        )
        assert client.keys(f"{prefix}*")
        client.close()

        health = httpx.get(serve.url + "/health", timeout=5)
        assert _exposed(hidden, health.content) == []
    finally:
        serve.stop()
    assert _exposed(hidden, serve.log_path.read_bytes()) == []


def test_printed_settings_mask_secrets_and_the_worker_format_keeps_them(
    tmp_path: Path,
) -> None:
    hidden = _secrets()
    config = _config(tmp_path / "clew.toml", "redis://127.0.0.1:6379", "clew", hidden)
    settings = load_settings(config)

    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert _exposed(hidden, shown.encode()) == []
    assert "redis://:**********@127.0.0.1:6379/0" in repr(settings)

    # What `clew serve` writes into a worker's pipe gives the worker the same settings.
    again = Settings.model_validate_json(settings_json_with_secrets(settings))
    assert again == settings
    assert again.privacy.master_key.get_secret_value() == hidden["master_key"]
