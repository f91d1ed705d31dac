"""A sink batch window: a version sent after the sink read the one before joins its write.

``CARTLOOM_SINK_BATCH_WITHIN_SECONDS`` lets a materialiser keep reading after its first
records, so an order that changes again within the window costs one store call, not two.
Without the window the first version is written as soon as it is read, before the second
exists: the store is called twice. The second version is sent only once the sink's consumer
has read the first (a condition on its position, with a deadline), never after a fixed pause.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from cartloom.sinks.materialiser import Materialiser, sink_group_id
from cartloom.sinks.runner import changelog_entities
from cartloom.stream.kafka_clients import kafka_connection
from devstack.stack import StackState
from tests.harness import eventually
from tests.integration.sink_helpers import make_namespace, order_document, produce_changelog
from tests.memory_sink import MemorySink

pytestmark = pytest.mark.integration

#: Longer than it takes to see version 1 read and to send version 2, by a wide margin.
WINDOW_SECONDS = 4.0


async def store_calls_for_two_versions(
    stack: StackState, producer: AIOKafkaProducer, within: float
) -> tuple[int, dict[str, Any] | None]:
    """Store calls made for version 1 of an order and version 2 sent once the sink read 1."""
    ns = await make_namespace(stack.env, redis_db=12)
    sink = MemorySink()
    materialiser = Materialiser(
        sink,
        kafka=kafka_connection(ns.settings),
        group_id=sink_group_id(ns.settings.app_id, sink.name),
        entities=changelog_entities(ns.settings, ns.topology),
        batch_max=ns.settings.sink_batch_max,
        retry_max_seconds=1,
        batch_within_seconds=within,
        fetch_max_wait_ms=ns.settings.broker_fetch_max_wait_ms,
    )
    task = asyncio.create_task(materialiser.run())

    async def version_stored(version: int) -> bool:
        stored = sink.get("orders", "ord-1")
        return stored is not None and stored["version"] == version

    try:
        # Warm-up: the sink has joined its group and read up to the end of the changelog.
        await produce_changelog(producer, ns.changelog, [("warm-up", order_document("warm-up", 1))])

        async def warm_up_stored() -> bool:
            return sink.get("orders", "warm-up") is not None

        await eventually(warm_up_stored, what="warm-up record stored")
        calls_before = sink.write_calls

        first = await producer.send_and_wait(
            ns.changelog, orjson.dumps(order_document("ord-1", 1)), key=b"ord-1"
        )
        read_to = TopicPartition(first.topic, first.partition)

        async def first_read() -> bool:
            # The materialiser's own consumer has handed out version 1 (read, maybe not written).
            position = await materialiser._consumer.position(read_to)
            return bool(position > first.offset)

        await eventually(first_read, what="version 1 read by the sink")
        if not within:  # without a window version 1 is written on its own: wait for that
            await eventually(lambda: version_stored(1), what="version 1 stored")
        second = order_document("ord-1", 2, status="reserved")
        await produce_changelog(producer, ns.changelog, [("ord-1", second)])
        await eventually(lambda: version_stored(2), what="version 2 stored")
        return sink.write_calls - calls_before, sink.get("orders", "ord-1")
    finally:
        materialiser.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)


async def test_a_window_coalesces_versions_that_arrive_within_it(
    stack: StackState, producer: AIOKafkaProducer
) -> None:
    calls, stored = await store_calls_for_two_versions(stack, producer, within=WINDOW_SECONDS)
    assert stored == order_document("ord-1", 2, status="reserved")
    assert calls == 1


async def test_without_a_window_each_version_is_its_own_store_call(
    stack: StackState, producer: AIOKafkaProducer
) -> None:
    calls, stored = await store_calls_for_two_versions(stack, producer, within=0.0)
    assert stored == order_document("ord-1", 2, status="reserved")
    assert calls == 2
