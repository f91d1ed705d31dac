"""docs/producers.md's examples, run as they stand against the real broker and a worker.

Each example is the fenced block after a ``<!-- producer-example: NAME -->`` marker. The
test substitutes the embedded broker's address for ``localhost:9092`` and nothing else,
runs the block (Python with this interpreter, kcat with bash), and then checks what a
producer needs to know worked: every message it published is valid against the topic's
published schema, sits on the partition Kafka's default partitioner (murmur2) gives its
key, and the worker answers ``GET /orders/{id}`` with the order ``paid`` and its units
reserved. The Java example cannot run here (no JVM Kafka client is installable); the
test only checks that the page says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from cartloom.core.partitioning import key_partition
from cartloom.core.topology import load_topology
from cartloom.domain.schemas import input_schemas
from cartloom.web.schema_files import CHECKOUT_DOC
from tests.harness import WorkerProcess, eventually
from tests.integration.examples import Example, marked_examples, run_example
from tests.integration.saga_helpers import read_topic

pytestmark = pytest.mark.integration

PLACEHOLDER = "localhost:9092"
TOPOLOGY = load_topology()
SCHEMAS = input_schemas()


def examples() -> dict[str, Example]:
    return marked_examples(CHECKOUT_DOC.read_text(), "producer-example")


#: What each tested example publishes: order id, SKU, units ordered.
PUBLISHES = {
    "aiokafka": ("web-1001", "MUG-RED", 2),
    "confluent-kafka": ("shop-2001", "TEE-M", 3),
    "kcat": ("pos-3001", "CAP-BLK", 1),
}


def test_the_page_has_the_four_examples_and_says_java_is_not_tested() -> None:
    found = examples()
    assert set(found) == {*PUBLISHES, "java"}
    assert found["java"].note.startswith("java (not tested") or "not tested" in found["java"].note
    assert "**Not tested**" in CHECKOUT_DOC.read_text()
    for name, (order_id, sku, _) in PUBLISHES.items():
        assert PLACEHOLDER in found[name].code, name
        assert order_id in found[name].code and sku in found[name].code, name


def run_producer_example(example: Example, bootstrap: str, cwd: Path) -> None:
    run_example(example, cwd, dict(os.environ), example.code.replace(PLACEHOLDER, bootstrap))


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def published(bootstrap: str, keys: dict[str, str]) -> dict[str, list[Any]]:
    """topic -> the records carrying that topic's key of ``keys``."""
    found = {}
    for topic, key in keys.items():
        records = await read_topic(bootstrap, topic)
        found[topic] = [r for r in records if r.key == key.encode()]
    return found


@pytest.mark.parametrize("name", sorted(PUBLISHES))
async def test_the_example_publishes_what_cartloom_expects_where_it_expects_it(
    name: str, worker: WorkerProcess, bootstrap: str, tmp_path: Path
) -> None:
    order_id, sku, quantity = PUBLISHES[name]
    run_producer_example(examples()[name], bootstrap, tmp_path)

    keys = {"inventory": sku, "orders": order_id, "order.events": order_id}
    records = await published(bootstrap, keys)
    for topic, found in records.items():
        assert len(found) == 1, (topic, found)
        record = found[0]
        value = json.loads(record.value)
        Draft202012Validator(
            SCHEMAS[topic], format_checker=Draft202012Validator.FORMAT_CHECKER
        ).validate(value)
        expected = key_partition(record.key, TOPOLOGY.topic(topic).partitions)
        assert record.partition == expected, f"{topic} {record.key!r}: not murmur2's partition"

    async def paid() -> bool:
        status, body = await get_json(f"{worker.url}/orders/{order_id}")
        return status == 200 and body["status"] == "paid"

    await eventually(paid, timeout=60, what=f"{order_id} paid on the worker")
    status, stock = await get_json(f"{worker.url}/inventory/{sku}")
    assert status == 200
    assert stock["reserved"] == quantity
    assert stock["available"] == stock["on_hand"] - quantity
