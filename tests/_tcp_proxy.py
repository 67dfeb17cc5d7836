"""A TCP proxy on a loopback port that a test can cut and restore, to take a service away
from Clew for a while without stopping it (moto keeps its buckets in memory: stopping it
would lose them).

The proxy runs in a child process of its own: deltalake holds the interpreter lock while it
waits on object storage, so a proxy thread in a process that calls deltalake would never
forward the bytes it waits for. :meth:`TcpProxy.cut` (SIGUSR1 to the child) closes every
connection and stops listening, so that a client's connect is refused as if the service
were down; :meth:`TcpProxy.restore` (SIGUSR2) listens again on the same port.

While cut, the port stays bound by a socket that does not listen: a connect is still refused,
but nothing else can take the port meanwhile. Left unbound, a client retrying against a port in
the ephemeral range can be handed that very port as its own source port (a TCP self-connect),
and the proxy could then never listen again.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

from _services import LOOPBACK, free_port


class TcpProxy:
    """Forwards each connection on ``url`` to ``LOOPBACK:target_port``, from a child process."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), str(target_port)],
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the TCP proxy did not start")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        self._proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)

    def restore(self) -> None:
        """Listen again on the same port."""
        self._proc.send_signal(signal.SIGUSR2)
        time.sleep(0.2)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()


class _Forwarder:
    def __init__(self, port: int, target_port: int) -> None:
        self._port = port
        self._target = (LOOPBACK, target_port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        # Bound, not listening: holds the port while the proxy is cut.
        self._holder: socket.socket | None = None

    def listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener, self._holder = self._holder or _bind(self._port), None
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
            if listener is not None:
                # shutdown() wakes the thread blocked in accept(), which lets the port go.
                _close(listener)
                self._holder = _bind(self._port)
        for s in conns:
            _close(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._conns -= {src, dst}
        _close(src)
        _close(dst)


def _bind(port: int) -> socket.socket:
    """A socket bound to ``port``, retried briefly while a closing socket still holds it."""
    deadline = time.monotonic() + 5
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def _main(port: int, target_port: int) -> None:
    forwarder = _Forwarder(port, target_port)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        threading.Thread(
            target=forwarder.cut if signum == signal.SIGUSR1 else forwarder.listen, daemon=True
        ).start()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    forwarder.listen()
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
