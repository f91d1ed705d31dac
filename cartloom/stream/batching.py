"""The batched hot path shared by the orders and stock agents.

Faust's per-event machinery is the ceiling (docs/facts.md), so the agents take events in
batches (``stream.take_events``) and do per-batch work once:

- :class:`TableBatch` reads through to the table and coalesces writes: a key changed by
  many events of a batch (a hot SKU, an order and its answers) is written to the
  changelog once, on the partition of the event that changed it (the same partition
  ``table[key] = value`` would use), in whole producer batches per partition, and
  records the written offset in the store once the broker acknowledged it.
- :class:`Outbox` collects the batch's messages and hands them straight to the Kafka
  producer (not through Faust's one-message-at-a-time ``send_soon`` buffer, which stalls
  stream processing whenever it holds more than 100 messages).
- Every write of a batch is *awaited*: :func:`handle_batch` writes the tables in the
  order given (the ledger before the stock it explains), then the outbox, then the dead
  letters, each acknowledged by the broker before the next starts, and only then lets
  Faust acknowledge the batch's input. A write that fails stops the process at once
  (:func:`stop_without_acknowledging`): Faust's ``take_events`` acknowledges a batch
  whose body raised, and Faust's flush before a commit ignores failed deliveries, so
  exiting is the only way to keep the input unacknowledged. The restarted worker reads
  the batch again; every step is idempotent, exactly as after a SIGKILL.
- The saga's internal topics carry *envelopes*: the commands (or answers) of a whole
  batch bound for one partition travel as one Kafka message, ``{"commands": [...]}``, sent
  to the partition Kafka's default partitioner gives their SKU (or order id). The agent
  on the other side handles them in one Faust event instead of hundreds, checks that
  each item belongs to the partition it arrived on, and dead-letters a bad item alone.
  Faust's per-event cost, not the broker, is what limits a worker (docs/facts.md), so this
  is where the time goes down. Each item is still idempotent on its own.
- :func:`handle_batch` runs one handler per event and turns every failure into a dead
  letter with its reason, so no event of the batch is acknowledged silently.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from cartloom.core import metrics
from cartloom.core.partitioning import key_partition
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.payloads import decode_json_object
from cartloom.stream.app import topology
from cartloom.stream.deadletter import send_item_to_dead_letter, send_to_dead_letter
from cartloom.stream.deliveries import acknowledged_all
from cartloom.stream.envelopes import ENVELOPE_MAX, ENVELOPES, pack
from cartloom.stream.faust_types import TunedConsumer
from cartloom.stream.offsets import HandOut, InOrder

log = logging.getLogger(__name__)

#: Exit status of a worker that stopped because a write of a batch was not delivered.
EXIT_UNDELIVERED = 75  # EX_TEMPFAIL: try again (the orchestrator restarts the worker)


def stop_without_acknowledging(agent: str, exc: BaseException) -> None:
    """Exit the process now, so the batch being handled is never acknowledged.

    Called when a batch's writes could not all be delivered. Raising would not do: Faust's
    ``take_events`` acknowledges the batch in a ``finally`` and a later commit would move
    the offsets past input whose effects never reached Kafka. Exiting is what a SIGKILL
    does, which every step of the order path is built to survive: the restarted worker
    reads the unacknowledged input again and the idempotent handlers finish the job.
    """
    log.critical(
        "%s: a write of this batch was not delivered (%s); exiting with status %d without "
        "acknowledging its input, which is read again after the restart",
        agent,
        exc,
        EXIT_UNDELIVERED,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_UNDELIVERED)


@lru_cache(maxsize=65_536)
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as every producer) gives ``key``.

    Remembered: an order id or SKU is placed several times per batch (the envelope check,
    the envelope its commands or answers go in).
    """
    return key_partition(key.encode(), partitions)


_TOPIC_FACTS: dict[int, tuple[str, int]] = {}


def topic_facts(topic: faust.TopicT) -> tuple[str, int]:
    """``topic``'s name and partition count, remembered (asked once per item on the hot path)."""
    facts = _TOPIC_FACTS.get(id(topic))
    if facts is None:
        facts = _TOPIC_FACTS[id(topic)] = (topic.get_topic_name(), int(topic.partitions or 0))
    return facts


@dataclass(frozen=True)
class ItemFailure:
    """One item of an envelope that could not be processed (the others were)."""

    event: faust.EventT[Any]
    key: bytes | None
    value: bytes
    reason: RejectReason
    detail: str


#: What an agent does with one message of a topic, or one item of an envelope: given the
#: event it came in, the decoded JSON object, and the message key (``None`` for an item of
#: an envelope, whose id was checked against the envelope's partition instead).
MessageHandler = Callable[[faust.EventT[Any], dict[str, Any], str | None], None]


class BatchHandler(ABC):
    """Base of the agents' per-event handlers: a table of handlers by topic, envelopes unwrapped.

    A subclass says, in :meth:`handlers`, which method takes each of its input topics. The
    message is decoded, its key read, and an envelope (:data:`~cartloom.stream.envelopes.ENVELOPES`)
    opened here, once for every agent; an item that fails is dead-lettered on its own.
    """

    def __init__(self) -> None:
        self.failed_items: list[ItemFailure] = []
        self.tally = metrics.Tally()  # what the batch counted, published once it is handled
        self._by_topic = self.handlers()

    @abstractmethod
    def handlers(self) -> Mapping[str, MessageHandler]:
        """The handler of each input topic, by declared name (``topics.yaml``)."""

    def handle(self, event: faust.EventT[Any]) -> None:
        """Apply one event; raise ``InvalidInput`` for what belongs in a dead-letter topic."""
        topic = topology.declared(event.message.topic)
        key = event_key(event)
        payload = decode_json_object(event.value)
        handler = self._by_topic[topic]
        envelope = ENVELOPES.get(topic)
        if envelope is not None and envelope.field in payload:
            apply = lambda item: handler(event, item, None)  # noqa: E731
            self.each_item(event, payload[envelope.field], envelope.item_key, apply)
        else:
            handler(event, payload, key)

    def each_item(
        self,
        event: faust.EventT[Any],
        items: Any,
        key_of: str,
        apply: Callable[[dict[str, Any]], None],
    ) -> None:
        """Apply every item of an envelope; a failing item is dead-lettered on its own.

        An item whose ``key_of`` field does not belong to the partition the envelope came
        in on is refused: applying it here would change state owned by another partition.
        """
        if not isinstance(items, list):
            raise InvalidInput(RejectReason.INVALID_SCHEMA, "envelope items must be a list")
        partition = event.message.partition
        partitions = topology.topic(event.message.topic).partitions
        for item in items:
            key = item.get(key_of) if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict) or not isinstance(key, str):
                    raise InvalidInput(RejectReason.INVALID_SCHEMA, f"item without {key_of}")
                if partition_for(key, partitions) != partition:
                    raise InvalidInput(
                        RejectReason.KEY_MISMATCH,
                        f"{key_of} {key!r} is not on partition {partition}",
                    )
                apply(item)
            except InvalidInput as exc:
                self._fail(event, key, item, exc.reason, exc.detail)
            except Exception as exc:  # a bug: dead-letter the item, keep the rest
                log.exception(
                    "item of event at %s offset %s failed", event.message.tp, event.message.offset
                )
                self._fail(
                    event, key, item, RejectReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"
                )

    def _fail(
        self, event: faust.EventT[Any], key: Any, item: Any, reason: RejectReason, detail: str
    ) -> None:
        key_bytes = key.encode() if isinstance(key, str) else event.message.key
        self.failed_items.append(ItemFailure(event, key_bytes, orjson.dumps(item), reason, detail))


class TableBatch:
    """Read-through, write-coalescing access to a table for one batch of events."""

    def __init__(self, table: Any, producer: Any) -> None:
        self._table = table
        self._producer = producer
        self._dirty: dict[str, int] = {}
        # What this batch read or wrote. The agent is the table's only writer and handles
        # a batch without awaiting, so nothing else changes a key between two reads; a
        # plain dict spares the store's Mapping machinery (several calls per read).
        self._seen: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        """The key's current value, including changes made earlier in this batch."""
        seen = self._seen
        if key in seen:
            return seen[key]
        value = seen[key] = self._table.data.get(key)
        return value

    def put(self, key: str, value: Any, partition: int) -> None:
        """Change ``key`` now (later events of the batch see it); log it at :meth:`flush`."""
        self._table.data[key] = value
        self._seen[key] = value
        self._dirty[key] = partition

    async def flush(self) -> int:
        """Write each changed key to the changelog once; return once the broker has them all.

        The records of one partition go out as whole aiokafka batches (``create_batch`` /
        ``send_batch``): a per-record ``send`` costs a future, a partitioner call and an
        accumulator append each, the largest Kafka cost per order before this. The last
        record of each partition goes in a batch of its own: the embedded broker (Tansu
        0.6) answers a ListOffsets request with the base offset of the partition's last
        record batch plus one, so a multi-record batch at the end hides its other records
        from every reader of end offsets (Faust's recovery judged its own changelog
        inconsistent and crashed). Raises :class:`DeliveryFailed` if any batch was refused.
        """
        data, kafka = self._seen, self._producer._ensure_producer()  # aiokafka's
        topic = self._table.changelog_topic.get_topic_name()
        by_partition: dict[int, list[str]] = {}
        for key, partition in self._dirty.items():
            by_partition.setdefault(partition, []).append(key)
        sent: list[tuple[Any, int]] = []  # (delivery, records), in the order appended
        for partition, keys in by_partition.items():
            records = [(key.encode(), orjson.dumps(data[key])) for key in keys]
            for batch in _batches(kafka, records[:-1]) + _batches(kafka, records[-1:]):
                delivery = await kafka.send_batch(batch, topic, partition=partition)
                sent.append((delivery, batch.record_count()))
        acknowledged = await acknowledged_all(
            [delivery for delivery, _ in sent], f"changelog {topic}"
        )
        for metadata, (_, count) in zip(acknowledged, sent, strict=True):
            # What lets RocksDB skip records it already holds on recovery (no-op in memory).
            self._table.data.set_persisted_offset(
                metadata.topic_partition, metadata.offset + count - 1
            )
        written = len(self._dirty)
        self._dirty.clear()
        self._seen.clear()
        return written


def _batches(kafka: Any, records: Sequence[tuple[bytes, bytes]]) -> list[Any]:
    """``records`` packed into as few aiokafka record batches as the batch size allows."""
    batches: list[Any] = []
    batch = None
    for key, value in records:
        if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
            batch = kafka.create_batch()
            batches.append(batch)
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"changelog record of {key!r} exceeds the batch size")
    return batches


class Outbox:
    """Messages produced while handling a batch, sent when the batch is done."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[tuple[str, bytes, bytes]] = []
        #: (topic, key, value, partition, timestamp in s, headers): records copied as they are
        self._copies: list[tuple[str, bytes | None, bytes | None, int, float | None, Any]] = []
        self._grouped: dict[tuple[str, int], tuple[str, str, list[Mapping[str, Any]]]] = {}

    def add(self, topic: faust.TopicT, key: str, value: Mapping[str, Any]) -> None:
        """Queue ``value`` as JSON for ``topic`` keyed by ``key``."""
        self._pending.append((topic_facts(topic)[0], key.encode(), orjson.dumps(value)))

    def add_copy(self, message: Any, partition: int, headers: list[tuple[str, bytes]]) -> None:
        """Queue ``message``'s key, value and timestamp, unchanged, for ``partition`` of its topic.

        Copies go out before anything else of the batch and in the order queued, so the
        copies of one partition's records reach their new partition in offset order.
        """
        self._copies.append(
            (message.topic, message.key, message.value, partition, message.timestamp, headers)
        )

    def add_to_envelope(
        self, topic: faust.TopicT, key: str, field: str, item: Mapping[str, Any]
    ) -> None:
        """Queue ``item`` in the envelope ``{field: [...]}`` bound for ``key``'s partition."""
        name, partitions = topic_facts(topic)
        group = self._grouped.setdefault((name, partition_for(key, partitions)), (key, field, []))
        group[2].append(item)

    async def flush(self) -> int:
        """Send every queued message and wait until the broker acknowledged each one.

        Envelopes are packed by :func:`cartloom.stream.envelopes.pack` (items and bytes capped).
        Raises :class:`~cartloom.stream.deliveries.DeliveryFailed` if any message was refused.
        """
        send = self._producer.send
        deliveries: list[Awaitable[Any]] = []
        for topic, raw_key, raw_value, partition, stamp, headers in self._copies:
            deliveries.append(
                await send(topic, raw_key, raw_value, partition, stamp or None, headers)
            )
        for topic, key, value in self._pending:
            deliveries.append(
                await send(topic, key, value, partition=None, timestamp=None, headers=None)
            )
        for (topic, partition), (first_key, field, items) in self._grouped.items():
            key = first_key.encode()
            encoded = [orjson.dumps(item) for item in items]
            for _, body in pack(field, encoded, max_items=ENVELOPE_MAX):
                deliveries.append(
                    await send(topic, key, body, partition=partition, timestamp=None, headers=None)
                )
        self._copies.clear()
        self._pending.clear()
        self._grouped.clear()
        await acknowledged_all(deliveries, "outgoing messages")
        return len(deliveries)


def event_key(event: faust.EventT[Any]) -> str:
    """The event's key as text; keys are entity ids (order id, SKU)."""
    key = event.key
    if isinstance(key, bytes):
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise InvalidInput(RejectReason.KEY_MISMATCH, "message key is not UTF-8") from None
    if isinstance(key, str):
        return key
    raise InvalidInput(RejectReason.KEY_MISMATCH, "message has no key")


#: Per (agent, partition), the offset it handles next.
_in_order = InOrder()


def in_offset_order(
    events: Sequence[faust.EventT[Any]], consumer: TunedConsumer, agent: str
) -> list[faust.EventT[Any]]:
    """The events of a batch ``agent`` may handle: each the next record of its partition.

    A record handed out past one never handled is refused, unacknowledged, and read again
    in order (:class:`cartloom.stream.offsets.InOrder`); one at or before a record handled since
    the partition's last seek was handled already.
    """
    taken = []
    for event in events:
        message = event.message
        tp = message.tp
        verdict = _in_order.judge((agent, tp), message.offset, consumer.read_from(tp))
        if verdict is HandOut.TAKE:
            taken.append(event)
            continue
        metrics.INPUT_OUT_OF_ORDER.labels(message.topic, verdict.value).inc()
        if verdict is HandOut.AHEAD:
            consumer.refuse(message)
    return taken


async def handle_batch(
    events: Sequence[faust.EventT[Any]],
    handler: BatchHandler,
    writes: tuple[Iterable[TableBatch], Outbox],
    dead_letter_topic: Callable[[str], faust.TopicT],
    agent: str,
) -> None:
    """Run ``handler`` on each event, write what it decided, dead-letter the failures.

    ``handler.handle`` must be synchronous and make its changes through the batch's
    :class:`TableBatch` and :class:`Outbox` only after its checks passed, so an event that
    fails leaves nothing half-applied. The tables are written in the order given, each
    acknowledged before the next, then the outbox, then the dead letters: a message that
    announces a change (an answer, a command) never reaches Kafka before the change is
    durable. If any write fails the process exits before the input is acknowledged.
    """
    started = time.perf_counter()
    failed: list[tuple[faust.EventT[Any], RejectReason, str]] = []
    for event in events:
        # Faust's RocksDB store picks the partition database from the current event, which
        # Faust sets only for events it yields one at a time: set it for each of the batch.
        _current_event.set(weakref.ref(event))
        try:
            handler.handle(event)
        except InvalidInput as exc:
            failed.append((event, exc.reason, exc.detail))
        except Exception as exc:  # a bug must not drop the event: dead-letter it, keep moving
            log.exception("event at %s offset %s failed", event.message.tp, event.message.offset)
            failed.append((event, RejectReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"))
    _current_event.set(None)
    try:
        await _write(writes, failed, handler.failed_items, dead_letter_topic)
    except Exception as exc:  # nothing of this batch may be acknowledged now
        stop_without_acknowledging(agent, exc)
    handler.tally.publish()
    metrics.AGENT_BATCH_SECONDS.labels(agent=agent).observe(time.perf_counter() - started)


async def _write(
    writes: tuple[Iterable[TableBatch], Outbox],
    failed: list[tuple[faust.EventT[Any], RejectReason, str]],
    failed_items: list[ItemFailure],
    dead_letter_topic: Callable[[str], faust.TopicT],
) -> None:
    tables, outbox = writes
    for table in tables:
        await table.flush()
    await outbox.flush()
    letters: list[Awaitable[Any]] = []
    for event, reason, detail in failed:
        dlq = dead_letter_topic(event.message.topic)
        letters.append(await send_to_dead_letter(dlq, event, reason, detail))
    for item in failed_items:
        message = item.event.message
        dlq = dead_letter_topic(message.topic)
        letters.append(
            await send_item_to_dead_letter(
                dlq, message, item.key, item.value, item.reason, item.detail
            )
        )
    await acknowledged_all(letters, "dead letters")
