"""Which addresses destinations may reach (docs/destinations.md, "Addresses"): cloud metadata
and link-local addresses never, loopback and private ones not with
``destinations.block_private_networks``; checked on the resolved address at send time, at
creation in the CLI, and for deletion notices; redirects are not followed."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, make_settings, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import DestinationSettings, Settings
from clew.destinations import DestinationConfig, DestinationDirectory, destinations_dir
from clew.destinations.addresses import DestinationAddressError, pin, refusal
from clew.destinations.notices import send_deletion_notice
from destinations._receiver import Receiver

cli = CliRunner()

METADATA = [
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
    "169.254.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",  # NAT64
    "2002:a9fe:a9fe::1",  # 6to4
    "fd00:ec2::254",  # AWS over IPv6
    "fe80::1",
    "fe80::1%lo",
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure platform endpoint
]
PRIVATE = [
    "127.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "fc00::1",
    "fd12:3456::1",
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", METADATA)
@pytest.mark.parametrize("block_private", [False, True])
def test_metadata_and_link_local_addresses_are_always_refused(
    address: str, block_private: bool
) -> None:
    reason = refusal(address, block_private)
    assert reason is not None and "may never reach" in reason


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_refused_only_when_asked(address: str) -> None:
    assert refusal(address, block_private_networks=False) is None
    reason = refusal(address, block_private_networks=True)
    assert reason is not None and "destinations.block_private_networks" in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address, block_private_networks=True) is None


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_used() -> None:
    answers = iter([["93.184.216.34"], ["169.254.169.254"]])  # a rebinding DNS server
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return next(answers)

    target = pin("https://user:pw@hooks.example:8443/in?x=1", False, resolve)
    assert calls == [("hooks.example", 8443)]
    assert target.urls == ("https://user:pw@93.184.216.34:8443/in?x=1",)
    # The receiver still sees its name: in the Host header and as the TLS server name.
    assert target.headers == {"Host": "hooks.example:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example"}


def test_a_name_with_any_refused_address_is_refused() -> None:
    with pytest.raises(DestinationAddressError, match=r"169\.254\.169\.254 is link-local"):
        pin("http://hooks.example/", False, lambda h, p: ["93.184.216.34", "169.254.169.254"])
    with pytest.raises(DestinationAddressError, match="the AWS metadata service"):
        pin("http://[fd00:ec2::254]/latest/", False)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.release()
    receiver.stop()


def _serve(settings: Settings, url: str, **options: object) -> BackgroundServer:
    fast = {"max_batch_wait_ms": 50, "retry_initial_s": 0.05, "retry_for_s": 2.0}
    config = DestinationConfig(name="hook", url=url, **{**fast, **options})  # type: ignore[arg-type]
    DestinationDirectory(destinations_dir(settings.data_dir)).save(config)
    server = BackgroundServer(settings).__enter__()
    server.clew.catalog.create_source("tests", WRITE_KEY)
    event = {"type": "track", "event": "Paid", "userId": "u-1", "messageId": "m-1"}
    r = httpx.post(server.url + "/v1/batch", json={"batch": [event]}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200
    return server


def _dead_letters(data_dir: Path) -> list[dict[str, object]]:
    out = cli.invoke(app, ["destinations", "dlq", "hook", "--json", "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    letters: list[dict[str, object]] = json.loads(out.stdout)
    return letters


def test_a_name_resolving_to_loopback_is_refused_at_send_time(
    tmp_path: Path, hook: Receiver
) -> None:
    settings = make_settings(
        tmp_path / "data", destinations=DestinationSettings(block_private_networks=True)
    )
    # The URL names a host; only its resolved address (127.0.0.1 or ::1) shows what it is.
    server = _serve(settings, f"http://localhost:{hook.port}/hook")
    try:
        wait_for(lambda: len(_dead_letters(settings.data_dir)) == 1, timeout_s=10)
        (letter,) = _dead_letters(settings.data_dir)
        assert "block_private_networks" in str(letter["reason"])
        assert hook.requests == []
    finally:
        server.__exit__()


def test_without_the_setting_a_name_is_delivered_with_its_host_header(
    settings: Settings, hook: Receiver
) -> None:
    if "127.0.0.1" not in {i[4][0] for i in socket.getaddrinfo("localhost", hook.port)}:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    server = _serve(settings, f"http://localhost:{hook.port}/hook")
    try:
        wait_for(lambda: len(hook.accepted()) == 1, timeout_s=10)
        assert hook.accepted()[0].headers["host"] == f"localhost:{hook.port}"
    finally:
        server.__exit__()


def test_a_redirect_is_not_followed(settings: Settings) -> None:
    redirecting = Receiver(script=[(302, {"Location": "http://169.254.169.254/latest/"})])
    redirecting.start()
    server = _serve(settings, redirecting.url)
    try:
        wait_for(lambda: len(_dead_letters(settings.data_dir)) == 1, timeout_s=10)
        (letter,) = _dead_letters(settings.data_dir)
        assert letter["status"] == 302 and "redirects are not followed" in str(letter["reason"])
        assert len(redirecting.requests) == 1
    finally:
        server.__exit__()
        redirecting.stop()


def test_a_deletion_notice_is_not_sent_to_a_refused_address() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    config = DestinationConfig(name="hook", url="http://169.254.169.254/latest/meta-data/")
    outcome = send_deletion_notice(
        config, [("user_id", "u-1")], ["p-1"], transport=httpx.MockTransport(record)
    )
    assert not outcome.delivered and "may never reach" in str(outcome.error)
    assert sent == []


@pytest.mark.parametrize(
    ("url", "block_private"),
    [
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://[::ffff:169.254.169.254]/", False),
        ("http://[fd00:ec2::254]/", False),
        ("http://127.0.0.1:9/hook", True),
        ("http://localhost:9/hook", True),
        ("http://10.0.0.5/hook", True),
    ],
)
def test_cli_refuses_to_create_a_destination_it_could_never_send_to(
    tmp_path: Path, url: str, block_private: bool
) -> None:
    config = tmp_path / "clew.toml"
    config.write_text(
        f"[destinations]\nblock_private_networks = {'true' if block_private else 'false'}\n"
    )
    d = str(tmp_path / "data")
    out = cli.invoke(
        app, ["destinations", "add", "x", "--url", url, "--config", str(config), "--data-dir", d]
    )
    assert out.exit_code == 2, out.output
    assert "may never reach" in out.output or "block_private_networks" in out.output
    listed = cli.invoke(app, ["destinations", "list", "--json", "--data-dir", d])
    assert json.loads(listed.stdout)["destinations"] == []
    if block_private:
        allowed = cli.invoke(app, ["destinations", "add", "x", "--url", url, "--data-dir", d])
        assert allowed.exit_code == 0, allowed.output
