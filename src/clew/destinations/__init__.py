"""Destinations: forwarding events and profile changes to webhooks, filtered, consent-checked,
batched, signed, retried and dead-lettered; see docs/destinations.md.

The destinations stage (:mod:`clew.stages.destinations`) routes each record into the outbox of
every destination it is for; a :class:`Sender` per destination delivers that outbox.
"""

from clew.destinations.config import (
    CHANGE_KINDS,
    DestinationConfig,
    DestinationConfigError,
    DestinationDirectory,
    DestinationError,
    DestinationExistsError,
    Destinations,
    SecretUnavailableError,
    UnknownDestinationError,
    copy_destinations,
    destinations_dir,
    outbox_path,
    parse_destination,
)
from clew.destinations.outbox import Batch, Delivery, Outbox, UndeliverableBatch
from clew.destinations.routing import Item, Route, consent_allows, read_change, read_event
from clew.destinations.sender import Sender
from clew.destinations.status import metric_families
from clew.destinations.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, sign

__all__ = [
    "CHANGE_KINDS",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "Batch",
    "Delivery",
    "DestinationConfig",
    "DestinationConfigError",
    "DestinationDirectory",
    "DestinationError",
    "DestinationExistsError",
    "Destinations",
    "Item",
    "Outbox",
    "Route",
    "SecretUnavailableError",
    "Sender",
    "UndeliverableBatch",
    "UnknownDestinationError",
    "consent_allows",
    "copy_destinations",
    "destinations_dir",
    "metric_families",
    "outbox_path",
    "parse_destination",
    "read_change",
    "read_event",
    "sign",
]
