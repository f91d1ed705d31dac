"""``cartloom shopify register-webhooks``: subscribe the shop to every topic CartLoom reads.

Speaks GraphQL through CartLoom's own Admin API client (:class:`AdminClient`: retries,
Shopify's throttling, 401/403/404 as "unavailable"), the one reconciliation and write-back
use. (The official ShopifyAPI library did this once; it is synchronous, keeps its session in
process-wide state and knows API versions only up to 2024-10, so it was removed: see
docs/libraries.md.) The mandatory privacy topics cannot be subscribed through the API: Shopify sends
them to the compliance URLs configured for the app (``shopify.app.toml``), which should
point at the same ``/webhooks/shopify`` endpoint.

Running it again changes nothing: it first lists the app's subscriptions
(``webhookSubscriptions``), keeps those already sending a topic to the address, moves
one sending it elsewhere to the address (``webhookSubscriptionUpdate``: a new address for
CartLoom's receiver) and creates only the missing ones. Shopify would refuse a second
subscription of a topic to the same address ("Address for this topic has already been
taken").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cartloom.domain.shopify.normalise import KNOWN_TOPICS, PRIVACY_TOPICS
from cartloom.shopify.admin_client import AdminApiError, AdminClient

SUBSCRIBABLE = sorted(KNOWN_TOPICS - PRIVACY_TOPICS)
_SUBSCRIPTION_FIELDS = "id topic endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } }"
MUTATION = f"""
mutation CartLoomWebhookSubscriptionCreate(
  $topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!
) {{
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {{
    webhookSubscription {{ {_SUBSCRIPTION_FIELDS} }}
    userErrors {{ field message }}
  }}
}}
"""
UPDATE = f"""
mutation CartLoomWebhookSubscriptionUpdate(
  $id: ID!, $webhookSubscription: WebhookSubscriptionInput!
) {{
  webhookSubscriptionUpdate(id: $id, webhookSubscription: $webhookSubscription) {{
    webhookSubscription {{ {_SUBSCRIPTION_FIELDS} }}
    userErrors {{ field message }}
  }}
}}
"""
LIST = f"""
query CartLoomWebhookSubscriptions(
  $first: Int!, $after: String, $topics: [WebhookSubscriptionTopic!]
) {{
  webhookSubscriptions(first: $first, after: $after, topics: $topics) {{
    edges {{ node {{ {_SUBSCRIPTION_FIELDS} }} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}
"""
PAGE_SIZE = 100


@dataclass(frozen=True)
class Subscription:
    """One of the app's webhook subscriptions (HTTP ones have a callback URL)."""

    id: str
    topic: str  #: Shopify's enum value, ORDERS_CREATE
    callback_url: str | None


@dataclass
class Registration:
    """What a run did, per webhook topic (``orders/create``)."""

    created: list[str] = field(default_factory=list)
    #: topic -> the address its subscription sent to before
    updated: dict[str, str | None] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    created_ids: list[str] = field(default_factory=list)


def topic_enum(topic: str) -> str:
    """Shopify's GraphQL enum value for a webhook topic (``orders/create`` -> ``ORDERS_CREATE``)."""
    return topic.upper().replace("/", "_")


#: Estimated cost of each operation, for the client's rate budget (Shopify's: a mutation 10).
COST = 10


def _payload(data: dict[str, Any], mutation: str, topic: str) -> dict[str, Any]:
    """A mutation's payload; raise :class:`AdminApiError` naming the topic on user errors."""
    payload: dict[str, Any] = data.get(mutation) or {}
    if payload.get("userErrors"):
        raise AdminApiError(f"{topic}: {payload['userErrors']}", payload["userErrors"])
    return payload


async def existing_subscriptions(
    client: AdminClient, topics: list[str]
) -> AsyncIterator[Subscription]:
    """The app's subscriptions to ``topics`` (enum values), page by page."""
    after: str | None = None
    while True:
        variables = {"first": PAGE_SIZE, "after": after, "topics": topics}
        data = await client.execute(LIST, variables, "CartLoomWebhookSubscriptions", COST)
        connection = data.get("webhookSubscriptions") or {}
        for edge in connection.get("edges") or []:
            node = edge["node"]
            endpoint = node.get("endpoint") or {}
            yield Subscription(str(node["id"]), str(node["topic"]), endpoint.get("callbackUrl"))
        info = connection.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return
        after = info.get("endCursor")


async def sync(api_url: str, token: str, version: str, callback_url: str) -> Registration:
    """Make every topic of :data:`SUBSCRIBABLE` send to ``callback_url``, exactly once.

    Raises :class:`AdminApiUnavailable` when the API cannot be reached or refuses the
    token, :class:`AdminApiError` naming the topic when Shopify refuses a change.
    """
    # A one-off command: a few tries, then a clear error (a worker's jobs keep trying).
    async with AdminClient(api_url, token, version, max_attempts=3) as client:
        by_topic: dict[str, list[Subscription]] = {}
        async for sub in existing_subscriptions(client, [topic_enum(t) for t in SUBSCRIBABLE]):
            by_topic.setdefault(sub.topic, []).append(sub)
        done = Registration()
        wanted = {"callbackUrl": callback_url, "format": "JSON"}
        for topic in SUBSCRIBABLE:
            subscriptions = by_topic.get(topic_enum(topic), [])
            if any(sub.callback_url == callback_url for sub in subscriptions):
                done.unchanged.append(topic)
            elif subscriptions:
                moved = subscriptions[0]
                variables = {"id": moved.id, "webhookSubscription": wanted}
                data = await client.execute(
                    UPDATE, variables, "CartLoomWebhookSubscriptionUpdate", COST
                )
                _payload(data, "webhookSubscriptionUpdate", topic)
                done.updated[topic] = moved.callback_url
            else:
                variables = {"topic": topic_enum(topic), "webhookSubscription": wanted}
                data = await client.execute(
                    MUTATION, variables, "CartLoomWebhookSubscriptionCreate", COST
                )
                payload = _payload(data, "webhookSubscriptionCreate", topic)
                done.created.append(topic)
                done.created_ids.append(str(payload["webhookSubscription"]["id"]))
        return done


async def register(api_url: str, token: str, version: str, callback_url: str) -> list[str]:
    """:func:`sync`; return the ids of the subscriptions it created."""
    return (await sync(api_url, token, version, callback_url)).created_ids
