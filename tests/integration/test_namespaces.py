"""Two CartLooms on one Kafka, Redis and DynamoDB (``CARTLOOM_NAMESPACE``) never cross.

Each deployment gets its own topics (``{namespace}.orders`` ...), consumer groups and
changelogs (app id ``{namespace}-cartloom``), Redis keys (``{namespace}:cartloom:...``) and
DynamoDB tables (``{namespace}-cartloom-...``). Both are sent the same orders for the same
SKU names with different stock: each must answer from its own stock only. Before
namespaces, the saga's internal topics were shared, so one deployment's stock agent
answered the other's reserve commands.

The session's shared broker and stores are used on purpose: the plain-named deployment
beside them must not see any of it either.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, run_cartloom, start_worker, wait_ready
from tests.integration.saga_helpers import now_iso, order_message, read_topic

pytestmark = pytest.mark.integration

#: Units of the shared SKU each deployment holds; both get the same three orders of one unit.
STOCK = {"north": 5, "south": 1}
ORDERS = 3


def namespaces() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {region: f"{region}{tag}" for region in STOCK}


def cli(stack: StackState, stack_dir: Path, namespace: str, *args: str) -> str:
    """``cartloom ARGS`` as an operator runs it for ``namespace``."""
    done = run_cartloom(stack_dir, {**stack.env, "CARTLOOM_NAMESPACE": namespace}, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def spaces() -> dict[str, str]:
    return namespaces()


@pytest.fixture(scope="module")
async def deployments(
    stack: StackState, stack_dir: Path, spaces: dict[str, str]
) -> AsyncIterator[dict[str, WorkerProcess]]:
    """One worker per namespace, each with its DynamoDB tables created by the CLI."""
    started: dict[str, WorkerProcess] = {}
    try:
        for region, namespace in spaces.items():
            cli(stack, stack_dir, namespace, "dynamodb", "create-tables")
            env = {"CARTLOOM_NAMESPACE": namespace}
            started[region] = start_worker(stack.env, stack_dir, namespace, extra_env=env)
        for worker in started.values():
            await wait_ready(worker)
        yield started
    finally:
        for worker in started.values():
            worker.stop()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_two_namespaces_run_the_same_orders_without_crossing(
    deployments: dict[str, WorkerProcess],
    spaces: dict[str, str],
    producer: AIOKafkaProducer,
    redis: Redis,
    dynamodb: Any,
    bootstrap: str,
) -> None:
    tag = uuid.uuid4().hex[:6]
    sku = f"SHARED-{tag}"
    order_ids = [f"same-{tag}-{n}" for n in range(ORDERS)]
    for region, namespace in spaces.items():
        level = {"sku": sku, "on_hand": STOCK[region], "updated_at": now_iso()}
        await producer.send_and_wait(
            f"{namespace}.inventory", orjson.dumps(level), key=sku.encode()
        )

    async def stocked() -> bool:
        for region, worker in deployments.items():
            status, body = await get_json(f"{worker.url}/inventory/{sku}")
            if status != 200 or body["on_hand"] != STOCK[region]:
                return False
        return True

    await eventually(stocked, timeout=120, what="each deployment's own stock level")
    for namespace in spaces.values():
        for order_id in order_ids:
            value = orjson.dumps(order_message(order_id, [(sku, 1)]))
            await producer.send_and_wait(f"{namespace}.orders", value, key=order_id.encode())

    async def decided(worker: WorkerProcess) -> list[str] | None:
        statuses = []
        for order_id in order_ids:
            status, body = await get_json(f"{worker.url}/orders/{order_id}")
            if status != 200 or body["status"] not in {"reserved", "rejected"}:
                return None
            statuses.append(body["status"])
        return sorted(statuses)

    north = await eventually(lambda: decided(deployments["north"]), what="north's orders")
    south = await eventually(lambda: decided(deployments["south"]), what="south's orders")
    assert north == ["reserved"] * 3, "north had stock for every order"
    assert south == ["rejected", "rejected", "reserved"], "south had one unit"

    expected = {"north": (5, 3, 2), "south": (1, 1, 0)}
    for region, namespace in spaces.items():
        _, stock = await get_json(f"{deployments[region].url}/inventory/{sku}")
        assert (stock["on_hand"], stock["reserved"], stock["available"]) == expected[region]

        async def materialised(namespace: str = namespace, version: int = stock["version"]) -> bool:
            cached = await redis.hget(f"{namespace}:cartloom:inventory:{sku}", "version")
            item = (
                await dynamodb.get_item(
                    TableName=f"{namespace}-cartloom-inventory",
                    Key={"sku": {"S": sku}},
                    ConsistentRead=True,
                )
            ).get("Item")
            return (
                cached == str(version).encode()
                and item is not None
                and (item["version"]["N"] == str(version))
            )

        await eventually(materialised, what=f"{namespace}'s stock in its Redis keys and tables")

    # Nothing reached the plain-named deployment's topics or keys.
    assert await redis.exists(f"cartloom:inventory:{sku}") == 0
    plain = await read_topic(bootstrap, "inventory.commands")
    assert not [r for r in plain if r.key == sku.encode()], "a reserve on the shared topic"
    for namespace in spaces.values():
        commands = await read_topic(bootstrap, f"{namespace}.inventory.commands")
        assert [r for r in commands if r.key == sku.encode()], f"{namespace} reserved on its own"
