"""The Spark session for a lake on object storage: its S3 credentials reach S3A without
passing through the JVM's command line, which every local user can read."""

from __future__ import annotations

import secrets

import psutil

from _services import unavailable
from _spark import TEST_CONF
from clew.batch._spark_session import build_session, missing


def test_s3_credentials_stay_off_the_jvm_command_line() -> None:
    reason = missing(object_storage=True)
    if reason is not None:
        unavailable(reason)
    secret = "s3-secret-" + secrets.token_hex(8)
    storage = {
        "AWS_ACCESS_KEY_ID": "clew-test",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    session = build_session("local[1]", TEST_CONF, storage=storage)
    try:
        jvms = [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]
        assert jvms
        for jvm in jvms:
            assert secret not in "\0".join(jvm.cmdline())
        hadoop = session.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
        assert hadoop.get("fs.s3a.secret.key") == secret
        assert hadoop.get("fs.s3a.endpoint") == "http://127.0.0.1:9"
    finally:
        session.stop()
