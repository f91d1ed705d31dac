"""A sink batch window: two versions of one order a second apart reach the store in one write.

``CARTLOOM_SINK_BATCH_WITHIN_SECONDS`` lets a materialiser keep reading after its first
records, so an order that changes again within the window costs one store call, not two.
Without the window the first version is written as soon as it is read, before the second
exists: the store is called twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from cartloom.audit import changelog_entities
from cartloom.devstack.stack import StackState
from cartloom.kafka_clients import kafka_connection
from cartloom.sinks.materialiser import Materialiser, sink_group_id
from cartloom.sinks.memory import MemorySink
from tests.harness import eventually
from tests.integration.sink_helpers import make_namespace, order_document, produce_changelog

pytestmark = pytest.mark.integration

#: Longer than the gap between the two versions plus a fetch, by a wide margin.
WINDOW_SECONDS = 4.0
#: Between the two versions: longer than the first fetch takes once the sink is caught up.
GAP_SECONDS = 1.0


async def store_calls_for_two_versions(
    stack: StackState, producer: AIOKafkaProducer, within: float
) -> tuple[int, dict[str, Any] | None]:
    """Store calls made for two versions of one order a second apart (after a warm-up)."""
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
    )
    task = asyncio.create_task(materialiser.run())
    try:
        # Warm-up: the sink has joined its group and read up to the end of the changelog.
        await produce_changelog(producer, ns.changelog, [("warm-up", order_document("warm-up", 1))])
        await eventually(
            lambda: asyncio.sleep(0, sink.get("orders", "warm-up")), what="warm-up record stored"
        )
        calls_before = sink.write_calls

        await produce_changelog(producer, ns.changelog, [("ord-1", order_document("ord-1", 1))])
        await asyncio.sleep(GAP_SECONDS)  # the stimulus: the second version comes a second later
        second = order_document("ord-1", 2, status="reserved")
        await produce_changelog(producer, ns.changelog, [("ord-1", second)])

        def has_second() -> bool:
            stored = sink.get("orders", "ord-1")
            return stored is not None and stored["version"] == 2

        await eventually(lambda: asyncio.sleep(0, has_second()), what="version 2 stored")
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
