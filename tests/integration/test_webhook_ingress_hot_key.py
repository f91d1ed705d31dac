"""One hot resource at the ingress: every delivery answered 200, and in Kafka in order.

In a flash sale one inventory item's level changes with every order: all its deliveries
have one Kafka key, hence one partition. The ingress used to hand aiokafka a small batch
per pass of its event loop; aiokafka takes one batch per partition at a time, so the
batches queued behind one another, one per round trip, and those at the end of the queue
ran out of time in aiokafka's ``add_batch`` (``KafkaTimeoutError``, answered 503). Now the
batch aiokafka has queued for the partition takes what arrives until it is sent.

Many clients at once, each sending its share of the item's deliveries one after the other,
against ``cartloom shopify ingress`` and a real broker (a private embedded one). The broker
answers through a proxy that holds each answer back a little, as a broker a network round
trip away (``acks=all`` across zones) does: the outcome then depends on how many round
trips the ingress needs, not on how fast this machine is. Checked, with no clock: every
delivery answered 200; every one in ``shopify.webhooks``, on the key's partition; and the
partition's order respects what the clients saw: a delivery answered 200 before another
was sent is before it in the partition.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cartloom.core.topology import load_topology
from cartloom.domain.shopify.normalise import resource_key
from cartloom.ops.kafka_admin import apply_topics
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.shopify_store import WebhookEvent
from devstack.stack import StackState
from devstack.webhook_deliveries import post, signed
from tests.harness import serving, start_ingress
from tests.integration.conftest import SHOPIFY_RECEIVER_ENV, SHOPIFY_SECRET
from tests.integration.kafka_proxy import sized_broker
from tests.integration.shopify_helpers import TopicReader
from tests.integration.test_shopify_webhooks import new_store

pytestmark = pytest.mark.integration

#: How long the proxy holds each of the broker's answers back.
ROUND_TRIP = 0.05


@pytest.fixture
async def distant_broker(tmp_path: Path) -> AsyncIterator[str]:
    """A private embedded broker whose every answer comes ROUND_TRIP late."""
    async with sized_broker(tmp_path, answer_delay=ROUND_TRIP) as broker:
        topic = load_topology().topic("shopify.webhooks")
        await apply_topics(KafkaConnection.plaintext(broker.bootstrap), [topic])
        yield broker.bootstrap


async def test_one_hot_item_every_delivery_200_and_in_order(
    stack: StackState, tmp_path: Path, distant_broker: str
) -> None:
    """A flash sale: 4,000 level updates of one inventory item from 256 clients, small bodies."""
    store, _ = new_store("hot")
    store.add_product("Flash Sale Tee", ["HOT-1"])
    first = len(store.history)
    for number in range(4_000):  # the item's level after each sale
        store.set_available("HOT-1", 4_000 - number)
    events = store.history[first:]
    assert {event.topic for event in events} == {"inventory_levels/update"}
    await deliver_all_at_once(stack, tmp_path, distant_broker, store.domain, events)


async def test_one_hot_product_with_large_bodies_every_delivery_200_and_in_order(
    stack: StackState, tmp_path: Path, distant_broker: str
) -> None:
    """600 updates of one product with 80 variants from 128 clients: bodies of about 20 KB,
    so a round trip brings more than a batch holds and full batches queue for the partition."""
    store, tag = new_store("hotproduct")
    product = store.add_product("Flash Sale Hoodie", [f"HOODIE-{tag}-{n}" for n in range(80)])
    created = next(event for event in store.history if event.topic == "products/create")
    events = [
        WebhookEvent(
            "products/update",
            {**product, "title": f"Flash Sale Hoodie ({number} sold)"},
            f"ev-{tag}-{number}",
            created.triggered_at,
        )
        for number in range(600)
    ]
    assert len(signed(events[0], store.domain, SHOPIFY_SECRET).body) > 15_000
    await deliver_all_at_once(stack, tmp_path, distant_broker, store.domain, events, clients=128)


async def deliver_all_at_once(
    stack: StackState,
    tmp_path: Path,
    bootstrap: str,
    shop: str,
    events: list[WebhookEvent],
    clients: int = 256,
) -> None:
    """Deliver ``events`` (all of one resource) from ``clients`` clients at once, then check
    that every one was answered 200 and is in Kafka in an order the clients' answers allow.
    """
    keys = {resource_key(event.topic, shop, event.payload) for event in events}
    assert len(keys) == 1, keys
    key = keys.pop().encode()
    deliveries = [signed(event, shop, SHOPIFY_SECRET) for event in events]

    # A logical clock: one tick per send and per answer, in the order the test saw them.
    clock = itertools.count()
    sent_at: dict[int, int] = {}
    answered_at: dict[int, int] = {}
    statuses: dict[int, int] = {}
    env = {**SHOPIFY_RECEIVER_ENV, "CARTLOOM_BROKER_URL": f"kafka://{bootstrap}"}
    started = start_ingress(stack.env, tmp_path, "hot-ingress", env)
    async with serving(started) as ingress:
        url = f"{ingress.url}/webhooks/shopify"
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def client(first_index: int) -> None:
                """Sends deliveries first_index, +clients, ... one after the other."""
                for index in range(first_index, len(deliveries), clients):
                    sent_at[index] = next(clock)
                    statuses[index] = await post(http, url, deliveries[index])
                    answered_at[index] = next(clock)

            await asyncio.gather(*(client(number) for number in range(clients)))

    assert Counter(statuses.values()) == {200: len(deliveries)}
    webhook_ids = {delivery.webhook_id.encode(): index for index, delivery in enumerate(deliveries)}
    async with TopicReader(bootstrap, "shopify.webhooks", {key}) as reader:
        records = await reader.until(
            lambda r: {dict(x.headers)["x-shopify-webhook-id"] for x in r} >= set(webhook_ids),
            "every delivery of the hot resource in Kafka",
        )
    assert len({record.partition for record in records}) == 1  # the key's partition
    # The position of each delivery in the partition (its first copy, should there be more).
    position: dict[int, int] = {}
    for record in sorted(records, key=lambda r: r.offset):
        position.setdefault(
            webhook_ids[dict(record.headers)["x-shopify-webhook-id"]], len(position)
        )
    # Walk the clock: when a delivery is sent, every delivery already answered 200 must be
    # before it in the partition.
    timeline = sorted(
        [(tick, "answered", index) for index, tick in answered_at.items()]
        + [(tick, "sent", index) for index, tick in sent_at.items()]
    )
    latest_answered = -1  # the furthest position among the deliveries answered so far
    out_of_order = []
    for _, event, index in timeline:
        if event == "answered":
            latest_answered = max(latest_answered, position[index])
        elif position[index] < latest_answered:
            out_of_order.append(index)
    assert not out_of_order, f"{len(out_of_order)} deliveries before one answered before them"
