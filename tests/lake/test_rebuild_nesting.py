"""`clew rebuild` over a lake holding an identify stored before the Tracking API bounded
nesting (traits 300 levels deep, more than JSON text can be written with): the rebuild
finishes and the profile's traits are written cut at the limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
from deltalake import write_deltalake

from clew.batch.rebuild import rebuild
from clew.config import Settings
from clew.lake.query import Lake
from clew.lake.tables import EVENTS, to_arrow
from clew.nesting import TOO_DEEP


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_a_rebuild_over_an_identify_with_traits_300_deep_writes_the_profile(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    identify = {
        "type": "identify",
        "messageId": "m-1",
        "timestamp": "2026-03-01T00:00:00.000Z",
        "receivedAt": "2026-03-01T00:00:00.000Z",
        "sourceId": "src",
        "userId": "u-1",
        "traits": {"plan": "pro", "k": nested(300)},
    }
    table = to_arrow(EVENTS, [msgspec.json.encode(identify)])
    write_deltalake(str(settings.lake_path / EVENTS.name), table, partition_by=["event_date"])

    report = rebuild(settings)

    assert (report.events, report.profiles, report.identities) == (1, 1, 1)
    ((user_id, traits),) = (
        Lake(settings.lake_path).sql("SELECT user_id, traits FROM customer_profiles").rows
    )
    assert user_id == "u-1"
    assert orjson.loads(traits)["plan"] == "pro"
    assert TOO_DEEP in traits
