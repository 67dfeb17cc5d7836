"""The Profile API while its serving store is unreachable: 503 ``store_unavailable`` with
``Retry-After``, never a 500 (docs/profile-api.md, "Errors")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from clew.api.profiles import STORE_RETRY_AFTER_S, profile_routes
from clew.sources import Catalog
from clew.store import MemoryProfileStore
from clew.store.redis import RedisUnavailableError


class UnreachableStore(MemoryProfileStore):
    """Every read fails as the Redis store's do when Redis is away."""

    def lookup(self, *_: Any) -> Any:
        raise RedisUnavailableError("cannot reach Redis at 127.0.0.1:6379")

    def resolve(self, *_: Any) -> Any:
        raise RedisUnavailableError("cannot reach Redis at 127.0.0.1:6379")


@pytest.mark.parametrize("offload", [False, True])
def test_an_unreachable_store_is_503_with_retry_after(tmp_path: Path, offload: bool) -> None:
    catalog = Catalog(tmp_path / "meta.db")
    token = catalog.create_token("reader")
    app = Starlette(routes=profile_routes(UnreachableStore(), catalog, offload=offload))

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clew") as client:
            return await client.get(path, headers={"Authorization": f"Bearer {token}"})

    try:
        for path in (
            "/v1/profiles/user_id:ada",
            "/v1/spaces/s/collections/users/profiles/user_id:ada/traits",
            "/v1/spaces/s/collections/users/profiles/profile_id:p-1/events",
        ):
            r = asyncio.run(get(path))
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "store_unavailable"
            assert r.headers["retry-after"] == str(STORE_RETRY_AFTER_S)
    finally:
        catalog.close()
