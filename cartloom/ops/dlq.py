"""Dead-letter topics of the order and stock streams, and ``cartloom dlq replay TOPIC``.

Every input topic ``X`` has ``X.dlq`` (declared in ``topics.yaml``); agents send what
they cannot process there with the reason and origin in headers
(:mod:`cartloom.stream.deadletter`). Replay sends those records back to ``X`` once: a consumer
group per source topic remembers how far replay got, so running it twice sends nothing
twice, and the agents are idempotent, so a replay interrupted half-way changes nothing
twice either. A record that fails again lands in ``X.dlq`` anew, with its new reason.

The group's offsets move only after the broker acknowledged every record sent back; a
send that fails stops the replay with :class:`~cartloom.stream.deliveries.DeliveryFailed` and
commits nothing of that batch, so the next run sends it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from cartloom.core import metrics
from cartloom.stream.deadletter import dead_letter_topic_name
from cartloom.stream.deliveries import Deliveries
from cartloom.stream.kafka_clients import KafkaConnection

log = logging.getLogger(__name__)

REPLAYED_FROM_HEADER = "cartloom-replayed-from"
_IDLE_POLLS = 5  # empty one-second polls before giving up on a partition that looks behind
_DEAD_LETTER_HEADERS = ("cartloom-reason", "cartloom-detail", "cartloom-origin-")


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did."""

    topic: str
    replayed: int


async def _behind(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], end: dict[TopicPartition, int]
) -> bool:
    for tp in tps:
        if await consumer.position(tp) < end[tp]:
            return True
    return False


def replay_headers(headers: Any, dlq: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The original headers minus CartLoom's dead-letter ones, plus where the replay came from."""
    kept = [
        (name, value)
        for name, value in headers or ()
        if not name.startswith(_DEAD_LETTER_HEADERS) and name != REPLAYED_FROM_HEADER
    ]
    return [*kept, (REPLAYED_FROM_HEADER, f"{dlq}:{partition}:{offset}".encode())]


async def replay_dead_letters(
    kafka: KafkaConnection, topic: str, *, group_id: str, batch_max: int = 500
) -> ReplayReport:
    """Send the records of ``topic.dlq`` that no earlier replay sent back to ``topic``.

    Reads up to the end offsets seen at the start (records dead-lettered during the replay
    wait for the next one) and commits after every record of a batch is acknowledged by
    the broker, so an interrupted replay resumes where it stopped. Raises
    :class:`~cartloom.stream.deliveries.DeliveryFailed`, without committing that batch, when the
    broker does not acknowledge a record.
    """
    dlq = dead_letter_topic_name(topic)
    consumer = kafka.consumer(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = kafka.producer(acks="all")
    await consumer.start()
    await producer.start()
    try:
        await consumer.topics()  # fetch metadata so the partitions are known
        partitions = consumer.partitions_for_topic(dlq) or set()
        tps = [TopicPartition(dlq, p) for p in sorted(partitions)]
        if not tps:
            return ReplayReport(topic, 0)
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        replayed, idle = 0, 0
        while idle < _IDLE_POLLS:
            batch = await consumer.getmany(*tps, timeout_ms=1000, max_records=batch_max)
            commits: dict[TopicPartition, int] = {}
            deliveries = Deliveries(producer)
            for tp, records in batch.items():
                for record in records:
                    # The embedded broker may report the end one short, so the record at
                    # the reported end is taken too; anything later arrived during replay.
                    if record.offset > end[tp]:
                        break
                    await deliveries.send(
                        topic,
                        record.value,
                        key=record.key,
                        headers=replay_headers(record.headers, dlq, tp.partition, record.offset),
                    )
                    commits[tp] = record.offset + 1
            if not commits:
                idle = idle + 1 if await _behind(consumer, tps, end) else _IDLE_POLLS
                continue
            idle = 0
            sent = await deliveries.acknowledged()  # raises: nothing of the batch is committed
            await consumer.commit(commits)
            metrics.DEAD_LETTERS_REPLAYED.labels(topic=topic).inc(sent)
            replayed += sent
            for tp, offset in commits.items():
                consumer.seek(tp, offset)
        return ReplayReport(topic, replayed)
    finally:
        await producer.stop()
        await consumer.stop()
