"""Real servers for the test suite: each starts on a free loopback port with its files in a
temporary directory, and is stopped when its ``with`` block ends.

A ``<service>_server(workdir)`` context manager yields a :class:`Service`, or raises
:class:`ServiceUnavailable` with a message naming the command that installs what is missing.
A session fixture turns that into :func:`unavailable`: a skip for a newcomer who has not
installed the server, a failure under CI (``CI`` set; ``.ci/run`` sets it), where ``make test``
installs every server first, so that a broken install step cannot pass as skipped tests.
Optional Python packages (redis, confluent-kafka, pyspark, recordlinkage) go through
:func:`require_module` the same way.

To add a server, write ``<name>_server`` beside :func:`redis_server` with :func:`start` and
its own readiness probe, and a session fixture in ``tests/conftest.py``. Kafka has its own
module (``tests/_kafka.py``) and the session fixture ``kafka_broker``.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

LOOPBACK = "127.0.0.1"


class ServiceUnavailable(Exception):
    """The server is not installed or did not start; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def under_ci() -> bool:
    """Whether the suite runs under CI (``CI`` set to 1, true or yes, as ``.ci/run`` does)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip what needs the server or package, or fail it under CI (see the module docstring).
    Works in a test, a fixture, or at module level (there, a skip skips the whole module and
    a failure is a collection error)."""
    if under_ci():
        pytest.fail(f"{reason} (CI must run these tests: `make test` installs it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str = "pip install -e '.[dev]'") -> ModuleType:
    """Import and return the optional package ``name`` a test module needs; without it,
    :func:`unavailable` with ``install``, the command that installs it. Use this, not
    ``pytest.importorskip``, which would skip under CI too."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}): {install}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    ready: Callable[[], bool],
    timeout_s: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (output to ``workdir/<name>.log``) and wait until ``ready()``; raises
    :class:`ServiceUnavailable` (the process stopped) if it exits or is not ready in time."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready():
            return proc
        time.sleep(0.05)
    stop(proc)
    tail = log.read_text(errors="replace")[-2_000:]
    raise ServiceUnavailable(f"{name} did not start ({' '.join(argv)}); its log ends:\n{tail}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(host: str, port: int, request: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(request)
            return s.recv(len(expect)) == expect
    except OSError:
        return False


@contextmanager
def redis_server(
    workdir: Path, password: str | None = None, *, appendonly: bool = True
) -> Iterator[Service]:
    """A ``redis-server`` keeping an append-only file in ``workdir`` (as Clew requires of the
    Redis holding its data keys) and no RDB snapshots; "reopening" a store is a new client on
    the same server. ``appendonly=False``: no persistence at all. With ``password`` it
    requires that password (set in a 0600 config file, not on its command line)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            "redis-server is not installed: run `sh scripts/redis.sh` "
            "(on Debian or Ubuntu: apt-get install -y redis-server)"
        )
    failure = ServiceUnavailable("redis-server did not start")
    # A port found free can be taken before the server binds it: then try another.
    for _ in range(3):
        port = free_port()
        argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(workdir)]
        argv += ["--save", "", "--appendonly", "yes" if appendonly else "no"]
        argv += ["--daemonize", "no", "--logfile", ""]
        ping = functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
        if password is not None:
            conf = workdir / "redis.conf"
            conf.touch(mode=0o600)
            conf.write_text(f"requirepass {password}\n")
            argv.insert(1, str(conf))
            auth = f"AUTH {password}\r\n".encode()
            ping = functools.partial(_answers, LOOPBACK, port, auth, b"+OK")
        try:
            proc = start("redis", argv, workdir, ping)
        except ServiceUnavailable as exc:
            failure = exc
            continue
        try:
            yield Service("redis", LOOPBACK, port, "redis")
        finally:
            stop(proc)
        return
    raise failure


class PersistentRedis:
    """A ``redis-server`` with the append-only file on (``appendfsync always``), which can be
    stopped and started again on the same port and data, or frozen (SIGSTOP) and thawed: a
    Redis restart or hang as an operator meets them. ``start`` raises
    :class:`ServiceUnavailable` like :func:`redis_server`."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable(
                "redis-server is not installed: run `sh scripts/redis.sh` "
                "(on Debian or Ubuntu: apt-get install -y redis-server)"
            )
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self._argv = [binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(workdir)]
        self._argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self._argv += ["--daemonize", "no", "--logfile", ""]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ping = functools.partial(_answers, LOOPBACK, self.port, b"PING\r\n", b"+PONG")
        self._proc = start(f"redis-{self.port}", self._argv, self.workdir, ping)

    def stop(self) -> None:
        """SIGTERM (Redis then flushes its append-only file) and wait. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop(proc)

    def freeze(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
