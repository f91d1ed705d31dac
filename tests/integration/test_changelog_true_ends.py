"""Recovery reads a changelog to its last record, whatever end the broker reports.

The embedded broker (Tansu 0.6) reports a partition's end as the base offset of its last
record batch plus one. A worker SIGKILLed between a changelog batch and its one-record
tail leaves such an end, and Faust's recovery stopped there: the next owner of the table
went on without its previous owner's last records. CartLoom's consumer reads the true
end (:func:`cartloom.stream.faust_types.read_true_ends`), which recovery uses for its highwaters.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from cartloom.stream.faust_types import read_true_ends

pytestmark = pytest.mark.integration


async def test_the_true_end_of_a_partition_ending_in_a_batch_of_several_records(
    bootstrap: str,
) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"ends-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    try:
        await (await producer.send(topic, b"first", partition=0))
        # Five records in one batch at the end of partition 0, as a changelog write makes.
        batch = producer.create_batch()
        for n in range(5):
            batch.append(key=f"k{n}".encode(), value=b"v", timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await probe.start()
    try:
        tp0 = TopicPartition(topic, 0)
        reported = (await probe.end_offsets([tp0]))[tp0]
        ends = await read_true_ends(probe, {TP(topic, 0): reported})
    finally:
        await probe.stop()
    print(f"reported end {reported}, true end {ends}")
    assert ends == {TP(topic, 0): 6}, f"reported {reported}, read {ends}"
