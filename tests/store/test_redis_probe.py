"""The Redis probe behind /health and the startup check: a cluster answers through any node
it names, so a dead node of ``store.redis_url`` does not make Redis look down for good."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from _services import free_port
from clew.store._redis_probe import probe
from clew.store.base import StoreError


def test_another_node_answers_for_a_dead_one(redis_url: str) -> None:
    live = urlsplit(redis_url)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreError, match="refused"):
        probe(dead, 1.0)
    probe(dead, 1.0, nodes=[f"{live.hostname}:{live.port}"])
    with pytest.raises(StoreError, match="refused"):
        probe(dead, 1.0, nodes=[f"127.0.0.1:{free_port()}"])
