"""``cartloom.sinks.read``: views from Redis, DynamoDB on a miss, a refill that never regresses."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from cartloom.ops.audit import run_audit
from cartloom.sinks.read import ViewReader
from cartloom.sinks.redis import redis_client
from devstack.processes import free_port
from devstack.stack import StackState
from tests.harness import eventually
from tests.integration.sink_helpers import (
    Namespace,
    make_namespace,
    order_document,
    produce_changelog,
    running_sinks,
    sink_metric,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def ns(stack: StackState, producer: AIOKafkaProducer) -> Namespace:
    namespace = await make_namespace(stack.env, redis_db=14)
    records: list[tuple[str, dict[str, Any] | None]] = [
        ("open-1", order_document("open-1", 2, status="paid")),
        ("closed-1", order_document("closed-1", 3, status="cancelled")),
    ]
    async with running_sinks(namespace):
        await produce_changelog(producer, namespace.changelog, records)

        async def clean() -> bool:
            report = await run_audit(namespace.settings, namespace.topology, strict=True)
            return not report.diverged

        await eventually(clean, timeout=180, what="views materialised")
    return namespace


async def test_cached_view_comes_from_redis(ns: Namespace) -> None:
    hits = sink_metric("cartloom_view_reads_total", entity="orders", source="redis")
    async with ViewReader(ns.settings) as reader:
        assert await reader.get("orders", "open-1") == order_document("open-1", 2, "paid")
    assert sink_metric("cartloom_view_reads_total", entity="orders", source="redis") == hits + 1


async def test_miss_falls_back_to_dynamodb_and_refills_redis_with_the_ttl_policy(
    ns: Namespace,
) -> None:
    redis = redis_client(ns.settings)
    try:
        await redis.delete("cartloom:order:open-1", "cartloom:order:closed-1")
        async with ViewReader(ns.settings) as reader:
            assert await reader.get("orders", "open-1") == order_document("open-1", 2, "paid")
            closed = await reader.get("orders", "closed-1")
        assert closed == order_document("closed-1", 3, "cancelled")
        assert await redis.hget("cartloom:order:open-1", "version") == b"2"
        assert await redis.ttl("cartloom:order:open-1") == -1  # open orders never expire
        ttl = await redis.ttl("cartloom:order:closed-1")
        assert 0 < ttl <= ns.settings.redis_closed_order_ttl_seconds
    finally:
        await redis.aclose()


async def test_refill_never_overwrites_a_newer_cached_view(ns: Namespace) -> None:
    redis = redis_client(ns.settings)
    try:
        newer = b'{"order_id": "open-1", "version": 9}'
        await redis.hset("cartloom:order:open-1", mapping={"version": 9, "doc": newer})
        async with ViewReader(ns.settings) as reader:
            # The race a refill can lose: it read v2 from DynamoDB while the sink wrote v9.
            older = await reader._from_dynamodb("orders", "open-1")
            assert older is not None
            assert older.version == 2
            await reader._put_back("orders", "open-1", older)
        assert await redis.hget("cartloom:order:open-1", "version") == b"9"
        await redis.delete("cartloom:order:open-1")
    finally:
        await redis.aclose()


async def test_unknown_key_is_none_and_unknown_entity_is_an_error(ns: Namespace) -> None:
    async with ViewReader(ns.settings) as reader:
        assert await reader.get("orders", "no-such-order") is None
        with pytest.raises(KeyError, match="unknown entity"):
            await reader.get("customers", "x")


async def test_redis_down_still_answers_from_dynamodb(ns: Namespace) -> None:
    unreachable = ns.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with ViewReader(unreachable) as reader:
        view = await reader.get("orders", "closed-1")
    assert view == order_document("closed-1", 3, "cancelled")
    assert sink_metric("cartloom_view_reads_total", entity="orders", source="redis_error") >= 1
