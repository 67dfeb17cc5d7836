"""``open_store`` (``clew.backends``): the settings choose the serving store's backend."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from clew.backends import open_existing_store, open_store, serving_store_file
from clew.config import Settings
from clew.store import SQLiteProfileStore
from clew.store.base import Provenance

PROV = Provenance("m1", "src", 1_000)


def test_sqlite_is_the_default_and_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert open_existing_store(settings) is None  # nothing processed yet: no file made
    store = open_store(settings)
    try:
        assert isinstance(store, SQLiteProfileStore)
        assert store.local_file == serving_store_file(settings) == settings.profiles_path
        store.attach("p1", "user_id", "u1", PROV)
    finally:
        store.close()
    assert settings.profiles_path.exists()
    again = open_existing_store(settings)
    assert again is not None
    try:
        assert again.lookup("user_id", "u1") is not None
    finally:
        again.close()


def test_the_environment_selects_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    from clew.store import RedisProfileStore

    prefix = f"factory-{uuid.uuid4().hex}"
    monkeypatch.setenv("CLEW_STORE__BACKEND", "redis")
    monkeypatch.setenv("CLEW_STORE__REDIS_URL", redis_url)
    monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", prefix)
    settings = Settings(data_dir=tmp_path)
    writer = open_store(settings)
    try:
        assert isinstance(writer, RedisProfileStore)
        assert writer.local_file is serving_store_file(settings) is None
        pid = writer.attach("p1", "user_id", "u1", PROV)
    finally:
        writer.close()
    reader = open_existing_store(settings)  # never None: Redis has no file to wait for
    assert reader is not None
    try:
        assert reader.lookup("user_id", "u1") == pid
    finally:
        reader.close()
    assert not settings.profiles_path.exists()
    monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", prefix + "-other")
    other = open_store(Settings(data_dir=tmp_path))
    try:
        assert other.lookup("user_id", "u1") is None  # another prefix sees none of it
    finally:
        other.close()


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValidationError, match="free of braces"):
        Settings.model_validate({"store": {"backend": "redis", "redis_prefix": "a{b}"}})
