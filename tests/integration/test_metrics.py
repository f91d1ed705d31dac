"""A real scrape of a running worker: Prometheus' own linter, Faust's and CartLoom's figures."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from cartloom.web.health import BrokerProbe
from devstack.processes import free_port
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")


async def scrape(worker: WorkerProcess) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def publish_order(producer: AIOKafkaProducer, order_id: str) -> None:
    body = {
        "order_id": order_id,
        "source": "pos",
        "created_at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": f"SKU-{order_id}", "quantity": 1}],
    }
    await producer.send_and_wait("orders", orjson.dumps(body), key=order_id.encode())


async def order_visible(worker: WorkerProcess, order_id: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/orders/{order_id}") as r:
        return r.status == 200


async def test_scrape_passes_promtool_and_carries_faust_and_cartloom_figures(
    worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    _, before = await scrape(worker)
    order_id = f"metrics-{uuid.uuid4().hex[:10]}"
    await publish_order(producer, order_id)
    await eventually(lambda: order_visible(worker, order_id), what="order processed")
    bad_key = f"metrics-bad-{uuid.uuid4().hex[:10]}"
    await producer.send_and_wait("orders", b"{not json", key=bad_key.encode())

    async def dead_lettered() -> str | None:
        _, text = await scrape(worker)
        dlq = value(text, "cartloom_dead_letters_total", topic="orders", reason="invalid_json")
        was = value(before, "cartloom_dead_letters_total", topic="orders", reason="invalid_json")
        return text if dlq > was else None

    text = await eventually(dead_lettered, what="DLQ counted")
    content_type, _ = await scrape(worker)

    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    assert PROMTOOL is not None, "promtool missing: run `sudo make test-tools` (system-deps.sh)"
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert lint.stdout.decode().strip() == ""  # no naming or unit complaints either

    # Faust's own sensor and CartLoom's metrics come out of one registry on one page.
    # Orders reach Faust as the intake's envelopes on orders.accepted.
    assert value(text, "faust_topic_messages_received_total", topic="orders.accepted") > value(
        before, "faust_topic_messages_received_total", topic="orders.accepted"
    )
    assert value(text, "faust_events_total") > value(before, "faust_events_total")
    assert value(text, "cartloom_event_delay_seconds_count", topic="orders.accepted") >= 1
    assert value(text, "cartloom_order_intake_records_total", outcome="accepted") > value(
        before, "cartloom_order_intake_records_total", outcome="accepted"
    )
    assert value(text, "cartloom_order_intake_records_total", outcome="dead_lettered") > value(
        before, "cartloom_order_intake_records_total", outcome="dead_lettered"
    )
    assert value(text, "cartloom_orders_received_total") > value(
        before, "cartloom_orders_received_total"
    )
    assert value(text, "cartloom_worker_ready") == 1
    assert value(text, "cartloom_worker_info", app_id="cartloom") == 1
    # Bounded labels: neither the order id nor its SKU became a label value.
    assert order_id not in text
    assert bad_key not in text
    # Every Faust latency is in seconds now, none in milliseconds.
    assert not [name for name, _ in samples(text) if name.endswith("_ms") or "_ms_" in name]


async def test_health_and_readiness_speak_kubernetes(worker: WorkerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker.url}/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        async with http.get(f"{worker.url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200
    assert body["ready"] is True
    assert body["recovered"] is True
    assert body["rebalancing"] is False
    assert body["rebalance_stuck"] is False
    assert body["broker_reachable"] is True
    assert body["active_partitions"] > 0  # the only worker of its group holds every partition


async def test_broker_probe_tells_a_live_broker_from_a_closed_port(stack: StackState) -> None:
    live = stack.env["CARTLOOM_BROKER_URL"].split("://", 1)[1]
    assert await BrokerProbe(live).reachable() is True
    assert await BrokerProbe(f"127.0.0.1:{free_port()}").reachable() is False
    # Any reachable bootstrap server is enough (a list with one dead entry first).
    assert await BrokerProbe(f"127.0.0.1:{free_port()},{live}").reachable() is True
