"""Delivering webhooks as Shopify does: signed body, Shopify's headers, retries on failure.

Used by the simulator and the tests. A :class:`DeliveryPlan` mixes in what real deliveries
do: retries of one delivery (same webhook id), duplicates, reordering and drops.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from cartloom.shopify.signatures import sign
from devstack.shopify_store import WebhookEvent

API_VERSION = "2025-10"


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    """One HTTP delivery: the exact body bytes and the headers Shopify sends with it."""

    body: bytes
    headers: dict[str, str]

    @property
    def webhook_id(self) -> str:
        """``X-Shopify-Webhook-Id``: the same on every retry of this delivery."""
        return self.headers["X-Shopify-Webhook-Id"]


def signed(
    event: WebhookEvent, shop: str, secret: str, webhook_id: str | None = None
) -> SignedDelivery:
    """Sign ``event``'s body with ``secret`` and build Shopify's headers."""
    body = orjson.dumps(event.payload)
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": event.topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event.event_id,
        "X-Shopify-Triggered-At": event.triggered_at,
        "X-Shopify-API-Version": API_VERSION,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
    }
    return SignedDelivery(body, headers)


async def post(http: aiohttp.ClientSession, url: str, delivery: SignedDelivery) -> int:
    """POST one delivery; the HTTP status (599 when the receiver is unreachable)."""
    try:
        async with http.post(url, data=delivery.body, headers=delivery.headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 599


async def deliver_with_retries(
    http: aiohttp.ClientSession,
    url: str,
    delivery: SignedDelivery,
    *,
    attempts: int = 8,
    backoff: float = 0.2,
) -> int:
    """Retry a delivery until 200, as Shopify does (shortened back-off); the last status."""
    status = 0
    for attempt in range(attempts):
        status = await post(http, url, delivery)
        if status == 200:
            return status
        await asyncio.sleep(backoff * (2**attempt))
    return status


@dataclass(frozen=True)
class DeliveryPlan:
    """How unfaithful the delivery is: shares of duplicates and drops, and reordering."""

    duplicate_share: float = 0.0
    drop_share: float = 0.0
    shuffle: bool = False
    seed: int = 0

    def schedule(self, deliveries: Sequence[SignedDelivery]) -> list[SignedDelivery]:
        """The deliveries as they will reach the receiver (duplicates repeat the webhook id)."""
        rng = random.Random(self.seed)  # noqa: S311 - a reproducible test schedule, not crypto
        kept = [d for d in deliveries if rng.random() >= self.drop_share]
        dupes = [d for d in kept if rng.random() < self.duplicate_share]
        out = kept + dupes
        if self.shuffle:
            rng.shuffle(out)
        elif dupes:
            out = sorted(out, key=lambda d: kept.index(d))
        return out
