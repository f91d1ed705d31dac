import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from cartloom.core.partitioning import key_partition


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=256))
def test_same_partition_as_aiokafkas_default_partitioner(key: bytes, partitions: int) -> None:
    assert key_partition(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions


def test_known_keys_of_the_java_client() -> None:
    # Kafka's own test vectors (UtilsTest.testMurmur2) as partition 0..2^31 of the hash.
    assert key_partition(b"21", 2**31) == (-973932308 & 0x7FFFFFFF)
    assert key_partition(b"foobar", 2**31) == (-790332482 & 0x7FFFFFFF)


def test_no_partitions_is_an_error() -> None:
    with pytest.raises(ValueError):
        key_partition(b"x", 0)
