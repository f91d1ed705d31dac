"""The saga's changelogs end where a reader of end offsets thinks they end.

The embedded broker (Tansu 0.6) answers ListOffsets with the base offset of a partition's
last record batch plus one. Faust's recovery compares what it read with that answer, and
CartLoom writes changelogs in whole record batches: a multi-record batch at the end of a
partition made a restarted worker's recovery raise ``ConsistencyError`` (it had read past
the "end") and made every end-offset reader stop short. The writer therefore ends each
partition's write with a batch of one record; this test reads every changelog partition
to its last record and compares with the reported end offsets.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.harness import WorkerProcess
from tests.integration.saga_helpers import (
    changelog,
    now_iso,
    order_message,
    send_json,
    wait_caught_up,
)

pytestmark = pytest.mark.integration

TABLES = ("order_by_id", "inventory_by_sku", "reservation_by_line")


async def last_offsets(bootstrap: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition: the offset after the last record read, and the reported end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        read: dict[int, int] = {}
        while batch := await consumer.getmany(*tps, timeout_ms=1000, max_records=10_000):
            for tp, records in batch.items():
                read[tp.partition] = records[-1].offset + 1
        reported = await consumer.end_offsets(tps)
        return read, {tp.partition: end for tp, end in reported.items() if end}
    finally:
        await consumer.stop()


async def test_end_offsets_of_every_changelog_match_its_last_record(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    run = uuid.uuid4().hex[:8]
    skus = [f"end-{run}-{n}" for n in range(6)]
    for sku in skus:
        await send_json(
            producer, "inventory", sku, {"sku": sku, "on_hand": 1000, "updated_at": now_iso()}
        )
    # A burst, so batches carry many records per changelog partition.
    for n in range(300):
        order = order_message(f"end-{run}-{n}", [(skus[n % 6], 1), (skus[(n + 1) % 6], 1)])
        await send_json(producer, "orders", order["order_id"], order)
    await wait_caught_up(bootstrap)

    for table in TABLES:
        read, reported = await last_offsets(bootstrap, changelog(table))
        assert read, f"{table}: nothing written"
        assert reported == read, f"{table}: reported end offsets differ from the last records"
