"""Inputs on the wrong partition: forwarded to the partition their key owns, once, in order.

Producers outside CartLoom partition keyed records their own way: Java's client and
aiokafka hash the key with murmur2, librdkafka (confluent-kafka, kcat, most non-JVM
clients) with CRC32, Sarama with FNV-1a. CartLoom keeps each key's state on the partition
murmur2 gives it, so a record that arrives elsewhere must not touch a table there: it
would create a second copy of the SKU or miss the order. The agent that reads it
validates it (a bad record is dead-lettered where it arrived) and forwards its bytes,
key, timestamp and headers to its key's partition of the same topic, adding
:data:`FORWARDED_FROM_HEADER` (``"<partition>:<offset>"`` of the original). The forward
is sent with the batch's other writes and acknowledged before the original's offset is
committed, like every write of the order path.

A crash after the forward and before the commit forwards the record again. Per key and
origin partition the copies arrive in origin-offset order (one producer, one partition,
one request in flight), so the owner drops a copy at or below the last origin offset it
applied (:func:`cartloom.domain.inventory.apply_stock`); lifecycle events are duplicates by
their own fields. Producers that use murmur2 (``partitioner=murmur2_random`` in
librdkafka) put every record on its partition and skip the hop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cartloom.core import metrics
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.stream.app import topology
from cartloom.stream.batching import Outbox, partition_for

#: Header of a forwarded copy: the original's ``partition:offset`` on the same topic.
FORWARDED_FROM_HEADER = "cartloom-forwarded-from"


def owning_partition(message: Any, key: str) -> int:
    """The partition of ``message``'s topic that ``key`` belongs to."""
    return partition_for(key, topology.topic(message.topic).partitions)


def forwarded_from(message: Any) -> tuple[int, int] | None:
    """``(partition, offset)`` of the original if ``message`` is a forwarded copy, else None."""
    headers = message.headers
    if not headers:
        return None
    pairs: Iterable[tuple[str, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == FORWARDED_FROM_HEADER:
            text = value.decode() if isinstance(value, bytes) else str(value)
            partition, _, offset = text.partition(":")
            try:
                return int(partition), int(offset)
            except ValueError:
                raise InvalidInput(
                    RejectReason.INVALID_SCHEMA, f"unreadable {FORWARDED_FROM_HEADER}: {text!r}"
                ) from None
    return None


def forward_to(message: Any, key: str) -> int | None:
    """The partition to forward ``message`` to, or None if it is on its key's partition.

    A copy CartLoom already forwarded that is still elsewhere (the topic's partition
    count changed under it) is refused rather than sent round again.
    """
    owner = owning_partition(message, key)
    if owner == message.partition:
        return None
    if forwarded_from(message) is not None:
        raise InvalidInput(
            RejectReason.KEY_MISMATCH,
            f"forwarded copy of {key!r} is on partition {message.partition}, its key's is"
            f" {owner}: did {message.topic}'s partition count change?",
        )
    return owner


def forwarding_headers(message: Any) -> list[tuple[str, bytes]]:
    """The original's headers and where it came from."""
    headers = message.headers or []
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    origin = f"{message.partition}:{message.offset}".encode()
    return [*pairs, (FORWARDED_FROM_HEADER, origin)]


def forward_if_elsewhere(event: Any, key: str, outbox: Outbox, tally: metrics.Tally) -> bool:
    """Queue ``event`` for its key's partition if it arrived on another; whether it did."""
    message = event.message
    owner = forward_to(message, key)
    if owner is None:
        return False
    outbox.add_copy(message, owner, forwarding_headers(message))
    tally.count(metrics.INPUTS_FORWARDED, message.topic)
    return True
