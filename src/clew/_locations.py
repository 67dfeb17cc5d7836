"""Where the lake's Delta tables live: a local directory or an S3-compatible bucket.

A core module (it imports nothing of Clew), so that the settings can name the lake's and the
cold tier's locations (:attr:`clew.config.Settings.lake_location`) without importing the lake.

A :class:`LakeLocation` is the root (``data_dir/lake``, ``/mnt/lake`` or
``s3://bucket/prefix``) plus the object-store options every deltalake call needs; each
table is a :class:`TableLocation` under it. Code that opens, writes or lists a lake table
goes through these, so the same code serves both kinds of root. Credentials come from
``lake.storage_options`` first, then from deltalake's own reading of the ``AWS_*``
environment variables (docs/object-storage.md).

Commits on S3: deltalake makes a commit atomic by creating the next ``_delta_log`` entry
only if it does not exist yet. On S3 that needs conditional writes (``If-None-Match``,
which AWS S3, MinIO, Ceph and R2 support), so an object-store location turns them on
(``aws_conditional_put = "etag"``) unless the user chose a commit mode themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.dataset as pds
    from deltalake import DeltaTable

# The schemes deltalake's S3 store accepts; ``s3a`` is Hadoop's spelling of the same thing.
OBJECT_SCHEMES = ("s3", "s3a")
# Options that choose how commits are made safe; when the user sets one, Clew adds nothing.
_COMMIT_MODE_KEYS = ("aws_conditional_put", "aws_s3_allow_unsafe_rename", "aws_s3_locking_provider")


class ObjectStorageUnsupported(RuntimeError):
    """A feature that reads or writes the lake as local files was asked to run while the lake
    (or its cold tier) is on object storage."""


def check_uri(value: str) -> str:
    """``value`` as a lake root: ``s3://bucket[/prefix]`` (trailing ``/`` removed; ``s3a``
    becomes ``s3``), ``file:///dir`` or a plain local directory (returned as given).

    >>> check_uri("s3a://clew-lake/prod/")
    's3://clew-lake/prod'
    """
    value = value.strip()
    if not value:
        raise ValueError("is empty; leave it unset for the local default")
    parts = urlsplit(value)
    if "://" not in value:
        return value
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not parts.path:
            raise ValueError(f"{value!r} names no directory")
        return parts.path
    if scheme not in OBJECT_SCHEMES:
        raise ValueError(
            f"{value!r}: unsupported scheme {parts.scheme!r}; use s3://bucket/prefix "
            "(AWS S3 or an S3-compatible server) or a local directory"
        )
    if not parts.netloc:
        raise ValueError(f"{value!r} names no bucket; write it as s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: options go in lake.storage_options, not in the URI")
    prefix = parts.path.strip("/")
    return f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")


def _with_commit_mode(options: Mapping[str, str]) -> dict[str, str]:
    out = dict(options)
    chosen = {k.lower() for k in out} | {k.lower() for k in os.environ if k.startswith("AWS_")}
    if not chosen.intersection(_COMMIT_MODE_KEYS):
        out["aws_conditional_put"] = "etag"
    return out


@dataclass(frozen=True, slots=True)
class TableLocation:
    """One Delta table: its URI (a local path for a local lake) and the store options."""

    uri: str
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, str] | None:
        return dict(self.options) if self.options else None

    def __str__(self) -> str:
        return self.uri

    def exists(self) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.uri, self.storage_options))

    def open(self, version: int | None = None) -> DeltaTable:
        from deltalake import DeltaTable

        return DeltaTable(self.uri, version=version, storage_options=self.storage_options)

    def open_if_exists(self) -> DeltaTable | None:
        if self.is_local:
            return self.open() if self.exists() else None
        from deltalake.exceptions import TableNotFoundError

        # One attempt instead of a look then an open: a request less, and the existence
        # check is the one deltalake call that keeps the interpreter lock while it waits.
        try:
            return self.open()
        except TableNotFoundError:
            return None

    def dataset(self) -> pds.Dataset | None:
        """The latest snapshot as a pyarrow dataset (``None``: no table yet)."""
        dt = self.open_if_exists()
        return None if dt is None else dt.to_pyarrow_dataset()

    def write(self, data: Any, **kwargs: Any) -> None:
        """``write_deltalake`` to this table, with the store options."""
        from deltalake import write_deltalake

        write_deltalake(self.uri, data, storage_options=self.storage_options, **kwargs)

    def create(self, schema: Any, **kwargs: Any) -> None:
        from deltalake import DeltaTable

        DeltaTable.create(self.uri, schema, storage_options=self.storage_options, **kwargs)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def filesystem(self) -> tuple[Any, str]:
        """A pyarrow file system and the table's directory in it (``bucket/prefix/table``
        on object storage), to list, read and remove its files."""
        return _filesystem(self.uri, self.options)

    def file_uri(self, fs_path: str) -> str:
        """A path of :meth:`filesystem` as deltalake names the file (``file_uris()``)."""
        return fs_path if self.is_local else f"s3://{fs_path}"


class LakeLocation:
    """A lake root. ``uri`` is a local directory (``Path`` or text) or ``s3://bucket/prefix``;
    ``setting`` names the configuration value it came from, for error messages."""

    __slots__ = ("options", "setting", "uri")

    def __init__(
        self,
        uri: str | Path,
        options: Mapping[str, str] | None = None,
        setting: str = "lake.uri",
    ) -> None:
        self.setting = setting
        if isinstance(uri, Path) or "://" not in uri:
            self.uri = str(uri)
            self.options: dict[str, str] = {}
        else:
            self.uri = check_uri(uri)
            self.options = _with_commit_mode(options or {})

    def __repr__(self) -> str:
        return f"LakeLocation({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LakeLocation) and (self.uri, self.options) == (
            other.uri,
            other.options,
        )

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def local_path(self, feature: str) -> Path:
        """The root as a directory, or :class:`ObjectStorageUnsupported` naming ``feature``."""
        if not self.is_local:
            raise ObjectStorageUnsupported(
                f"{feature} reads the lake as local files and does not support object storage "
                f"yet ({self.setting} = {self.uri}); see docs/object-storage.md"
            )
        return Path(self.uri)

    def table(self, name: str) -> TableLocation:
        if self.is_local:
            return TableLocation(str(Path(self.uri) / name))
        return TableLocation(f"{self.uri}/{name}", self.options)

    def filesystem(self) -> tuple[Any, str]:
        """A pyarrow file system and the root's path in it, to list and read the files
        themselves (``bucket/prefix`` on object storage)."""
        return _filesystem(self.uri, self.options)

    def probe(self, timeout_s: float) -> None:
        """Whether the object store answers: one request for the root's entry, bounded by
        ``timeout_s`` and not retried; raises ``OSError`` saying why not. A local root has
        no service to ask and always passes."""
        if self.is_local:
            return
        from pyarrow import fs

        s3 = _s3_filesystem(
            self.options,
            connect_timeout=timeout_s,
            request_timeout=timeout_s,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
        )
        s3.get_file_info(self.uri.split("://", 1)[1])


def _filesystem(uri: str, options: Mapping[str, str]) -> tuple[Any, str]:
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), str(Path(uri).resolve())
    return _s3_filesystem(options), uri.split("://", 1)[1]


@dataclass(frozen=True, slots=True)
class S3Settings:
    """What a client of the lake's bucket needs, from the store options or else the same
    ``AWS_*`` environment variables deltalake reads."""

    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str | None
    endpoint: str | None
    virtual_hosted: bool


def s3_settings(options: Mapping[str, str]) -> S3Settings:
    """The bucket settings in ``options`` (names in any case, with deltalake's aliases); a
    setting they lack comes from its ``AWS_*`` environment variable."""
    opts = {k.lower(): v for k, v in options.items()}

    def pick(*keys: str) -> str | None:
        for key in keys:
            if opts.get(key):
                return opts[key]
            if os.environ.get(key.upper()):
                return os.environ[key.upper()]
        return None

    key = pick("aws_access_key_id", "access_key_id")
    secret = pick("aws_secret_access_key", "secret_access_key")
    hosted = pick("aws_virtual_hosted_style_request", "virtual_hosted_style_request")
    return S3Settings(
        access_key=key if key and secret else None,
        secret_key=secret if key and secret else None,
        session_token=pick("aws_session_token", "session_token", "aws_token", "token")
        if key and secret
        else None,
        region=pick("aws_region", "aws_default_region", "region"),
        endpoint=pick("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint"),
        virtual_hosted=(hosted or "").lower() in ("true", "1"),
    )


def _s3_filesystem(options: Mapping[str, str], **extra: Any) -> Any:
    """pyarrow's S3 file system for the lake's bucket (:func:`s3_settings`); ``extra``:
    more of its arguments (timeouts)."""
    from pyarrow import fs

    s3 = s3_settings(options)
    kwargs: dict[str, Any] = dict(extra)
    if s3.endpoint:
        parts = urlsplit(s3.endpoint)
        kwargs["endpoint_override"] = parts.netloc or s3.endpoint
        kwargs["scheme"] = parts.scheme or "https"
        # S3-compatible servers are addressed by path (the bucket in the path, not the host).
        kwargs["force_virtual_addressing"] = s3.virtual_hosted
    if s3.region:
        kwargs["region"] = s3.region
    if s3.access_key and s3.secret_key:
        kwargs["access_key"] = s3.access_key
        kwargs["secret_key"] = s3.secret_key
        if s3.session_token:
            kwargs["session_token"] = s3.session_token
    return fs.S3FileSystem(**kwargs)


def as_location(root: Path | str | LakeLocation) -> LakeLocation:
    return root if isinstance(root, LakeLocation) else LakeLocation(root)
