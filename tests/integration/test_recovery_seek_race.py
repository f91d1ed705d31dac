"""A rebalance that overtakes recovery's seek starts a new round; it does not stop the worker.

Faust's recovery reads each changelog partition's start offset, then seeks. A rebalance
landing in between adds its partitions to the round's sets with no offset yet (None) and
signals a new round; when the seek and the signal finish in the same turn of the event
loop, aiokafka's ``ValueError("Offset must be a positive integer")`` reached the worker
and stopped it (an unkilled worker, full-form SIGKILL series of 2026-12-04). Here a real
Faust app on CartLoom's consumer, with a table, on the real broker: the state that
rebalance leaves (the signal set, a partition without an offset) meets the seek.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.tables.recovery import RebalanceAgain, Recovery
from faust.types import TP

from cartloom.stream.faust_types import TunedConsumer
from tests.harness import eventually, in_process_app

pytestmark = pytest.mark.integration


async def test_a_seek_overtaken_by_a_rebalance_starts_a_new_round(
    bootstrap: str, producer: AIOKafkaProducer, tmp_path: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group = f"seek-race-{run}", f"seek-race-app-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, num_partitions=1, replication_factor=1)
                for name in (topic, f"{group}-counts-{run}-changelog")
            ]
        )
    finally:
        await admin.close()
    app = in_process_app(group, bootstrap, tmp_path, store="memory://")
    counts = app.Table(f"counts-{run}", default=int, partitions=1)

    @app.agent(app.topic(topic, key_type=str, value_type=str, partitions=1))
    async def count(stream: faust.StreamT[str]) -> None:
        async for value in stream:
            counts[value] += 1

    consumer = app.consumer
    assert isinstance(consumer, TunedConsumer)
    await app.start()
    try:
        recovery = app.tables.recovery
        await eventually(
            lambda: _true(recovery.completed.is_set()), timeout=60, what="first recovery"
        )
        changelog = TP(counts.changelog_topic.get_topic_name(), 0)
        recovery.signal_recovery_start.set()  # a rebalance signalled a new round...
        with pytest.raises(RebalanceAgain):  # ...while the old one seeks a partition it added
            await consumer.seek_wait({changelog: None})  # type: ignore[dict-item]

        # The worker carries on: the new round recovers and records are processed.
        await producer.send_and_wait(topic, key=b"k", value=b'"apples"', partition=0)
        await eventually(
            lambda: _true(counts.get("apples") == 1), timeout=60, what="a record counted"
        )
        assert not app._crashed.is_set()
    finally:
        await app.stop()


def test_faust_recovery_starts_a_new_round_on_rebalance_again() -> None:
    """Pins the private Faust behaviour the refusal relies on: recovery seeks through the
    consumer's ``seek_wait`` and answers ``RebalanceAgain`` with a new round."""
    assert "consumer.seek_wait(" in inspect.getsource(Recovery._seek_offsets)
    loop = inspect.getsource(Recovery._restart_recovery.fun)  # a mode ServiceTask
    assert "except RebalanceAgain" in loop
    assert "continue  # another rebalance started" in loop


async def _true(value: bool) -> bool:
    return value
