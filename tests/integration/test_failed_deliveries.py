"""A send the broker refuses never lets offsets move past the record it was made from.

A private broker behind :class:`~tests.integration.kafka_proxy.SizeLimitingProxy` refuses
record batches over a topic's limit, as Apache Kafka does; the tests lower one topic's
limit so that a send to it fails, and check what the sender did with its offsets.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cartloom.core.topology import load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.stack import StackState
from tests.harness import eventually, run_cartloom, serving, start_worker
from tests.integration.kafka_proxy import SizedBroker, sized_broker
from tests.integration.saga_helpers import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SizedBroker]:
    """A broker of the test's own: what one test leaves in a topic, the other does not read."""
    async with sized_broker(tmp_path_factory.mktemp("failing-broker")) as started:
        await apply_topics(
            KafkaConnection.plaintext(started.bootstrap), load_topology().all_topics("cartloom")
        )
        yield started


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition of ``topic`` (None: nothing committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


def cartloom(stack_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cartloom(stack_dir, env, *args)


async def test_dlq_replay_commits_nothing_and_fails_when_a_record_is_refused(
    broker: SizedBroker, stack: StackState, tmp_path: Path
) -> None:
    env = broker.env(stack.env)
    letters = [(f"replay-{n}".encode(), orjson.dumps({"pad": "p" * 600, "n": n})) for n in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in letters:
            headers = [("cartloom-reason", b"processing_error")]
            await producer.send_and_wait("orders.dlq", value, key=key, headers=headers)
    finally:
        await producer.stop()

    broker.proxy.limits["orders"] = 500  # every record sent back is over the limit
    try:
        refused = await asyncio.to_thread(cartloom, tmp_path, env, "dlq", "replay", "orders")
    finally:
        del broker.proxy.limits["orders"]
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "not committed" in refused.stderr and "MessageSizeTooLarge" in refused.stderr
    assert set(
        (await committed(broker.bootstrap, "cartloom-dlq-replay", "orders.dlq")).values()
    ) == {None}, "nothing committed: the next run sends them again"
    assert not await read_topic(broker.bootstrap, "orders")

    done = await asyncio.to_thread(cartloom, tmp_path, env, "dlq", "replay", "orders")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 3 record(s)" in done.stdout
    assert sorted((r.key, r.value) for r in await read_topic(broker.bootstrap, "orders")) == letters
    offsets = await committed(broker.bootstrap, "cartloom-dlq-replay", "orders.dlq")
    assert sum(o or 0 for o in offsets.values()) == len(letters)


async def test_the_intake_stops_the_worker_and_commits_nothing_when_a_dead_letter_is_refused(
    broker: SizedBroker, stack: StackState, tmp_path: Path
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    broker.proxy.limits["orders.dlq"] = 50  # the dead letter below cannot be written
    try:
        started = start_worker(
            broker.env(stack.env), tmp_path, "worker", {"CARTLOOM_SINKS_ENABLED": "false"}
        )
        async with serving(started) as worker:
            poison = b'{"order_id": "unwritable", "this is": not JSON at all, padded to be long}'
            sent = await producer.send_and_wait("orders", poison, key=b"unwritable")

            async def exited() -> int | None:
                return worker.process.poll()

            code = await eventually(exited, timeout=120, what="the worker stopped")
            assert code != 0
            log = worker.log.read_text(errors="replace")
            assert "order intake stopped, nothing committed" in log
            assert "MessageSizeTooLarge" in log
    finally:
        del broker.proxy.limits["orders.dlq"]
        await producer.stop()
    offsets = await committed(broker.bootstrap, "cartloom-intake", "orders")
    assert (offsets[sent.partition] or 0) <= sent.offset, "not committed past the record"
    assert not await read_topic(broker.bootstrap, "orders.dlq")
