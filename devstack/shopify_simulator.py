"""A stand-in Shopify shop over HTTP: GraphQL Admin API and signed webhook deliveries.

``POST /admin/api/{version}/graphql.json`` answers the operations CartLoom sends (by
``operationName``) with Shopify's response shapes: GraphQL global ids, ``edges``/``node``
connections with ``pageInfo``, money as strings, ``userErrors`` on mutations, and
``extensions.cost`` with a leaky-bucket ``throttleStatus``. A request costing more than
the bucket holds gets Shopify's ``THROTTLED`` error; ``error_share`` injects 502s.
:meth:`ShopSimulator.deliver` sends the store's history as signed webhooks with retries,
duplicates, reordering and drops (:class:`~devstack.webhook_deliveries.DeliveryPlan`).
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from devstack.shopify_store import SimulatedStore, gid, numeric_id
from devstack.webhook_deliveries import DeliveryPlan, deliver_with_retries, signed

ORDER_COST, ITEM_COST, MUTATION_COST = 3, 2, 10
_SINCE = re.compile(r"updated_at:>=?'?([^' ]+)'?")
_SKU = re.compile(r"sku:'?([^' ]+)'?")


@dataclass
class CostBucket:
    """Shopify's leaky bucket for query cost: ``capacity`` points, ``rate`` back per second."""

    capacity: float = 1000.0
    rate: float = 50.0
    clock: Callable[[], float] = time.monotonic
    available: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self.available, self._at = self.capacity, self.clock()

    def refill(self) -> None:
        """Add the points restored since the last call."""
        now = self.clock()
        self.available = min(self.capacity, self.available + (now - self._at) * self.rate)
        self._at = now

    def status(self) -> dict[str, Any]:
        """``throttleStatus`` as Shopify reports it."""
        return {
            "maximumAvailable": self.capacity,
            "currentlyAvailable": int(self.available),
            "restoreRate": self.rate,
        }


class ShopSimulator:
    """One simulated shop: its store state, API token, cost bucket and webhook secret."""

    def __init__(
        self,
        store: SimulatedStore,
        *,
        access_token: str,
        webhook_secret: str,
        bucket: CostBucket | None = None,
        error_share: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.access_token = access_token
        self.webhook_secret = webhook_secret
        self.bucket = bucket or CostBucket()
        self.error_share = error_share
        self.throttled = 0
        self.adjustments: list[dict[str, Any]] = []
        self.subscriptions: list[dict[str, Any]] = []
        self._rng = random.Random(seed)  # noqa: S311 - error injection, not crypto
        self._operations: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], int]]] = {
            "CartLoomOrders": self._orders,
            "CartLoomInventoryItems": self._inventory_items,
            "CartLoomSetQuantities": self._set_quantities,
            "CartLoomWebhookSubscriptionCreate": self._subscribe,
            "CartLoomWebhookSubscriptionUpdate": self._update_subscription,
            "CartLoomWebhookSubscriptions": self._webhook_subscriptions,
        }

    def app(self) -> web.Application:
        """The aiohttp application serving the Admin API."""
        app = web.Application()
        app.router.add_post("/admin/api/{version}/graphql.json", self._graphql)
        return app

    async def _graphql(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Shopify-Access-Token") != self.access_token:
            message = "[API] Invalid API key or access token (unrecognized login or wrong password)"
            return web.json_response({"errors": message}, status=401)
        if self.error_share and self._rng.random() < self.error_share:
            return web.Response(status=502, text="Bad Gateway")
        body = orjson.loads(await request.read())
        name = body.get("operationName")
        handler = self._operations.get(str(name))
        if handler is None:
            error = {"message": f"operation {name!r} is not simulated"}
            return web.json_response({"errors": [error]})
        variables = body.get("variables") or {}
        requested = self._requested_cost(str(name), variables)
        self.bucket.refill()
        if requested > self.bucket.capacity:
            message = f"Query cost is {requested}, which exceeds the single query max cost limit"
            too_big = {"message": message, "extensions": {"code": "MAX_COST_EXCEEDED"}}
            cost = self._cost(requested, 0)
            return web.json_response({"errors": [too_big], "extensions": {"cost": cost}})
        if requested > self.bucket.available:
            self.throttled += 1
            throttled = {"message": "Throttled", "extensions": {"code": "THROTTLED"}}
            cost = self._cost(requested, 0)
            return web.json_response({"errors": [throttled], "extensions": {"cost": cost}})
        data, actual = handler(variables)
        self.bucket.available -= actual
        answer = {"data": data, "extensions": {"cost": self._cost(requested, actual)}}
        return web.json_response(answer, dumps=lambda v: orjson.dumps(v).decode())

    def _requested_cost(self, name: str, variables: dict[str, Any]) -> int:
        first = int(variables.get("first") or 1)
        if name == "CartLoomOrders":
            return 2 + first * ORDER_COST
        if name == "CartLoomInventoryItems":
            return 2 + first * ITEM_COST
        if name == "CartLoomWebhookSubscriptions":
            return 2 + first // 10
        return MUTATION_COST

    def _cost(self, requested: int, actual: int) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": self.bucket.status(),
        }

    # -- queries ---------------------------------------------------------------------------

    def _orders(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        match = _SINCE.search(str(variables.get("query") or ""))
        since = match.group(1) if match else ""
        orders = sorted(
            (o for o in self.store.orders.values() if o["updated_at"] >= since),
            key=lambda o: (o["updated_at"], o["id"]),
        )
        page, info = _page(orders, variables)
        edges = [{"cursor": cursor, "node": order_node(order)} for cursor, order in page]
        return {"orders": {"edges": edges, "pageInfo": info}}, 2 + len(page) * ORDER_COST

    def _inventory_items(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        items = sorted(self.store.items.items())
        wanted = _SKU.search(str(variables.get("query") or ""))
        if wanted:
            items = [(i, item) for i, item in items if item["sku"] == wanted.group(1)]
        page, info = _page(items, variables)
        location = gid("Location", self.store.location_id)
        edges = [
            {"cursor": cursor, "node": item_node(item_id, item, location)}
            for cursor, (item_id, item) in page
        ]
        return {"inventoryItems": {"edges": edges, "pageInfo": info}}, 2 + len(page) * ITEM_COST

    # -- mutations -------------------------------------------------------------------------

    def _set_quantities(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``inventorySetQuantities`` with ``compareQuantity``: a compare-and-swap per item."""
        data = variables.get("input") or {}
        errors, changes = [], []
        for index, quantity in enumerate(data.get("quantities") or []):
            item_id = numeric_id(quantity["inventoryItemId"])
            item = self.store.items.get(item_id)
            if item is None:
                errors.append(
                    _user_error(index, "The inventory item could not be found.", "NOT_FOUND")
                )
                continue
            compare = quantity.get("compareQuantity")
            if compare is not None and compare != item["available"]:
                message = "The compareQuantity value does not match the stored value."
                errors.append(_user_error(index, message, "COMPARE_QUANTITY_STALE"))
                continue
            changes.append((item, int(quantity["quantity"])))
        if errors:
            return {
                "inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": errors}
            }, MUTATION_COST
        group = self._apply(changes, data)
        return {
            "inventorySetQuantities": {"inventoryAdjustmentGroup": group, "userErrors": []}
        }, MUTATION_COST

    def _apply(
        self, changes: list[tuple[dict[str, Any], int]], data: dict[str, Any]
    ) -> dict[str, Any]:
        deltas = []
        for item, quantity in changes:
            delta = quantity - int(item["available"])
            self.store.set_available(item["sku"], quantity)
            deltas.append({"name": data.get("name", "available"), "delta": delta})
        group_id = len(self.adjustments) + 1
        self.adjustments.append({"reference": data.get("referenceDocumentUri"), "changes": deltas})
        return {
            "id": gid("InventoryAdjustmentGroup", group_id),
            "reason": data.get("reason"),
            "referenceDocumentUri": data.get("referenceDocumentUri"),
            "changes": deltas,
        }

    def _webhook_subscriptions(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``webhookSubscriptions(first, after, topics)``: the app's subscriptions, paged."""
        topics = variables.get("topics")
        rows = [s for s in self.subscriptions if not topics or s["topic"] in topics]
        page, info = _page(rows, variables)
        edges = [{"cursor": cursor, "node": sub} for cursor, sub in page]
        return {"webhookSubscriptions": {"edges": edges, "pageInfo": info}}, 2 + len(page)

    def _subscribe(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``webhookSubscriptionCreate``; a second one of a topic to an address is refused."""
        topic = variables.get("topic")
        callback_url = (variables.get("webhookSubscription") or {}).get("callbackUrl")
        if any(
            s["topic"] == topic and s["endpoint"]["callbackUrl"] == callback_url
            for s in self.subscriptions
        ):
            payload = {"webhookSubscription": None, **_taken_error()}
            return {"webhookSubscriptionCreate": payload}, MUTATION_COST
        subscription = {
            "id": gid("WebhookSubscription", len(self.subscriptions) + 1),
            "topic": topic,
            "endpoint": {"__typename": "WebhookHttpEndpoint", "callbackUrl": callback_url},
        }
        self.subscriptions.append(subscription)
        created = {"webhookSubscription": subscription, "userErrors": []}
        return {"webhookSubscriptionCreate": created}, MUTATION_COST

    def _update_subscription(self, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``webhookSubscriptionUpdate(id, webhookSubscription)``: a new callback URL."""
        found = next((s for s in self.subscriptions if s["id"] == variables.get("id")), None)
        callback_url = (variables.get("webhookSubscription") or {}).get("callbackUrl")
        if found is None:
            missing = {"field": ["id"], "message": "Webhook subscription does not exist"}
            payload = {"webhookSubscription": None, "userErrors": [missing]}
            return {"webhookSubscriptionUpdate": payload}, MUTATION_COST
        if any(
            s is not found
            and s["topic"] == found["topic"]
            and s["endpoint"]["callbackUrl"] == callback_url
            for s in self.subscriptions
        ):
            payload = {"webhookSubscription": None, **_taken_error()}
            return {"webhookSubscriptionUpdate": payload}, MUTATION_COST
        if callback_url:
            found["endpoint"] = {"__typename": "WebhookHttpEndpoint", "callbackUrl": callback_url}
        updated: dict[str, Any] = {"webhookSubscription": found, "userErrors": []}
        return {"webhookSubscriptionUpdate": updated}, MUTATION_COST

    # -- webhooks --------------------------------------------------------------------------

    async def deliver(self, url: str, plan: DeliveryPlan, start: int = 0) -> list[int]:
        """Deliver ``history[start:]`` to ``url`` as planned; each delivery retried until 200."""
        deliveries = [
            signed(event, self.store.domain, self.webhook_secret)
            for event in self.store.history[start:]
        ]
        async with aiohttp.ClientSession() as http:
            return [await deliver_with_retries(http, url, d) for d in plan.schedule(deliveries)]


def _page(
    rows: list[Any], variables: dict[str, Any]
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    first = max(1, min(250, int(variables.get("first") or 50)))
    after = variables.get("after")
    start = int(base64.b64decode(after).decode()) + 1 if after else 0
    chunk = rows[start : start + first]
    cursors = [base64.b64encode(str(start + i).encode()).decode() for i in range(len(chunk))]
    info = {"hasNextPage": start + first < len(rows), "endCursor": cursors[-1] if cursors else None}
    return list(zip(cursors, chunk, strict=True)), info


def _taken_error() -> dict[str, Any]:
    """Shopify's answer to a second subscription of a topic to the same address."""
    taken = {
        "field": ["webhookSubscription", "callbackUrl"],
        "message": "Address for this topic has already been taken",
    }
    return {"userErrors": [taken]}


def _user_error(index: int, message: str, code: str) -> dict[str, Any]:
    return {"field": ["input", "quantities", str(index)], "message": message, "code": code}


_FINANCIAL = {
    "pending": "PENDING",
    "paid": "PAID",
    "refunded": "REFUNDED",
    "partially_refunded": "PARTIALLY_REFUNDED",
}
_FULFILLMENT = {None: "UNFULFILLED", "partial": "PARTIALLY_FULFILLED", "fulfilled": "FULFILLED"}


def order_node(order: dict[str, Any]) -> dict[str, Any]:
    """An ``Order`` as the GraphQL Admin API returns it."""
    return {
        "id": order["admin_graphql_api_id"],
        "legacyResourceId": str(order["id"]),
        "name": order["name"],
        "createdAt": order["created_at"],
        "updatedAt": order["updated_at"],
        "processedAt": order["processed_at"],
        "cancelledAt": order["cancelled_at"],
        "displayFinancialStatus": _FINANCIAL.get(order["financial_status"], "PENDING"),
        "displayFulfillmentStatus": _FULFILLMENT.get(order["fulfillment_status"], "UNFULFILLED"),
        "currencyCode": order["currency"],
        "totalPriceSet": {
            "shopMoney": {"amount": order["total_price"], "currencyCode": order["currency"]}
        },
        "customer": {
            "id": gid("Customer", order["customer"]["id"]),
            "email": order["customer"]["email"],
        },
        "lineItems": {
            "edges": [
                {
                    "node": {
                        "id": line["admin_graphql_api_id"],
                        "sku": line["sku"],
                        "quantity": line["quantity"],
                        "variant": {"id": gid("ProductVariant", line["variant_id"])}
                        if line.get("variant_id")
                        else None,
                    }
                }
                for line in order["line_items"]
            ]
        },
    }


def item_node(item_id: int, item: dict[str, Any], location: str) -> dict[str, Any]:
    """An ``InventoryItem`` with its levels, as the GraphQL Admin API returns it."""
    quantities = [{"name": "available", "quantity": item["available"]}]
    level = {
        "location": {"id": location},
        "quantities": quantities,
        "updatedAt": item["updated_at"],
    }
    return {
        "id": gid("InventoryItem", item_id),
        "legacyResourceId": str(item_id),
        "sku": item["sku"],
        "inventoryLevels": {"edges": [{"node": level}]},
    }


async def serve_simulation(
    simulator: ShopSimulator,
    port: int,
    deliver_to: str | None,
    plan: DeliveryPlan,
    on_ready: Callable[[str], None],
    bind: str = "127.0.0.1",
) -> None:
    """Serve the Admin API on ``bind``:``port``, deliver the history, serve until cancelled."""
    runner = web.AppRunner(simulator.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    try:
        on_ready(f"http://{bind}:{port}")
        if deliver_to:
            statuses = await simulator.deliver(deliver_to, plan)
            on_ready(f"delivered {len(statuses)} webhooks: {sorted(set(statuses))}")
        await asyncio.Event().wait()  # serve until the caller cancels
    finally:
        await runner.cleanup()
