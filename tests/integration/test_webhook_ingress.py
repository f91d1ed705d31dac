"""``cartloom shopify ingress``: the webhook receiver in a process of its own, on real servers.

The statuses it answers are checked beside the worker's in
``test_shopify_webhooks.py::test_statuses_forged_malformed_oversized_duplicate``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest

from cartloom.core.topology import load_topology
from cartloom.domain.shopify.normalise import resource_key
from cartloom.ops.kafka_admin import apply_topics
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.processes import free_port, spawn, stop
from devstack.shopify_store import WebhookEvent
from devstack.stack import StackState, _broker_ready, broker_argv
from devstack.webhook_deliveries import DeliveryPlan, SignedDelivery, post, signed
from tests.harness import (
    WorkerProcess,
    eventually,
    first_answers,
    serving,
    start_ingress,
    wait_ready,
)
from tests.integration.conftest import SHOPIFY_RECEIVER_ENV, SHOPIFY_SECRET
from tests.integration.shopify_helpers import TopicReader
from tests.integration.test_shopify_webhooks import EXPECTED_EVENTS, new_store, run_history

pytestmark = pytest.mark.integration


async def test_serves_health_readiness_metrics_and_refuses_other_paths(
    ingress: WorkerProcess,
) -> None:
    store, _ = new_store("paths")
    store.add_product("Paths Tee", ["PATHS-1"])
    async with aiohttp.ClientSession() as http:
        delivered = await post(
            http,
            f"{ingress.url}/webhooks/shopify",
            signed(store.history[0], store.domain, SHOPIFY_SECRET),
        )
        async with http.get(f"{ingress.url}/healthz") as health:
            assert health.status == 200
        async with http.get(f"{ingress.url}/readyz") as ready:
            assert ready.status == 200
        async with http.get(f"{ingress.url}/webhooks/shopify") as wrong_method:
            assert wrong_method.status == 405
            assert wrong_method.headers["Allow"] == "POST"
        async with http.get(f"{ingress.url}/orders/1") as elsewhere:
            assert elsewhere.status == 404  # the ingress answers webhooks, not queries
        async with http.get(f"{ingress.url}/metrics") as scrape:
            assert scrape.status == 200
            text = await scrape.text()
    assert delivered == 200
    assert (
        'cartloom_shopify_webhooks_received_total{outcome="accepted",topic="products/create"}'
        in text
    )


async def test_history_through_the_ingress_reaches_the_streams(
    ingress: WorkerProcess, shopify_worker: WorkerProcess, bootstrap: str
) -> None:
    """Deliveries answered by the ingress are normalised by the workers' agents."""
    _, _, events, levels = await run_history(ingress, bootstrap, DeliveryPlan(), "INGR")
    assert events == EXPECTED_EVENTS
    assert levels == {b"INGR-S": 3, b"INGR-M": 40}


async def test_sigterm_drains_every_accepted_delivery_into_kafka(
    stack: StackState, tmp_path: Path, bootstrap: str
) -> None:
    """Stopped mid-burst, the ingress answers nothing 200 that is not in Kafka, and exits 0."""
    process = start_ingress(stack.env, tmp_path, "draining-ingress", SHOPIFY_RECEIVER_ENV)
    try:
        await wait_ready(process)
        store, _ = new_store("drain")
        for number in range(300):
            store.add_product(f"Drain Tee {number}", [f"DRAIN-{number}"])
        events = [event for event in store.history if event.topic == "products/create"]
        deliveries = [signed(event, store.domain, SHOPIFY_SECRET) for event in events]
        url = f"{process.url}/webhooks/shopify"
        answered: list[int] = []
        async with aiohttp.ClientSession() as http:

            async def one(index: int) -> tuple[int, int]:
                status = await post(http, url, deliveries[index])
                answered.append(status)
                return index, status

            async def some_answered() -> bool:
                return len(answered) >= 20

            burst = [asyncio.ensure_future(one(i)) for i in range(len(deliveries))]
            await eventually(some_answered, what="first answers")
            process.process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*burst)
        exit_code = await asyncio.to_thread(process.process.wait, 30)
    finally:
        process.stop()
    assert exit_code == 0, process.log_tail()
    accepted = {
        resource_key(events[index].topic, store.domain, events[index].payload).encode()
        for index, status in results
        if status == 200
    }
    assert accepted, "some deliveries were answered before the stop"
    assert {status for _, status in results} <= {200, 503, 599}  # 599: no longer listening
    async with TopicReader(bootstrap, "shopify.webhooks", accepted) as reader:
        await reader.until(lambda r: {x.key for x in r} >= accepted, "every 200 in Kafka")


async def test_connects_once_the_broker_comes_up(stack: StackState, tmp_path: Path) -> None:
    """Not ready (503) while no broker answers; ready and accepting once one does."""
    broker_port = free_port()
    env = {**stack.env, "CARTLOOM_BROKER_URL": f"kafka://127.0.0.1:{broker_port}"}
    process = start_ingress(env, tmp_path, "early-ingress", SHOPIFY_RECEIVER_ENV)
    broker = None
    try:
        async with aiohttp.ClientSession() as http:

            async def readiness() -> int | None:
                try:
                    async with http.get(f"{process.url}/readyz") as response:
                        return response.status
                except aiohttp.ClientError:
                    return None

            assert await eventually(readiness, what="ingress listening") == 503
            broker = spawn("late-broker", broker_argv(broker_port), tmp_path, broker_port)
            bootstrap = f"127.0.0.1:{broker_port}"

            async def broker_up() -> bool:
                try:
                    return await _broker_ready(broker_port)
                except Exception:
                    return False

            await eventually(broker_up, timeout=30, what="late broker")
            await apply_topics(
                KafkaConnection.plaintext(bootstrap), [load_topology().topic("shopify.webhooks")]
            )
            await eventually(lambda: _equals(readiness(), 200), timeout=30, what="ingress ready")
            store, _ = new_store("late")
            store.add_product("Late Tee", ["LATE-1"])
            delivery = signed(store.history[0], store.domain, SHOPIFY_SECRET)
            assert await post(http, f"{process.url}/webhooks/shopify", delivery) == 200
    finally:
        process.stop()
        if broker is not None:
            stop(broker)


async def _equals(status: Awaitable[int | None], expected: int) -> bool:
    return await status == expected


async def test_a_signed_body_re_posted_under_another_topic_or_shop_is_refused(
    stack: StackState, tmp_path: Path, bootstrap: str
) -> None:
    """Shopify signs the body only: the topic and shop headers must fit what was signed."""
    store, _ = new_store("bind")
    other, _ = new_store("other")
    env = {**SHOPIFY_RECEIVER_ENV, "CARTLOOM_SHOPIFY_SHOP_DOMAINS": store.domain.upper()}
    async with serving(start_ingress(stack.env, tmp_path, "bound", env)) as bound:
        store.add_product("Bound Tee", ["BIND-1"])
        order_id = store.place_order([("BIND-1", 1)])
        store.redact_customer([order_id])
        order = next(e for e in store.history if e.topic == "orders/create")
        redact = next(e for e in store.history if e.topic == "customers/redact")
        shop_redact = WebhookEvent(
            "shop/redact", {"shop_id": 1, "shop_domain": store.domain}, "ev-sr", order.triggered_at
        )

        def as_topic(event: WebhookEvent, topic: str) -> SignedDelivery:
            """The signed body of ``event``, its headers saying ``topic``."""
            good = signed(event, store.domain, SHOPIFY_SECRET)
            return SignedDelivery(good.body, {**good.headers, "X-Shopify-Topic": topic})

        def as_shop(event: WebhookEvent, shop: str) -> SignedDelivery:
            good = signed(event, store.domain, SHOPIFY_SECRET)
            return SignedDelivery(good.body, {**good.headers, "X-Shopify-Shop-Domain": shop})

        cases = [
            (as_topic(order, "shop/redact"), 400),  # an order's body as the shop's erasure
            (as_topic(order, "customers/redact"), 400),
            (as_topic(redact, "shop/redact"), 400),  # one customer's erasure as the shop's
            (as_topic(order, "products/delete"), 400),
            (as_shop(order, other.domain), 401),  # a shop this deployment does not serve
            (as_shop(shop_redact, other.domain), 401),
            (signed(shop_redact, store.domain, SHOPIFY_SECRET), 200),  # the real one
            (signed(order, store.domain, SHOPIFY_SECRET), 200),
        ]
        async with aiohttp.ClientSession() as http:
            answers = [await post(http, f"{bound.url}/webhooks/shopify", d) for d, _ in cases]
            async with http.get(f"{bound.url}/metrics") as scrape:
                text = await scrape.text()
    assert answers == [status for _, status in cases]
    counted = {
        outcome: sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cartloom_shopify_webhooks_received_total{")
            and f'outcome="{outcome}"' in line
        )
        for outcome in ("mismatched", "foreign_shop", "accepted")
    }
    assert counted == {"mismatched": 4, "foreign_shop": 2, "accepted": 2}
    # Only the two real deliveries reached Kafka: nothing for the other shop, and the
    # shop's key got the real erasure alone.
    shop_key = f"{store.domain}/shop".encode()
    order_key = resource_key("orders/create", store.domain, order.payload).encode()
    foreign = {
        f"{other.domain}/shop".encode(),
        resource_key("orders/create", other.domain, order.payload).encode(),
    }
    async with TopicReader(
        bootstrap, "shopify.webhooks", {shop_key, order_key, *foreign}
    ) as reader:
        records = await reader.until(lambda r: len(r) >= 2, "the two real deliveries")
        await reader.poll()
    assert sorted((r.key, dict(r.headers)["x-shopify-topic"]) for r in records) == sorted(
        [(shop_key, b"shop/redact"), (order_key, b"orders/create")]
    )


async def _open(port: int, first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client connection that sends ``first_bytes`` and then nothing more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def test_slow_and_surplus_clients_do_not_hold_the_receiver(
    stack: StackState, tmp_path: Path
) -> None:
    """Slow senders are cut at their deadline, a flood past the cap is refused at once,
    and every delivery from a well-behaved sender is answered meanwhile."""
    env = {
        **SHOPIFY_RECEIVER_ENV,
        "CARTLOOM_WEB_HEADER_TIMEOUT_SECONDS": "2",
        "CARTLOOM_SHOPIFY_WEBHOOK_BODY_TIMEOUT_SECONDS": "2",
        "CARTLOOM_WEB_MAX_CONNECTIONS": "40",
    }
    store, _ = new_store("slow")
    store.add_product("Slow Tee", ["SLOW-1"])
    async with serving(start_ingress(stack.env, tmp_path, "guarded", env)) as guarded:
        # 20 clients stop half-way through their request head, 5 half-way through a body.
        head = b"POST /webhooks/shopify HTTP/1.1\r\nHost: cartloom\r\nX-Shopify-Top"
        body_head = (
            b"POST /webhooks/shopify HTTP/1.1\r\nHost: cartloom\r\n"
            b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"id": 1'
        )
        slow_heads = [await _open(guarded.port, head) for _ in range(20)]
        slow_bodies = [await _open(guarded.port, body_head) for _ in range(5)]
        async with aiohttp.ClientSession() as http:
            # Well-behaved deliveries are answered while the slow clients hold their sockets.
            delivery = signed(store.history[0], store.domain, SHOPIFY_SECRET)
            answers = [
                await post(http, f"{guarded.url}/webhooks/shopify", delivery) for _ in range(5)
            ]
            assert answers == [200] * 5
            # 25 slow + the session's 1 = 26 open; 20 more pass the cap of 40 by 6.
            flood = [await _open(guarded.port, b"") for _ in range(20)]

            firsts = await first_answers(flood)
            answered = [first for first in firsts if first is not None]
            assert all(first.startswith(b"HTTP/1.1 503") for first in answered), answered
            refused = len(answered)
            assert refused >= 5
            # Past the deadline the server has closed the silent heads (EOF, no answer)
            # and answered the slow bodies 408.
            for reader, _ in slow_heads:
                assert await asyncio.wait_for(reader.read(), timeout=10) == b""
            for reader, _ in slow_bodies:
                answer = await asyncio.wait_for(reader.read(), timeout=10)
                assert answer.startswith(b"HTTP/1.1 408"), answer
            assert await post(http, f"{guarded.url}/webhooks/shopify", delivery) == 200
            async with http.get(f"{guarded.url}/metrics") as scrape:
                text = await scrape.text()
        for _, writer in [*slow_heads, *slow_bodies, *flood]:
            writer.close()
    assert f'cartloom_http_connections_refused_total{{server="ingress"}} {float(refused)}' in text
    assert 'outcome="slow",topic="other"} 5.0' in text
