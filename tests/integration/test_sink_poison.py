"""One bad key never stops a sink: it is set aside to sinks.dlq and the other keys go on.

The poison order is bad in both stores, each in its own way: its view is over DynamoDB's
400 KB item limit (moto refuses it with a ``ValidationException``, as DynamoDB does), and
its Redis key holds a plain string that some other writer put there, so the sink's script
gets ``WRONGTYPE`` for it every time. A record that is not JSON at all comes along too.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.core.redis_keys import RedisKeys
from cartloom.sinks.dynamodb import read_items
from cartloom.sinks.redis import read_views, redis_client
from devstack.stack import StackState
from tests.harness import eventually
from tests.integration.saga_helpers import read_topic
from tests.integration.sink_helpers import (
    Namespace,
    make_namespace,
    order_document,
    produce_changelog,
    running_sinks,
    sink_metric,
)

pytestmark = pytest.mark.integration

POISON = "poison-1"
GARBAGE = "garbage-1"


async def in_both_stores(ns: Namespace, dynamodb: Any, keys: list[str]) -> bool:
    redis = redis_client(ns.settings)
    try:
        cached = await read_views(redis, "orders", keys)
    finally:
        await redis.aclose()
    stored = await read_items(dynamodb, ns.settings, "orders", keys)
    return len(cached) == len(stored) == len(keys)


async def dead_letters(ns: Namespace) -> list[Any]:
    """This namespace's records in sinks.dlq (their origin is its own changelog)."""
    return [
        record
        for record in await read_topic(ns.settings.bootstrap_servers, "sinks.dlq")
        if dict(record.headers).get("cartloom-origin-topic") == ns.changelog.encode()
    ]


async def test_a_poison_key_is_set_aside_and_later_keys_reach_both_stores(
    stack: StackState, producer: AIOKafkaProducer, dynamodb: Any
) -> None:
    ns = await make_namespace(stack.env, redis_db=10, CARTLOOM_SINK_MAX_ATTEMPTS="3")
    redis = redis_client(ns.settings)
    try:
        await redis.set(RedisKeys().view("orders", POISON), "written by someone else")
    finally:
        await redis.aclose()
    poison = order_document(POISON, 1) | {"note": "x" * 450_000}
    before = [f"first-{n}" for n in range(20)]
    after = [f"later-{n}" for n in range(20)]
    dead_before = {
        store: sink_metric("cartloom_sink_dead_letters_total", store=store, reason=reason)
        for store, reason in (("dynamodb", "refused"), ("redis", "retries_exhausted"))
    }

    async with running_sinks(ns):
        await produce_changelog(
            producer, ns.changelog, [(POISON, poison), *((k, order_document(k, 1)) for k in before)]
        )
        await producer.send_and_wait(ns.changelog, b"{not json", key=GARBAGE.encode())
        await eventually(
            lambda: in_both_stores(ns, dynamodb, before), timeout=120, what="first keys stored"
        )
        # Written after the poison was met: they must not wait behind it.
        await produce_changelog(producer, ns.changelog, [(k, order_document(k, 1)) for k in after])
        await eventually(
            lambda: in_both_stores(ns, dynamodb, after), timeout=120, what="later keys stored"
        )

        async def four_letters() -> list[Any] | None:
            letters = await dead_letters(ns)
            return letters if len(letters) >= 4 else None

        letters = await eventually(four_letters, timeout=60, what="dead letters in sinks.dlq")

    def header(record: Any, name: str) -> str:
        return dict(record.headers)[name].decode()

    summary = sorted(
        (r.key.decode(), header(r, "cartloom-store"), header(r, "cartloom-reason")) for r in letters
    )
    assert summary == [
        (GARBAGE, "dynamodb", "invalid_json"),
        (GARBAGE, "redis", "invalid_json"),
        (POISON, "dynamodb", "refused"),
        (POISON, "redis", "retries_exhausted"),
    ]
    for record in letters:
        if record.key == POISON.encode():
            assert orjson.loads(record.value) == poison, "the changelog record, byte for byte"
    redis_letter = next(
        r for r in letters if r.key == POISON.encode() and header(r, "cartloom-store") == "redis"
    )
    assert "WRONGTYPE" in header(redis_letter, "cartloom-detail")
    assert "3 attempts" in header(redis_letter, "cartloom-detail")
    assert (
        sink_metric("cartloom_sink_dead_letters_total", store="dynamodb", reason="refused")
        == dead_before["dynamodb"] + 1
    )
    assert (
        sink_metric("cartloom_sink_dead_letters_total", store="redis", reason="retries_exhausted")
        == dead_before["redis"] + 1
    )
