"""Shopify webhook payloads turned into CartLoom events: pure functions, no I/O.

A delivery is the raw webhook (topic, shop, ids, timestamps, decoded body). This module
decides the Kafka key of a delivery (:func:`resource_key`), whether it is a duplicate or a
stale retry (:func:`admit`), and what CartLoom events it means (:func:`normalise`). The
caller passes ``now`` and the per-resource state it keeps in a table.

Ids: a Shopify order becomes CartLoom order ``shopify-<numeric id>``; products keep their
numeric id as a string; SKUs come from the variant, else ``shopify-variant-<variant id>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.shopify.catalog import read_catalog_change

ORDER_PREFIX = "shopify-"

ORDER_TOPICS = frozenset(
    {
        "orders/create",
        "orders/updated",
        "orders/paid",
        "orders/cancelled",
        "orders/fulfilled",
        "orders/partially_fulfilled",
    }
)
PRODUCT_TOPICS = frozenset({"products/create", "products/update", "products/delete"})
LEVEL_TOPICS = frozenset(
    {"inventory_levels/update", "inventory_levels/connect", "inventory_levels/disconnect"}
)
ITEM_TOPICS = frozenset(
    {"inventory_items/create", "inventory_items/update", "inventory_items/delete"}
)
PRIVACY_TOPICS = frozenset({"customers/data_request", "customers/redact", "shop/redact"})
KNOWN_TOPICS = ORDER_TOPICS | PRODUCT_TOPICS | LEVEL_TOPICS | ITEM_TOPICS | PRIVACY_TOPICS
KNOWN_TOPICS = KNOWN_TOPICS | {"refunds/create"}

#: Lifecycle events in the order they are emitted when one snapshot implies several.
LIFECYCLE = (
    "paid",
    "partially_fulfilled",
    "fulfilled",
    "partially_refunded",
    "refunded",
    "cancelled",
)


class WebhookReason(StrEnum):
    """Why a verified delivery was not used: DLQ header values and metric labels."""

    UNKNOWN_TOPIC = "unknown_topic"
    INVALID_PAYLOAD = "invalid_payload"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified webhook delivery, as the receiver enqueued it."""

    topic: str
    shop: str
    webhook_id: str
    event_id: str | None
    triggered_at: str | None
    received_at: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Output:
    """One event to publish: ``stream`` is a logical name (see :mod:`cartloom.stream.topics`)."""

    stream: str
    key: str
    value: dict[str, Any]


@dataclass(slots=True)
class Normalised:
    """The events a delivery means, plus the lifecycle events now emitted for its order."""

    outputs: list[Output] = field(default_factory=list)
    emitted: list[str] = field(default_factory=list)


def _id(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{name} must be a Shopify id")
    return str(value)


def order_id(shopify_id: object) -> str:
    """CartLoom's id for the Shopify order ``shopify_id``."""
    return f"{ORDER_PREFIX}{shopify_id}"


def resource_key(topic: str, shop: str, payload: dict[str, Any]) -> str:
    """The Kafka key of a delivery: one resource, one partition, one order of changes.

    Raises :class:`InvalidInput` when the payload lacks the id the topic needs.
    """
    if topic in ORDER_TOPICS:
        return f"{shop}/order/{_id(payload, 'id')}"
    if topic == "refunds/create":
        return f"{shop}/order/{_id(payload, 'order_id')}"
    if topic in PRODUCT_TOPICS:
        return f"{shop}/product/{_id(payload, 'id')}"
    if topic in LEVEL_TOPICS:
        return f"{shop}/inventory_item/{_id(payload, 'inventory_item_id')}"
    if topic in ITEM_TOPICS:
        return f"{shop}/inventory_item/{_id(payload, 'id')}"
    if topic in {"customers/redact", "customers/data_request"}:
        customer = payload.get("customer")
        if not isinstance(customer, dict):
            raise InvalidInput(RejectReason.INVALID_SCHEMA, "customer must be an object")
        return f"{shop}/customer/{_id(customer, 'id')}"
    if topic == "shop/redact":
        return f"{shop}/shop"
    resource = payload.get("id")
    return f"{shop}/{topic}/{resource}" if resource is not None else f"{shop}/{topic}"


#: Fields a body must carry under each topic, beyond the id :func:`resource_key` reads.
#: Shopify signs only the body, so a captured signed body could be re-posted under
#: another ``X-Shopify-Topic``: these tell the bodies of different topics apart (an order
#: has line items, a product variants, a level a location, a redaction its shop).
_BODY_FIELDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(ORDER_TOPICS, ("line_items", "created_at")),
    "refunds/create": ("refund_line_items",),
    "products/create": ("title", "variants"),
    "products/update": ("title", "variants"),
    "products/delete": (),
    "inventory_items/create": ("sku",),
    "inventory_items/update": ("sku",),
    "inventory_items/delete": (),
    "inventory_levels/update": ("location_id", "available"),
    "inventory_levels/connect": ("location_id", "available"),
    "inventory_levels/disconnect": ("location_id",),
    "customers/redact": ("shop_id", "shop_domain", "orders_to_redact"),
    "customers/data_request": ("shop_id", "shop_domain", "orders_requested"),
    "shop/redact": ("shop_id", "shop_domain"),
}
#: Fields that only a body of another kind carries: their presence gives the body away.
_FOREIGN_FIELDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(ORDER_TOPICS, ("refund_line_items", "variants", "shop_domain")),
    **dict.fromkeys(PRODUCT_TOPICS, ("line_items", "shop_domain", "location_id")),
    **dict.fromkeys(ITEM_TOPICS, ("line_items", "variants", "shop_domain", "location_id")),
    **dict.fromkeys(LEVEL_TOPICS, ("line_items", "variants", "shop_domain")),
    "inventory_levels/disconnect": ("line_items", "variants", "shop_domain", "available"),
    **dict.fromkeys(PRIVACY_TOPICS, ("line_items", "variants", "location_id")),
    "shop/redact": ("customer", "orders_to_redact", "orders_requested", "line_items"),
    "refunds/create": ("variants", "shop_domain", "location_id"),
}
#: A delete carries little more than the id: what a created or updated resource has.
_DELETE_FOREIGN_FIELDS = (
    "title",
    "variants",
    "sku",
    "line_items",
    "refund_line_items",
    "order_id",
    "location_id",
    "available",
)


def check_fits_topic(topic: str, shop: str, payload: dict[str, Any]) -> None:
    """Raise :class:`InvalidInput` unless ``payload`` is a body of ``topic`` from ``shop``.

    The signature covers the body, not the ``X-Shopify-Topic`` and ``-Shop-Domain``
    headers; this binds the two to what was signed as far as the body allows: the fields
    the topic's body always has, none that only another topic's body has, and a privacy
    body's ``shop_domain`` equal to the header. Topics whose bodies have one shape
    (``inventory_levels/update`` and ``/connect``) cannot be told apart this way.
    """
    if topic not in _BODY_FIELDS:
        return  # unknown topics are enqueued and dead-lettered by the normaliser
    missing = [name for name in _BODY_FIELDS[topic] if name not in payload]
    if missing:
        raise InvalidInput(
            RejectReason.INVALID_SCHEMA,
            f"a {topic} body has {', '.join(missing)}; this one has not",
        )
    foreign = [name for name in _FOREIGN_FIELDS.get(topic, ()) if name in payload]
    if topic.endswith("/delete"):
        foreign += [name for name in _DELETE_FOREIGN_FIELDS if name in payload]
    foreign = list(dict.fromkeys(foreign))
    if foreign:
        raise InvalidInput(
            RejectReason.INVALID_SCHEMA,
            f"a {topic} body has no {', '.join(foreign)}: this body is of another topic",
        )
    if topic in PRIVACY_TOPICS and str(payload["shop_domain"]).lower() != shop:
        raise InvalidInput(
            RejectReason.INVALID_SCHEMA,
            f"the body names shop {payload['shop_domain']!r}, the header {shop!r}",
        )


def parse_time(value: object) -> datetime | None:
    """An aware datetime from an ISO-8601 string, or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def next_version(state: dict[str, Any]) -> int:
    """One more than the ``version`` in ``state`` (1 for a new value)."""
    version = state.get("version", 0)
    return (version if isinstance(version, int) else 0) + 1


def normalise(delivery: Delivery, emitted: frozenset[str] = frozenset()) -> Normalised:
    """The CartLoom events ``delivery`` means; raise :class:`InvalidInput` if it is unusable.

    ``emitted`` is what was already emitted for the delivery's order (``created`` and
    lifecycle events), so a later snapshot only adds what is new. Unknown topics raise
    nothing here: the caller checks :data:`KNOWN_TOPICS` first.
    """
    topic = delivery.topic
    if topic in ORDER_TOPICS:
        return normalise_order(delivery, emitted)
    if topic == "refunds/create":
        return Normalised(outputs=[normalise_refund(delivery)])
    if topic in PRODUCT_TOPICS:
        return Normalised(outputs=normalise_product(delivery))
    if topic in LEVEL_TOPICS | ITEM_TOPICS:
        return Normalised(outputs=[normalise_inventory_item(delivery)])
    if topic in PRIVACY_TOPICS:
        return Normalised(outputs=normalise_privacy(delivery))
    raise InvalidInput(RejectReason.INVALID_SCHEMA, f"unknown topic {topic!r}")


def sku_of(line: dict[str, Any]) -> str:
    """A line's SKU; Shopify allows empty SKUs, so fall back to the variant or line id."""
    sku = line.get("sku")
    if isinstance(sku, str) and sku.strip():
        return sku.strip()
    if line.get("variant_id") is not None:
        return f"shopify-variant-{line['variant_id']}"
    return f"shopify-line-{_id(line, 'id')}"


def _lines(raw: object, field_name: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field_name} must be a list")
    lines: list[dict[str, Any]] = []
    for index, line in enumerate(raw):
        if not isinstance(line, dict):
            raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field_name}[{index}] not an object")
        quantity = line.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            raise InvalidInput(
                RejectReason.INVALID_SCHEMA, f"{field_name}[{index}].quantity must be an integer"
            )
        if quantity > 0:
            lines.append({"sku": sku_of(line), "quantity": quantity})
    return lines


def order_message(delivery: Delivery) -> dict[str, Any]:
    """The ``orders`` message for a Shopify order snapshot (``accepted_upstream``)."""
    payload = delivery.payload
    lines = _lines(payload.get("line_items"), "line_items")
    if not lines:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "order has no line with quantity >= 1")
    created_at = payload.get("created_at")
    if parse_time(created_at) is None:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "created_at must be ISO-8601 with a zone")
    message: dict[str, Any] = {
        "order_id": order_id(_id(payload, "id")),
        "source": "shopify",
        "created_at": created_at,
        "lines": lines,
        "currency": payload.get("currency"),
        "total_price": payload.get("total_price"),
        "accepted_upstream": True,
        "shop": delivery.shop,
        "shopify_order_id": payload.get("id"),
        "name": payload.get("name"),
    }
    customer = customer_of(payload)
    if customer is not None:
        message["customer"] = customer
    return message


def customer_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The personal data CartLoom keeps about an order's customer (redactable)."""
    customer = payload.get("customer")
    if not isinstance(customer, dict) or customer.get("id") is None:
        return None
    kept = {"id": str(customer["id"])}
    for name in ("email", "first_name", "last_name", "phone"):
        if customer.get(name):
            kept[name] = customer[name]
    return kept


def lifecycle_of(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """Lifecycle events a Shopify order snapshot implies, with their times, in order."""
    financial = payload.get("financial_status")
    fulfillment = payload.get("fulfillment_status")
    updated_at = str(payload.get("updated_at") or payload.get("created_at"))
    implied: dict[str, str] = {}
    if financial in {"paid", "partially_refunded", "refunded"}:
        implied["paid"] = str(payload.get("processed_at") or updated_at)
    if fulfillment == "partial":
        implied["partially_fulfilled"] = updated_at
    if fulfillment == "fulfilled":
        implied["fulfilled"] = updated_at
    if financial == "partially_refunded":
        implied["partially_refunded"] = updated_at
    if financial == "refunded":
        implied["refunded"] = updated_at
    if payload.get("cancelled_at"):
        implied["cancelled"] = str(payload["cancelled_at"])
    return [(event, implied[event]) for event in LIFECYCLE if event in implied]


def version_of(stamp: object) -> int | None:
    """An event version from a Shopify timestamp: epoch milliseconds, or None."""
    parsed = parse_time(stamp)
    return round(parsed.timestamp() * 1000) if parsed is not None else None


def normalise_order(delivery: Delivery, emitted: frozenset[str]) -> Normalised:
    """``orders`` message once per order, then each lifecycle event not yet emitted."""
    payload = delivery.payload
    key = order_id(_id(payload, "id"))
    result = Normalised()
    if "created" not in emitted:
        result.outputs.append(Output("orders", key, order_message(delivery)))
        result.emitted.append("created")
    version = version_of(payload.get("updated_at"))
    for event, at in lifecycle_of(payload):
        if event in emitted:
            continue
        value: dict[str, Any] = {"order_id": key, "event": event, "at": at}
        if version is not None:
            value["version"] = version
        result.outputs.append(Output("order.events", key, value))
        result.emitted.append(event)
    return result


def normalise_refund(delivery: Delivery) -> Output:
    """``refunds/create`` -> a ``partially_refunded`` event with the refunded lines.

    Whether the refund is total shows in the order's next snapshot (``refunded``).
    """
    payload = delivery.payload
    key = order_id(_id(payload, "order_id"))
    raw_lines = payload.get("refund_line_items") or []
    lines = _lines(
        [{**(item.get("line_item") or {}), "quantity": item.get("quantity")} for item in raw_lines]
        if isinstance(raw_lines, list) and all(isinstance(i, dict) for i in raw_lines)
        else raw_lines,
        "refund_line_items",
    )
    value: dict[str, Any] = {
        "order_id": key,
        "event": "partially_refunded",
        "at": payload.get("created_at") or delivery.triggered_at,
        "lines": lines,
    }
    return Output("order.events", key, value)


def normalise_product(delivery: Delivery) -> list[Output]:
    """A catalog change keyed by product id, and one SKU mapping per variant.

    The change is what ``update_catalog`` will accept (:func:`read_catalog_change`): a
    product it would refuse raises :class:`InvalidInput` here, before anything is sent.
    """
    payload = delivery.payload
    product_id = _id(payload, "id")
    if delivery.topic == "products/delete":
        marker = {"product_id": product_id, "shop": delivery.shop, "deleted": True}
        marker["updated_at"] = delivery.triggered_at
        return [Output("catalog", product_id, read_catalog_change(marker, key=product_id))]
    variants = payload.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "variants must be a list of objects")
    view: dict[str, Any] = {
        "product_id": product_id,
        "shop": delivery.shop,
        "deleted": False,
        "title": payload.get("title"),
        "handle": payload.get("handle"),
        "status": payload.get("status"),
        "vendor": payload.get("vendor"),
        "product_type": payload.get("product_type"),
        "updated_at": payload.get("updated_at"),
        "variants": [_variant(variant) for variant in variants],
    }
    product = read_catalog_change(view, key=product_id)
    outputs = [Output("catalog", product_id, product)]
    for variant in product["variants"]:
        if variant["inventory_item_id"] is not None:
            outputs.append(
                _mapping(delivery, variant["inventory_item_id"], variant["sku"], "product")
            )
    return outputs


def _variant(variant: dict[str, Any]) -> dict[str, Any]:
    item = variant.get("inventory_item_id")
    return {
        "variant_id": _id(variant, "id"),
        "sku": sku_of({"sku": variant.get("sku"), "variant_id": variant.get("id")}),
        "title": variant.get("title"),
        "price": variant.get("price"),
        "inventory_item_id": str(item) if item is not None else None,
    }


def _mapping(delivery: Delivery, item_id: str, sku: str | None, origin: str) -> Output:
    key = f"{delivery.shop}/inventory_item/{item_id}"
    value = {
        "kind": "mapping",
        "inventory_item_id": item_id,
        "sku": sku,
        "origin": origin,
        "updated_at": delivery.payload.get("updated_at") or delivery.triggered_at,
    }
    return Output("inventory_items", key, value)


def normalise_inventory_item(delivery: Delivery) -> Output:
    """Inventory level or item change, sent on to the item's SKU-mapping partition."""
    payload, topic = delivery.payload, delivery.topic
    if topic in ITEM_TOPICS:
        item_id = _id(payload, "id")
        sku = payload.get("sku") if topic != "inventory_items/delete" else None
        sku = sku.strip() if isinstance(sku, str) and sku.strip() else None
        if sku is None and topic != "inventory_items/delete":
            sku = f"shopify-item-{item_id}"
        return _mapping(delivery, item_id, sku, "item")
    item_id = _id(payload, "inventory_item_id")
    location = _id(payload, "location_id")
    available = 0 if topic == "inventory_levels/disconnect" else payload.get("available")
    if available is None:
        available = 0
    if not isinstance(available, int) or isinstance(available, bool):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "available must be an integer")
    value = {
        "kind": "level",
        "inventory_item_id": item_id,
        "location": location,
        "on_hand": available,
        "updated_at": payload.get("updated_at") or delivery.triggered_at,
    }
    return Output("inventory_items", f"{delivery.shop}/inventory_item/{item_id}", value)


def normalise_privacy(delivery: Delivery) -> list[Output]:
    """Privacy requests: one job per affected order, or a shop-wide redaction."""
    payload = delivery.payload
    requested_at = delivery.triggered_at
    if delivery.topic == "shop/redact":
        job = {"kind": "redact_shop", "shop": delivery.shop, "requested_at": requested_at}
        return [Output("redactions", "*", job)]
    customer = payload.get("customer")
    if not isinstance(customer, dict):  # the receiver's resource_key refuses it; others may not
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "customer must be an object")
    kind = "redact" if delivery.topic == "customers/redact" else "export"
    field_name = "orders_to_redact" if kind == "redact" else "orders_requested"
    orders = payload.get(field_name) or []
    if not isinstance(orders, list):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field_name} must be a list")
    request = payload.get("data_request")
    request_id = request.get("id") if isinstance(request, dict) else None
    outputs = []
    for shopify_id in orders:
        key = order_id(shopify_id)
        job = {
            "kind": kind,
            "order_id": key,
            "shop": delivery.shop,
            "customer_id": str(customer.get("id")),
            "request_id": str(request_id or delivery.webhook_id),
            "requested_at": requested_at,
        }
        outputs.append(Output("redactions", key, job))
    return outputs
