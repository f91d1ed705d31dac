"""Kafka's default partitioner: which partition a key lands on, as every producer decides.

The receiver and the agents choose partitions themselves (they build record batches per
partition), the live queries route to the owner of a key's partition, and both must
agree with what any Kafka client (Java's, aiokafka's) does with the same key: murmur2
of the key bytes, seed ``0x9747b28c``, sign bit cleared, modulo the partition count.
aiokafka's murmur2 is pure Python (about 7 µs a key, a real share of a webhook's cost);
``murmurhash2`` computes the same hash natively. A unit test holds the two equal.
"""

from __future__ import annotations

from murmurhash2 import murmurhash2

#: The seed of Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``).
KAFKA_MURMUR2_SEED = 0x9747B28C


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives ``key``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % partitions
