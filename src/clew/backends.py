"""The one place that picks each backend from the settings (docs/architecture.md, "Contracts
and their backends"): the log (embedded or Kafka, Kafka sealed by the crypto-shredding
wrapper), the serving store (SQLite or Redis), and the small stores that follow the serving
store (the catalog of sources and tokens, dedup claims, the suppression list, data keys,
audience definitions, destinations: files of the data directory or the serving store's
Redis).

Nothing outside this module compares ``settings.log.backend`` or ``settings.store.backend``
to decide what to do; what the rest needs to know of a backend is a capability on its
contract (``Log.encrypts_per_person``, ``Log.shares_groups_across_processes``,
``Consumer.shredded``, ``ProfileStore.reads_over_network``, ``ProfileStore.local_file``).
Adding a backend means a branch here and the capabilities of its class.

Every implementation is imported inside the function that opens it: the optional extras
(confluent-kafka, redis-py, cryptography) load only when chosen, and importing this module
loads no backend at all. Every one of them is in the backends layer (``clew.log``,
``clew.store``, ``clew.dedup``, ``clew.suppression_list``, ``clew.keys``,
``clew.definition_store``, ``clew.catalog_store``, ``clew.destination_store``), so this
module imports nothing of the domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clew.topics import RECORD_KEYED, TOPICS

if TYPE_CHECKING:
    from clew.catalog_store import CatalogStore
    from clew.config import Settings
    from clew.dedup import Dedup
    from clew.definition_store import Storage
    from clew.dependencies import Dependency
    from clew.destination_store import DestinationStore
    from clew.keys import KeyRing, KeyStore
    from clew.log.base import Log
    from clew.log.shredding import ShreddingLog
    from clew.store.base import ProfileStore
    from clew.suppression_list import ListSource, ListWriter

__all__ = [
    "catalog_file",
    "dependencies",
    "describe_log",
    "destinations_folder",
    "open_catalog_store",
    "open_dedup",
    "open_definitions_storage",
    "open_destination_store",
    "open_existing_catalog_store",
    "open_existing_store",
    "open_keyring",
    "open_keystore",
    "open_log",
    "open_registry_storage",
    "open_store",
    "open_suppression_list",
    "open_suppression_source",
    "serving_store_file",
    "shredding",
]


# -- the log -------------------------------------------------------------------------------


def open_log(settings: Settings) -> Log:
    """The log chosen in ``settings.log.backend``, with every Clew topic created (or its
    retention updated). Raises :class:`~clew.log.base.LogError` when the backend cannot be
    reached or a topic exists with another partition count, and
    :class:`~clew.log.kafka.KafkaUnavailableError` when Kafka is chosen without its client.
    Kafka comes wrapped in a :class:`~clew.log.shredding.ShreddingLog` unless
    ``privacy.kafka_encryption`` is off; its key store failing raises
    :class:`~clew.keys.KeyStoreError`."""
    from clew.log.base import TopicSpec

    log = _open_log_backend(settings)
    retention_ms = (
        int(settings.log.retention_hours * 3600_000) if settings.log.retention_hours else None
    )
    try:
        for name in TOPICS:
            log.create_topic(
                TopicSpec(name, settings.log.partitions, retention_ms, settings.log.retention_bytes)
            )
    except BaseException:
        log.close()
        raise
    return log


def describe_log(settings: Settings) -> str:
    """Where the configured log keeps its records, for people (``clew collector``'s banner)."""
    if settings.log.backend == "kafka":
        return f"Kafka at {settings.log.bootstrap_servers}"
    return f"the embedded log in {settings.data_dir} (this machine only)"


def _open_log_backend(settings: Settings) -> Log:
    config = settings.log
    if config.backend == "kafka":
        # Imported here: confluent-kafka is an optional extra.
        from clew.log.kafka import KafkaLog

        kafka = KafkaLog(
            config.bootstrap_servers,
            replication_factor=config.replication_factor,
            client=config.kafka_client,
            producer=config.kafka_producer,
            consumer=config.kafka_consumer,
            timeout_s=config.kafka_timeout_s,
        )
        if not settings.privacy.kafka_encryption:
            return kafka
        try:
            return shredding(settings, kafka)
        except BaseException:
            kafka.close()
            raise
    from clew.log.embedded import EmbeddedLog

    return EmbeddedLog(settings.log_path)


def shredding(settings: Settings, inner: Log) -> ShreddingLog:
    """``inner`` sealed with the deployment's data keys (``clew.log.shredding``): ``raw`` is
    keyless and ``dlq`` keyed by source, so their records get a data key each; ``events``
    (keyed by the person's identifier) and ``changes`` (by profile id) share one per key."""
    # Imported here: the embedded log never loads the cryptography package.
    from clew.log.shredding import ShreddingLog

    return ShreddingLog(inner, open_keyring(settings), record_keyed=RECORD_KEYED)


# -- the serving store -----------------------------------------------------------------------


def open_store(settings: Settings) -> ProfileStore:
    """A new handle on the configured serving store; the caller closes it.

    ``sqlite`` opens (and creates) ``settings.profiles_path``; ``redis`` connects to
    ``settings.store.redis_url`` (a Redis Cluster with ``redis_cluster``, discovered from it
    and ``redis_cluster_nodes``) with the configured key prefix on first use, so an
    unreachable server surfaces as :class:`~clew.store.redis.RedisUnavailableError` from the
    first call, not here. Choosing ``redis`` without the driver raises ``ImportError`` naming
    the extra to install (``pip install 'clew[redis]'``)."""
    config = settings.store
    history = settings.identity.history
    if config.backend == "redis":
        # Imported here: redis-py is an optional extra.
        from clew.store.redis import RedisProfileStore

        return RedisProfileStore(
            config.redis_url,
            prefix=config.redis_prefix,
            history=history,
            cluster=config.redis_cluster,
            startup_nodes=config.redis_cluster_nodes,
        )
    from clew.store.sqlite import SQLiteProfileStore

    return SQLiteProfileStore(settings.profiles_path, history=history)


def open_existing_store(settings: Settings) -> ProfileStore | None:
    """Like :func:`open_store`, but ``None`` when the store is a file not made yet (nothing
    processed, so nothing to read), instead of creating an empty one. A Redis store is always
    opened: an empty one reads as a store without profiles."""
    path = serving_store_file(settings)
    if path is not None and not path.exists():
        return None
    return open_store(settings)


def serving_store_file(settings: Settings) -> Path | None:
    """The file the configured serving store keeps on this machine (``None`` when it lives in
    a service), known without opening it; an open store says the same as
    :attr:`~clew.store.base.ProfileStore.local_file`."""
    return settings.profiles_path if settings.store.backend == "sqlite" else None


# -- the small stores, beside the serving store ----------------------------------------------


def _in_redis(settings: Settings) -> bool:
    """Whether the small stores live in the serving store's Redis (every machine then shares
    them) rather than in SQLite files of this machine's data directory."""
    return settings.store.backend == "redis"


def open_dedup(settings: Settings) -> Dedup:
    """The validate stage's dedup claims: Redis (``<prefix>:dedup:…``), else ``state.db``."""
    from clew.dedup import DedupIndex, RedisDedupIndex

    if _in_redis(settings):
        from clew._redis_shared import key, redis_client

        window_ms = int(settings.stages.dedup_window_hours * 3600_000)
        return RedisDedupIndex(redis_client(settings), key(settings, "dedup"), window_ms)
    return DedupIndex(settings.state_path)


def open_suppression_list(settings: Settings) -> ListWriter:
    """The suppression list's writer: Redis (``<prefix>:{supp}:…``), else ``privacy.db``."""
    if _in_redis(settings):
        from clew.suppression_list._redis import RedisSuppressionList

        return RedisSuppressionList.open(settings)
    from clew.suppression_list import SuppressionList

    return SuppressionList(settings.privacy_path)


def open_suppression_source(settings: Settings) -> ListSource:
    """What a suppression checker (``clew.privacy.suppression.Suppression``) reads the list
    from: the same place :func:`open_suppression_list` writes it."""
    if _in_redis(settings):
        from clew.suppression_list._redis import RedisSuppressionList

        return RedisSuppressionList.open(settings)
    from clew.suppression_list import SqliteListSource

    return SqliteListSource(settings.privacy_path)


def open_keystore(settings: Settings) -> KeyStore:
    """The shredding log's key store: Redis (``<prefix>:dk:…``), else ``keys.db``. A Redis
    without an append-only file is refused (:class:`~clew.keys.KeyStoreError`) unless
    ``privacy.key_store_persistence = "assumed"``."""
    if _in_redis(settings):
        from clew._redis_shared import redis_client
        from clew.keys._redis import RedisKeyStore

        store = RedisKeyStore(
            prefix=settings.store.redis_prefix,
            client=redis_client(settings),
            cluster=settings.store.redis_cluster,
        )
        if settings.privacy.key_store_persistence == "check":
            try:
                store.require_persistence()
            except BaseException:
                store.close()
                raise
        return store
    from clew.keys._sqlite import SqliteKeyStore

    return SqliteKeyStore(settings.keys_path)


def open_keyring(settings: Settings) -> KeyRing:
    """The deployment's key ring over :func:`open_keystore`, with the master secret
    (:func:`clew.keys.master_secret`) and ``privacy.key_cache_s``."""
    from clew.keys import KeyRing, master_secret

    store = open_keystore(settings)
    try:
        return KeyRing(store, master_secret(settings), cache_s=settings.privacy.key_cache_s)
    except BaseException:
        store.close()
        raise


def open_registry_storage(settings: Settings) -> Storage | None:
    """Where the schema registry is kept when every machine shares it: a Redis document
    (``<prefix>:{reg}:…``); ``None`` for ``registry.db`` in the data directory."""
    if _in_redis(settings):
        from clew.definition_store._redis import RedisStorage

        return RedisStorage.open(settings, "reg")
    return None


def open_definitions_storage(settings: Settings) -> Storage:
    """Where audience definitions are kept: Redis (``<prefix>:{aud}:…``; every machine's
    profiles workers, CLI and Admin API then see one set), else ``audiences/`` in the data
    directory."""
    if _in_redis(settings):
        from clew.definition_store._redis import RedisStorage

        return RedisStorage.open(settings)
    from clew.definition_store import DirectoryStorage

    return DirectoryStorage(settings.data_dir)


def open_destination_store(settings: Settings) -> DestinationStore:
    """Where destinations are kept: Redis (``<prefix>:{dst}:…``; every machine's CLI,
    console and destinations worker then see one set), else one file per destination in
    ``destinations/`` of the data directory. Their outboxes and delivery history stay in
    ``destinations.db`` of the machine that runs the destinations worker either way."""
    if _in_redis(settings):
        from clew.destination_store.redis import RedisDestinationStore

        return RedisDestinationStore.open(settings)
    from clew.destination_store import FileDestinationStore

    return FileDestinationStore(settings.destinations_path)


def destinations_folder(settings: Settings) -> Path | None:
    """The folder the configured destinations are kept in on this machine, ``None`` when
    they live in the shared store."""
    return None if _in_redis(settings) else settings.destinations_path


def open_catalog_store(settings: Settings) -> CatalogStore:
    """The catalog of sources, write keys and tokens: Redis (``<prefix>:{ctl}:…``; every
    machine then shares one set of source ids, keys and tokens), else ``meta.db``."""
    if _in_redis(settings):
        from clew.catalog_store.redis import RedisCatalogStore

        return RedisCatalogStore.open(settings)
    from clew.catalog_store import SqliteCatalogStore

    return SqliteCatalogStore(settings.meta_path)


def open_existing_catalog_store(settings: Settings) -> CatalogStore | None:
    """Like :func:`open_catalog_store`, but ``None`` when the catalog is a file not made
    yet; a Redis catalog is always opened (an empty one has no sources)."""
    path = catalog_file(settings)
    if path is not None and not path.exists():
        return None
    return open_catalog_store(settings)


def catalog_file(settings: Settings) -> Path | None:
    """The file the configured catalog keeps on this machine, ``None`` when it lives in the
    shared store."""
    return None if _in_redis(settings) else settings.meta_path


# -- the services behind them ----------------------------------------------------------------


def dependencies(settings: Settings, *, lake: bool = True) -> list[Dependency]:
    """The services the configured backends reach over the network, each with its probe
    (:mod:`clew.dependencies`): Kafka when it holds the log; Redis when it holds the serving
    store (then also the dedup claims, the suppression list and the data keys, so every role
    needs it); object storage when it holds the lake or its cold tier and the process uses
    the lake (``lake``). Empty for the embedded default. Nothing is opened here: each probe
    connects when called."""
    from clew.dependencies import Dependency

    found: list[Dependency] = []
    log = settings.log
    if log.backend == "kafka":
        from clew.log.kafka import KafkaUnavailableError

        try:
            from clew.log._kafka_probe import KafkaProbe
        except ImportError as exc:
            raise KafkaUnavailableError(
                "the Kafka log backend needs confluent-kafka: pip install 'clew[kafka]'"
            ) from exc
        servers = log.bootstrap_servers
        probe = KafkaProbe(servers, log.kafka_client)
        found.append(Dependency("kafka", "Kafka", servers, "log.bootstrap_servers", probe))
    if _in_redis(settings):
        from functools import partial

        from clew.store import _redis_probe

        url = settings.store.redis_url
        found.append(
            Dependency(
                "redis",
                "Redis",
                _redis_probe.address(url),
                "store.redis_url",
                partial(
                    _redis_probe.probe,
                    url,
                    nodes=settings.store.redis_cluster_nodes
                    if settings.store.redis_cluster
                    else (),
                ),
            )
        )
    if lake:
        lake_at, cold_at = settings.lake_location, settings.cold_location
        if not lake_at.is_local:
            found.append(
                Dependency(
                    "object_storage", "object storage", lake_at.uri, lake_at.setting, lake_at.probe
                )
            )
        # The cold tier is asked apart only when it is in another bucket.
        if not cold_at.is_local and _bucket(cold_at.uri) != _bucket(lake_at.uri):
            found.append(
                Dependency(
                    "cold_storage", "object storage", cold_at.uri, cold_at.setting, cold_at.probe
                )
            )
    return found


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[-1].split("/", 1)[0] if "://" in uri else ""
