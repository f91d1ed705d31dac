"""Shopify deliveries -> CartLoom's public streams, the catalog and privacy jobs.

Three thin agents, each the single writer of its table:

- ``normalise_webhooks`` (``shopify.webhooks``, table ``shopify_delivery_by_resource``):
  drops duplicates and stale retries, then publishes to ``orders``, ``order.events``,
  ``shopify.catalog``, ``shopify.inventory_items`` and ``shopify.redactions``.
- ``update_catalog`` (``shopify.catalog``, table ``product_by_id``, materialised as products):
  checks each product change (:mod:`cartloom.domain.shopify.catalog`) before storing it.
- ``map_inventory_items`` (``shopify.inventory_items``, table ``sku_by_inventory_item``):
  maps inventory items to SKUs, parks levels whose SKU is unknown, publishes ``inventory``.

The privacy jobs ``normalise_webhooks`` publishes on ``shopify.redactions`` (co-partitioned
with ``orders``) are handled by the orders agent (:mod:`cartloom.agents.orders`), the only
writer of ``order_by_id``.

Outputs are sent before the state that records them is written, so a crash in between
re-sends (harmless downstream) rather than losing an event.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson

from cartloom.core import metrics
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.payloads import decode_json_object
from cartloom.domain.shopify.catalog import read_catalog_change
from cartloom.domain.shopify.dedupe import Verdict, admit
from cartloom.domain.shopify.normalise import (
    KNOWN_TOPICS,
    Delivery,
    Output,
    WebhookReason,
    normalise,
)
from cartloom.domain.shopify.state import apply_catalog_change, apply_item_message
from cartloom.stream.app import app, settings
from cartloom.stream.batching import stop_without_acknowledging
from cartloom.stream.deadletter import dead_letter_headers
from cartloom.stream.deliveries import DeliveryFailed, acknowledged_all
from cartloom.stream.tables import (
    product_by_id,
    shopify_delivery_by_resource,
    sku_by_inventory_item,
)
from cartloom.stream.topics import (
    inventory_topic,
    order_events_topic,
    orders_topic,
    shopify_catalog_topic,
    shopify_inventory_items_topic,
    shopify_redactions_topic,
    shopify_webhooks_dlq_topic,
    shopify_webhooks_topic,
)

log = logging.getLogger(__name__)

STREAMS: dict[str, faust.TopicT] = {
    "orders": orders_topic,
    "order.events": order_events_topic,
    "inventory": inventory_topic,
    "catalog": shopify_catalog_topic,
    "inventory_items": shopify_inventory_items_topic,
    "redactions": shopify_redactions_topic,
}
BROADCAST_KEY = "*"


def message_headers(message: Any) -> dict[str, str]:
    """A record's headers as ``{lower-case name: text}``."""
    raw = message.headers or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {str(k).lower(): bytes(v or b"").decode(errors="replace") for k, v in pairs}


def delivery_of(event: faust.EventT[Any]) -> Delivery:
    """The :class:`Delivery` the receiver enqueued (raises :class:`InvalidInput` if unusable)."""
    headers = message_headers(event.message)
    try:
        received_at = float(headers.get("cartloom-received-at", ""))
    except ValueError:
        received_at = event.message.timestamp or 0.0
    return Delivery(
        topic=headers.get("x-shopify-topic", ""),
        shop=headers.get("x-shopify-shop-domain", "").lower(),
        webhook_id=headers.get("x-shopify-webhook-id", ""),
        event_id=headers.get("x-shopify-event-id") or None,
        triggered_at=headers.get("x-shopify-triggered-at") or None,
        received_at=received_at,
        payload=decode_json_object(event.value),
    )


async def dead_letter(event: faust.EventT[Any], reason: WebhookReason, detail: str) -> None:
    """Copy the delivery with its Shopify headers plus the reason to the webhooks DLQ."""
    message = event.message
    headers = message_headers(message)
    added = dead_letter_headers(message, RejectReason.PROCESSING_ERROR, detail)
    added["cartloom-reason"] = reason.value.encode()
    merged = {name: value.encode() for name, value in headers.items()} | added
    delivery = await shopify_webhooks_dlq_topic.send(
        key=message.key, value=message.value, headers=merged
    )
    await acknowledged_all([delivery], "shopify.webhooks.dlq")
    metrics.DEAD_LETTERS.labels(topic=message.topic, reason=reason.value).inc()


async def guarded(
    event: faust.EventT[Any], label: str, step: Callable[[faust.EventT[Any]], Awaitable[None]]
) -> None:
    """Run ``step``; a bad payload or a bug sends the event to the DLQ instead of dropping it.

    Every send is awaited until the broker has it. One that fails stops the worker before
    Faust can acknowledge the event (see :func:`stop_without_acknowledging`).
    """
    try:
        await _guarded(event, label, step)
    except DeliveryFailed as exc:
        stop_without_acknowledging(f"shopify {label}", exc)


async def _guarded(
    event: faust.EventT[Any], label: str, step: Callable[[faust.EventT[Any]], Awaitable[None]]
) -> None:
    try:
        await step(event)
    except DeliveryFailed:
        raise
    except InvalidInput as exc:
        await dead_letter(event, WebhookReason.INVALID_PAYLOAD, exc.detail)
        metrics.SHOPIFY_WEBHOOKS_PROCESSED.labels(topic=label, outcome="dead_letter").inc()
    except Exception as exc:
        log.exception("shopify event at %s:%s failed", event.message.tp, event.message.offset)
        await dead_letter(event, WebhookReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        metrics.SHOPIFY_WEBHOOKS_PROCESSED.labels(topic=label, outcome="dead_letter").inc()


async def publish(output: Output) -> None:
    """Send one normalised event to its stream (``*`` keys go to every partition)."""
    topic = STREAMS[output.stream]
    value = orjson.dumps(output.value)
    if output.key != BROADCAST_KEY:
        await acknowledged_all(
            [await topic.send(key=output.key.encode(), value=value)], output.stream
        )
        return
    deliveries = [
        await topic.send(key=BROADCAST_KEY.encode(), value=value, partition=partition)
        for partition in range(topic.partitions or 1)
    ]
    await acknowledged_all(deliveries, output.stream)


@app.agent(shopify_webhooks_topic)
async def normalise_webhooks(stream: faust.StreamT[bytes]) -> None:
    """Dedupe each delivery and publish what it means; DLQ what cannot be used."""
    async for event in stream.events():
        label = message_headers(event.message).get("x-shopify-topic", "")
        label = label if label in KNOWN_TOPICS else "other"
        await guarded(event, label, normalise_webhook)


async def normalise_webhook(event: faust.EventT[Any]) -> None:
    """One delivery: unknown topic -> DLQ; duplicate/stale -> counted; else published."""
    delivery = delivery_of(event)
    if delivery.topic not in KNOWN_TOPICS:
        await dead_letter(event, WebhookReason.UNKNOWN_TOPIC, f"topic {delivery.topic!r}")
        metrics.SHOPIFY_WEBHOOKS_PROCESSED.labels(topic="other", outcome="dead_letter").inc()
        return
    key = bytes(event.key or b"").decode()
    state: dict[str, Any] | None = shopify_delivery_by_resource.get(key)
    verdict, new_state = admit(state, delivery, settings.shopify_dedupe_window_seconds)
    if verdict is Verdict.FRESH:
        emitted = frozenset((state or {}).get("emitted", ()))
        result = normalise(delivery, emitted)
        for output in result.outputs:
            await publish(output)
        new_state["emitted"] = sorted(emitted | set(result.emitted))
    shopify_delivery_by_resource[key] = new_state
    outcome = "applied" if verdict is Verdict.FRESH else verdict.value
    metrics.SHOPIFY_WEBHOOKS_PROCESSED.labels(topic=delivery.topic, outcome=outcome).inc()


@app.agent(shopify_catalog_topic)
async def update_catalog(stream: faust.StreamT[bytes]) -> None:
    """Store each product change with the next version (deletions as ``deleted`` views)."""
    async for event in stream.events():
        await guarded(event, "products", store_product)


async def store_product(event: faust.EventT[Any]) -> None:
    """Write one product document to ``product_by_id`` (a refused one raises InvalidInput)."""
    key = bytes(event.key or b"").decode()
    change = read_catalog_change(decode_json_object(event.value), key=key)
    product_by_id[key] = apply_catalog_change(product_by_id.get(key), change)


@app.agent(shopify_inventory_items_topic)
async def map_inventory_items(stream: faust.StreamT[bytes]) -> None:
    """Keep item -> SKU; publish levels as ``inventory`` events, parking unknown items."""
    async for event in stream.events():
        await guarded(event, "inventory_levels", apply_item_event)


async def apply_item_event(event: faust.EventT[Any]) -> None:
    """Apply one mapping or level message for an inventory item."""
    key = bytes(event.key or b"").decode()
    message = decode_json_object(event.value)
    state = sku_by_inventory_item.get(key)
    was_parked = len((state or {}).get("parked") or {})
    new_state, levels = apply_item_message(state, message)
    deliveries = [
        await inventory_topic.send(key=level["sku"].encode(), value=orjson.dumps(level))
        for level in levels
    ]
    await acknowledged_all(deliveries, "inventory")
    sku_by_inventory_item[key] = new_state
    if message.get("kind") == "level" and not levels:
        metrics.SHOPIFY_INVENTORY_PARKED.inc()
    elif message.get("kind") == "mapping" and levels:
        metrics.SHOPIFY_INVENTORY_RELEASED.inc(min(was_parked, len(levels)))
