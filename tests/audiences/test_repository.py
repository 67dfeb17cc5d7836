"""Stored definitions: one file per definition, pushed as a checked whole, removed only when
nothing uses them; and the shipped examples load."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from clew.audiences.definitions import AudienceDef, Definition, DefinitionError, parse_document
from clew.audiences.repository import (
    DefinitionInUseError,
    DefinitionRepository,
    UnknownDefinitionError,
    load_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audiences"


def defs(**docs: Any) -> list[Definition]:
    return parse_document(docs)


LTV = {"name": "ltv", "kind": "sum", "event": "Order Completed", "property": "revenue"}
BIG = {"name": "big", "condition": {"computed": "ltv", "op": "gte", "value": 500}}
VIP = {"name": "vip", "condition": {"all": [{"audience": "big"}, {"trait": "plan"}]}}


@pytest.fixture
def repo(tmp_path: Path) -> DefinitionRepository:
    return DefinitionRepository(tmp_path / "data")


def snapshot(repo: DefinitionRepository) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in repo.files()}


def test_push_writes_one_file_per_definition_that_reads_back(repo: DefinitionRepository) -> None:
    written = repo.push(defs(traits=[LTV], audiences=[BIG, VIP]))
    assert sorted(written) == ["big", "ltv", "vip"]
    assert sorted(p.name for p in (repo.path).iterdir() if not p.name.startswith(".")) == [
        "big.json",
        "ltv.json",
        "vip.json",
    ]
    stored = json.loads((repo.path / "big.json").read_text())
    assert stored == {"type": "audience", **BIG}
    assert parse_document(stored)[0] == repo.get("big")
    catalog = repo.catalog()
    assert [t.name for t in catalog.traits] == ["ltv"]
    assert [a.name for a in catalog.audiences] == ["big", "vip"]
    assert repo.get("nope") is None


def test_pushing_again_rewrites_only_what_changed(repo: DefinitionRepository) -> None:
    repo.push(defs(traits=[LTV], audiences=[BIG]))
    mtime = (repo.path / "ltv.json").stat().st_mtime_ns
    assert repo.push(defs(traits=[LTV], audiences=[BIG])) == []
    richer = {**BIG, "condition": {"computed": "ltv", "op": "gte", "value": 900}}
    assert repo.push(defs(traits=[LTV], audiences=[richer])) == ["big"]
    assert (repo.path / "ltv.json").stat().st_mtime_ns == mtime
    got = repo.get("big")
    assert isinstance(got, AudienceDef) and got.source == richer


def test_a_push_may_refer_to_what_is_already_stored(repo: DefinitionRepository) -> None:
    repo.push(defs(traits=[LTV], audiences=[BIG]))
    assert repo.push(defs(audiences=[VIP])) == ["vip"]
    assert [a.name for a in repo.catalog().audiences] == ["big", "vip"]


@pytest.mark.parametrize(
    ("push", "message"),
    [
        ({"audiences": [{"name": "x", "condition": {"audience": "ghost"}}]}, "'ghost'"),
        (
            {"audiences": [{"name": "big", "condition": {"audience": "vip"}}]},
            "cycle: big -> vip -> big",
        ),
        (
            {"audiences": [{"name": "ltv", "condition": {"trait": "x"}}]},
            "already defined as a trait",
        ),
    ],
)
def test_an_invalid_push_writes_nothing(
    repo: DefinitionRepository, push: dict[str, Any], message: str
) -> None:
    repo.push(defs(traits=[LTV], audiences=[BIG, VIP]))
    before, version = snapshot(repo), repo.version()
    with pytest.raises(DefinitionError, match=message):
        repo.push([*defs(traits=[{"name": "orders", "kind": "count"}]), *defs(**push)])
    assert snapshot(repo) == before
    assert repo.version() == version


def test_two_definitions_of_one_name_in_a_push_are_refused(repo: DefinitionRepository) -> None:
    with pytest.raises(DefinitionError, match="'ltv' is defined twice"):
        repo.push([*defs(traits=[LTV]), *defs(traits=[{**LTV, "window": "1d"}])])
    assert repo.files() == []


def test_dry_run_checks_and_reports_but_writes_nothing(repo: DefinitionRepository) -> None:
    assert sorted(repo.push(defs(traits=[LTV], audiences=[BIG]), dry_run=True)) == ["big", "ltv"]
    assert repo.files() == []
    with pytest.raises(DefinitionError, match="not defined"):
        repo.push(defs(audiences=[VIP]), dry_run=True)


def test_remove_refuses_what_an_audience_uses(repo: DefinitionRepository) -> None:
    repo.push(defs(traits=[LTV], audiences=[BIG, VIP]))
    with pytest.raises(DefinitionInUseError, match=r"audience 'big' is used by audience.*'vip'"):
        repo.remove("big")
    with pytest.raises(DefinitionInUseError, match=r"trait 'ltv' is used by audience.*'big'"):
        repo.remove("ltv")
    with pytest.raises(UnknownDefinitionError, match="no trait or audience named 'nope'"):
        repo.remove("nope")
    repo.remove("vip")
    repo.remove("big")
    repo.remove("ltv")
    assert repo.files() == [] and repo.catalog().definitions() == []


def test_version_changes_with_every_write_and_removal(repo: DefinitionRepository) -> None:
    seen = {repo.version()}
    repo.push(defs(traits=[LTV]))
    seen.add(repo.version())
    # Same size, written within the file system's time resolution: still a new version.
    repo.push(defs(traits=[{**LTV, "event": "Order Cancelled"}]))
    repo.push(defs(traits=[{**LTV, "event": "Order Completed"}]))
    seen.add(repo.version())
    repo.push(defs(traits=[LTV]))  # unchanged: same version
    assert len(seen) == 3
    repo.remove("ltv")
    assert repo.version() not in seen


def test_a_hand_edited_file_is_seen_and_a_broken_one_is_named(
    repo: DefinitionRepository,
) -> None:
    repo.push(defs(traits=[LTV], audiences=[BIG]))
    version = repo.version()
    path = repo.path / "ltv.json"
    path.write_text('{"type": "trait", "name": "ltv", "kind": "avg"}')
    os.utime(path, ns=(1, 1))
    assert repo.version() != version
    with pytest.raises(DefinitionError, match=r"ltv\.json: trait 'ltv': kind 'avg' needs"):
        repo.catalog()
    with pytest.raises(DefinitionError, match=r"big\.json"):
        (repo.path / "big.json").write_text("{not json")
        repo.get("big")
    # Pushing valid versions repairs the files; other definitions could not be pushed before.
    with pytest.raises(DefinitionError, match="remove it with `clew audiences remove"):
        repo.push(defs(audiences=[VIP]))
    repo.push(defs(traits=[LTV], audiences=[BIG]))
    assert [d.name for d in repo.catalog().definitions()] == ["ltv", "big"]


def test_a_file_under_the_wrong_name_is_refused(repo: DefinitionRepository) -> None:
    repo.path.mkdir(parents=True)
    (repo.path / "other.json").write_text(json.dumps({"type": "trait", **LTV}))
    with pytest.raises(DefinitionError, match="expected one definition named 'other'"):
        repo.catalog()


def test_files_are_replaced_atomically(
    repo: DefinitionRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.push(defs(traits=[LTV]))
    before = snapshot(repo)

    def crash(self: Path, target: Path) -> Path:
        raise OSError("disk gone")

    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        repo.push(defs(traits=[{**LTV, "window": "7d"}]))
    monkeypatch.undo()
    assert snapshot(repo) == before
    assert repo.catalog().traits[0].window_ms is None


# -- files -------------------------------------------------------------------------------------


def test_load_file_reads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("traits:\n  - name: n\n    kind: count\n")
    (tmp_path / "b.json").write_text(json.dumps({"type": "audience", **BIG}))
    assert [d.name for d in load_file(tmp_path / "a.yml")] == ["n"]
    assert [d.name for d in load_file(tmp_path / "b.json")] == ["big"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.yaml",
            "traits:\n  - name: n\n   kind: count\n",
            r"bad\.yaml, line 3: not valid YAML",
        ),
        ("bad.json", '{"traits": [\n  {"name": "n",}\n]}', r"bad\.json, line 2: not valid JSON"),
        (
            "bad.yaml",
            "traits:\n  - name: n\n    kind: nope\n",
            r"bad\.yaml: trait 'n': kind 'nope'",
        ),
        ("bad.txt", "traits: []", r"bad\.txt: definitions are read from \.yaml"),
    ],
)
def test_load_file_errors_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DefinitionError, match=message):
        load_file(tmp_path / name)
    with pytest.raises(DefinitionError, match=r"missing\.yaml: cannot read it"):
        load_file(tmp_path / "missing.yaml")


def test_the_shipped_examples_load_and_push_together(repo: DefinitionRepository) -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert [f.name for f in files] == [
        "active_last_7_days.yaml",
        "cart_abandoner.yaml",
        "high_value_customer.yaml",
    ]
    loaded = {d.name: d for f in files for d in load_file(f)}
    assert set(loaded) == {
        "active_last_7_days",
        "cart_abandoner",
        "ltv_365d",
        "high_value_customer",
    }
    cart = loaded["cart_abandoner"]
    assert isinstance(cart, AudienceDef) and cart.funnels[0].within_ms == 3_600_000
    active = loaded["active_last_7_days"]
    assert isinstance(active, AudienceDef)
    assert active.traits[0].match.types == {"track", "page", "screen"}
    assert active.traits[0].window_ms == 7 * 86_400_000
    assert sorted(repo.push(list(loaded.values()))) == sorted(loaded)


def test_a_trait_counting_one_event_type_reads_back(repo: DefinitionRepository) -> None:
    doc = {"traits": [{"name": "page_views", "kind": "count", "event_type": "page"}]}
    repo.push(parse_document(doc))
    (trait,) = repo.catalog().traits
    assert trait.match.types == frozenset({"page"})


def _redis_repo(url: str, prefix: str, data_dir: Path) -> DefinitionRepository:
    import redis

    from clew.definition_store._redis import RedisStorage

    return DefinitionRepository(data_dir, RedisStorage(redis.Redis.from_url(url), prefix))


def test_definitions_in_redis_are_shared_by_every_machine(redis_url: str, tmp_path: Path) -> None:
    """With the serving store in Redis, a push on one machine is what every machine's
    profiles workers, CLI and Admin API read; checks, versions and removal work as with
    files, and nothing is written to either data directory."""
    prefix = f"defs-{uuid.uuid4().hex[:8]}"
    a = _redis_repo(redis_url, prefix, tmp_path / "a")
    b = _redis_repo(redis_url, prefix, tmp_path / "b")
    before = b.version()
    assert sorted(a.push(defs(traits=[LTV], audiences=[BIG]))) == ["big", "ltv"]
    assert b.version() != before
    assert [d.name for d in b.catalog().definitions()] == ["ltv", "big"]
    assert b.get("big") == a.get("big") and b.get("nope") is None
    seen = b.version()
    assert a.push(defs(traits=[LTV])) == [], "unchanged: not rewritten"
    assert b.version() == seen
    with pytest.raises(DefinitionError, match="already defined as a trait"):
        b.push(defs(audiences=[{**BIG, "name": "ltv"}]))
    b.push(defs(audiences=[VIP]))
    with pytest.raises(DefinitionInUseError):
        a.remove("big")
    a.remove("vip")
    a.remove("big")
    assert [d.name for d in b.catalog().definitions()] == ["ltv"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(TypeError, match="not files"):
        a.files()


def test_redis_writers_take_turns(redis_url: str, tmp_path: Path) -> None:
    """Two machines pushing at once: each push is checked against what the other stored."""
    import threading

    prefix = f"defs-{uuid.uuid4().hex[:8]}"
    repos = [_redis_repo(redis_url, prefix, tmp_path) for _ in range(2)]
    repos[0].push(defs(traits=[LTV]))
    errors: list[Exception] = []

    def push(repo: DefinitionRepository, n: int) -> None:
        try:
            for i in range(10):
                repo.push(defs(traits=[{**LTV, "name": f"t{n}_{i}"}]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(r, n)) for n, r in enumerate(repos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(repos[1].catalog().definitions()) == 21


def test_a_writer_that_waits_too_long_for_the_lock_gets_a_definition_error(
    tmp_path: Path,
) -> None:
    from collections.abc import Iterator
    from contextlib import contextmanager

    from clew.definition_store import DirectoryStorage, StorageBusyError

    class Busy(DirectoryStorage):
        @contextmanager
        def locked(self) -> Iterator[None]:
            raise StorageBusyError("another writer has held the lock for 60 s; try again")
            yield  # pragma: no cover - a generator that never yields

    repo = DefinitionRepository(tmp_path, Busy(tmp_path))
    with pytest.raises(DefinitionError, match="another writer has held the lock"):
        repo.push(defs(traits=[LTV]))
    assert repo.get("ltv") is None
