"""Pins the two private hops into Faust that the saga's input clocks read through.

:class:`cartloom.stream.clocks.InputClocks` reads the Kafka consumer inside Faust's consumer
thread (``Consumer._thread._consumer``, then aiokafka's public ``assignment``,
``highwater`` and ``last_poll_timestamp``) and the offset Faust sought each partition to
(``Consumer._committed_offset``). If a Faust or aiokafka upgrade moves either, these fail
before a worker decides deadlines on a clock it cannot read.
"""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaConsumer
from faust.types import TP

from cartloom.stream.app import app
from cartloom.stream.clocks import InputClocks


async def test_faust_remembers_the_offset_it_sought_each_partition_to() -> None:
    consumer = app.consumer
    tp = TP("order.events", 3)

    async def committed() -> dict[TP, int]:
        return {tp: 42}

    consumer.seek_to_committed = committed  # type: ignore[method-assign]  # the broker's answer
    try:
        await consumer.perform_seek()  # what Faust does once a partition is assigned
        assert consumer._committed_offset.get(tp) == 42
    finally:
        del consumer.seek_to_committed  # type: ignore[method-assign]
        consumer._committed_offset.pop(tp, None)


def test_the_kafka_consumer_lives_in_faust_consumer_thread() -> None:
    thread = app.consumer._thread
    assert "_consumer" in vars(type(thread)) or hasattr(thread, "_consumer")
    assert thread._consumer is None, "created when the worker starts the thread"
    created = inspect.signature(type(thread)._create_consumer).return_annotation
    assert "AIOKafkaConsumer" in str(created)
    for method in ("assignment", "highwater", "last_poll_timestamp"):
        assert callable(getattr(AIOKafkaConsumer, method))


def test_no_clock_before_the_worker_started_its_consumer() -> None:
    clocks = InputClocks(app, grace=1.0)
    tp = TP("order.events", 3)
    assert clocks.clock(tp) is None and not clocks.owns(tp)
