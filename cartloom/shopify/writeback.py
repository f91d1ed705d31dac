"""Inventory write-back: stock CartLoom takes for non-Shopify orders is taken in Shopify too.

Source: the reservation ledger's changelog (one entry per order line, with ``granted``,
``committed`` and ``released`` units). For each line of an order that did not come from
Shopify, the units Shopify must not sell again are ``granted - released`` (reserved or
committed). What was already pushed is kept per line in Redis
(``cartloom:shopify:writeback:{order}#{line}``), so a redelivered or replayed entry pushes
only the difference, and nothing when there is none.

Each push is a compare-and-swap: read the item's ``available``, then
``inventorySetQuantities`` to ``available - delta`` with ``compareQuantity = available``;
a ``COMPARE_QUANTITY_STALE`` answer (someone else changed it) re-reads and tries again.
The intent is written to Redis before the mutation: if the outcome of a request is
unknown (timeout, crash), the retry finds Shopify already at the intended quantity and
records it as applied instead of taking the units twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from cartloom import metrics
from cartloom.domain.shopify import ORDER_PREFIX
from cartloom.shopify.admin_client import AdminApiError, AdminClient

log = logging.getLogger(__name__)
MAX_CAS_ATTEMPTS = 10

ITEM_BY_SKU = """
query CartLoomInventoryItems($first: Int!, $query: String) {
  inventoryItems(first: $first, query: $query) {
    edges { node {
      id sku
      inventoryLevels(first: 10) { edges { node {
        location { id } quantities(names: ["available"]) { name quantity }
      } } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
SET_QUANTITIES = """
mutation CartLoomSetQuantities($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { id reason referenceDocumentUri changes { name delta } }
    userErrors { field message code }
  }
}
"""


@dataclass(frozen=True, slots=True)
class LineTake:
    """Units one order line holds out of stock, from a ledger entry."""

    key: str
    order_id: str
    sku: str
    taken: int


def line_take(key: str, entry: Any) -> LineTake | None:
    """The take a ledger entry means, or None for Shopify's own orders and unusable entries."""
    if not isinstance(entry, dict):
        return None
    order_id, sku = entry.get("order_id"), entry.get("sku")
    granted, released = entry.get("granted"), entry.get("released")
    if not isinstance(order_id, str) or order_id.startswith(ORDER_PREFIX):
        return None  # Shopify already counted its own orders
    if not isinstance(sku, str) or not isinstance(granted, int) or not isinstance(released, int):
        return None
    return LineTake(key, order_id, sku, max(0, granted - released))


class InventoryWriteback:
    """Pushes line takes to Shopify exactly once per change (see the module docstring)."""

    def __init__(self, client: AdminClient, redis: Redis, location_id: str | None) -> None:
        self._client = client
        self._redis = redis
        self._location = location_id

    def _state_key(self, take: LineTake) -> str:
        return f"cartloom:shopify:writeback:{take.key}"

    async def push(self, take: LineTake) -> str:
        """Bring Shopify in line with ``take``; the outcome (a metric label) is returned."""
        state = await self._redis.hgetall(self._state_key(take))
        pushed = int(state.get(b"pushed", 0))
        pending = orjson.loads(state[b"pending"]) if b"pending" in state else None
        if pushed == take.taken:
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="already_applied").inc()
            return "already_applied"
        for _ in range(MAX_CAS_ATTEMPTS):
            item_id, location, available = await self._read(take.sku)
            if pending and pending["target"] == take.taken and available == pending["quantity"]:
                await self._done(take)  # the earlier request did land: do not take twice
                metrics.SHOPIFY_WRITEBACKS.labels(outcome="already_applied").inc()
                return "already_applied"
            delta = take.taken - pushed
            pending = {"target": take.taken, "compare": available, "quantity": available - delta}
            await self._redis.hset(self._state_key(take), "pending", orjson.dumps(pending))
            if await self._set(take, item_id, location, pending):
                await self._done(take)
                metrics.SHOPIFY_WRITEBACKS.labels(outcome="applied").inc()
                return "applied"
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="conflict").inc()
        metrics.SHOPIFY_WRITEBACKS.labels(outcome="failed").inc()
        raise AdminApiError(f"write-back of {take.key}: still conflicting after retries")

    async def _done(self, take: LineTake) -> None:
        key = self._state_key(take)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "pushed", take.taken)
            pipe.hdel(key, "pending")
            await pipe.execute()

    async def _read(self, sku: str) -> tuple[str, str, int]:
        variables = {"first": 1, "query": f"sku:'{sku}'"}
        data = await self._client.execute(ITEM_BY_SKU, variables, "CartLoomInventoryItems", 5)
        edges = (data.get("inventoryItems") or {}).get("edges") or []
        if not edges:
            raise AdminApiError(f"no Shopify inventory item has SKU {sku!r}")
        node = edges[0]["node"]
        for edge in node["inventoryLevels"]["edges"]:
            level = edge["node"]
            if self._location in (None, level["location"]["id"]):
                quantity = next(q["quantity"] for q in level["quantities"])
                return node["id"], level["location"]["id"], int(quantity)
        raise AdminApiError(f"SKU {sku!r} is not stocked at {self._location}")

    async def _set(self, take: LineTake, item: str, location: str, plan: dict[str, int]) -> bool:
        """One compare-and-swap; False when Shopify's quantity changed in between."""
        quantity = {
            "inventoryItemId": item,
            "locationId": location,
            "quantity": plan["quantity"],
            "compareQuantity": plan["compare"],
        }
        variables = {
            "input": {
                "name": "available",
                "reason": "correction",
                "referenceDocumentUri": f"cartloom://ledger/{take.key}?taken={take.taken}",
                "quantities": [quantity],
            }
        }
        data = await self._client.execute(SET_QUANTITIES, variables, "CartLoomSetQuantities", 10)
        errors = (data.get("inventorySetQuantities") or {}).get("userErrors") or []
        if any(e.get("code") == "COMPARE_QUANTITY_STALE" for e in errors):
            return False
        if errors:
            raise AdminApiError(f"write-back of {take.key} refused: {errors}", errors)
        return True


class WritebackRunner:
    """Consumes the ledger changelog in its own group; commits only what Shopify took."""

    def __init__(self, writeback: InventoryWriteback, consumer: Any) -> None:
        self._writeback = writeback
        self._consumer = consumer
        self._stopping = False

    async def run(self) -> None:
        """Consume until :meth:`stop`; a failed batch is retried (offsets not committed)."""
        await self._consumer.start()
        try:
            while not self._stopping:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
                if batch:
                    await self.apply(batch)
        finally:
            await self._consumer.stop()

    async def apply(self, batch: dict[Any, list[Any]]) -> None:
        """Push the newest entry of each line in ``batch``, then commit its offsets."""
        newest: dict[str, LineTake] = {}
        for records in batch.values():
            for record in records:
                if record.key is None or record.value is None:
                    continue
                key = record.key.decode(errors="replace")
                take = line_take(key, orjson.loads(record.value))
                if take is not None:
                    newest[key] = take
        try:
            for take in newest.values():
                await self._writeback.push(take)
        except AdminApiError:
            log.exception("inventory write-back failed; the batch will be retried")
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            return
        await self._consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs})

    def stop(self) -> None:
        """Finish the batch in hand and stop."""
        self._stopping = True
