"""Reading CartLoom's tables as the broker holds them, and waiting for the worker to catch up.

The tables' truth is their compacted changelog: the newest record per key is the table's
value. Reading it with a plain consumer checks the tables themselves, independent of the
web views and the sinks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cartloom.agents.intake import intake_group_id
from tests.harness import eventually

APP_ID = "cartloom"
SAGA_TOPICS = (
    "orders",
    "orders.accepted",
    "order.events",
    "inventory",
    "inventory.commands",
    "reservation.results",
)


def changelog(table: str) -> str:
    return f"{APP_ID}-{table}-changelog"


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` (read until the end and no more records arrive)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=5000)
            for items in batch.values():
                records.extend(items)
            behind = [await consumer.position(tp) < end[tp] for tp in tps]
            # The embedded broker sometimes reports a partition's end one record short:
            # read on until the log is idle, not just up to the reported end.
            if not batch and not any(behind):
                return records
    finally:
        await consumer.stop()


async def table_values(bootstrap: str, table: str, keys: Iterable[str]) -> dict[str, Any]:
    """The newest changelog value of each of ``keys`` in ``table`` (absent keys omitted)."""
    wanted = {key.encode() for key in keys}
    values: dict[str, Any] = {}
    for record in await read_topic(bootstrap, changelog(table)):
        if record.key in wanted:
            values[record.key.decode()] = orjson.loads(record.value) if record.value else None
    return values


async def changelog_counts(bootstrap: str, table: str, keys: Iterable[str]) -> int:
    """How many changelog records ``table`` holds for ``keys`` (each write is one)."""
    wanted = {key.encode() for key in keys}
    return sum(1 for r in await read_topic(bootstrap, changelog(table)) if r.key in wanted)


async def caught_up(bootstrap: str, topics: Iterable[str] = SAGA_TOPICS) -> bool:
    """True when the worker has committed every message of ``topics``.

    ``orders`` is read by the order intake in its own group, everything else by Faust's.
    Reads the groups' offsets without joining them (no subscription, no commits).
    """
    wanted = list(topics)
    by_group = {
        intake_group_id(APP_ID): [t for t in wanted if t == "orders"],
        APP_ID: [t for t in wanted if t != "orders"],
    }
    for group, group_topics in by_group.items():
        if group_topics and not await _group_caught_up(bootstrap, group, group_topics):
            return False
    return True


async def _group_caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        end = await consumer.end_offsets(tps)
        for tp in tps:
            if end[tp] and (await consumer.committed(tp) or 0) < end[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def wait_caught_up(bootstrap: str, timeout: float = 180.0) -> None:
    """Wait until the worker has processed everything, including the saga's own messages.

    Checked twice in a row: handling one topic produces messages on the next.
    """
    for _ in range(2):
        await eventually(lambda: caught_up(bootstrap), timeout=timeout, what="worker caught up")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def send_json(producer: AIOKafkaProducer, topic: str, key: str, value: dict[str, Any]) -> Any:
    return await producer.send_and_wait(topic, orjson.dumps(value), key=key.encode())


def order_message(order_id: str, lines: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "source": "web",
        "created_at": now_iso(),
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        **extra,
    }
