"""The SparkSession of the Spark batch layer: where Delta Lake's jars are, and how a session
that reads and writes the lake's Delta tables is configured.

Spark itself comes with the ``pyspark`` package (the ``spark`` extra); Delta Lake's Spark
connector is two jars that ``scripts/spark.sh`` fetches with Maven into a cache shared by every
checkout. They are handed to Spark through ``spark.jars``, so nothing is resolved at run time.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The Spark line the pinned pyspark belongs to, and the Delta release made for it. Both are
# also written in scripts/spark/pom.xml, which the fetch script reads (a test keeps them equal).
SPARK_VERSION = "4.0.1"
DELTA_VERSION = "4.0.0"
DELTA_JARS = (f"delta-spark_2.13-{DELTA_VERSION}.jar", f"delta-storage-{DELTA_VERSION}.jar")
FETCH = "sh scripts/spark.sh"
INSTALL = "pip install 'clew[spark]'"

LOCAL_MASTER = "local[*]"


class SparkUnavailableError(RuntimeError):
    """Spark cannot run here (no pyspark, no Java, no Delta jars); the message names the
    command that installs what is missing."""


def delta_jars_dir() -> Path:
    """Where ``scripts/spark.sh`` puts the Delta jars; ``CLEW_SPARK_JARS`` overrides."""
    if path := os.environ.get("CLEW_SPARK_JARS"):
        return Path(path)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "clew" / "spark" / DELTA_VERSION / "jars"


def missing() -> str | None:
    """Why a local Spark session with Delta cannot start here, naming the command that
    fixes it; ``None`` if it can."""
    try:
        import pyspark
    except ImportError:
        return f"the Spark engine needs pyspark {SPARK_VERSION}: {INSTALL}"
    if pyspark.__version__.split(".")[:2] != SPARK_VERSION.split(".")[:2]:
        return (
            f"pyspark {pyspark.__version__} is installed but Delta {DELTA_VERSION} is made "
            f"for Spark {SPARK_VERSION}: {INSTALL}"
        )
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        return "Spark needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
    jars = delta_jars_dir()
    absent = [name for name in DELTA_JARS if not (jars / name).is_file()]
    if absent:
        return f"Delta Lake's Spark jars are not in {jars} ({', '.join(absent)}): run {FETCH}"
    return None


def build_session(master: str, conf: Mapping[str, str]) -> SparkSession:
    """A session on ``master`` with Delta's SQL extension and catalog, the Delta jars, UTC as
    session time zone and standard Parquet timestamps; ``conf`` is applied last, so it can
    override any of these. Raises :class:`SparkUnavailableError` naming what is missing."""
    reason = missing()
    if reason is not None:
        raise SparkUnavailableError(reason)
    from pyspark.sql import SparkSession

    jars = ",".join(str(delta_jars_dir() / name) for name in DELTA_JARS)
    local = master.startswith("local")
    settings: dict[str, str] = {
        "spark.app.name": "clew-rebuild",
        "spark.jars": jars,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        # INT96 (Spark's default) is a legacy encoding; other Delta readers expect this one.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if local:
        # One machine: as many partitions as cores (the defaults, 200 shuffle partitions and
        # 50 for rebuilding a Delta table's state, are for clusters and cost seconds here).
        cores = str(max(2, os.cpu_count() or 1))
        settings["spark.sql.shuffle.partitions"] = cores
        settings["spark.databricks.delta.snapshotPartitions"] = cores
        # A checksum file per commit is one more Spark job per write, read by no one here.
        settings["spark.databricks.delta.writeChecksumFile.enabled"] = "false"
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
    settings.update(conf)
    if local:
        # pyspark starts its Python workers with $PYSPARK_PYTHON (default: the first python3
        # on the PATH, which may lack clew); a caller's own choice is kept.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
