"""A real Redis Cluster for the test suite: ``primaries`` ``redis-server`` processes in
cluster mode on free loopback ports (and ``replicas`` more per primary), each with its files in
its own directory, joined by ``redis-cli --cluster create`` (slots split evenly) and stopped
when the ``with`` block ends. Like ``_services.redis_server``, it raises
:class:`ServiceUnavailable` with the install command when ``redis-server`` or ``redis-cli``
is missing.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _services import LOOPBACK, ServiceUnavailable, _answers, free_port, start, stop

_INSTALL = "run `sh scripts/redis.sh` (on Debian or Ubuntu: apt-get install -y redis-server)"


@dataclass(frozen=True, slots=True)
class ClusterService:
    host: str
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """The URL of one node; a cluster client discovers the others from it."""
        return f"redis://{self.host}:{self.ports[0]}"

    @property
    def nodes(self) -> list[str]:
        return [f"{self.host}:{port}" for port in self.ports]


def _cli(binary: str, port: int, *command: str) -> bytes:
    """What ``redis-cli`` prints for ``command`` on the node at ``port`` (empty on a timeout)."""
    try:
        return subprocess.run(
            [binary, "-h", LOOPBACK, "-p", str(port), *command],
            capture_output=True,
            timeout=5,
            check=False,
        ).stdout
    except subprocess.TimeoutExpired:
        return b""


def _cluster_ok(binary: str, port: int) -> bool:
    """The node sees every slot served (``cluster_state:ok``)."""
    return b"cluster_state:ok" in _cli(binary, port, "CLUSTER", "INFO")


def _in_sync(binary: str, port: int) -> bool:
    """The node is a primary, or a replica whose link to its primary is up."""
    out = _cli(binary, port, "INFO", "replication")
    return b"role:master" in out or b"master_link_status:up" in out


@contextmanager
def _node(binary: str, node_dir: Path, name: str) -> Iterator[int]:
    """One cluster-enabled ``redis-server``; yields its port."""
    failure = ServiceUnavailable(f"{name} did not start")
    # A port found free can be taken before the server binds it: then try others. The
    # cluster bus port is chosen too (by default it is the port + 10000, perhaps not free).
    for _ in range(3):
        port, bus = free_port(), free_port()
        argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(node_dir)]
        argv += ["--save", "", "--appendonly", "yes", "--daemonize", "no", "--logfile", ""]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-port", str(bus), "--cluster-node-timeout", "2000"]
        ping = functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
        try:
            proc = start(name, argv, node_dir, ping)
        except ServiceUnavailable as exc:
            failure = exc
            (node_dir / "nodes.conf").unlink(missing_ok=True)
            continue
        try:
            yield port
        finally:
            stop(proc)
        return
    raise failure


@contextmanager
def redis_cluster(workdir: Path, primaries: int = 3, replicas: int = 0) -> Iterator[ClusterService]:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas, without
    persistence (see the module docstring); yields once every node reports
    ``cluster_state:ok`` and every replica is in sync with its primary."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        missing = "redis-server" if server is None else "redis-cli"
        raise ServiceUnavailable(f"{missing} is not installed: {_INSTALL}")
    with ExitStack() as stack:
        ports: list[int] = []
        for n in range(primaries * (1 + replicas)):
            node_dir = workdir / f"node-{n}"
            node_dir.mkdir()
            ports.append(stack.enter_context(_node(server, node_dir, f"redis-cluster-{n}")))
        create = [cli, "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in ports)]
        create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        made = subprocess.run(create, capture_output=True, timeout=60, check=False)
        if made.returncode != 0:
            raise ServiceUnavailable(
                f"redis-cli --cluster create failed: {made.stdout.decode(errors='replace')}"
                f"{made.stderr.decode(errors='replace')}"
            )
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(cli, port) and _in_sync(cli, port) for port in ports):
            if time.monotonic() > deadline:
                raise ServiceUnavailable("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield ClusterService(LOOPBACK, tuple(ports))
