"""``cartloom shopify register-webhooks``: subscribe the shop to every topic CartLoom reads.

Uses the official ShopifyAPI library (its session, API version handling and GraphQL
client), which is synchronous: the CLI runs it in a thread, never in a worker's event
loop. The mandatory privacy topics cannot be subscribed through the API: Shopify sends
them to the compliance URLs configured for the app (``shopify.app.toml``), which should
point at the same ``/webhooks/shopify`` endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import shopify

from cartloom.domain.shopify import KNOWN_TOPICS, PRIVACY_TOPICS

SUBSCRIBABLE = sorted(KNOWN_TOPICS - PRIVACY_TOPICS)
MUTATION = """
mutation CartLoomWebhookSubscriptionCreate(
  $topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!
) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription {
      id topic endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } }
    }
    userErrors { field message }
  }
}
"""


def topic_enum(topic: str) -> str:
    """Shopify's GraphQL enum value for a webhook topic (``orders/create`` -> ``ORDERS_CREATE``)."""
    return topic.upper().replace("/", "_")


def register_sync(api_url: str, token: str, version: str, callback_url: str) -> list[str]:
    """Create one subscription per topic; return the created subscription ids.

    Raises ``RuntimeError`` naming the topic when Shopify reports user errors.
    """
    api_version = shopify.ApiVersion.coerce_to_version(version)
    host = api_url.split("://", 1)[-1].split("/", 1)[0]
    session = shopify.Session(host, version, token)
    shopify.ShopifyResource.activate_session(session)
    try:
        client = shopify.GraphQL()
        # The library assumes https://{shop}.myshopify.com; the URL may be a simulator.
        client.endpoint = api_version.api_path(api_url.rstrip("/")) + "/graphql.json"
        created = []
        for topic in SUBSCRIBABLE:
            variables = {
                "topic": topic_enum(topic),
                "webhookSubscription": {"callbackUrl": callback_url, "format": "JSON"},
            }
            raw = client.execute(MUTATION, variables, "CartLoomWebhookSubscriptionCreate")
            result: dict[str, Any] = orjson.loads(raw)
            payload = (result.get("data") or {}).get("webhookSubscriptionCreate") or {}
            if result.get("errors") or payload.get("userErrors"):
                problem = result.get("errors") or payload.get("userErrors")
                raise RuntimeError(f"{topic}: {problem}")
            created.append(str(payload["webhookSubscription"]["id"]))
        return created
    finally:
        shopify.ShopifyResource.clear_session()


async def register(api_url: str, token: str, version: str, callback_url: str) -> list[str]:
    """:func:`register_sync` in a thread (ShopifyAPI is synchronous)."""
    return await asyncio.to_thread(register_sync, api_url, token, version, callback_url)
