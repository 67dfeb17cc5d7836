"""Which addresses a destination may reach (docs/destinations.md, "Addresses").

Link-local addresses and the cloud metadata services are refused always: a webhook URL
pointing there would hand the machine's cloud credentials to whoever can add a destination.
With ``destinations.block_private_networks`` loopback, private and every other non-public
address are refused too. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4,
Teredo) are judged by the IPv4 address they carry.

The check is made on resolved addresses, at send time: :func:`pin` resolves the URL's host
once, refuses it if any of its addresses is refused, and gives the URL with the host replaced
by the checked address (the ``Host`` header and the TLS server name keep the name), so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from clew.destinations.config import DestinationConfigError

if TYPE_CHECKING:
    # Imported where a request is made (see Sender._run in clew.destinations.sender).
    import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

# Refused whatever the settings say.
ALWAYS_REFUSED: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local (cloud metadata at 169.254.169.254)"),
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254/128", "the AWS metadata service over IPv6"),
    ("100.100.100.200/32", "the Alibaba Cloud metadata service"),
    ("168.63.129.16/32", "the Azure platform endpoint"),
)
_ALWAYS = tuple((ipaddress.ip_network(net), what) for net, what in ALWAYS_REFUSED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DestinationAddressError(DestinationConfigError):
    """A destination's URL names, or resolves to, an address destinations may not reach."""


def _carried_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries, if any; ``ip`` itself otherwise."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return ip


def refusal(address: str, block_private_networks: bool) -> str | None:
    """Why ``address`` (an IP address as text) may not be reached, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = tuple(dict.fromkeys((ip, _carried_ipv4(ip))))
    for candidate in candidates:
        for net, what in _ALWAYS:
            if candidate.version == net.version and candidate in net:
                return f"{address} is {what}, which destinations may never reach"
    if block_private_networks and not all(c.is_global for c in candidates):
        return (
            f"{address} is not a public address (loopback, private or reserved), and "
            "destinations.block_private_networks is on"
        )
    return None


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(slots=True, frozen=True)
class Pinned:
    """A URL whose host was resolved and checked: ``urls`` holds it once per checked address
    (in the resolver's order), ``headers`` the ``Host`` header naming the original host, and
    ``extensions`` the TLS server name for httpx."""

    urls: tuple[str, ...]
    headers: dict[str, str]
    extensions: dict[str, Any]

    def post(
        self, client: httpx.Client, content: bytes, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        """POST to the first address that accepts a connection, as a client connecting by
        name would; raises httpx's error of the last one when none does."""
        import httpx

        for url in self.urls[:-1]:
            try:
                return self._post(client, url, content, headers, timeout_s)
            except httpx.ConnectError:
                continue
        return self._post(client, self.urls[-1], content, headers, timeout_s)

    def _post(
        self,
        client: httpx.Client,
        url: str,
        content: bytes,
        headers: dict[str, str],
        timeout_s: float,
    ) -> httpx.Response:
        return client.post(
            url,
            content=content,
            headers={**headers, **self.headers},
            timeout=timeout_s,
            extensions=self.extensions,
        )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def pin(url: str, block_private_networks: bool, resolve: Resolver = _resolve) -> Pinned:
    """Resolve ``url``'s host once and check every address it has. Raises
    :class:`DestinationAddressError` when one is refused, and ``OSError`` when the name does
    not resolve (worth retrying)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = [host] if _literal(host) is not None else resolve(host, port)
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        reason = refusal(address, block_private_networks)
        if reason is not None:
            raise DestinationAddressError(f"{url}: {reason}")
    userinfo, at, host_header = parts.netloc.rpartition("@")
    suffix = f":{parts.port}" if parts.port is not None else ""
    urls = tuple(
        urlunsplit(parts._replace(netloc=userinfo + at + (f"[{a}]" if ":" in a else a) + suffix))
        for a in addresses
    )
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Pinned(urls, {"Host": host_header}, extensions)


def check_url(url: str, block_private_networks: bool, resolve: Resolver = _resolve) -> None:
    """Refuse, when a destination is created, a URL that could never be sent to: raises
    :class:`DestinationAddressError` if its host is, or now resolves to, a refused address.
    A name that does not resolve yet is accepted (it is checked again at every send)."""
    try:
        pin(url, block_private_networks, resolve)
    except OSError:
        return
