"""A local SparkSession with Delta Lake for the Spark batch-layer tests: one per test module,
stopped at its end.

``scripts/spark.sh`` fetches Delta's jars with Maven (``make test`` runs it first) and pyspark
comes with the dev extra. Without Java, pyspark or the jars, the tests skip with a message
naming the command that installs what is missing; under CI they fail instead (see
``tests/_services.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from _services import ServiceUnavailable
from clew.batch._spark_session import build_session, missing

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "scripts" / "spark" / "pom.xml"

# The tests' lakes are tiny: two partitions, and no code generation or adaptive re-planning,
# which cost more (compiling, planning) than they save on a few thousand rows.
TEST_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
}


def pom_versions() -> dict[str, str]:
    """``delta.version``, ``spark.version`` and ``hadoop.version`` of scripts/spark/pom.xml."""
    text = POM.read_text()
    found = {}
    for name in ("delta.version", "spark.version", "hadoop.version"):
        match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", text)
        assert match, f"no <{name}> in {POM}"
        found[name] = match.group(1)
    return found


@contextmanager
def spark_session() -> Iterator[SparkSession]:
    """A ``local[2]`` session with the Delta jars; raises :class:`ServiceUnavailable` naming
    the command that installs what is missing."""
    reason = missing()
    if reason is not None:
        raise ServiceUnavailable(reason)
    session = build_session("local[2]", TEST_CONF)
    try:
        yield session
    finally:
        session.stop()
