"""Reconciliation repairs dropped webhooks: CartLoom converges to the simulated shop's state.

Half of a store's webhooks are dropped on the way to a real worker; a reconciliation run
against the simulator's Admin API (over HTTP, throttled, budget in the real Redis) then
publishes the corrections through the normal streams. And once CartLoom is in step with
the shop, a Redis that lost everything changes nothing reconciliation does.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from cartloom.core.settings import Settings
from cartloom.domain.shopify.normalise import lifecycle_of
from cartloom.shopify.admin_client import AdminClient
from cartloom.shopify.reconcile import find_drift, reconcile
from cartloom.sinks.read import ViewReader
from devstack.shopify_simulator import ShopSimulator
from devstack.shopify_store import SimulatedStore, WebhookEvent, populate
from devstack.stack import StackState
from devstack.webhook_deliveries import DeliveryPlan
from tests.harness import WorkerProcess, eventually, settings_from_env
from tests.integration.conftest import SHOPIFY_SECRET
from tests.integration.shopify_helpers import TopicReader

pytestmark = pytest.mark.integration

TOKEN = "shpat_reconcile"


def populated_store(name: str, products: int, orders: int, seed: int) -> SimulatedStore:
    """A simulated shop with products and orders whose SKU names are unique to this run."""
    tag = uuid.uuid4().hex[:6]
    store = SimulatedStore(domain=f"{name}-{tag}.myshopify.com", first_id=int(tag, 16) * 10_000)
    populate(store, products=products, orders=orders, seed=seed)
    for item in store.items.values():
        item["sku"] = f"{item['sku']}-{tag}"
    for product in store.products.values():
        for variant in product["variants"]:
            variant["sku"] = f"{variant['sku']}-{tag}"
    for order in store.orders.values():
        for line in order["line_items"]:
            line["sku"] = f"{line['sku']}-{tag}"
    return store


def shop_settings(stack: StackState, api_url: str, **overrides: str) -> Settings:
    """The Shopify worker's settings (its views), with the simulator as the Admin API."""
    settings: Settings = settings_from_env(
        stack.env,
        app_id="cartloom-shopify",
        shopify_api_url=api_url,
        shopify_access_token=TOKEN,
        **overrides,
    )
    return settings


def expected_events(store: SimulatedStore) -> dict[bytes, set[str]]:
    return {
        f"shopify-{order_id}".encode(): {event for event, _ in lifecycle_of(order)}
        for order_id, order in store.orders.items()
    }


def newest_levels(reader: TopicReader) -> dict[bytes, int]:
    newest: dict[bytes, tuple[str, int]] = {}
    for key, value in reader.values():
        if key not in newest or value.get("updated_at", "") >= newest[key][0]:
            newest[key] = (value.get("updated_at", ""), value["on_hand"])
    return {key: level for key, (_, level) in newest.items()}


def events_seen(reader: TopicReader) -> dict[bytes, set[str]]:
    seen: dict[bytes, set[str]] = {}
    for key, value in reader.values():
        seen.setdefault(key, set()).add(value["event"])
    return seen


async def test_reconciliation_repairs_dropped_webhooks(
    shopify_worker: WorkerProcess, stack: StackState, bootstrap: str, redis: Redis
) -> None:
    store = populated_store("rec", products=4, orders=12, seed=5)
    store.history.clear()  # deliver only the final snapshots below, half of them dropped
    for order_id in store.orders:
        store.history.append(_snapshot(store, order_id))
    expected = expected_events(store)
    levels = {item["sku"].encode(): item["available"] for item in store.items.values()}

    sim = ShopSimulator(store, access_token=TOKEN, webhook_secret=SHOPIFY_SECRET)
    async with TestServer(sim.app()) as server:
        statuses = await sim.deliver(
            f"{shopify_worker.url}/webhooks/shopify", DeliveryPlan(drop_share=0.5, seed=2)
        )
        assert 0 < len(statuses) < len(store.orders)
        settings = shop_settings(stack, str(server.make_url("")).rstrip("/"))
        report = await reconcile(settings, redis)

    drift = report.drift
    assert drift.orders_checked == len(store.orders)
    assert drift.orders_missing >= len(store.orders) - len(statuses)
    assert drift.skus_checked == len(store.items)
    assert drift.skus_drifted == len(store.items)  # no level webhook was delivered at all
    assert report.cursor == max(order["updated_at"] for order in store.orders.values())

    async with (
        TopicReader(bootstrap, "order.events", set(expected)) as events,
        TopicReader(bootstrap, "inventory", set(levels)) as inventory,
    ):
        await events.until(
            lambda _: all(expected[k] <= events_seen(events).get(k, set()) for k in expected),
            "every order's lifecycle events",
        )
        await inventory.until(lambda _: newest_levels(inventory) == levels, "Shopify's levels")

    async def all_orders_in_redis() -> bool:
        docs = [await redis.hget(f"cartloom:order:{key.decode()}", "doc") for key in expected]
        return all(doc is not None for doc in docs)

    await eventually(all_orders_in_redis, timeout=90, what="every order materialised")


def _snapshot(store: SimulatedStore, order_id: int) -> WebhookEvent:
    order = store.orders[order_id]
    return WebhookEvent(
        "orders/updated", orjson.loads(orjson.dumps(order)), f"ev-{order_id}", order["updated_at"]
    )


async def test_a_redis_that_lost_everything_changes_nothing_reconciliation_does(
    shopify_worker: WorkerProcess, stack: StackState
) -> None:
    """Redis is a cache: reconciliation reading a Redis that lost everything (FLUSHDB of a
    database of its own) reads the views from DynamoDB, finds CartLoom in step with the shop
    and publishes nothing. Before, every order looked missing and every SKU's level was
    published again from Shopify's ``available``."""
    store = populated_store("recl", products=3, orders=8, seed=7)
    sim = ShopSimulator(store, access_token=TOKEN, webhook_secret=SHOPIFY_SECRET)
    async with TestServer(sim.app()) as server:
        api = str(server.make_url("")).rstrip("/")
        await sim.deliver(f"{shopify_worker.url}/webhooks/shopify", DeliveryPlan(seed=4))
        settings = shop_settings(stack, api)
        async with Redis.from_url(settings.redis_url) as redis:
            await reconcile(settings, redis)

        # A Redis database of its own, which reconciliation will read as a Redis that lost
        # everything; until then it stays empty, so the views are read from DynamoDB alone.
        lost = shop_settings(stack, api, redis_url=f"{settings.redis_url.rsplit('/', 1)[0]}/13")

        async def in_step() -> bool:
            async with Redis.from_url(lost.redis_url) as empty:
                await empty.flushdb()
            async with (
                AdminClient(api, TOKEN, settings.shopify_api_version) as client,
                ViewReader(lost, consistent=True, refill=False) as views,
            ):
                drift, _ = await find_drift(client, views, api.split("://", 1)[-1], None)
            return drift.orders_checked == len(store.orders) and not drift.corrections

        await eventually(in_step, timeout=120, what="the views in DynamoDB in step with the shop")

        async with Redis.from_url(lost.redis_url) as empty:
            await empty.flushdb()
            report = await reconcile(lost, empty)
            refilled = await empty.exists(*[f"cartloom:order:shopify-{o}" for o in store.orders])
    drift = report.drift
    assert (drift.orders_checked, drift.skus_checked) == (len(store.orders), len(store.items))
    assert (drift.orders_missing, drift.orders_behind, drift.skus_drifted) == (0, 0, 0)
    assert drift.corrections == []
    assert refilled == len(store.orders)  # the reads put the views back into the cache
