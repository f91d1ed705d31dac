"""A simulated Shopify store's state and the webhook payloads its changes produce.

No I/O: the simulator server (:mod:`devstack.shopify_simulator`) serves this state over
GraphQL and delivers :attr:`SimulatedStore.history` as signed webhooks; the tests build
Shopify-shaped payloads with it. Shapes follow Shopify's documented webhook bodies: ids
are integers, ``admin_graphql_api_id`` holds the GraphQL global id, money is a string.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


def gid(kind: str, numeric: int) -> str:
    """Shopify's GraphQL global id, e.g. ``gid://shopify/Order/123``."""
    return f"gid://shopify/{kind}/{numeric}"


def numeric_id(global_id: str) -> int:
    """The integer id inside a GraphQL global id."""
    return int(global_id.rsplit("/", 1)[-1].split("?", 1)[0])


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One change as Shopify would announce it: topic, body, event id, trigger time."""

    topic: str
    payload: dict[str, Any]
    event_id: str
    triggered_at: str


class FixedClock:
    """A clock for deterministic stores: starts at ``start`` and ticks one second per read."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 25, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        """The next instant."""
        self._now += timedelta(seconds=1)
        return self._now


@dataclass
class SimulatedStore:
    """Products, inventory and orders of one shop, with the webhooks each change emits."""

    domain: str = "cartloom-sim.myshopify.com"
    clock: Callable[[], datetime] = field(default_factory=FixedClock)
    location_id: int = 655441491
    products: dict[int, dict[str, Any]] = field(default_factory=dict)
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[WebhookEvent] = field(default_factory=list)
    first_id: int = 1_000_001
    _ids: itertools.count[int] = field(init=False)

    def __post_init__(self) -> None:
        self._ids = itertools.count(self.first_id)

    def _now(self) -> str:
        return self.clock().isoformat()

    def _emit(self, topic: str, payload: dict[str, Any], at: str) -> None:
        event_id = f"{next(self._ids):x}-{len(self.history)}"
        self.history.append(WebhookEvent(topic, payload, event_id, at))

    # -- catalog and stock ---------------------------------------------------------------

    def add_product(self, title: str, skus: list[str], stock: int = 10) -> dict[str, Any]:
        """Create a product with one variant per SKU and ``stock`` units of each."""
        now = self._now()
        product_id = next(self._ids)
        variants: list[dict[str, Any]] = []
        for sku in skus:
            variant_id, item_id = next(self._ids), next(self._ids)
            self.items[item_id] = {"sku": sku, "available": stock, "updated_at": now}
            variants.append(
                {
                    "id": variant_id,
                    "product_id": product_id,
                    "title": sku,
                    "price": "19.90",
                    "sku": sku,
                    "inventory_item_id": item_id,
                    "inventory_quantity": stock,
                    "admin_graphql_api_id": gid("ProductVariant", variant_id),
                }
            )
        product = {
            "id": product_id,
            "admin_graphql_api_id": gid("Product", product_id),
            "title": title,
            "handle": title.lower().replace(" ", "-"),
            "status": "active",
            "vendor": "CartLoom",
            "product_type": "Sample",
            "created_at": now,
            "updated_at": now,
            "variants": variants,
        }
        self.products[product_id] = product
        self._emit("products/create", product, now)
        for variant in variants:
            self._emit_item("inventory_items/create", variant["inventory_item_id"], now)
            self._emit_level(variant["inventory_item_id"], now, "inventory_levels/connect")
        return product

    def _emit_item(self, topic: str, item_id: int, now: str) -> None:
        body = {
            "id": item_id,
            "sku": self.items[item_id]["sku"],
            "created_at": now,
            "updated_at": now,
            "requires_shipping": True,
            "cost": "5.00",
            "tracked": True,
            "admin_graphql_api_id": gid("InventoryItem", item_id),
        }
        self._emit(topic, body, now)

    def _emit_level(self, item_id: int, now: str, topic: str = "inventory_levels/update") -> None:
        body = {
            "inventory_item_id": item_id,
            "location_id": self.location_id,
            "available": self.items[item_id]["available"],
            "updated_at": now,
            "admin_graphql_api_id": (
                f"gid://shopify/InventoryLevel/{self.location_id}?inventory_item_id={item_id}"
            ),
        }
        self._emit(topic, body, now)

    def item_for_sku(self, sku: str) -> int:
        """The inventory item id of ``sku``."""
        return next(item_id for item_id, item in self.items.items() if item["sku"] == sku)

    def set_available(self, sku: str, available: int) -> None:
        """Set the absolute stock of ``sku`` at the store's location."""
        item_id = self.item_for_sku(sku)
        now = self._now()
        self.items[item_id].update(available=available, updated_at=now)
        self._emit_level(item_id, now)

    def adjust_available(self, sku: str, delta: int) -> int:
        """Change the stock of ``sku`` by ``delta``; returns the new level."""
        item = self.items[self.item_for_sku(sku)]
        self.set_available(sku, int(item["available"]) + delta)
        return int(item["available"])

    # -- orders ----------------------------------------------------------------------------

    def place_order(self, lines: list[tuple[str, int]], email: str = "ada@example.com") -> int:
        """Create an order for ``lines`` (SKU, quantity); stock drops as Shopify's does."""
        now = self._now()
        order_id = next(self._ids)
        line_items = []
        for sku, quantity in lines:
            line_id = next(self._ids)
            item_id = self.item_for_sku(sku)
            variant = self._variant_of(item_id)
            line_items.append(
                {
                    "id": line_id,
                    "variant_id": variant["id"] if variant else None,
                    "product_id": variant["product_id"] if variant else None,
                    "sku": sku,
                    "title": sku,
                    "quantity": quantity,
                    "price": "19.90",
                    "admin_graphql_api_id": gid("LineItem", line_id),
                }
            )
        total = sum(quantity for _, quantity in lines) * 19.90
        order = {
            "id": order_id,
            "admin_graphql_api_id": gid("Order", order_id),
            "name": f"#{1000 + len(self.orders) + 1}",
            "email": email,
            "created_at": now,
            "updated_at": now,
            "processed_at": now,
            "currency": "EUR",
            "total_price": f"{total:.2f}",
            "financial_status": "pending",
            "fulfillment_status": None,
            "cancelled_at": None,
            "customer": {
                "id": next(self._ids),
                "email": email,
                "first_name": "Ada",
                "last_name": "Lovelace",
                "phone": "+442071234567",
            },
            "line_items": line_items,
        }
        self.orders[order_id] = order
        self._emit("orders/create", dict(order), now)
        for sku, quantity in lines:
            self.adjust_available(sku, -quantity)
        return order_id

    def _variant_of(self, item_id: int) -> dict[str, Any] | None:
        for product in self.products.values():
            for variant in product["variants"]:
                if variant["inventory_item_id"] == item_id:
                    return dict(variant)
        return None

    def _change_order(self, order_id: int, topic: str, **changes: Any) -> None:
        now = self._now()
        order = self.orders[order_id]
        order.update(changes, updated_at=now)
        self._emit(topic, dict(order), now)
        if topic != "orders/updated":
            self._emit("orders/updated", dict(order), now)

    def pay(self, order_id: int) -> None:
        """Mark the order paid (``orders/paid`` and ``orders/updated``)."""
        self._change_order(order_id, "orders/paid", financial_status="paid")

    def fulfill(self, order_id: int) -> None:
        """Fulfil the whole order."""
        self._change_order(order_id, "orders/fulfilled", fulfillment_status="fulfilled")

    def cancel(self, order_id: int) -> None:
        """Cancel the order and restock its lines."""
        self._change_order(order_id, "orders/cancelled", cancelled_at=self._now())
        for line in self.orders[order_id]["line_items"]:
            self.adjust_available(line["sku"], line["quantity"])

    def refund(self, order_id: int) -> None:
        """Refund every line (``refunds/create``, then the order shows ``refunded``)."""
        now = self._now()
        order = self.orders[order_id]
        refund_id = next(self._ids)
        refund = {
            "id": refund_id,
            "order_id": order_id,
            "created_at": now,
            "admin_graphql_api_id": gid("Refund", refund_id),
            "refund_line_items": [
                {
                    "id": next(self._ids),
                    "line_item_id": line["id"],
                    "quantity": line["quantity"],
                    "restock_type": "no_restock",
                    "line_item": line,
                }
                for line in order["line_items"]
            ],
        }
        self._emit("refunds/create", refund, now)
        self._change_order(order_id, "orders/updated", financial_status="refunded")

    def redact_customer(self, order_ids: list[int]) -> None:
        """Emit ``customers/redact`` for the customer of ``order_ids``."""
        customer = self.orders[order_ids[0]]["customer"]
        body = {
            "shop_id": 954889,
            "shop_domain": self.domain,
            "customer": {"id": customer["id"], "email": customer["email"], "phone": None},
            "orders_to_redact": order_ids,
        }
        self._emit("customers/redact", body, self._now())


def populate(store: SimulatedStore, products: int, orders: int, seed: int = 0) -> None:
    """Fill ``store`` with ``products`` (two SKUs each) and ``orders`` in varied states."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not crypto
    skus: list[str] = []
    for number in range(products):
        pair = [f"SIM-{number:04d}-S", f"SIM-{number:04d}-M"]
        store.add_product(f"Sim Product {number}", pair, stock=rng.randint(50, 200))
        skus.extend(pair)
    for _ in range(orders):
        lines = [(sku, rng.randint(1, 3)) for sku in rng.sample(skus, k=min(len(skus), 2))]
        order_id = store.place_order(lines)
        roll = rng.random()
        if roll < 0.6:
            store.pay(order_id)
        if roll < 0.4:
            store.fulfill(order_id)
        if 0.6 <= roll < 0.7:
            store.cancel(order_id)
        if roll < 0.05:
            store.refund(order_id)
