"""The receiver answers 503 (within Shopify's 5 s budget) when Kafka cannot take a delivery.

Runs the receiver against a private Tansu broker of its own, so stopping that broker does
not disturb the session's stack.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import RawTestServer
from pydantic import SecretStr

from cartloom.core.topology import load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.shopify.ingress import Ingress
from cartloom.shopify.receiver import KafkaEnqueuer, WebhookReceiver
from cartloom.shopify.signatures import SignatureVerifier
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.processes import ServerProcess, free_port, spawn, stop
from devstack.shopify_store import SimulatedStore
from devstack.stack import _broker_ready, broker_argv
from devstack.webhook_deliveries import post, signed
from tests.harness import eventually

pytestmark = pytest.mark.integration

SECRET = "whsec-unavailable"


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, str]]:
    port = free_port()
    server = spawn("private-broker", broker_argv(port), tmp_path, port)

    async def ready() -> bool:
        try:
            return await _broker_ready(port)
        except Exception:
            return False

    try:
        await eventually(ready, timeout=30, what="private broker")
        bootstrap = f"127.0.0.1:{port}"
        spec = load_topology().topic("shopify.webhooks")
        await apply_topics(KafkaConnection.plaintext(bootstrap), [spec])
        yield server, bootstrap
    finally:
        stop(server)


async def test_503_when_the_broker_is_gone_and_200_while_it_is_up(
    private_broker: tuple[ServerProcess, str],
) -> None:
    server, bootstrap = private_broker
    receiver = WebhookReceiver(
        SignatureVerifier([SecretStr(SECRET)]),
        KafkaEnqueuer(KafkaConnection.plaintext(bootstrap), linger_ms=5, timeout=2.0),
        max_bytes=1_048_576,
    )
    store = SimulatedStore()
    store.add_product("Outage Tee", ["OUT-1"])
    await receiver.enqueuer.start()
    try:
        async with RawTestServer(Ingress(receiver)) as web, aiohttp.ClientSession() as http:
            url = str(web.make_url("/webhooks/shopify"))
            assert await post(http, url, signed(store.history[0], store.domain, SECRET)) == 200
            stop(server)
            started = time.monotonic()
            status = await post(http, url, signed(store.history[1], store.domain, SECRET))
            elapsed = time.monotonic() - started
    finally:
        await receiver.enqueuer.stop()
    assert status == 503
    assert elapsed < 5.0


async def test_503_before_the_producer_has_started() -> None:
    receiver = WebhookReceiver(
        SignatureVerifier([SecretStr(SECRET)]),
        KafkaEnqueuer(
            KafkaConnection.plaintext(f"127.0.0.1:{free_port()}"), linger_ms=5, timeout=1.0
        ),
        max_bytes=1_048_576,
    )
    store = SimulatedStore()
    store.add_product("Early Tee", ["EARLY-1"])
    # the producer never starts, as in a worker still booting
    async with RawTestServer(Ingress(receiver)) as web, aiohttp.ClientSession() as http:
        url = str(web.make_url("/webhooks/shopify"))
        assert await post(http, url, signed(store.history[0], store.domain, SECRET)) == 503
