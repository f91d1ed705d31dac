"""A record Faust hands out and then drops is processed, never committed over.

At a rebalance Faust can drop records it already handed out of the fetcher (``getmany``
stops on a new generation, ``flow_control.clear()`` empties the stream buffers) while the
client's fetch position has moved past them; its commit then bridges the hole, and the
record is lost (seen under SIGKILL: four orders committed over and never applied). Here a
real Faust app on CartLoom's consumer (:class:`cartloom.stream.faust_types.TunedConsumer`) runs
one agent over a one-partition topic on the real broker; the app's message callback
drops one record exactly as Faust does (after it was fetched, before any stream saw it).
The group must not commit past it, and the record must still be processed.

It also pins the private Faust attributes the consumer relies on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from cartloom.core.metrics import INPUT_REREADS
from cartloom.stream.batching import in_offset_order
from cartloom.stream.faust_types import IDLE_PATIENCE_SECONDS, TunedConsumer
from tests.harness import eventually, in_process_app

pytestmark = pytest.mark.integration

RECORDS = 20
DROPPED = 12


async def committed(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> int:
    found = await admin.list_consumer_group_offsets(group, partitions=[tp])
    meta = found.get(tp)
    return meta.offset if meta is not None and meta.offset >= 0 else 0


@pytest.fixture
async def admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    yield client
    await client.close()


def recording_app(
    bootstrap: str, tmp_path: Any, topic: str, group: str
) -> tuple[Any, TunedConsumer, list[int]]:
    """A real Faust app on CartLoom's consumer whose one agent records each offset it runs."""
    app = in_process_app(group, bootstrap, tmp_path, store="memory://", broker_commit_interval=0.2)
    processed: list[int] = []

    @app.agent(app.topic(topic, key_serializer="raw", value_serializer="raw"))
    async def record_offsets(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            processed.append(event.message.offset)

    consumer = app.consumer
    assert isinstance(consumer, TunedConsumer)
    return app, consumer, processed


def drop_record_once(consumer: TunedConsumer) -> list[int]:
    """Make the app's message callback drop record ``DROPPED`` once; the offsets dropped.

    What Faust does to a record it fetched when a rebalance clears the buffers: after it
    was fetched, before any stream saw it.
    """
    deliver = consumer.callback
    dropped: list[int] = []

    async def drop_once(message: Any) -> None:
        if message.offset == DROPPED and not dropped:
            dropped.append(message.offset)
            return
        await deliver(message)

    consumer.callback = drop_once
    return dropped


async def send_records(producer: AIOKafkaProducer, topic: str, numbers: range) -> None:
    for n in numbers:
        await producer.send_and_wait(topic, key=b"k", value=f"r{n}".encode(), partition=0)


async def test_a_dropped_record_is_read_again_and_never_committed_over(
    bootstrap: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient, tmp_path: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group = f"commit-{run}", f"commit-app-{run}"
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    tp = TopicPartition(topic, 0)

    app, consumer, processed = recording_app(bootstrap, tmp_path, topic, group)
    dropped = drop_record_once(consumer)
    await send_records(producer, topic, range(RECORDS))

    async def last_processed() -> bool:
        return bool(dropped) and max(processed, default=-1) == RECORDS - 1

    await app.start()
    try:
        # The records after the dropped one are processed and acknowledged...
        await eventually(last_processed, timeout=60, what="the records after the dropped one")

        # ...and for as long as the dropped one has not run, nothing commits past it.
        async def dropped_one_processed_and_never_committed_over() -> bool:
            # The commit is read first: once the dropped record has run, a commit past it
            # is right, so only one read before it ran must not be past it.
            done = await committed(admin, group, tp)
            if DROPPED in processed:
                return True
            assert done <= DROPPED, "committed over the drop"
            return False

        await eventually(
            dropped_one_processed_and_never_committed_over, timeout=60, what="the re-read"
        )
        await eventually(
            lambda: committed_at_end(admin, group, tp), timeout=30, what="commit to the end"
        )
        assert sorted(set(processed)) == list(range(RECORDS))
        await an_idle_partition_is_not_probed(consumer)
        pinned_private_faust_attributes(consumer, tp)
        # Recovery's highwaters come from the records (see test_changelog_true_ends).
        assert await consumer.highwaters(TP(topic, 0)) == {TP(topic, 0): RECORDS}
    finally:
        await app.stop()


async def an_idle_partition_is_not_probed(consumer: TunedConsumer) -> None:
    """After a seek (as at the end of every recovery) a partition read to its end is left alone.

    Faust's seek sets its read offset to the offset to read next, which made every idle
    partition look stalled behind a handed-out record: each was probed for seconds, again
    and again, in every worker (seen in the full-scale SIGKILL runs as a stall check taking
    10-16 s a round).
    """
    probes: list[tuple[TP, int]] = []
    probe = consumer._first_offset_from

    async def recorded(tp: TP, offset: int) -> int | None:
        probes.append((tp, offset))
        return await probe(tp, offset)

    consumer._first_offset_from = recorded  # type: ignore[method-assign]
    await consumer.perform_seek()
    started = time.monotonic()
    for later in (0.0, 10.0, 20.0, 30.0):  # past the patience, several times
        await consumer.look_again_at_stalled_partitions(now=started + later)
    assert probes == []


async def committed_at_end(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> bool:
    return await committed(admin, group, tp) == RECORDS


def pinned_private_faust_attributes(consumer: TunedConsumer, tp: TopicPartition) -> None:
    """The Faust internals TunedConsumer reads and overrides still exist and mean the same."""
    for name in (
        "_acked",
        "_acked_index",
        "_committed_offset",
        "_read_offset",
        "_unacked_messages",
        "_paused_partitions",
    ):
        assert hasattr(consumer, name), name
    assert faust.transport.consumer.Consumer._new_offset is not TunedConsumer._new_offset
    assert faust.transport.consumer.Consumer._add_gap is not TunedConsumer._add_gap
    assert consumer._committed_offset[tp] == RECORDS


async def test_a_partition_the_fetcher_stopped_asking_for_is_fetched_again(
    bootstrap: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient, tmp_path: Any
) -> None:
    """Faust takes a partition out of those it fetches when its stream buffer fills, and puts
    it back when the buffer drains; a buffer cleared at a rebalance never says it drained.
    The partition is then never read again (seen in the zombie scenario: 200-odd orders on
    a partition nobody read). Faust's own ``on_buffer_full`` puts the partition in that state."""
    run = uuid.uuid4().hex[:8]
    topic, group = f"idle-{run}", f"idle-app-{run}"
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    tp = TopicPartition(topic, 0)
    app, consumer, processed = recording_app(bootstrap, tmp_path, topic, group)
    await send_records(producer, topic, range(5))
    await app.start()
    try:

        async def committed_to(offset: int) -> bool:
            return await committed(admin, group, tp) == offset

        await eventually(lambda: committed_to(5), timeout=60, what="the first five committed")
        faust_tp = TP(topic, 0)
        consumer.on_buffer_full(faust_tp)  # ...and the buffer's drain is never signalled
        assert faust_tp not in consumer._get_active_partitions()
        await send_records(producer, topic, range(5, 10))
        started = time.monotonic()
        await consumer.look_again_at_stalled_partitions(now=started)
        await consumer.look_again_at_stalled_partitions(now=started + IDLE_PATIENCE_SECONDS + 1)
        await eventually(lambda: committed_to(10), timeout=60, what="the five after fetched")
        assert sorted(set(processed)) == list(range(10))
        assert INPUT_REREADS.labels(topic, "idle")._value.get() == 1
        assert "_buffered_partitions" in vars(consumer)  # the private set the fix clears
    finally:
        await app.stop()


async def test_records_after_a_dropped_one_are_handled_only_after_it(
    bootstrap: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient, tmp_path: Any
) -> None:
    """The agents' batches hold a partition's records in offset order, none skipped.

    Handled past a dropped record, commands ran out of order: in the zombie scenario a
    new owner applied a SKU's commands 122-188 before 19-121 (docs/crash-safety.md). With
    :func:`cartloom.stream.batching.in_offset_order` the records after the drop are
    refused, unacknowledged, until the partition is read again from the dropped one.
    """
    run = uuid.uuid4().hex[:8]
    topic, group = f"order-{run}", f"order-app-{run}"
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    tp = TopicPartition(topic, 0)
    app = in_process_app(group, bootstrap, tmp_path, store="memory://", broker_commit_interval=0.2)
    consumer = app.consumer
    assert isinstance(consumer, TunedConsumer)
    handled: list[int] = []

    @app.agent(app.topic(topic, key_serializer="raw", value_serializer="raw"))
    async def handle_in_order(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(100, 0.05):
            handled.extend(e.message.offset for e in in_offset_order(batch, consumer, run))

    dropped = drop_record_once(consumer)
    await send_records(producer, topic, range(RECORDS))

    await app.start()
    try:
        await eventually(
            lambda: committed_at_end(admin, group, tp), timeout=60, what="commit to the end"
        )
        assert dropped == [DROPPED]
        assert handled == list(range(RECORDS))  # 12 before 13, each once
        assert consumer._committed_offset[tp] == RECORDS
    finally:
        await app.stop()
