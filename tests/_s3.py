"""An S3-compatible server for tests and benchmarks: moto's standalone server in a child
process on a free loopback port, holding its buckets in memory until it stops.

It runs in its own process on purpose: deltalake's object store calls hold the interpreter
lock while they wait, so a server thread in the test process would never answer them.

:func:`s3_server` yields an :class:`S3`, which makes buckets and gives the configuration a
Clew process needs to use one (``lake.storage_options`` or the ``AWS_*`` environment).
Without moto installed it raises :class:`ServiceUnavailable` naming the install command.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _services import LOOPBACK, ServiceUnavailable, free_port, start, stop

ACCESS_KEY = "clew-test-key"
SECRET_KEY = "clew-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3:
    endpoint: str

    @property
    def storage_options(self) -> dict[str, str]:
        """``lake.storage_options`` for this server (credentials, region, endpoint, http)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def bucket(self, prefix: str = "clew") -> str:
        """A new empty bucket; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/moto-api/", timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def s3_server(workdir: Path) -> Iterator[S3]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        raise ServiceUnavailable("moto is not installed: run `pip install -e '.[dev]'`")
    failure = ServiceUnavailable("moto's S3 server did not start")
    # A port found free can be taken before the server binds it: then try another.
    for _ in range(3):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
        try:
            proc = start("moto", argv, workdir, functools.partial(_ready, url))
        except ServiceUnavailable as exc:
            failure = exc
            continue
        try:
            yield S3(url)
        finally:
            stop(proc)
        return
    raise failure
