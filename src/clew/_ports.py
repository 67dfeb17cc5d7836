"""Whether the port a server is to listen on is free, asked before anything starts, so that a
port in use is one line saying what to do rather than a failure deep inside the HTTP server."""

from __future__ import annotations

import errno
import socket


class PortInUseError(OSError):
    """Another process listens on the port `clew serve` or `clew collector` was given."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is in use by another process: stop it, or pick another "
            f"port with --port (or `port` in the config file)"
        )
        self.host = host
        self.port = port


def ensure_port_free(host: str, port: int) -> None:
    """Return when a server could listen on ``host:port`` now; raise :class:`PortInUseError`
    when another process holds it. Binds the way the HTTP server does (``SO_REUSEADDR``), so a
    port left in TIME_WAIT by a server that just stopped counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(host, port) from None
            raise
