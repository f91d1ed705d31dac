"""Deduplication and staleness of Shopify deliveries, per resource: pure, ``now`` passed in.

:func:`admit` decides whether a delivery is new, a duplicate (webhook id or event id seen
within the window) or a stale retry (older than what was applied in the same scope), and
returns the per-resource state to keep in ``shopify_delivery_by_resource``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cartloom.domain.shopify.normalise import (
    ITEM_TOPICS,
    LEVEL_TOPICS,
    ORDER_TOPICS,
    PRODUCT_TOPICS,
    Delivery,
    next_version,
    parse_time,
)

MAX_IDS_PER_RESOURCE = 1000


class Verdict(StrEnum):
    """What :func:`admit` decided about a delivery."""

    FRESH = "fresh"
    DUPLICATE = "duplicate"
    STALE = "stale"


def change_scope(delivery: Delivery) -> tuple[str, str] | None:
    """The (scope, timestamp) a delivery's staleness is judged on, or None if it has none.

    Snapshots of one resource share a scope; inventory levels are per location.
    """
    topic, payload = delivery.topic, delivery.payload
    stamp = payload.get("updated_at") or delivery.triggered_at
    if topic in ORDER_TOPICS:
        scope = "order"
    elif topic in PRODUCT_TOPICS:
        scope = "product"
    elif topic in LEVEL_TOPICS:
        scope = f"level:{payload.get('location_id')}"
    elif topic in ITEM_TOPICS:
        scope = "item"
    else:
        return None
    return (scope, stamp) if isinstance(stamp, str) and parse_time(stamp) is not None else None


def admit(
    state: dict[str, Any] | None, delivery: Delivery, window_seconds: float
) -> tuple[Verdict, dict[str, Any]]:
    """Decide whether ``delivery`` is new, and the resource state to store afterwards.

    ``state`` is the previous value for the delivery's resource key (None at first).
    Duplicates: a webhook id or event id seen within ``window_seconds``. Stale: an older
    ``updated_at`` (or ``X-Shopify-Triggered-At``) than what was applied in the same scope.
    """
    current = dict(state or {})
    now = delivery.received_at
    webhooks = _recent(current.get("webhooks", {}), now, window_seconds)
    events = _recent(current.get("events", {}), now, window_seconds)
    updated: dict[str, str] = dict(current.get("updated", {}))
    seen = delivery.webhook_id in webhooks or (
        delivery.event_id is not None and delivery.event_id in events
    )
    webhooks[delivery.webhook_id] = now
    if delivery.event_id:
        events[delivery.event_id] = now
    current.update(
        webhooks=_bounded(webhooks),
        events=_bounded(events),
        updated=updated,
        version=next_version(current),
    )
    if seen:
        return Verdict.DUPLICATE, current
    scoped = change_scope(delivery)
    if scoped is not None:
        scope, stamp = scoped
        previous = parse_time(updated.get(scope))
        incoming = parse_time(stamp)
        assert incoming is not None
        if previous is not None and incoming < previous:
            return Verdict.STALE, current
        updated[scope] = stamp
    return Verdict.FRESH, current


def _recent(ids: dict[str, float], now: float, window: float) -> dict[str, float]:
    return {key: at for key, at in ids.items() if at > now - window}


def _bounded(ids: dict[str, float]) -> dict[str, float]:
    if len(ids) <= MAX_IDS_PER_RESOURCE:
        return ids
    newest = sorted(ids.items(), key=lambda item: item[1])[-MAX_IDS_PER_RESOURCE:]
    return dict(newest)
