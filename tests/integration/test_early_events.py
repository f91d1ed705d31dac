"""Events that overtake their order, on real servers: held, applied when the order comes, or
dead-lettered as ``unknown_order`` once the hold (8 s for the shared worker) has passed.

A lifecycle event goes straight to the orders agent while its order takes the intake hop,
so a ``paid`` published right after its order routinely arrives first. The tests publish
the event first and wait until the worker has handled it (held, or, as CartLoom did
before, dead-lettered) before the order is published at all.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from tests.harness import WorkerProcess, eventually
from tests.integration.conftest import EARLY_EVENT_HOLD_SECONDS
from tests.integration.saga_helpers import (
    now_iso,
    order_message,
    read_topic,
    send_json,
    table_values,
)

pytestmark = pytest.mark.integration

HELD_TABLE = "early_events_by_order"


async def dead_letters(bootstrap: str, order_id: str) -> list[Any] | None:
    """The order's dead letters in ``order.events.dlq``; None when there are none."""
    records = await read_topic(bootstrap, "order.events.dlq")
    return [r for r in records if r.key == order_id.encode()] or None


async def held(bootstrap: str, order_id: str) -> dict[str, Any] | None:
    """The order's held events as the table's changelog has them (None: none, or deleted)."""
    value: dict[str, Any] | None = (await table_values(bootstrap, HELD_TABLE, [order_id])).get(
        order_id
    )
    return value


async def handled(bootstrap: str, order_id: str) -> str | None:
    """How the worker took an event for ``order_id``: ``held`` or ``dead_lettered``."""
    if await held(bootstrap, order_id):
        return "held"
    return "dead_lettered" if await dead_letters(bootstrap, order_id) else None


async def early_events_counted(worker: WorkerProcess) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as response:
        text = await response.text()
    counted: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('cartloom_early_events_total{outcome="'):
            series, value = line.rsplit(" ", 1)
            counted[series.split('"')[1]] = float(value)
    return counted


async def test_a_paid_published_before_its_order_ends_with_the_order_paid(
    worker: WorkerProcess,
    producer: AIOKafkaProducer,
    bootstrap: str,
    redis: Redis,
    dynamodb: Any,
) -> None:
    tag = uuid.uuid4().hex[:8]
    order_id, sku = f"early-paid-{tag}", f"early-paid-sku-{tag}"
    await send_json(producer, "inventory", sku, {"sku": sku, "on_hand": 5})
    await eventually(
        lambda: table_values(bootstrap, "inventory_by_sku", [sku]), what="stock in the table"
    )
    before = await early_events_counted(worker)

    await send_json(
        producer, "order.events", order_id, {"order_id": order_id, "event": "paid", "at": now_iso()}
    )
    assert await eventually(lambda: handled(bootstrap, order_id), what="event handled") == "held"
    # Held, not an order: no view to query, nothing in the stores.
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/orders/{order_id}") as r:
        assert r.status == 404
    assert await redis.hgetall(f"cartloom:order:{order_id}") == {}
    item = await dynamodb.get_item(TableName="cartloom-orders", Key={"order_id": {"S": order_id}})
    assert "Item" not in item

    await send_json(producer, "orders", order_id, order_message(order_id, [(sku, 2)]))

    async def paid() -> dict[str, Any] | None:
        view = (await table_values(bootstrap, "order_by_id", [order_id])).get(order_id)
        return view if view and view["status"] == "paid" else None

    view = await eventually(paid, timeout=90, what="order paid")
    assert [h["status"] for h in view["history"]] == ["received", "reserved", "paid"]
    assert view["expires_at"] is None  # paid: the reservation no longer expires
    await eventually(lambda: _deleted(bootstrap, order_id), what="held events cleared once applied")
    assert await dead_letters(bootstrap, order_id) is None
    after = await early_events_counted(worker)
    assert after.get("held", 0) - before.get("held", 0) >= 1
    assert after.get("applied", 0) - before.get("applied", 0) >= 1

    async def in_redis() -> Any:
        doc = await redis.hget(f"cartloom:order:{order_id}", "doc")
        return doc if doc and orjson.loads(doc)["status"] == "paid" else None

    doc = orjson.loads(await eventually(in_redis, what="paid order in Redis"))
    assert "events" not in doc  # the view is the order's, nothing of the held record


async def test_an_event_whose_order_never_arrives_is_dead_lettered_after_the_hold(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    order_id = f"early-never-{uuid.uuid4().hex[:8]}"
    raw = orjson.dumps({"order_id": order_id, "event": "cancelled", "at": now_iso()})
    before = await early_events_counted(worker)
    sent_at = time.time()
    sent = await producer.send_and_wait("order.events", raw, key=order_id.encode())

    assert await eventually(lambda: handled(bootstrap, order_id), what="event handled") == "held"
    [dead] = await eventually(
        lambda: dead_letters(bootstrap, order_id),
        timeout=EARLY_EVENT_HOLD_SECONDS + 90,
        what="expired event in order.events.dlq",
    )
    assert dead.timestamp / 1000 >= sent_at + EARLY_EVENT_HOLD_SECONDS - 1  # held, then given up
    headers = {name: value.decode() for name, value in dead.headers}
    assert headers["cartloom-reason"] == "unknown_order"  # so `cartloom dlq replay` sends it back
    assert headers["cartloom-origin-topic"] == "order.events"
    assert headers["cartloom-origin-partition"] == str(sent.partition)
    assert headers["cartloom-origin-offset"] == str(sent.offset)
    assert dead.value == raw  # byte for byte
    await eventually(lambda: _deleted(bootstrap, order_id), what="held record deleted")
    after = await early_events_counted(worker)
    assert after.get("expired", 0) - before.get("expired", 0) >= 1
    assert await _order_view(bootstrap, order_id) is None


async def _deleted(bootstrap: str, order_id: str) -> bool:
    """True when the held record's newest changelog entry is a tombstone."""
    values = await table_values(bootstrap, HELD_TABLE, [order_id])
    return order_id in values and values[order_id] is None


async def _order_view(bootstrap: str, order_id: str) -> Any:
    return (await table_values(bootstrap, "order_by_id", [order_id])).get(order_id)
