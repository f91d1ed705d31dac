"""``cartloom shopify register-webhooks``: subscribe the shop to every topic CartLoom reads.

Uses the official ShopifyAPI library (its session, API version handling and GraphQL
client), which is synchronous: the CLI runs it in a thread, never in a worker's event
loop. The mandatory privacy topics cannot be subscribed through the API: Shopify sends
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

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import shopify

from cartloom.domain.shopify import KNOWN_TOPICS, PRIVACY_TOPICS
from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable

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


class _GraphQL(shopify.GraphQL):  # type: ignore[misc]  # ShopifyAPI has no type hints
    """ShopifyAPI's client, minus printing an HTTP error's body to stdout before raising."""

    def execute(
        self, query: str, variables: dict[str, Any] | None = None, operation_name: str | None = None
    ) -> str:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            **self.headers,
        }
        data = {"query": query, "variables": variables, "operationName": operation_name}
        request = urllib.request.Request(  # noqa: S310 - the configured Admin API URL
            self.endpoint, json.dumps(data).encode(), headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            raise AdminApiUnavailable(f"{operation_name}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise AdminApiUnavailable(f"{operation_name}: {reason}") from exc


def _run(client: _GraphQL, query: str, variables: dict[str, Any], operation: str) -> Any:
    """The operation's ``data``; raise :class:`AdminApiError` on GraphQL errors."""
    result: dict[str, Any] = orjson.loads(client.execute(query, variables, operation))
    if result.get("errors"):
        raise AdminApiError(f"{operation} failed: {result['errors']}", result["errors"])
    return result.get("data") or {}


def _payload(data: dict[str, Any], mutation: str, topic: str) -> dict[str, Any]:
    """A mutation's payload; raise :class:`AdminApiError` naming the topic on user errors."""
    payload: dict[str, Any] = data.get(mutation) or {}
    if payload.get("userErrors"):
        raise AdminApiError(f"{topic}: {payload['userErrors']}", payload["userErrors"])
    return payload


def existing_subscriptions(client: _GraphQL, topics: list[str]) -> Iterator[Subscription]:
    """The app's subscriptions to ``topics`` (enum values), page by page."""
    after: str | None = None
    while True:
        variables = {"first": PAGE_SIZE, "after": after, "topics": topics}
        data = _run(client, LIST, variables, "CartLoomWebhookSubscriptions")
        connection = data.get("webhookSubscriptions") or {}
        for edge in connection.get("edges") or []:
            node = edge["node"]
            endpoint = node.get("endpoint") or {}
            yield Subscription(str(node["id"]), str(node["topic"]), endpoint.get("callbackUrl"))
        info = connection.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return
        after = info.get("endCursor")


def sync_subscriptions(api_url: str, token: str, version: str, callback_url: str) -> Registration:
    """Make every topic of :data:`SUBSCRIBABLE` send to ``callback_url``, exactly once.

    Raises :class:`AdminApiUnavailable` when the API cannot be reached or refuses the
    token, :class:`AdminApiError` naming the topic when Shopify refuses a change.
    """
    api_version = shopify.ApiVersion.coerce_to_version(version)
    host = api_url.split("://", 1)[-1].split("/", 1)[0]
    session = shopify.Session(host, version, token)
    shopify.ShopifyResource.activate_session(session)
    try:
        client = _GraphQL()
        # The library assumes https://{shop}.myshopify.com; the URL may be a simulator.
        client.endpoint = api_version.api_path(api_url.rstrip("/")) + "/graphql.json"
        by_topic: dict[str, list[Subscription]] = {}
        for sub in existing_subscriptions(client, [topic_enum(t) for t in SUBSCRIBABLE]):
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
                data = _run(client, UPDATE, variables, "CartLoomWebhookSubscriptionUpdate")
                _payload(data, "webhookSubscriptionUpdate", topic)
                done.updated[topic] = moved.callback_url
            else:
                variables = {"topic": topic_enum(topic), "webhookSubscription": wanted}
                data = _run(client, MUTATION, variables, "CartLoomWebhookSubscriptionCreate")
                payload = _payload(data, "webhookSubscriptionCreate", topic)
                done.created.append(topic)
                done.created_ids.append(str(payload["webhookSubscription"]["id"]))
        return done
    finally:
        shopify.ShopifyResource.clear_session()


def register_sync(api_url: str, token: str, version: str, callback_url: str) -> list[str]:
    """:func:`sync_subscriptions`; return the ids of the subscriptions it created."""
    return sync_subscriptions(api_url, token, version, callback_url).created_ids


async def register(api_url: str, token: str, version: str, callback_url: str) -> list[str]:
    """:func:`register_sync` in a thread (ShopifyAPI is synchronous)."""
    return await asyncio.to_thread(register_sync, api_url, token, version, callback_url)


async def sync(api_url: str, token: str, version: str, callback_url: str) -> Registration:
    """:func:`sync_subscriptions` in a thread (ShopifyAPI is synchronous)."""
    return await asyncio.to_thread(sync_subscriptions, api_url, token, version, callback_url)
