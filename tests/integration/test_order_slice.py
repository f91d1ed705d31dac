"""The first slice end to end: orders topic -> table -> DynamoDB, Redis and the web view."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from tests.harness import WorkerProcess, eventually

pytestmark = pytest.mark.integration


def order(order_id: str, **overrides: Any) -> bytes:
    body = {
        "order_id": order_id,
        "source": "pos",
        "created_at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-B", "quantity": 1}],
        "currency": "EUR",
        "total_price": "30.00",
    }
    body.update(overrides)
    return orjson.dumps(body)


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def dynamodb_item(dynamodb: Any, order_id: str) -> dict[str, Any] | None:
    response = await dynamodb.get_item(
        TableName="cartloom-orders", Key={"order_id": {"S": order_id}}, ConsistentRead=True
    )
    return response.get("Item")


async def test_valid_order_reaches_table_dynamodb_redis_and_web(
    worker: WorkerProcess, producer: AIOKafkaProducer, redis: Redis, dynamodb: Any
) -> None:
    order_id = f"slice-{uuid.uuid4().hex[:10]}"
    await producer.send_and_wait("orders", order(order_id), key=order_id.encode())

    item = await eventually(lambda: dynamodb_item(dynamodb, order_id), what="DynamoDB item")
    assert item["version"] == {"N": "1"}
    assert item["status"] == {"S": "received"}
    assert orjson.loads(item["doc"]["S"])["lines"] == [
        {"sku": "SKU-A", "quantity": 2},
        {"sku": "SKU-B", "quantity": 1},
    ]

    cached = await eventually(lambda: redis.hgetall(f"cartloom:order:{order_id}"), what="Redis")
    assert cached[b"version"] == b"1"
    assert orjson.loads(cached[b"doc"])["status"] == "received"

    status, body = await get_json(f"{worker.url}/orders/{order_id}")
    assert status == 200
    assert body["order_id"] == order_id
    assert body["status"] == "received"
    assert body["version"] == 1
    assert body["history"][0]["status"] == "received"


async def test_duplicate_order_message_changes_nothing(
    worker: WorkerProcess, producer: AIOKafkaProducer, redis: Redis
) -> None:
    order_id = f"dup-{uuid.uuid4().hex[:10]}"
    await producer.send_and_wait("orders", order(order_id), key=order_id.encode())
    first = await eventually(lambda: redis.hget(f"cartloom:order:{order_id}", "doc"), what="Redis")
    changed = order(order_id, lines=[{"sku": "SKU-Z", "quantity": 9}])
    await producer.send_and_wait("orders", changed, key=order_id.encode())
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait("orders", order(marker), key=marker.encode())
    # The marker shares no partition guarantee; wait for it *and* for the duplicate's offset
    # to pass by checking the order again after the marker landed.
    await eventually(lambda: redis.hget(f"cartloom:order:{marker}", "doc"), what="marker")
    status, body = await get_json(f"{worker.url}/orders/{order_id}")
    assert status == 200
    assert body["version"] == 1
    assert body["lines"] == [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-B", "quantity": 1}]
    assert await redis.hget(f"cartloom:order:{order_id}", "doc") == first


async def test_unknown_order_is_404(worker: WorkerProcess) -> None:
    status, body = await get_json(f"{worker.url}/orders/no-such-order-{uuid.uuid4().hex}")
    assert status == 404
    assert body["error"] == "order not found"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("bad-json", b"{not json", "invalid_json"),
        ("no-lines", order("no-lines", lines=[]), "invalid_schema"),
        ("zero-qty", order("zero-qty", lines=[{"sku": "S", "quantity": 0}]), "invalid_schema"),
        ("naive-time", order("naive-time", created_at="2026-01-01T10:00:00"), "invalid_schema"),
        ("other-key", order("not-the-key"), "key_mismatch"),
    ],
)
async def test_invalid_order_goes_to_dlq_with_reason(
    worker: WorkerProcess,
    producer: AIOKafkaProducer,
    bootstrap: str,
    key: str,
    value: bytes,
    reason: str,
) -> None:
    unique_key = f"{key}-{uuid.uuid4().hex[:8]}"
    if key != "other-key" and key != "bad-json":
        value = value.replace(key.encode(), unique_key.encode())
    sent = await producer.send_and_wait("orders", value, key=unique_key.encode())

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.subscribe(["orders.dlq"])

        async def find() -> dict[str, bytes] | None:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == unique_key.encode():
                        return {**dict(record.headers), "value": record.value}
            return None

        found = await eventually(find, what=f"{unique_key} in orders.dlq")
    finally:
        await consumer.stop()
    assert found["cartloom-reason"] == reason.encode()
    assert found["cartloom-origin-topic"] == b"orders"
    assert found["cartloom-origin-partition"] == str(sent.partition).encode()
    assert found["cartloom-origin-offset"] == str(sent.offset).encode()
    assert found["value"] == value  # the original bytes, so it can be replayed
    status, _ = await get_json(f"{worker.url}/orders/{unique_key}")
    assert status == 404
