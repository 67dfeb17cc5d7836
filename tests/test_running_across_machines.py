"""README "Running across machines", followed literally: the lines of its "Two machines on
one" block run one after the other in a fresh directory, as an operator types them in one
shell. `make cluster` starts Kafka and Redis, `clew serve` is machine 1 and a collector with
validate and profiles workers is machine 2, each with a data directory of its own; an event
sent to each machine's collector is in the lake once, under the one source both collectors
know from the shared control plane; `kill` stops the roles and `make cluster-stop` the
services.

Only what a person would adapt is changed: free ports instead of 8088 and 8081 (and of
Kafka's and Redis's, through `make cluster`'s variables), and waiting as a person waits: for
a role's `/health` after starting it, and for the lake query to show the events."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from _docblocks import ROOT, Block, blocks
from _kafka import missing
from _services import free_port, require_module, unavailable
from _support import clew_bin

pytestmark = pytest.mark.slow

README = ROOT / "README.md"


def readme_block() -> Block:
    found = [
        b
        for b in blocks(README)
        if b.illustrative is not None and "test_running_across_machines" in b.illustrative
    ]
    assert len(found) == 1, "README's 'Two machines on one' block is gone or not unique"
    return found[0]


def lines(block: Block) -> list[str]:
    """The commands of the block, without comment lines."""
    return [ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("#")]


class Operator:
    """One shell's worth of state: variables set so far, and jobs started with ``&``."""

    def __init__(self, cwd: Path, env: dict[str, str], ports: dict[str, int]) -> None:
        self.cwd, self.env, self.ports = cwd, env, ports
        self.assignments: list[str] = []
        self.jobs: list[subprocess.Popen[bytes]] = []
        self.logs: list[BinaryIO] = []
        self.outputs: list[str] = []
        self.stopped_in: list[float] = []

    def adapt(self, line: str) -> str:
        for documented, port in self.ports.items():
            line = line.replace(f":{documented}/", f":{port}/")
            line = line.replace(f"--port {documented}", f"--port {port}")
        return line

    def script(self, command: str) -> str:
        return "; ".join([*self.assignments, command])

    def run(self, line: str) -> None:
        line = self.adapt(line)
        command = line.split(" #")[0].strip()
        if re.fullmatch(r"[A-Za-z_]+=\S+", command):
            self.assignments.append(command)
        elif command.endswith("&"):
            self.start(command[:-1].strip())
        elif command.startswith("kill %"):
            self.kill([int(job) for job in re.findall(r"%(\d+)", command)])
        elif command.startswith("clew sql"):
            self.wait_for_events(command)
        else:
            done = subprocess.run(
                ["sh", "-ec", self.script(command)],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"
            self.outputs.append(done.stdout)

    def start(self, command: str) -> None:
        n = len(self.jobs) + 1
        log = (self.cwd / f"job-{n}.log").open("wb")
        self.logs.append(log)
        self.jobs.append(
            subprocess.Popen(
                ["sh", "-c", self.script(f"exec {command}")],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        port = re.search(r"--port (\d+)", command)
        if port is not None:
            self.await_health(int(port.group(1)), n)

    def await_health(self, port: int, job: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.jobs[job - 1].poll() is None, self.log(job)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"job {job} never answered /health:\n{self.log(job)}")

    def log(self, job: int) -> str:
        return (self.cwd / f"job-{job}.log").read_text(errors="replace")[-3000:]

    def wait_for_events(self, command: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(
                ["sh", "-ec", self.script(command + " --format csv")],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            rows = done.stdout.strip().splitlines()[1:]
            if len(rows) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(2)
        users = sorted(row.split(",")[0] for row in rows)
        assert users == ["ada", "bob"], f"the lake holds {rows} ({done.stderr})"
        assert len({row.split(",")[1] for row in rows}) == 1, "one source id on both machines"

    def kill(self, jobs: list[int]) -> None:
        for job in jobs:
            proc, began = self.jobs[job - 1], time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"job {job} did not stop within 30 s of SIGTERM:\n{self.log(job)}")
            self.stopped_in.append(time.monotonic() - began)
            assert proc.returncode in (0, -signal.SIGTERM), self.log(job)

    def clean_up(self) -> None:
        for proc in self.jobs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


def test_the_readme_runs_two_machines_as_written(tmp_path: Path) -> None:
    require_module("redis", "pip install -e '.[redis]'")
    if reason := missing():
        unavailable(reason)
    for name in ("Makefile", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    venv_bin = str(Path(clew_bin()).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "CLEW_CLUSTER_KAFKA_PORT": str(free_port()),
        "CLEW_CLUSTER_CONTROLLER_PORT": str(free_port()),
        "CLEW_CLUSTER_REDIS_PORT": str(free_port()),
    }
    operator = Operator(tmp_path, env, {"8088": free_port(), "8081": free_port()})
    commands = lines(readme_block())
    assert commands[0].startswith("make cluster ") and commands[-1].startswith("make cluster-stop")
    try:
        for line in commands:
            operator.run(line)
    finally:
        operator.clean_up()
        subprocess.run(["sh", "scripts/cluster.sh", "stop"], cwd=tmp_path, env=env, check=False)
    accepted = [out for out in operator.outputs if "success" in out]
    assert len(accepted) == 2 and all('"success":true' in out for out in accepted)
    assert not (tmp_path / "machine-2" / "lake").exists(), "machine 2 keeps no lake"
    print(f"roles stopped in {', '.join(f'{s:.1f} s' for s in operator.stopped_in)}")
