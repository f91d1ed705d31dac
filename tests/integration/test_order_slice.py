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


async def stock_up(producer: AIOKafkaProducer, **levels: int) -> None:
    """Absolute stock levels for SKUs only this test uses."""
    for sku, on_hand in levels.items():
        value = orjson.dumps({"sku": sku, "on_hand": on_hand})
        await producer.send_and_wait("inventory", value, key=sku.encode())


async def test_valid_order_reaches_table_dynamodb_redis_and_web(
    worker: WorkerProcess, producer: AIOKafkaProducer, redis: Redis, dynamodb: Any
) -> None:
    # Since the saga (issue 3) an order is received (v1) then reserved once every line
    # answered; the views end at the reserved version and keep the whole history.
    tag = uuid.uuid4().hex[:8]
    lines = [{"sku": f"A-{tag}", "quantity": 2}, {"sku": f"B-{tag}", "quantity": 1}]
    await stock_up(producer, **{f"A-{tag}": 5, f"B-{tag}": 5})
    order_id = f"slice-{tag}"
    await producer.send_and_wait("orders", order(order_id, lines=lines), key=order_id.encode())

    async def reserved_item() -> dict[str, Any] | None:
        item = await dynamodb_item(dynamodb, order_id)
        return item if item and item["status"] == {"S": "reserved"} else None

    item = await eventually(reserved_item, what="reserved order in DynamoDB")
    doc = orjson.loads(item["doc"]["S"])
    assert doc["lines"] == lines
    assert [h["status"] for h in doc["history"]] == ["received", "reserved"]
    version = int(item["version"]["N"])
    assert version >= 2

    async def cached_reserved() -> dict[bytes, bytes] | None:
        cached = await redis.hgetall(f"cartloom:order:{order_id}")
        return cached if cached.get(b"version") == str(version).encode() else None

    cached = await eventually(cached_reserved, what="Redis at the reserved version")
    assert orjson.loads(cached[b"doc"])["status"] == "reserved"

    status, body = await get_json(f"{worker.url}/orders/{order_id}")
    assert status == 200
    assert body["order_id"] == order_id
    assert body["status"] == "reserved"
    assert body["version"] == version
    assert body["history"][0]["status"] == "received"


async def test_duplicate_order_message_changes_nothing(
    worker: WorkerProcess, producer: AIOKafkaProducer, redis: Redis
) -> None:
    # With no stock for SKU-A the order ends rejected; a duplicate must not change that.
    order_id = f"dup-{uuid.uuid4().hex[:10]}"
    await producer.send_and_wait("orders", order(order_id), key=order_id.encode())

    async def settled() -> bytes | None:
        doc = await redis.hget(f"cartloom:order:{order_id}", "doc")
        return doc if doc and orjson.loads(doc)["status"] != "received" else None

    first = await eventually(settled, what="order settled in Redis")
    changed = order(order_id, lines=[{"sku": "SKU-Z", "quantity": 9}])
    await producer.send_and_wait("orders", changed, key=order_id.encode())
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait("orders", order(marker), key=marker.encode())
    # The marker shares no partition guarantee; wait for it *and* for the duplicate's offset
    # to pass by checking the order again after the marker landed.
    await eventually(lambda: redis.hget(f"cartloom:order:{marker}", "doc"), what="marker")
    status, body = await get_json(f"{worker.url}/orders/{order_id}")
    assert status == 200
    assert body["version"] == orjson.loads(first)["version"]
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
