"""Reconciliation rules: compare Shopify's state with CartLoom's views, say what to correct.

Pure: the caller fetches Shopify's GraphQL nodes and CartLoom's materialised views and
publishes the :class:`~cartloom.domain.shopify.normalise.Output` corrections returned here through
the normal streams (``orders``, ``order.events``, ``inventory``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cartloom.domain.shopify.normalise import Delivery, Output, normalise_order, order_id

_FINANCIAL = {
    "PAID": "paid",
    "REFUNDED": "refunded",
    "PARTIALLY_REFUNDED": "partially_refunded",
    "PARTIALLY_PAID": "partially_paid",
}
_FULFILLMENT = {"FULFILLED": "fulfilled", "PARTIALLY_FULFILLED": "partial"}
#: Statuses that imply earlier lifecycle events already happened.
_IMPLIES = {
    "fulfilled": {"partially_fulfilled", "paid"},
    "partially_fulfilled": {"paid"},
    "refunded": {"partially_refunded", "paid"},
    "partially_refunded": {"paid"},
}


@dataclass
class Drift:
    """What one reconciliation found: counts for the metrics and the corrections to send."""

    orders_checked: int = 0
    orders_missing: int = 0
    orders_behind: int = 0
    skus_checked: int = 0
    skus_drifted: int = 0
    units: int = 0
    corrections: list[Output] = field(default_factory=list)


def _numeric(global_id: str) -> int:
    return int(str(global_id).rsplit("/", 1)[-1].split("?", 1)[0])


def order_payload(node: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL ``Order`` node in the webhook (REST) shape the normaliser reads."""
    lines = [
        {
            "id": _numeric(edge["node"]["id"]),
            "sku": edge["node"].get("sku"),
            "quantity": edge["node"].get("quantity"),
            "variant_id": _numeric(edge["node"]["variant"]["id"])
            if edge["node"].get("variant")
            else None,
        }
        for edge in (node.get("lineItems") or {}).get("edges", [])
    ]
    money = ((node.get("totalPriceSet") or {}).get("shopMoney")) or {}
    customer = node.get("customer")
    return {
        "id": int(node.get("legacyResourceId") or _numeric(node["id"])),
        "name": node.get("name"),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "processed_at": node.get("processedAt"),
        "cancelled_at": node.get("cancelledAt"),
        "financial_status": _FINANCIAL.get(str(node.get("displayFinancialStatus")), "pending"),
        "fulfillment_status": _FULFILLMENT.get(str(node.get("displayFulfillmentStatus"))),
        "currency": node.get("currencyCode") or money.get("currencyCode"),
        "total_price": money.get("amount"),
        "customer": {"id": _numeric(customer["id"]), "email": customer.get("email")}
        if isinstance(customer, dict) and customer.get("id")
        else None,
        "line_items": lines,
    }


def known_events(view: dict[str, Any]) -> frozenset[str]:
    """Lifecycle events an order view shows as applied (its status, history, implications)."""
    statuses = {str(view.get("status"))}
    statuses |= {str(h.get("status")) for h in view.get("history") or [] if isinstance(h, dict)}
    for status in list(statuses):
        statuses |= _IMPLIES.get(status, set())
    return frozenset({"created", *statuses})


def order_corrections(shop: str, node: dict[str, Any], view: dict[str, Any] | None) -> list[Output]:
    """Events that bring CartLoom's view of one order up to Shopify's (empty if in step)."""
    payload = order_payload(node)
    delivery = Delivery(
        topic="orders/updated",
        shop=shop,
        webhook_id="reconcile",
        event_id=None,
        triggered_at=payload["updated_at"],
        received_at=0.0,
        payload=payload,
    )
    emitted = known_events(view) if view is not None else frozenset()
    return normalise_order(delivery, emitted).outputs


def item_levels(node: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    """``(location, available, updated_at)`` for each level of a GraphQL ``InventoryItem``."""
    levels = []
    for edge in (node.get("inventoryLevels") or {}).get("edges", []):
        level = edge["node"]
        available = next(
            (q["quantity"] for q in level.get("quantities", []) if q.get("name") == "available"),
            None,
        )
        if isinstance(available, int):
            location = str(_numeric(level["location"]["id"]))
            levels.append((location, available, level.get("updatedAt")))
    return levels


def inventory_corrections(
    node: dict[str, Any], view: dict[str, Any] | None
) -> tuple[list[Output], int]:
    """Absolute levels to publish for one SKU, and the units of difference found."""
    sku = node.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        return [], 0
    held: dict[str, Any] = dict((view or {}).get("locations") or {})
    outputs, units = [], 0
    for location, available, updated_at in item_levels(node):
        current = held.get(location)
        if current is None and view is not None and not held:
            current = view.get("on_hand")
        if isinstance(current, int) and current == available:
            continue
        units += abs(available - current) if isinstance(current, int) else available
        value: dict[str, Any] = {"sku": sku, "on_hand": available, "location": location}
        if updated_at:
            value["updated_at"] = updated_at
        outputs.append(Output("inventory", sku, value))
    return outputs, units


def cartloom_order_id(node: dict[str, Any]) -> str:
    """CartLoom's id of a GraphQL ``Order`` node."""
    return order_id(node.get("legacyResourceId") or _numeric(node["id"]))
