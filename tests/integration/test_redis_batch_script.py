"""The Redis sink's one script call per batch, on the stack's redis-server.

Each key in the batch is judged alone: a stale version is refused while newer ones in the
same call are written, a replacing change starts the key over, a deletion removes it, and
a key another writer filled with something else fails only its own change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings
from cartloom.sinks.base import PartialWrite, ViewChange
from cartloom.sinks.redis import RedisSink, read_views, redis_client
from devstack.stack import StackState
from tests.harness import settings_from_env
from tests.integration.sink_helpers import order_document

pytestmark = pytest.mark.integration

KEYS = RedisKeys()


@pytest.fixture
def settings(stack: StackState) -> Settings:
    redis_url = stack.env["CARTLOOM_REDIS_URL"].rsplit("/", 1)[0] + "/15"
    overrides = {"CARTLOOM_REDIS_URL": redis_url, "CARTLOOM_REDIS_CLOSED_ORDER_TTL_SECONDS": "600"}
    return settings_from_env({**stack.env, **overrides})


@pytest.fixture
async def sink(settings: Settings) -> AsyncIterator[RedisSink]:
    store = RedisSink(settings)
    await store.start()
    client = redis_client(settings)
    await client.flushdb()
    await client.aclose()
    try:
        yield store
    finally:
        await store.stop()


def order(key: str, version: int, status: str = "paid") -> ViewChange:
    return ViewChange("orders", key, version, order_document(key, version, status))


async def test_each_key_is_judged_alone_in_one_call(sink: RedisSink, settings: Settings) -> None:
    await sink.write([order("a", 5), order("b", 5), order("c", 5)])

    outcome = await sink.write(
        [
            order("a", 4),  # older: refused
            order("b", 6),  # newer: written
            ViewChange("orders", "c", 1, order_document("c", 1), replaces=True),
            ViewChange("orders", "gone", 0, None),  # nothing there to delete
            order("new", 1),
        ]
    )

    assert (outcome.written, outcome.stale, outcome.deleted) == (3, 1, 0)
    assert outcome.stale_keys == ["a"]
    client = redis_client(settings)
    try:
        views = await read_views(client, "orders", ["a", "b", "c", "new"])
        assert {key: view.version for key, view in views.items()} == {
            "a": 5,
            "b": 6,
            "c": 1,  # a replacing change takes the key whatever it held
            "new": 1,
        }
        assert views["b"].document == order_document("b", 6, "paid")
        deleted = await sink.write([ViewChange("orders", "b", 0, None)])
        assert deleted.deleted == 1
        assert await client.exists(KEYS.view("orders", "b")) == 0
    finally:
        await client.aclose()


async def test_closed_orders_expire_and_open_ones_are_kept(
    sink: RedisSink, settings: Settings
) -> None:
    await sink.write([order("closing", 1, "paid")])
    await sink.write([order("closing", 2, "cancelled"), order("open", 1, "paid")])
    client = redis_client(settings)
    try:
        assert 0 < await client.ttl(KEYS.view("orders", "closing")) <= 600
        assert await client.ttl(KEYS.view("orders", "open")) == -1  # no expiry
    finally:
        await client.aclose()


async def test_a_foreign_value_fails_its_own_change_and_the_rest_are_written(
    sink: RedisSink, settings: Settings
) -> None:
    client = redis_client(settings)
    try:
        await client.set(KEYS.view("orders", "string"), "written by someone else")
        await client.hset(KEYS.view("orders", "word"), "version", "seven")

        with pytest.raises(PartialWrite) as raised:
            await sink.write(
                [order("before", 1), order("string", 1), order("word", 1), order("after", 1)]
            )

        assert [change.key for change in raised.value.remaining] == ["string", "word"]
        assert "WRONGTYPE" in str(raised.value.errors[0])
        assert "not a number" in str(raised.value.errors[1])
        assert raised.value.outcome.written == 2
        views = await read_views(client, "orders", ["before", "after"])
        assert sorted(views) == ["after", "before"]
    finally:
        await client.aclose()
