"""State the Shopify agents keep: SKU mappings with parked levels, catalog and privacy views.

Pure functions over the table values of ``sku_by_inventory_item``, ``product_by_id`` and
``order_by_id``; the agents in :mod:`cartloom.agents.shopify` (and, for the privacy views,
the orders agent) store what they return.
"""

from __future__ import annotations

from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.shopify.normalise import next_version, parse_time

# -- inventory item mapping: the state kept per inventory item --------------------------


def apply_item_message(
    state: dict[str, Any] | None, message: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply a mapping or level message to an item's state; return it and ``inventory`` events.

    A level for an item whose SKU is unknown is parked (the newest per location) and
    released when the mapping arrives. A mapping older than the one held is ignored.
    """
    current: dict[str, Any] = dict(state or {"sku": None, "parked": {}, "mapped_at": None})
    current["version"] = next_version(current)
    parked: dict[str, dict[str, Any]] = dict(current.get("parked") or {})
    if message.get("kind") == "mapping":
        newer = parse_time(message.get("updated_at"))
        held = parse_time(current.get("mapped_at"))
        if held is not None and newer is not None and newer < held:
            return current, []
        current["sku"] = message.get("sku")
        current["mapped_at"] = message.get("updated_at")
        if current["sku"] is None:
            return current, []
        released = [_inventory_event(current["sku"], level) for level in parked.values()]
        current["parked"] = {}
        return current, released
    if message.get("kind") != "level":
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"unknown item message {message!r}")
    location = str(message.get("location"))
    if current.get("sku") is None:
        held_level = parked.get(location)
        if held_level is None or not _older(message, held_level):
            parked[location] = message
        current["parked"] = parked
        return current, []
    return current, [_inventory_event(current["sku"], message)]


def _older(message: dict[str, Any], other: dict[str, Any]) -> bool:
    mine, theirs = parse_time(message.get("updated_at")), parse_time(other.get("updated_at"))
    return mine is not None and theirs is not None and mine < theirs


def _inventory_event(sku: str, level: dict[str, Any]) -> dict[str, Any]:
    event = {"sku": sku, "on_hand": level["on_hand"], "location": level["location"]}
    if level.get("updated_at"):
        event["updated_at"] = level["updated_at"]
    return event


# -- catalog and privacy: the stored documents ----------------------------------------


def apply_catalog_change(state: dict[str, Any] | None, change: dict[str, Any]) -> dict[str, Any]:
    """The next ``product_by_id`` document: the change with a version one higher."""
    version = next_version(state or {})
    return {**change, "version": version}


def redacted(view: dict[str, Any], now: str) -> dict[str, Any] | None:
    """``view`` without personal data and with a higher version; None if nothing to remove."""
    if view.get("customer") is None and not view.get("email"):
        return None
    version = view.get("version")
    cleaned = {name: value for name, value in view.items() if name not in {"email", "phone"}}
    cleaned["customer"] = None
    cleaned["redacted_at"] = now
    cleaned["version"] = (version if isinstance(version, int) else 0) + 1
    return cleaned


def personal_data(view: dict[str, Any]) -> dict[str, Any]:
    """What CartLoom holds about a customer in one order view (for a data request)."""
    held = {"order_id": view.get("order_id"), "customer": view.get("customer")}
    return {name: value for name, value in held.items() if value is not None}
