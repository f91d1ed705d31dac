"""No oversell on a real broker: more demand than stock, duplicates, many producers."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import WorkerProcess, eventually
from tests.integration.saga_helpers import (
    now_iso,
    order_message,
    send_json,
    table_values,
    wait_caught_up,
)

pytestmark = pytest.mark.integration

UNITS = 40
ORDERS = 120
PRODUCERS = 4


async def stock(producer: AIOKafkaProducer, bootstrap: str, levels: dict[str, int]) -> None:
    """Set absolute levels and wait until the stock table holds them."""
    for sku, on_hand in levels.items():
        await send_json(
            producer, "inventory", sku, {"sku": sku, "on_hand": on_hand, "updated_at": now_iso()}
        )

    async def stocked() -> bool:
        values = await table_values(bootstrap, "inventory_by_sku", levels)
        return all(values.get(s, {}).get("on_hand") == n for s, n in levels.items())

    await eventually(stocked, what="stock levels in inventory_by_sku")


async def publish_concurrently(bootstrap: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Spread ``messages`` over several independent producers sending at the same time."""

    async def one(share: list[tuple[str, dict[str, Any]]]) -> None:
        client = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await client.start()
        try:
            for key, value in share:
                await send_json(client, "orders", key, value)
        finally:
            await client.stop()

    await asyncio.gather(*(one(messages[i::PRODUCERS]) for i in range(PRODUCERS)))


async def test_concurrent_orders_never_oversell(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    hot, side = f"hot-{tag}", f"side-{tag}"
    await stock(producer, bootstrap, {hot: UNITS, side: 10_000})
    rnd = random.Random(tag)
    orders = {
        f"ns-{tag}-{n}": order_message(
            f"ns-{tag}-{n}", [(hot, 1)] + ([(side, rnd.randint(1, 3))] if n % 3 == 0 else [])
        )
        for n in range(ORDERS)
    }
    messages = list(orders.items())
    messages += rnd.sample(messages, 30)  # duplicates: redeliveries and over-eager producers
    rnd.shuffle(messages)
    await publish_concurrently(bootstrap, messages)

    async def all_resolved() -> dict[str, Any] | None:
        views = await table_values(bootstrap, "order_by_id", orders)
        done = len(views) == ORDERS and all(v["status"] != "received" for v in views.values())
        return views if done else None

    views = await eventually(all_resolved, timeout=180, what="every order resolved")
    await wait_caught_up(bootstrap)
    views = await table_values(bootstrap, "order_by_id", orders)
    inventory = await table_values(bootstrap, "inventory_by_sku", [hot, side])

    reserved = [v for v in views.values() if v["status"] == "reserved"]
    rejected = [v for v in views.values() if v["status"] == "rejected"]
    assert len(reserved) == min(UNITS, ORDERS), "exactly min(N, demand) orders got a unit"
    assert len(rejected) == ORDERS - len(reserved)
    assert inventory[hot]["reserved"] == UNITS
    assert inventory[hot]["available"] == 0
    for view in rejected:
        assert view["rejection"]["sku"] == hot
        assert view["rejection"]["short_by"] >= 1
        assert "insufficient stock" in view["history"][-1]["reason"]
    side_held = sum(
        line["granted"] for v in reserved for line in v["reservations"] if line["sku"] == side
    )
    assert inventory[side]["reserved"] == side_held, "rejected orders released their other lines"
    assert inventory[side]["available"] == 10_000 - side_held


async def test_order_accepted_upstream_is_never_rejected_and_raises_oversold(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    sku = f"up-{tag}"
    await stock(producer, bootstrap, {sku: 2})
    order_id = f"shop-{tag}"
    value = order_message(order_id, [(sku, 5)], source="shopify", accepted_upstream=True)
    await send_json(producer, "orders", order_id, value)

    async def reserved() -> dict[str, Any] | None:
        view = (await table_values(bootstrap, "order_by_id", [order_id])).get(order_id)
        return view if view and view["status"] == "reserved" else None

    view = await eventually(reserved, what="upstream order reserved")
    assert view["oversold"] == [{"line": 0, "sku": sku, "short_by": 3}]
    inventory = (await table_values(bootstrap, "inventory_by_sku", [sku]))[sku]
    assert (inventory["reserved"], inventory["available"], inventory["oversold"]) == (2, 0, 3)


async def test_lifecycle_events_commit_and_release_stock(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    sku = f"life-{tag}"
    await stock(producer, bootstrap, {sku: 10})
    shipped, cancelled = f"ship-{tag}", f"cancel-{tag}"
    for order_id in (shipped, cancelled):
        await send_json(producer, "orders", order_id, order_message(order_id, [(sku, 3)]))

    async def statuses(expected: dict[str, str]) -> bool:
        views = await table_values(bootstrap, "order_by_id", expected)
        return all(views.get(k, {}).get("status") == s for k, s in expected.items())

    await eventually(lambda: statuses({shipped: "reserved", cancelled: "reserved"}), what="both")
    events = [
        (shipped, "paid", 1),
        (shipped, "partially_fulfilled", 2),
        (shipped, "fulfilled", 3),
        (cancelled, "cancelled", 1),
        (shipped, "paid", 1),  # an old event arriving late: must not move the order back
    ]
    for order_id, kind, version in events:
        body: dict[str, Any] = {"order_id": order_id, "event": kind, "at": now_iso()}
        body["version"] = version
        if kind == "partially_fulfilled":
            body["lines"] = [{"sku": sku, "quantity": 1}]
        await send_json(producer, "order.events", order_id, body)
    await eventually(
        lambda: statuses({shipped: "fulfilled", cancelled: "cancelled"}), what="final statuses"
    )
    await wait_caught_up(bootstrap)
    views = await table_values(bootstrap, "order_by_id", [shipped, cancelled])
    assert [h["status"] for h in views[shipped]["history"]] == [
        "received",
        "reserved",
        "paid",
        "partially_fulfilled",
        "fulfilled",
    ]
    inventory = (await table_values(bootstrap, "inventory_by_sku", [sku]))[sku]
    assert (inventory["on_hand"], inventory["reserved"], inventory["available"]) == (7, 0, 7)
