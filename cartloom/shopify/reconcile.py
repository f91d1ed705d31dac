"""Reconciliation: pull Shopify's orders and stock, compare with CartLoom's views, correct.

Orders updated since a cursor kept in Redis (``cartloom:shopify:reconcile:cursor:{shop}``)
and every inventory item's levels are read through the throttled Admin API client;
CartLoom's side is read from the materialised views as any reader does
(:class:`cartloom.sinks.read.ViewReader`: Redis, and DynamoDB where Redis has nothing). Redis is a
cache: after it lost its data every view read from it alone looked missing, and every order
was republished and Shopify's ``available`` published as every SKU's level. Losing the
cursor only makes the next run read every order again. What differs is corrected by
publishing to ``orders``, ``order.events`` and ``inventory`` (the normal streams, so the
usual idempotent agents apply it), and the drift is exported as metrics. Run on demand
(``cartloom reconcile``) or periodically by one worker at a time (a Redis lease).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from cartloom.core import metrics
from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings
from cartloom.domain.shopify.normalise import Output
from cartloom.domain.shopify.reconcile import (
    Drift,
    cartloom_order_id,
    inventory_corrections,
    order_corrections,
)
from cartloom.shopify.admin_client import AdminClient, RedisRateBudget
from cartloom.sinks.read import ViewReader
from cartloom.stream.kafka_clients import KafkaConnection, kafka_connection

log = logging.getLogger(__name__)
PAGE = 50

ORDERS_QUERY = """
query CartLoomOrders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    edges { cursor node {
      id legacyResourceId name createdAt updatedAt processedAt cancelledAt
      displayFinancialStatus displayFulfillmentStatus currencyCode
      totalPriceSet { shopMoney { amount currencyCode } }
      customer { id email }
      lineItems(first: 100) { edges { node { id sku quantity variant { id } } } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
ITEMS_QUERY = """
query CartLoomInventoryItems($first: Int!, $after: String) {
  inventoryItems(first: $first, after: $after) {
    edges { cursor node {
      id legacyResourceId sku
      inventoryLevels(first: 10) { edges { node {
        location { id } quantities(names: ["available"]) { name quantity } updatedAt
      } } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@dataclass
class Report:
    """A finished run: the drift it found and the cursor it stored."""

    drift: Drift
    cursor: str | None


class Views(Protocol):
    """Where reconciliation reads CartLoom's views (:class:`cartloom.sinks.read.ViewReader`)."""

    async def get(self, entity: str, key: str) -> dict[str, Any] | None:
        """The view of ``entity`` ``key`` or None."""


async def pages(
    client: AdminClient, query: str, name: str, root: str, variables: dict[str, Any], cost: int
) -> AsyncIterator[dict[str, Any]]:
    """Every node of a paginated connection, page by page within the rate budget."""
    after: str | None = None
    while True:
        data = await client.execute(query, {**variables, "first": PAGE, "after": after}, name, cost)
        connection = data.get(root) or {}
        for edge in connection.get("edges", []):
            yield edge["node"]
        info = connection.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return
        after = info.get("endCursor")


async def find_drift(
    client: AdminClient, views: Views, shop: str, since: str | None
) -> tuple[Drift, str | None]:
    """Compare orders updated since ``since`` and every SKU's levels; nothing is published."""
    drift = Drift()
    cursor = since
    search = {"query": f"updated_at:>='{since}'"} if since else {}
    async for node in pages(client, ORDERS_QUERY, "CartLoomOrders", "orders", search, 2 + PAGE * 3):
        drift.orders_checked += 1
        view = await views.get("orders", cartloom_order_id(node))
        corrections = order_corrections(shop, node, view)
        if corrections:
            drift.orders_missing += view is None
            drift.orders_behind += view is not None
            drift.corrections.extend(corrections)
        cursor = max(cursor or "", str(node.get("updatedAt") or "")) or None
    items = pages(client, ITEMS_QUERY, "CartLoomInventoryItems", "inventoryItems", {}, 2 + PAGE * 2)
    async for node in items:
        drift.skus_checked += 1
        sku = node.get("sku")
        view = await views.get("inventory", sku) if sku else None
        corrections, units = inventory_corrections(node, view)
        if corrections:
            drift.skus_drifted += 1
            drift.units += units
            drift.corrections.extend(corrections)
    return drift, cursor


async def publish(kafka: KafkaConnection, outputs: list[Output], prefix: str = "") -> None:
    """Send the corrections to their streams (``prefix``: the namespace's); wait for the broker."""
    if not outputs:
        return
    producer = kafka.producer(acks="all", linger_ms=5)
    await producer.start()
    try:
        for output in outputs:
            topic = f"{prefix}{output.stream}"
            await producer.send(topic, orjson.dumps(output.value), key=output.key.encode())
            metrics.RECONCILE_CORRECTIONS.labels(stream=output.stream).inc()
        await producer.flush()
    finally:
        await producer.stop()


async def reconcile(settings: Settings, redis: Redis, since: str | None = None) -> Report:
    """One full run against the configured shop; updates the cursor and the drift metrics."""
    if not settings.shopify_api_url or settings.shopify_access_token is None:
        raise ValueError("set CARTLOOM_SHOPIFY_API_URL and CARTLOOM_SHOPIFY_ACCESS_TOKEN")
    shop = settings.shopify_api_url.split("://", 1)[-1].split("/", 1)[0]
    names = RedisKeys(settings.namespace)
    if since is None:
        stored = await redis.get(names.reconcile_cursor(shop))
        since = (stored.decode() if isinstance(stored, bytes) else stored) if stored else None
    budget = RedisRateBudget(
        redis,
        shop,
        settings.shopify_api_bucket_size,
        settings.shopify_api_restore_rate,
        key=names.api_budget(shop),
    )
    token = settings.shopify_access_token.get_secret_value()
    try:
        async with (
            AdminClient(
                settings.shopify_api_url, token, settings.shopify_api_version, budget
            ) as client,
            ViewReader(settings, consistent=True) as views,
        ):
            drift, cursor = await find_drift(client, views, shop, since)
        await publish(kafka_connection(settings), drift.corrections, settings.topic_prefix)
    except Exception:
        metrics.RECONCILE_RUNS.labels(outcome="failed").inc()
        raise
    if cursor:
        await redis.set(names.reconcile_cursor(shop), cursor)
    metrics.RECONCILE_RUNS.labels(outcome="ok").inc()
    metrics.RECONCILE_DRIFT_ITEMS.labels(entity="orders").set(
        drift.orders_missing + drift.orders_behind
    )
    metrics.RECONCILE_DRIFT_ITEMS.labels(entity="skus").set(drift.skus_drifted)
    metrics.RECONCILE_DRIFT_UNITS.set(drift.units)
    log.info(
        "reconciled %d orders (%d missing, %d behind), %d SKUs (%d drifted by %d units)",
        drift.orders_checked,
        drift.orders_missing,
        drift.orders_behind,
        drift.skus_checked,
        drift.skus_drifted,
        drift.units,
    )
    return Report(drift, cursor)
