"""Order intake: reads ``orders`` in raw batches and hands them on in envelopes.

Faust's per-event machinery, not Kafka, caps a worker (docs/facts.md: a decode-only agent
did 5-9k events/s on 2 cores), and before this every order cost at least one Faust event. The
intake reads ``orders`` with a plain aiokafka consumer in its own group
(``{app_id}-intake``, which spreads the partitions over the workers like any group),
validates each record with the pure :func:`cartloom.domain.orders.parse_order`, copies
what it cannot use byte for byte to ``orders.dlq`` with the reason and origin headers,
and sends the valid orders of a batch (in the form of
:func:`~cartloom.domain.orders.accepted_order_json`), grouped by partition, as one
``{"orders": [...]}`` message per partition to ``orders.accepted``. Validation happens
here once: the orders agent reads envelope orders without checking them again. The orders agent
then handles hundreds of orders in one Faust event, with its tables and changelogs as
before.

Envelopes are capped by their encoded size (:data:`cartloom.stream.envelopes.ENVELOPE_MAX_BYTES`),
not only by count: orders carry a ``customer`` object of any size. An order too large to
travel even alone is dead-lettered with reason ``too_large``, not retried.

At-least-once: offsets are committed only after every envelope and dead letter of the
batch is acknowledged by the broker. A delivery that fails stops the worker (it exits
non-zero, nothing committed): the batch is re-read when a worker takes the partitions
again, and the orders agent treats an order id it already holds as a redelivery, so
nothing changes twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

import mode
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from cartloom.core import metrics
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.orders import accepted_order_json, parse_order
from cartloom.domain.payloads import decode_json_object
from cartloom.stream.app import app, settings, topology
from cartloom.stream.batching import partition_for
from cartloom.stream.deadletter import DEAD_LETTER_MAX_REQUEST_BYTES, dead_letter_headers
from cartloom.stream.deliveries import Deliveries, DeliveryFailed
from cartloom.stream.envelopes import (
    ACCEPTED_ORDERS,
    ENVELOPE_MAX,
    ENVELOPE_MAX_BYTES,
    fits_alone,
    pack,
)
from cartloom.stream.kafka_clients import kafka_connection

log = logging.getLogger(__name__)

SOURCE_TOPIC = "orders"
ENVELOPE_TOPIC = "orders.accepted"
DEAD_LETTER_TOPIC = "orders.dlq"
ENVELOPE_FIELD = ACCEPTED_ORDERS.field
#: Most records read per batch.
BATCH_MAX = 5_000


def intake_group_id(app_id: str) -> str:
    """The consumer group of the order intake (its lag is the backlog of ``orders``)."""
    return f"{app_id}-intake"


def accept(record: ConsumerRecord[bytes, bytes]) -> tuple[str, bytes]:
    """The order a record carries (id, the form forwarded as JSON); raises :class:`InvalidInput`.

    An order whose forwarded form does not fit an envelope on its own is refused as
    ``too_large``: no retry can make it smaller.
    """
    if record.value is None:
        raise InvalidInput(RejectReason.INVALID_JSON, "empty message")
    payload = decode_json_object(record.value)
    key = None if record.key is None else record.key.decode(errors="replace")
    if key is None:
        raise InvalidInput(RejectReason.KEY_MISMATCH, "message has no key (the order id)")
    order = parse_order(payload, key=key)
    encoded = orjson.dumps(accepted_order_json(order))
    if not fits_alone(encoded, ENVELOPE_FIELD):
        raise InvalidInput(
            RejectReason.TOO_LARGE,
            f"order {order.order_id} encodes to {len(encoded):,} bytes; an envelope on"
            f" {ENVELOPE_TOPIC} holds at most {ENVELOPE_MAX_BYTES:,}",
        )
    return order.order_id, encoded


class IntakeBatch:
    """The envelopes and dead letters one batch of ``orders`` records turns into."""

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions
        #: partition -> its orders as (order id, the order's JSON), in arrival order
        self.envelopes: dict[int, list[tuple[str, bytes]]] = {}
        #: partition -> the oldest record timestamp (ms) among its orders
        self.oldest: dict[int, int] = {}
        self.dead_letters: list[tuple[ConsumerRecord[bytes, bytes], RejectReason, str]] = []

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Sort one record into its partition's envelope, or into the dead letters."""
        try:
            order_id, encoded = accept(record)
        except InvalidInput as exc:
            self.dead_letters.append((record, exc.reason, exc.detail))
            return
        except Exception as exc:  # a bug must not drop the record
            log.exception("intake failed on %s:%s", record.partition, record.offset)
            detail = f"{type(exc).__name__}: {exc}"
            self.dead_letters.append((record, RejectReason.PROCESSING_ERROR, detail))
            return
        partition = partition_for(order_id, self._partitions)
        self.envelopes.setdefault(partition, []).append((order_id, encoded))
        if record.timestamp is not None:
            oldest = self.oldest.get(partition, record.timestamp)
            self.oldest[partition] = min(oldest, record.timestamp)

    def bodies(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Each envelope as ``(partition, key, value)``, keyed by its first order's id.

        At most ``ENVELOPE_MAX`` orders and ``ENVELOPE_MAX_BYTES`` bytes each.
        """
        for partition, orders in self.envelopes.items():
            encoded = [order for _, order in orders]
            for first, body in pack(ENVELOPE_FIELD, encoded, max_items=ENVELOPE_MAX):
                yield partition, orders[first][0].encode(), body


@app.service
class OrderIntake(mode.Service):
    """Runs the intake loop with the worker; stops after the batch in hand."""

    def __post_init__(self) -> None:
        self._partitions = topology.topic(ENVELOPE_TOPIC).partitions
        # Names on the broker: the namespace's prefix on those of topics.yaml.
        self._source = topology.name(SOURCE_TOPIC)
        self._envelopes = topology.name(ENVELOPE_TOPIC)
        self._dead_letters = topology.name(DEAD_LETTER_TOPIC)

    async def on_started(self) -> None:
        """Start reading ``orders`` once the worker is up."""
        self.add_future(self._supervise())

    async def _supervise(self) -> None:
        """Run the loop; restart it after a crash, but stop the worker on a failed delivery.

        A delivery the broker did not acknowledge is not retried here: the batch's offsets
        stay where they were and the worker exits non-zero (loudly, where an orchestrator
        restarts it), so no offset ever moves past an order that did not reach Kafka.
        """
        while not self.should_stop:
            try:
                await self._run()
                return
            except DeliveryFailed as exc:
                metrics.ORDER_INTAKE_DELIVERY_FAILURES.inc()
                log.critical("order intake stopped, nothing committed: %s", exc)
                await self.crash(exc)
                return
            except Exception:
                log.exception("order intake crashed; restarting")
                await self.sleep(2.0)

    async def _run(self) -> None:
        kafka = kafka_connection(settings)
        consumer = kafka.consumer(
            self._source,
            group_id=intake_group_id(settings.app_id),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH_MAX,
            fetch_max_wait_ms=settings.broker_fetch_max_wait_ms,
            session_timeout_ms=int(settings.broker_session_timeout * 1000),
            rebalance_timeout_ms=int(settings.broker_rebalance_timeout * 1000),
            heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
        )
        producer = kafka.producer(
            acks="all",
            linger_ms=2,
            max_batch_size=512 * 1024,
            max_request_size=DEAD_LETTER_MAX_REQUEST_BYTES,  # envelopes are far smaller
        )
        await producer.start()
        await consumer.start()
        try:
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=200, max_records=BATCH_MAX)
                if batch:
                    await self._forward(batch, producer, consumer)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _forward(
        self,
        batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
    ) -> None:
        started = time.perf_counter()
        intake = IntakeBatch(self._partitions)
        for records in batch.values():
            for record in records:
                intake.add(record)
        deliveries = Deliveries(producer)
        for partition, key, body in intake.bodies():
            # Stamped with the oldest order's time: the agent's event delay stays end to end.
            stamp = intake.oldest.get(partition)
            await deliveries.send(
                self._envelopes, body, key=key, partition=partition, timestamp_ms=stamp
            )
        for record, reason, detail in intake.dead_letters:
            headers = list(dead_letter_headers(record, reason, detail).items())
            await deliveries.send(self._dead_letters, record.value, key=record.key, headers=headers)
        await deliveries.acknowledged()  # raises DeliveryFailed: then nothing is committed
        for _, reason, _ in intake.dead_letters:  # counted once durably in orders.dlq
            metrics.DEAD_LETTERS.labels(topic=self._source, reason=reason.value).inc()
        accepted = sum(len(orders) for orders in intake.envelopes.values())
        metrics.ORDER_INTAKE.labels(outcome="accepted").inc(accepted)
        metrics.ORDER_INTAKE.labels(outcome="dead_lettered").inc(len(intake.dead_letters))
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner re-reads them (the agent dedupes).
            log.warning("order intake could not commit: %s", exc)
        metrics.ORDER_INTAKE_BATCH_SECONDS.observe(time.perf_counter() - started)
        lag = 0
        for tp in consumer.assignment():
            highwater, taken = consumer.highwater(tp), offsets.get(tp)
            if highwater is not None and taken is not None:
                lag += max(0, highwater - taken)
        metrics.ORDER_INTAKE_LAG.set(lag)
