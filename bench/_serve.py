"""Start and stop the servers under test, and drive them with the Go load generator.

Shared by ``ingest.py`` and ``latency.py``. Each server is a subprocess on a free port of
127.0.0.1; its output goes to a log file that is printed when it fails to come up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil
from rich.console import Console

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
CLEW = VENV_BIN / "clew"
PYTHON = VENV_BIN / "python"

WRITE_KEY = "BENCHKEY"
SOURCE = "bench"


class BenchError(RuntimeError):
    """The benchmark could not run; the message says what to fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A server subprocess. ``with Server(...) as s`` waits for ``GET /health`` to answer 200
    and stops the process (SIGTERM, then SIGKILL after 15 s) on exit."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = {**os.environ, **(env or {})}
        self.argv = [str(a) for a in argv]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # Set by stop(): how the process ended and how long it took after SIGTERM.
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.killed = False

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self._proc.returncode}\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.name} did not answer GET /health in {timeout:.0f} s\n{self.log()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            self.exit_code, self.stop_seconds = proc.returncode, 0.0
            return
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.killed = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.exit_code = proc.returncode
        self.stop_seconds = time.monotonic() - began

    def log(self, tail: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def rss(self) -> int:
        """Resident memory of the server and all its child processes, in bytes."""
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[str, int]:
        """Resident memory of the server (``serve``) and of each child process, named by the
        stages it runs (``lake+monitor+profiles-lake``) when it runs any, in bytes."""
        out: dict[str, int] = {}
        for p in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                argv = p.cmdline()
                stages = [b for a, b in itertools.pairwise(argv) if a == "--stage"]
                name = "+".join(stages) if p.pid != self.pid else "serve"
                name = name or f"child {p.pid}"
                out[name] = out.get(name, 0) + p.memory_info().rss
        return out

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its live children."""
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def settle(self, quiet_cpu: float = 0.05, window: float = 1.0, timeout: float = 120.0) -> float:
        """Wait until the server uses less than ``quiet_cpu`` cores over ``window`` seconds,
        i.e. its background stages have caught up. Returns the seconds waited."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            before = self.cpu_seconds()
            time.sleep(window)
            if (self.cpu_seconds() - before) / window < quiet_cpu:
                break
        return time.monotonic() - began


class RssSampler:
    """Samples a server's RSS per process in a background thread: ``peak`` is the highest sum
    seen, ``at_peak`` each process's RSS in that sample, ``peak_by_process`` each process's
    own highest."""

    def __init__(self, server: Server, every: float = 0.2) -> None:
        self.server = server
        self.every = every
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.peak_by_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                sample = self.server.rss_by_process()
                if sum(sample.values()) > self.peak:
                    self.peak, self.at_peak = sum(sample.values()), sample
                for name, rss in sample.items():
                    self.peak_by_process[name] = max(self.peak_by_process.get(name, 0), rss)
            self._stop.wait(self.every)


def bare_server(log_dir: Path, http_limits: bool = False) -> Server:
    """The bare endpoint (bare_asgi.py); with ``http_limits``, served within Clew's."""
    port = free_port()
    argv: list[str | Path] = [PYTHON, BENCH / "bare_asgi.py", "--port", str(port)]
    if http_limits:
        argv.append("--http-limits")
    return Server("bare-limits" if http_limits else "bare", argv, port, log_dir)


def clew(*args: str | Path) -> str:
    """Run one ``clew`` CLI command and return its standard output."""
    if not CLEW.exists():
        raise BenchError(f"{CLEW} not found; run `.venv/bin/pip install -e .` first")
    done = subprocess.run(
        [str(CLEW), *map(str, args)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"clew {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def clew_server(
    data_dir: Path, log_dir: Path, name: str = "clew", env: dict[str, str] | None = None
) -> Server:
    """``clew serve`` on a fresh data directory holding one source whose key is WRITE_KEY;
    ``env`` adds environment variables (``CLEW_*`` settings)."""
    clew("sources", "create", SOURCE, "--write-key", WRITE_KEY, "--data-dir", data_dir)
    port = free_port()
    argv: list[str | Path] = [CLEW, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--data-dir", data_dir]
    return Server(name, argv, port, log_dir, env)


def create_token(data_dir: Path, name: str = "bench") -> str:
    """An access token for the SQL API; ``clew tokens create`` prints it last."""
    out = clew("tokens", "create", name, "--data-dir", data_dir).split()
    if not out:
        raise BenchError("`clew tokens create` printed no token")
    return out[-1]


def console() -> Console:
    """Rich console; wide enough for the result tables when output is not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def build_loadgen(out_dir: Path) -> Path:
    """Compile bench/loadgen (standard library only) into ``out_dir``."""
    homes = (Path("/usr/local/go/bin/go"), Path.home() / "go" / "bin" / "go")
    go = shutil.which("go") or next((str(p) for p in homes if p.exists()), None)
    if go is None:
        raise BenchError("the load generator needs Go (https://go.dev/dl/); `go` is not on PATH")
    binary = out_dir / "loadgen"
    done = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=BENCH / "loadgen",
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-buildvcs=false"},
    )
    if done.returncode != 0:
        raise BenchError(f"go build of bench/loadgen failed:\n{done.stderr}")
    return binary


def run_loadgen(
    binary: Path, url: str, *, concurrency: int, seconds: float, events: int, warmup: float = 1.0
) -> dict[str, Any]:
    argv = [
        str(binary),
        f"-url={url}",
        f"-key={WRITE_KEY}",
        f"-c={concurrency}",
        f"-d={seconds}s",
        f"-warmup={warmup}s",
        f"-events={events}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"loadgen failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Cores the client itself used: near the core count means the client was the limit.
    result["client_cores"] = used / (seconds + warmup)
    result["warmup_s"] = warmup
    return result


def fail(error: BenchError) -> None:
    print(f"benchmark failed: {error}", file=sys.stderr)
    sys.exit(1)
