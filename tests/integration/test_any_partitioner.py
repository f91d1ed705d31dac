"""Inputs from producers that partition their own way reach the partition their key owns.

librdkafka (confluent-kafka, kcat and most non-JVM clients) hashes keys with CRC32 by
default, Java's client and aiokafka with murmur2. CartLoom keeps a SKU's stock and an
order's view on the partition murmur2 gives them; before records on another partition were
forwarded, stock levels published with confluent-kafka's defaults landed beside nothing
the saga read: orders were rejected for want of stock that was there, and each worker
held its own copy of a SKU.

Two workers of one group on a broker of this module's own. Two sets of SKUs and orders,
each published with confluent-kafka: one at its defaults, one with
``partitioner=murmur2_random``. Both must end the same: every order reserved and then
paid, every SKU right through both workers' ``/inventory/{sku}``, and DynamoDB and Redis
holding exactly the version the table holds.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiobotocore.session import get_session
from confluent_kafka import Producer
from redis.asyncio import Redis

from cartloom.core.partitioning import key_partition
from cartloom.core.topology import load_topology
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, local_stack, start_worker, wait_ready
from tests.integration.saga_helpers import now_iso, order_message, read_topic

pytestmark = pytest.mark.integration

TOPOLOGY = load_topology(None)
SKUS_PER_SET = 24
ORDERS_PER_SET = 72
#: Each SKU: an absolute level, then an adjustment (forwarded adjustments must apply once).
LEVEL, DELTA = 10, 5
#: Each order takes one unit of two SKUs; every SKU ends with this many reserved.
RESERVED_PER_SKU = 2 * ORDERS_PER_SET // SKUS_PER_SET


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("partitioner-stack")


@pytest.fixture(scope="module")
def stack(stack_dir: Path) -> Iterator[StackState]:
    """A broker of this module's own: its two workers read every input topic."""
    with local_stack(stack_dir) as state:
        yield state


@pytest.fixture(scope="module")
def bootstrap(stack: StackState) -> str:
    return stack.env["CARTLOOM_BROKER_URL"].split("://", 1)[1]


@pytest.fixture(scope="module")
async def pair(stack: StackState, stack_dir: Path) -> AsyncIterator[list[WorkerProcess]]:
    """Two workers of the default app, sinks on, each owning some active partitions."""
    workers = [start_worker(stack.env, stack_dir, "part-1")]
    try:
        await wait_ready(workers[0])
        workers.append(start_worker(stack.env, stack_dir, "part-2"))
        await wait_ready(workers[1])

        async def split() -> bool:
            return all([await active_partitions(w) > 0 for w in workers])

        await eventually(split, timeout=120, what="both workers own active partitions")
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def active_partitions(worker: WorkerProcess) -> int:
    try:
        status, body = await get_json(f"{worker.url}/readyz")
    except aiohttp.ClientError:
        return 0
    return int(body["active_partitions"]) if status == 200 else 0


def publish(bootstrap: str, config: dict[str, str], messages: list[tuple[str, str, Any]]) -> None:
    """Publish ``(topic, key, value)`` with confluent-kafka at its defaults but ``config``."""
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for topic, key, value in messages:
        producer.produce(topic, orjson.dumps(value), key.encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "confluent-kafka did not deliver everything"
    assert not failures, failures


async def each_view(workers: list[WorkerProcess], path: str) -> list[tuple[int, Any]]:
    return [await get_json(f"{worker.url}{path}") for worker in workers]


async def forwarded(workers: list[WorkerProcess]) -> dict[str, float]:
    """``cartloom_inputs_forwarded_total`` per topic, summed over the workers."""
    totals: dict[str, float] = {}
    pattern = re.compile(r'^cartloom_inputs_forwarded_total\{topic="([^"]+)"\} (\S+)$', re.M)
    for worker in workers:
        async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as resp:
            text = await resp.text()
        for topic, value in pattern.findall(text):
            totals[topic] = totals.get(topic, 0.0) + float(value)
    return totals


class InputSet:
    """SKUs and orders of one run, published by one producer configuration."""

    def __init__(self, name: str, config: dict[str, str]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.config = name, config
        self.skus = [f"{name}-{tag}-sku-{n}" for n in range(SKUS_PER_SET)]
        self.orders = {
            f"{name}-{tag}-order-{n}": [
                self.skus[n % SKUS_PER_SET],
                self.skus[(n + 7) % SKUS_PER_SET],
            ]
            for n in range(ORDERS_PER_SET)
        }

    def stock(self) -> list[tuple[str, str, Any]]:
        levels = [
            ("inventory", s, {"sku": s, "on_hand": LEVEL, "updated_at": now_iso()})
            for s in self.skus
        ]
        deltas = [("inventory", s, {"sku": s, "delta": DELTA}) for s in self.skus]
        return levels + deltas

    def placed(self) -> list[tuple[str, str, Any]]:
        return [
            ("orders", order_id, order_message(order_id, [(sku, 1) for sku in skus]))
            for order_id, skus in self.orders.items()
        ]

    def paid(self) -> list[tuple[str, str, Any]]:
        return [
            ("order.events", order_id, {"order_id": order_id, "event": "paid", "at": now_iso()})
            for order_id in self.orders
        ]


async def statuses(workers: list[WorkerProcess], order_ids: list[str]) -> dict[str, set[str]]:
    """Each order's status as each worker answers it (a set: the workers must agree)."""
    found: dict[str, set[str]] = {}
    for order_id in order_ids:
        for status, body in await each_view(workers, f"/orders/{order_id}"):
            found.setdefault(order_id, set()).add(body["status"] if status == 200 else str(status))
    return found


async def run_set(inputs: InputSet, workers: list[WorkerProcess], bootstrap: str) -> dict[str, Any]:
    """Publish the set's stock, orders and payments; return how its SKUs and orders ended."""
    await asyncio.to_thread(publish, bootstrap, inputs.config, inputs.stock())

    async def stocked() -> bool:
        for sku in inputs.skus:
            for status, body in await each_view(workers, f"/inventory/{sku}"):
                if status != 200 or body["on_hand"] != LEVEL + DELTA:
                    return False
        return True

    await eventually(
        stocked, timeout=120, what=f"{inputs.name}: every SKU stocked, via both workers"
    )

    await asyncio.to_thread(publish, bootstrap, inputs.config, inputs.placed())

    async def reserved() -> dict[str, set[str]] | None:
        found = await statuses(workers, list(inputs.orders))
        return found if all(s == {"reserved"} for s in found.values()) else None

    await eventually(reserved, timeout=180, what=f"{inputs.name}: every order reserved")
    await asyncio.to_thread(publish, bootstrap, inputs.config, inputs.paid())

    async def paid() -> dict[str, set[str]] | None:
        found = await statuses(workers, list(inputs.orders))
        return found if all(s == {"paid"} for s in found.values()) else None

    await eventually(paid, timeout=180, what=f"{inputs.name}: every order paid")
    skus: dict[str, Any] = {}
    for sku in inputs.skus:
        answers = await each_view(workers, f"/inventory/{sku}")
        assert answers[0] == answers[1], f"{sku}: the workers disagree"
        skus[sku] = answers[0][1]
    return skus


async def stores_hold(stack: StackState, views: dict[str, Any]) -> None:
    """DynamoDB and Redis hold each SKU once, at the version the table holds."""
    env = stack.env
    redis = Redis.from_url(env["CARTLOOM_REDIS_URL"])
    session = get_session()
    try:
        async with session.create_client(
            "dynamodb",
            endpoint_url=env["CARTLOOM_DYNAMODB_ENDPOINT"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ) as dynamodb:

            async def landed() -> bool:
                for sku, view in views.items():
                    item = (
                        await dynamodb.get_item(
                            TableName="cartloom-inventory",
                            Key={"sku": {"S": sku}},
                            ConsistentRead=True,
                        )
                    ).get("Item")
                    cached = await redis.hgetall(f"cartloom:inventory:{sku}")
                    version = str(view["version"])
                    if item is None or item["version"]["N"] != version:
                        return False
                    if cached.get(b"version") != version.encode():
                        return False
                return True

            await eventually(landed, timeout=180, what="every SKU in DynamoDB and Redis")
    finally:
        await redis.aclose()


def murmur2_misses(records: list[Any], keys: set[str]) -> int:
    """How many of the records keyed by ``keys`` sit off the partition murmur2 gives them."""
    partitions = TOPOLOGY.topic("inventory").partitions
    return sum(
        1
        for r in records
        if r.key is not None
        and r.key.decode() in keys
        and r.partition != key_partition(r.key, partitions)
        and not any(name == "cartloom-forwarded-from" for name, _ in r.headers)
    )


async def test_default_confluent_kafka_producers_end_as_murmur2_ones(
    pair: list[WorkerProcess], stack: StackState, bootstrap: str
) -> None:
    murmur2 = InputSet("m2", {"partitioner": "murmur2_random"})
    librdkafka = InputSet("crc", {})  # confluent-kafka's default: consistent_random (CRC32)

    ended_m2 = await run_set(murmur2, pair, bootstrap)
    assert await forwarded(pair) == {}, "murmur2 producers need no hop"
    ended_crc = await run_set(librdkafka, pair, bootstrap)
    hops = await forwarded(pair)

    # The default producer really did put records elsewhere, and those were forwarded.
    inventory = await read_topic(bootstrap, "inventory")
    assert murmur2_misses(inventory, set(murmur2.skus)) == 0
    misplaced = murmur2_misses(inventory, set(librdkafka.skus))
    assert misplaced >= len(librdkafka.skus), "CRC32 placed most SKUs elsewhere"
    assert hops.get("inventory") == misplaced
    assert hops.get("order.events", 0) > 0

    def outcome(views: dict[str, Any]) -> list[tuple[int, int, int]]:
        return [(v["on_hand"], v["reserved"], v["available"]) for v in views.values()]

    expected = (LEVEL + DELTA, RESERVED_PER_SKU, LEVEL + DELTA - RESERVED_PER_SKU)
    assert outcome(ended_m2) == [expected] * SKUS_PER_SET
    assert outcome(ended_crc) == outcome(ended_m2)
    await stores_hold(stack, {**ended_m2, **ended_crc})
