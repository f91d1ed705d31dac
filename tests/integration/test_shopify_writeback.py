"""Inventory write-back reaches the simulator exactly once per change, replays included;
a line it cannot push is set aside to shopify.writeback.dlq and never holds up the others.

Ledger entries are produced to a changelog topic of this test's own on the real broker;
the write-back runner consumes it and pushes compare-and-swap mutations over HTTP to the
simulator (which also fails a share of requests with 502); progress lives in a compacted
progress topic of the test's own, and a runner started later (a restarted worker) finds it
there, whatever happened to Redis meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from cartloom.core.topology import TopicSpec
from cartloom.ops.kafka_admin import apply_topics
from cartloom.shopify.admin_client import AdminClient
from cartloom.shopify.writeback import InventoryWriteback, WritebackRunner
from cartloom.shopify.writeback_progress import WritebackProgress
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.shopify_simulator import ShopSimulator
from devstack.shopify_store import SimulatedStore
from tests.harness import eventually
from tests.integration.saga_helpers import read_topic

pytestmark = pytest.mark.integration

TOKEN = "shpat_writeback"


def entry(order_id: str, sku: str, granted: int, released: int = 0) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "line": 0,
            "sku": sku,
            "requested": granted,
            "granted": granted,
            "committed": 0,
            "released": released,
            "outcome": "reserved",
        }
    )


def new_runner(
    bootstrap: str, consumer: AIOKafkaConsumer, client: AdminClient, progress: str, **options: Any
) -> WritebackRunner:
    """A runner as a freshly started worker has it: its progress known only to the topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    tracker = WritebackProgress(KafkaConnection.plaintext(bootstrap), producer, progress)
    return WritebackRunner(InventoryWriteback(client, tracker, None), consumer, producer, **options)


def ledger_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def changelog_and_progress(bootstrap: str, name: str, partitions: int) -> tuple[str, str]:
    """A ledger changelog and a progress topic of this test's own (both compacted)."""
    topic, progress = f"{name}-changelog", f"{name}-progress"
    await apply_topics(
        KafkaConnection.plaintext(bootstrap),
        [TopicSpec(t, partitions, 1, "compact", None) for t in (topic, progress)],
    )
    return topic, progress


async def run_once(
    bootstrap: str, topic: str, group: str, client: AdminClient, progress: str, done: Any
) -> None:
    runner = new_runner(bootstrap, ledger_consumer(bootstrap, topic, group), client, progress)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(done, timeout=60, what="write-back caught up")
    finally:
        runner.stop()
        await task


async def test_each_change_reaches_shopify_exactly_once(
    bootstrap: str, producer: AIOKafkaProducer, redis: Redis
) -> None:
    """Redeliveries, a release, a Redis that loses everything and a restarted runner replaying
    the whole changelog: Shopify sees each change once."""
    tag = uuid.uuid4().hex[:8]
    store = SimulatedStore(domain=f"wb-{tag}.myshopify.com")
    store.add_product("Write-back Tee", [f"WB1-{tag}", f"WB2-{tag}"], stock=10)
    sim = ShopSimulator(store, access_token=TOKEN, webhook_secret="s", error_share=0.3, seed=9)
    topic, progress = await changelog_and_progress(bootstrap, f"test-writeback-{tag}", 2)
    wb1, wb2 = f"WB1-{tag}", f"WB2-{tag}"
    changes = [
        (f"pos-{tag}-1#0", entry(f"pos-{tag}-1", wb1, 2)),
        (f"pos-{tag}-1#0", entry(f"pos-{tag}-1", wb1, 2)),  # redelivered: nothing new
        (f"pos-{tag}-2#0", entry(f"pos-{tag}-2", wb2, 3)),
        (f"shopify-{tag}#0", entry(f"shopify-{tag}", wb1, 5)),  # Shopify's own: not pushed
    ]
    for key, value in changes:
        await producer.send_and_wait(topic, value, key=key.encode())

    def available(sku: str) -> int:
        return int(store.items[store.item_for_sku(sku)]["available"])

    async with (
        TestServer(sim.app()) as server,
        AdminClient(str(server.make_url("")).rstrip("/"), TOKEN, "2025-10") as client,
    ):

        async def two_pushed() -> bool:
            return len(sim.adjustments) == 2

        await run_once(bootstrap, topic, f"wb-{tag}-a", client, progress, two_pushed)
        assert (available(wb1), available(wb2)) == (8, 7)

        # Redis loses everything (a restart without persistence): progress is not there.
        await redis.flushall()

        # the first order is cancelled: its units go back to Shopify, once
        await producer.send_and_wait(
            topic, entry(f"pos-{tag}-1", wb1, 2, released=2), key=f"pos-{tag}-1#0".encode()
        )

        async def three_pushed() -> bool:
            return len(sim.adjustments) == 3

        await run_once(bootstrap, topic, f"wb-{tag}-a", client, progress, three_pushed)
        assert (available(wb1), available(wb2)) == (10, 7)

        # a full replay of the changelog by a new runner (new group, fresh memory) changes
        # nothing: what was pushed is read back from the progress topic
        replay = ledger_consumer(bootstrap, topic, f"wb-{tag}-replay")
        runner = new_runner(bootstrap, replay, client, progress)
        task = asyncio.create_task(runner.run())

        async def replay_committed() -> bool:
            committed = [await replay.committed(tp) for tp in replay.assignment()]
            return bool(committed) and sum(c or 0 for c in committed) == 5

        try:
            await eventually(replay_committed, timeout=60, what="replay consumed")
        finally:
            runner.stop()
            await task
    assert len(sim.adjustments) == 3
    assert sorted(a["changes"][0]["delta"] for a in sim.adjustments) == [-3, -2, 2]
    assert (available(wb1), available(wb2)) == (10, 7)


async def test_a_request_whose_answer_was_lost_is_not_taken_twice_after_a_restart(
    bootstrap: str, producer: AIOKafkaProducer
) -> None:
    """The intent is in the progress topic before the mutation: a runner that died after
    Shopify applied it (answer lost) is followed by one that finds Shopify already there."""
    tag = uuid.uuid4().hex[:8]
    store = SimulatedStore(domain=f"wbl-{tag}.myshopify.com")
    store.add_product("Lost Answer Tee", [f"WBL-{tag}"], stock=10)
    sim = ShopSimulator(store, access_token=TOKEN, webhook_secret="s", seed=4)
    topic, progress = await changelog_and_progress(bootstrap, f"test-writeback-lost-{tag}", 1)
    key = f"pos-{tag}-1#0"
    await producer.send_and_wait(topic, entry(f"pos-{tag}-1", f"WBL-{tag}", 4), key=key.encode())
    async with (
        TestServer(sim.app()) as server,
        AdminClient(str(server.make_url("")).rstrip("/"), TOKEN, "2025-10") as client,
    ):
        consumer = ledger_consumer(bootstrap, topic, f"wbl-{tag}")
        first = new_runner(bootstrap, consumer, client, progress)
        died = asyncio.Event()
        real_set = first._writeback._set

        async def set_then_die(*args: Any) -> bool:
            await real_set(*args)  # Shopify applies it...
            died.set()
            raise asyncio.CancelledError  # ...and the worker dies before it hears so

        first._writeback._set = set_then_die  # type: ignore[method-assign]
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(died.wait(), timeout=60)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert len(sim.adjustments) == 1
        again = ledger_consumer(bootstrap, topic, f"wbl-{tag}")
        runner = new_runner(bootstrap, again, client, progress)
        task = asyncio.create_task(runner.run())

        async def settled() -> bool:
            offsets = [await again.committed(tp) for tp in again.assignment()]
            return offsets == [1]

        try:
            await eventually(settled, timeout=60, what="the entry settled")
        finally:
            runner.stop()
            await task
    assert len(sim.adjustments) == 1
    assert store.items[store.item_for_sku(f"WBL-{tag}")]["available"] == 6


async def writeback_letters(bootstrap: str, keys: set[bytes]) -> dict[bytes, dict[str, str]]:
    """The headers of the records of ``keys`` in shopify.writeback.dlq, by key."""
    return {
        record.key: {name: value.decode() for name, value in record.headers}
        for record in await read_topic(bootstrap, "shopify.writeback.dlq")
        if record.key in keys
    }


async def run_until_settled(
    bootstrap: str,
    topic: str,
    progress: str,
    client: AdminClient,
    sim: ShopSimulator,
    pushes: int,
    records: int,
) -> None:
    """Run a runner on ``topic`` until Shopify saw ``pushes`` and ``records`` are committed."""
    consumer = ledger_consumer(bootstrap, topic, f"wb-{topic}")
    runner = new_runner(
        bootstrap, consumer, client, progress, max_attempts=3, retry_base_seconds=0.05
    )
    task = asyncio.create_task(runner.run())
    try:

        async def later_pushed() -> bool:
            return len(sim.adjustments) == pushes

        await eventually(later_pushed, timeout=60, what="the later lines pushed")

        async def all_committed() -> bool:
            committed = [await consumer.committed(tp) for tp in consumer.assignment()]
            return bool(committed) and sum(c or 0 for c in committed) == records

        await eventually(all_committed, timeout=60, what="every record settled")
    finally:
        runner.stop()
        await task


async def poisoned_shop(
    bootstrap: str, producer: AIOKafkaProducer, first: list[tuple[str, bytes]], tag: str
) -> tuple[str, SimulatedStore, ShopSimulator, tuple[str, str], list[tuple[str, bytes]]]:
    """A shop stocking one SKU, and a one-partition changelog: ``first``, then 3 good lines.

    Returns the SKU, the shop, its simulator, (changelog, progress topic) and the good lines.
    """
    known = f"WBK-{tag}"
    store = SimulatedStore(domain=f"wb-{tag}.myshopify.com")
    store.add_product("Known Tee", [known], stock=10)
    sim = ShopSimulator(store, access_token=TOKEN, webhook_secret="s", seed=3)
    topics = await changelog_and_progress(bootstrap, f"test-writeback-poison-{tag}", 1)
    later = [(f"pos-{tag}-{n}#0", entry(f"pos-{tag}-{n}", known, 2)) for n in range(3)]
    for key, value in [*first, *later]:
        await producer.send_and_wait(topics[0], value, key=key.encode())
    return known, store, sim, topics, later


async def test_an_unknown_sku_is_set_aside_after_its_attempts_and_later_lines_go_on(
    bootstrap: str, producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:8]
    unknown_key = f"pos-{tag}-u#0"
    first = [(unknown_key, entry(f"pos-{tag}-u", f"NO-SUCH-SKU-{tag}", 1))]
    known, store, sim, (topic, progress), later = await poisoned_shop(
        bootstrap, producer, first, tag
    )
    async with (
        TestServer(sim.app()) as server,
        AdminClient(str(server.make_url("")).rstrip("/"), TOKEN, "2025-10") as client,
    ):
        settled = (sim, len(later), len(first + later))
        await run_until_settled(bootstrap, topic, progress, client, *settled)
    assert store.items[store.item_for_sku(known)]["available"] == 10 - 2 * len(later)
    letters = await writeback_letters(bootstrap, {unknown_key.encode()})
    headers = letters[unknown_key.encode()]
    assert headers["cartloom-reason"] == "unknown_sku"
    assert "3 attempts" in headers["cartloom-detail"]
    assert headers["cartloom-origin-topic"] == topic


async def test_an_unusable_record_and_unreadable_progress_are_set_aside_and_later_lines_go_on(
    bootstrap: str, producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:8]
    garbage_key, crashing_key = f"pos-{tag}-g#0", f"pos-{tag}-c#0"
    first = [
        (garbage_key, b"{not json"),
        (crashing_key, entry(f"pos-{tag}-c", f"WBK-{tag}", 1)),
    ]
    known, store, sim, (topic, progress), later = await poisoned_shop(
        bootstrap, producer, first, tag
    )
    # The line's progress record cannot be read: guessing "nothing pushed" could take its
    # units twice, so the line is set aside (a bug-like failure).
    await producer.send_and_wait(progress, b"not progress", key=crashing_key.encode(), partition=0)
    async with (
        TestServer(sim.app()) as server,
        AdminClient(str(server.make_url("")).rstrip("/"), TOKEN, "2025-10") as client,
    ):
        settled = (sim, len(later), len(first + later))
        await run_until_settled(bootstrap, topic, progress, client, *settled)
    assert store.items[store.item_for_sku(known)]["available"] == 10 - 2 * len(later)
    letters = await writeback_letters(bootstrap, {garbage_key.encode(), crashing_key.encode()})
    assert {k.decode(): h["cartloom-reason"] for k, h in letters.items()} == {
        garbage_key: "invalid_json",
        crashing_key: "processing_error",
    }
    assert "ValueError" in letters[crashing_key.encode()]["cartloom-detail"]
