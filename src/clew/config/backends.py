"""The settings of the log and of the serving store (docs/scale-out.md for Kafka and Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, SerializationInfo, field_serializer, field_validator

from clew._redact import redact_options, redact_url
from clew.config._base import Section, reveal


class LogSettings(Section):
    """The log: ``embedded`` needs nothing; ``kafka`` needs a Kafka cluster and
    ``pip install 'clew[kafka]'`` (docs/scale-out.md)."""

    backend: Literal["embedded", "kafka"] = Field(
        default="embedded",
        description=(
            "`embedded` needs nothing; `kafka` needs a Kafka cluster and `pip install "
            "'clew[kafka]'`."
        ),
    )
    partitions: int = Field(default=4, description="Partitions of each topic.")
    retention_hours: float | None = Field(
        default=7 * 24, description="Hours each topic keeps records; unset keeps them forever."
    )
    retention_bytes: int | None = Field(
        default=None, description="Bytes each topic partition keeps at most; unset: no size bound."
    )
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka: the cluster's brokers, `host:port` separated by commas.",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Kafka: replicas of each topic Clew creates; unset: the cluster's "
            "default.replication.factor."
        ),
    )
    kafka_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Kafka: seconds a request to the cluster may take before the log raises an error."
        ),
    )
    kafka_client: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description=(
            "Kafka: librdkafka properties for every client (security.protocol, sasl.*, ssl.*, "
            "client.id)."
        ),
    )
    kafka_producer: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Kafka: librdkafka properties for producers only."
    )
    kafka_consumer: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Kafka: librdkafka properties for consumers only."
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # sasl.password, ssl.key.password, ... stay out of logs and error messages.
        for name, value in super().__repr_args__():
            masked = name is not None and name.startswith("kafka_") and isinstance(value, dict)
            yield name, redact_options(value) if masked else value

    @field_serializer("kafka_client", "kafka_producer", "kafka_consumer", when_used="json")
    def _options_json(self, value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
        return value if reveal(info) else redact_options(value)


class StoreSettings(Section):
    """The serving store: ``sqlite`` is a file in the data directory; ``redis``
    needs a Redis server and ``pip install 'clew[redis]'`` (docs/scale-out.md)."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description=(
            "`sqlite` is a file in the data directory; `redis` needs a Redis server and `pip "
            "install 'clew[redis]'`."
        ),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description=(
            "Redis: the server (`redis://` or `rediss://` URL, with database number, user and "
            "password)."
        ),
    )
    redis_prefix: str = Field(
        default="clew",
        description=(
            "Redis: the prefix of every key Clew writes, so that several deployments can share one "
            "server."
        ),
    )
    redis_cluster: bool = Field(
        default=False,
        description=(
            "Redis Cluster: every key is written with the hash tag `{<redis_prefix>}`, so a store "
            "written without it is not seen with it."
        ),
    )
    redis_cluster_nodes: list[str] = Field(
        default_factory=list,
        description=(
            "Redis Cluster: more `host:port` nodes to discover the cluster from when the one in "
            "`redis_url` is down."
        ),
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL's password stays out of logs and error messages.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @field_serializer("redis_url", when_used="json")
    def _url_json(self, value: str, info: SerializationInfo) -> str:
        return value if reveal(info) else redact_url(value)

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{node!r} is not host:port")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise ValueError(
                "must be non-empty and free of braces (they delimit Redis Cluster hash tags)"
            )
        return value
