"""The HTTP limits of docs/security.md over raw sockets, against the server `clew serve` runs
(its uvicorn configuration, in this process): slow or oversized request heads, idle and
surplus connections are cut off, while a normal client keeps being answered quickly."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _support import clew_bin, make_settings, wait_for
from clew.background import BackgroundServer, free_port
from clew.config import HttpSettings
from clew.http_limits import HEAD_TIMEOUT, HEADERS_TOO_LARGE

LIMITS = HttpSettings(header_timeout_s=1.5, keep_alive_timeout_s=1, max_connections=400)
# How fast normal clients are answered under attack is a performance figure, not checked here
# (see bench/http_limits.py); the tests check that they are answered, and before the attack ends.
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: clew\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    data_dir: Path = tmp_path_factory.mktemp("http") / "data"
    with BackgroundServer(make_settings(data_dir, http=LIMITS)) as srv:
        yield srv


def connect(server: BackgroundServer | tuple[str, int]) -> socket.socket:
    address = server if isinstance(server, tuple) else (server.settings.host, server.settings.port)
    return socket.create_connection(address, timeout=5)


def stall(sock: socket.socket, timeout_s: float) -> tuple[float, bytes]:
    """Send a byte of an unfinished head every 0.2 s until the server closes the connection;
    returns how long that took and what it answered."""
    started = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - started < timeout_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            with contextlib.suppress(OSError):
                sock.send(b"a")
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - started, answer
        answer += chunk
    pytest.fail(f"the server kept a stalled head open for more than {timeout_s} s")


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after
    ``timeout_s`` if it keeps it open."""
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {timeout_s} s")
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response on a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def error_code(answer: bytes) -> str:
    return str(json.loads(answer.partition(b"\r\n\r\n")[2])["code"])


def normal_request(server: BackgroundServer) -> float:
    """A client's ``GET /health`` on a new connection, answered 200; returns its latency."""
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(GET_HEALTH)
        status, _ = read_response(sock)
    assert status == 200
    return time.monotonic() - started


class Slowloris:
    """Connections that each send a request head one byte at a time and never finish it."""

    def __init__(self, server: BackgroundServer, connections: int) -> None:
        self.opened = time.monotonic()
        self.open: dict[socket.socket, bytes] = {}
        self.closed: dict[socket.socket, tuple[float, bytes]] = {}
        for _ in range(connections):
            sock = connect(server)
            sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: clew\r\nX-Drip: ")
            sock.setblocking(False)
            self.open[sock] = b""

    def drip(self) -> None:
        for sock in list(self.open):
            try:
                sock.send(b"a")
            except OSError:
                self._closed(sock)

    def collect(self) -> None:
        """Read what the server sent; note the connections it closed."""
        readable, _, _ = select.select(list(self.open), [], [], 0.05)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                self.open[sock] += chunk
            else:
                self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        self.closed[sock] = (time.monotonic() - self.opened, self.open.pop(sock))
        sock.close()

    def close(self) -> None:
        for sock in self.open:
            sock.close()


def test_slow_request_heads_are_cut_off_while_normal_clients_are_answered(
    server: BackgroundServer,
) -> None:
    attack = Slowloris(server, 300)
    answered_at = []  # when each normal request was answered, on the attack's clock
    try:
        # Generous (10 s past the header timeout) so a loaded machine cannot fail it; only
        # slow heads the server never cuts off stay open this long.
        deadline = time.monotonic() + LIMITS.header_timeout_s + 10
        while attack.open and time.monotonic() < deadline:
            attack.drip()
            attack.collect()
            normal_request(server)
            answered_at.append(time.monotonic() - attack.opened)
        assert not attack.open, f"{len(attack.open)} slow connections still open"
    finally:
        attack.close()
    times = [at for at, _ in attack.closed.values()]
    assert min(times) >= LIMITS.header_timeout_s * 0.9, "closed before its time was up"
    # Normal clients did not wait for the attack to be cut off: one was answered while all
    # 300 slow connections were still held.
    assert min(answered_at) < min(times), "no normal request was answered during the attack"
    answers = [answer for _, answer in attack.closed.values() if answer]
    for answer in answers:
        assert status_of(answer) == 408 and error_code(answer) == HEAD_TIMEOUT
    # A byte dripped just as the server closed can make the client's socket reset, which
    # drops the answer already received; on a loaded machine a few connections see that.
    assert len(answers) >= 0.9 * len(attack.closed), f"{len(answers)} answered with 408"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: clew\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: clew\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
        + b"\r\n",
        b"GET /health?" + b"q" * (2 << 20) + b" HTTP/1.1\r\nHost: clew\r\n\r\n",
    ],
    ids=["2-MB-header", "100k-headers", "2-MB-url"],
)
def test_an_oversized_request_head_is_refused_at_once(
    server: BackgroundServer, head: bytes
) -> None:
    with connect(server) as sock:
        # The server may stop reading (refusing) before the client has sent it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        # Generous for a loaded machine: this only catches a connection left open.
        answer = read_until_closed(sock, timeout_s=10)
    # Refused for its size, not cut off by the header timeout (which answers 408).
    if answer:
        assert status_of(answer) == 431 and error_code(answer) == HEADERS_TOO_LARGE
    normal_request(server)


def test_a_head_at_the_limits_is_served(server: BackgroundServer) -> None:
    host = b"Host: clew\r\n"
    filler = [b"X-H%02d: v\r\n" % i for i in range(LIMITS.max_headers - 1)]
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + host + b"".join(filler) + b"\r\n")
        assert read_response(sock)[0] == 200
    one_more = [*filler, b"X-Last: v\r\n"]
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + host + b"".join(one_more) + b"\r\n")
        answer = read_until_closed(sock, timeout_s=2)
    assert status_of(answer) == 431


def test_idle_connections_are_closed(server: BackgroundServer) -> None:
    kept_alive = []
    for _ in range(100):
        sock = connect(server)
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
        kept_alive.append(sock)
    silent = [connect(server) for _ in range(100)]
    started = time.monotonic()
    try:
        normal_request(server)
        # The bounds are generous (10 s past each timeout) so a loaded machine cannot fail
        # them; only connections the server never closes stay open this long.
        for sock in kept_alive:
            # Closed without another byte once the keep-alive timeout passed.
            assert read_until_closed(sock, LIMITS.keep_alive_timeout_s + 10) == b""
        for sock in silent:
            # Never sent anything: closed at the header timeout, without an answer.
            assert read_until_closed(sock, LIMITS.header_timeout_s + 10) == b""
        assert time.monotonic() - started < LIMITS.header_timeout_s + 10
    finally:
        for sock in kept_alive + silent:
            sock.close()


def test_beyond_the_connection_cap_requests_get_503(server: BackgroundServer) -> None:
    held = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        with connect(server) as extra:
            extra.sendall(GET_HEALTH)
            assert read_response(extra)[0] == 503
        held.pop().close()
        time.sleep(0.1)
        with connect(server) as extra:
            extra.sendall(GET_HEALTH)
            assert read_response(extra)[0] == 200
    finally:
        for sock in held:
            sock.close()
    # The held connections gone, the cap no longer bites.
    url = f"http://{server.settings.host}:{server.settings.port}/health"
    wait_for(lambda: _answers(url), timeout_s=10)


def test_a_slow_head_after_a_response_on_a_kept_alive_connection_is_cut_off(
    server: BackgroundServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
        # Its bytes keep arriving, so the keep-alive timeout is not what ends it.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: clew\r\nX-Drip: ")
        took, answer = stall(sock, LIMITS.header_timeout_s + 10)
    # Generous upper bound (5 s past the timeout) for a loaded machine; the lower one is exact.
    assert LIMITS.header_timeout_s * 0.9 <= took < LIMITS.header_timeout_s + 5
    assert status_of(answer) == 408 and error_code(answer) == HEAD_TIMEOUT


def test_clew_collector_enforces_the_limits_of_its_configuration(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text("[http]\nheader_timeout_s = 1.0\nmax_headers = 10\n")
    port = free_port()
    argv = [clew_bin(), "collector", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    log = tmp_path / "collector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "--config", str(config)], stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}/health"
        wait_for(lambda: _answers(url) or proc.poll() is not None, timeout_s=30)
        assert proc.poll() is None, log.read_text()
        with connect(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: clew\r\n")
            took, answer = stall(sock, 10)
        # The configured 1.0 s, not the default; generous upper bound for a loaded machine.
        assert 0.9 <= took < 6 and status_of(answer) == 408
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
        with connect(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: clew\r\n" + headers + b"\r\n")
            assert status_of(read_until_closed(sock, 2)) == 431
    finally:
        proc.terminate()
        proc.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
