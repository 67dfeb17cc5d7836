"""The SparkSession of the Spark batch layer: where Delta Lake's jars are, how a session that
reads and writes the lake's Delta tables is configured, and how Spark reaches a lake on
S3-compatible storage.

Spark itself comes with the ``pyspark`` package (the ``spark`` extra); Delta Lake's Spark
connector (two jars) and Hadoop's S3A connector (``hadoop-aws`` and the AWS SDK's S3 modules)
are jars that ``scripts/spark.sh`` fetches with Maven into a cache shared by every checkout.
All of them are handed to Spark through ``spark.jars``, so nothing is resolved at run time.

A lake on object storage (``s3://bucket/prefix``) is read and written by Spark through S3A
(``s3a://bucket/prefix``), configured from ``lake.storage_options`` and else the same
``AWS_*`` environment variables as the rest of Clew (:func:`s3a_options`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The Spark line the pinned pyspark belongs to, and the Delta release made for it. Both are
# also written in scripts/spark/pom.xml, which the fetch script reads (a test keeps them equal).
SPARK_VERSION = "4.0.1"
DELTA_VERSION = "4.0.0"
DELTA_JARS = (f"delta-spark_2.13-{DELTA_VERSION}.jar", f"delta-storage-{DELTA_VERSION}.jar")
# The Hadoop inside that pyspark (pyspark/jars/hadoop-client-api-*.jar): hadoop-aws must match
# it. The AWS SDK modules S3A needs are fetched beside it; this one jar stands for them all.
HADOOP_VERSION = "3.4.1"
S3A_JARS = (f"hadoop-aws-{HADOOP_VERSION}.jar",)
FETCH = "sh scripts/spark.sh"
INSTALL = "pip install 'clew[spark]'"

LOCAL_MASTER = "local[*]"

# S3A options set on the running session, never as launch settings: pyspark hands launch
# settings to spark-submit as `--conf` arguments, which every local user can read in the
# JVM's /proc/PID/cmdline.
S3A_CREDENTIALS = ("fs.s3a.access.key", "fs.s3a.secret.key", "fs.s3a.session.token")


class SparkUnavailableError(RuntimeError):
    """Spark cannot run here (no pyspark, no Java, no Delta jars); the message names the
    command that installs what is missing."""


def delta_jars_dir() -> Path:
    """Where ``scripts/spark.sh`` puts the Delta jars; ``CLEW_SPARK_JARS`` overrides."""
    if path := os.environ.get("CLEW_SPARK_JARS"):
        return Path(path)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "clew" / "spark" / DELTA_VERSION / "jars"


def missing(object_storage: bool = False) -> str | None:
    """Why a local Spark session with Delta (and with S3A, for a lake on ``object_storage``)
    cannot start here, naming the command that fixes it; ``None`` if it can."""
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
    absent = [name for name in S3A_JARS if not (jars / name).is_file()] if object_storage else []
    if absent:
        return (
            f"the lake is on object storage and Hadoop's S3A jars are not in {jars} "
            f"({', '.join(absent)}): run {FETCH}"
        )
    return None


def spark_path(uri: str) -> str:
    """A lake location as Spark names it: ``s3://`` becomes Hadoop's ``s3a://``.

    >>> spark_path("s3://clew-lake/prod/events")
    's3a://clew-lake/prod/events'
    >>> spark_path("/srv/clew/lake/events")
    '/srv/clew/lake/events'
    """
    scheme, sep, rest = uri.partition("://")
    return f"s3a://{rest}" if sep and scheme.lower() in ("s3", "s3a") else uri


def s3a_options(options: Mapping[str, str]) -> dict[str, str]:
    """Hadoop's S3A settings (``fs.s3a.*``) for the store ``options`` of a lake on object
    storage; a value the options lack is read from the same ``AWS_*`` environment variable,
    as deltalake does. Unknown options are ignored: S3A's defaults apply.

    >>> conf = s3a_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"})
    >>> conf["fs.s3a.endpoint.region"], conf["fs.s3a.path.style.access"]
    ('eu-west-1', 'true')
    >>> conf["fs.s3a.connection.ssl.enabled"]
    'false'
    """
    from clew._locations import s3_settings

    s3 = s3_settings(options)
    out: dict[str, str] = {}
    if s3.access_key and s3.secret_key:
        out["fs.s3a.access.key"] = s3.access_key
        out["fs.s3a.secret.key"] = s3.secret_key
        if s3.session_token:
            out["fs.s3a.session.token"] = s3.session_token
            out["fs.s3a.aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
            )
    if s3.region:
        out["fs.s3a.endpoint.region"] = s3.region
    if s3.endpoint:
        out["fs.s3a.endpoint"] = s3.endpoint
        if urlsplit(s3.endpoint).scheme.lower() == "http":
            out["fs.s3a.connection.ssl.enabled"] = "false"
        # S3-compatible servers are addressed by path (the bucket in the path, not the host).
        if not s3.virtual_hosted:
            out["fs.s3a.path.style.access"] = "true"
    return out


def build_session(
    master: str, conf: Mapping[str, str], *, storage: Mapping[str, str] | None = None
) -> SparkSession:
    """A session on ``master`` with Delta's SQL extension and catalog, the Delta and S3A jars,
    UTC as session time zone and standard Parquet timestamps, and, for a lake on object
    storage, S3A configured from its ``storage`` options (see :func:`s3a_options`); ``conf``
    is applied last, so it can override any of these. Raises :class:`SparkUnavailableError`
    naming what is missing."""
    reason = missing(object_storage=storage is not None)
    if reason is not None:
        raise SparkUnavailableError(reason)
    from pyspark.sql import SparkSession

    # Every jar the fetch script put there: Delta's, hadoop-aws and the AWS SDK modules.
    jars = ",".join(str(path) for path in sorted(delta_jars_dir().glob("*.jar")))
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
    s3a = s3a_options(storage) if storage is not None else {}
    credentials = {k: v for k, v in s3a.items() if k in S3A_CREDENTIALS}
    settings.update({f"spark.hadoop.{k}": v for k, v in s3a.items() if k not in credentials})
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
    if credentials:
        # Spark ships the driver's Hadoop configuration with every file task.
        hadoop = session.sparkContext._jsc.hadoopConfiguration()
        for key, value in credentials.items():
            hadoop.set(key, value)
    session.sparkContext.setLogLevel("ERROR")
    return session
