"""The Admin API client against the simulator over HTTP: shapes, throttling, shared budget.

The rate budget lives in the session's real redis-server; the simulator is a real aiohttp
server on a loopback port.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from cartloom.shopify.admin_client import AdminApiError, AdminClient, RedisRateBudget
from cartloom.shopify.reconcile import ITEMS_QUERY, ORDERS_QUERY, pages
from cartloom.shopify.registration import SUBSCRIBABLE, register
from devstack.shopify_simulator import CostBucket, ShopSimulator
from devstack.shopify_store import SimulatedStore, populate

pytestmark = pytest.mark.integration

TOKEN = "shpat_test_token"
VERSION = "2025-10"


def simulator(**kwargs: object) -> ShopSimulator:
    store = SimulatedStore()
    populate(store, products=10, orders=30, seed=1)
    return ShopSimulator(store, access_token=TOKEN, webhook_secret="s", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def served() -> AsyncIterator[tuple[ShopSimulator, str]]:
    sim = simulator(bucket=CostBucket(capacity=200, rate=100))
    async with TestServer(sim.app()) as server:
        yield sim, str(server.make_url("")).rstrip("/")


async def test_paginated_queries_return_shopify_shapes(served: tuple[ShopSimulator, str]) -> None:
    sim, base = served
    async with AdminClient(base, TOKEN, VERSION) as client:
        orders = [o async for o in pages(client, ORDERS_QUERY, "CartLoomOrders", "orders", {}, 10)]
        items = [
            i
            async for i in pages(
                client, ITEMS_QUERY, "CartLoomInventoryItems", "inventoryItems", {}, 10
            )
        ]
    assert len(orders) == len(sim.store.orders) == 30
    assert orders[0]["id"].startswith("gid://shopify/Order/")
    assert isinstance(orders[0]["totalPriceSet"]["shopMoney"]["amount"], str)
    assert [o["updatedAt"] for o in orders] == sorted(o["updatedAt"] for o in orders)
    assert len(items) == 20
    level = items[0]["inventoryLevels"]["edges"][0]["node"]
    assert level["quantities"][0]["name"] == "available"


async def test_throttled_requests_wait_and_succeed(served: tuple[ShopSimulator, str]) -> None:
    sim, base = served
    async with AdminClient(base, TOKEN, VERSION) as client:  # no shared budget: hits THROTTLED
        results = await asyncio.gather(
            *(
                client.execute(ITEMS_QUERY, {"first": 50}, "CartLoomInventoryItems", 102)
                for _ in range(4)
            )
        )
    assert sim.throttled > 0
    assert all(len(r["inventoryItems"]["edges"]) == 20 for r in results)


async def test_a_shared_redis_budget_keeps_two_replicas_under_the_limit(
    served: tuple[ShopSimulator, str], redis: Redis
) -> None:
    sim, base = served
    shop = f"budget-{uuid.uuid4().hex[:8]}"

    async def replica() -> list[object]:
        budget = RedisRateBudget(redis, shop, capacity=200, restore_rate=100)
        async with AdminClient(base, TOKEN, VERSION, budget) as client:
            return [
                await client.execute(ITEMS_QUERY, {"first": 50}, "CartLoomInventoryItems", 102)
                for _ in range(3)
            ]

    results = await asyncio.gather(replica(), replica())
    assert sum(len(r) for r in results) == 6
    assert sim.throttled == 0


async def test_bad_token_and_unknown_operations_raise(served: tuple[ShopSimulator, str]) -> None:
    _, base = served
    async with AdminClient(base, "wrong-token", VERSION) as client:
        with pytest.raises(AdminApiError, match="401"):
            await client.execute(ITEMS_QUERY, {"first": 1}, "CartLoomInventoryItems")
    async with AdminClient(base, TOKEN, VERSION) as client:
        with pytest.raises(AdminApiError, match="not simulated"):
            await client.execute("query Other { shop { id } }", {}, "Other")
        with pytest.raises(AdminApiError, match="MAX_COST_EXCEEDED"):
            await client.execute(ITEMS_QUERY, {"first": 250}, "CartLoomInventoryItems")


async def test_server_errors_are_retried() -> None:
    sim = simulator(error_share=0.5, seed=4)
    async with (
        TestServer(sim.app()) as server,
        AdminClient(str(server.make_url("")).rstrip("/"), TOKEN, VERSION) as client,
    ):
        data = await client.execute(ITEMS_QUERY, {"first": 5}, "CartLoomInventoryItems")
    assert len(data["inventoryItems"]["edges"]) == 5


async def test_register_webhooks_subscribes_every_topic_through_shopifyapi(
    served: tuple[ShopSimulator, str],
) -> None:
    sim, base = served
    created = await register(base, TOKEN, VERSION, "https://cartloom.example/webhooks/shopify")
    assert len(created) == len(SUBSCRIBABLE)
    topics = {s["topic"] for s in sim.subscriptions}
    assert "ORDERS_CREATE" in topics and "INVENTORY_LEVELS_UPDATE" in topics
    assert {s["endpoint"]["callbackUrl"] for s in sim.subscriptions} == {
        "https://cartloom.example/webhooks/shopify"
    }
