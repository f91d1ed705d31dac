"""The order intake's sorting of raw records: envelopes per partition, dead letters with reasons."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord

from cartloom.agents.batching import partition_for
from cartloom.agents.intake import IntakeBatch
from cartloom.domain.errors import RejectReason


def record(key: bytes | None, value: bytes | None, offset: int = 0, ts: int = 1_000) -> Any:
    return ConsumerRecord(
        topic="orders",
        partition=0,
        offset=offset,
        timestamp=ts,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def order(order_id: str) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "source": "pos",
            "created_at": "2026-11-25T10:00:00+00:00",
            "lines": [{"sku": "SKU-1", "quantity": 1}],
        }
    )


def test_valid_orders_are_grouped_by_the_partition_their_id_hashes_to() -> None:
    batch = IntakeBatch(partitions=8)
    ids = [f"o-{n}" for n in range(40)]
    for n, order_id in enumerate(ids):
        batch.add(record(order_id.encode(), order(order_id), offset=n, ts=1_000 + n))
    assert not batch.dead_letters
    for partition, orders in batch.envelopes.items():
        assert {partition_for(o["order_id"], 8) for o in orders} == {partition}
    assert sorted(o["order_id"] for orders in batch.envelopes.values() for o in orders) == sorted(
        ids
    )
    first = {partition_for(i, 8): 1_000 + n for n, i in reversed(list(enumerate(ids)))}
    assert batch.oldest == first  # each envelope carries its oldest order's time


def test_unusable_records_become_dead_letters_with_their_reason() -> None:
    batch = IntakeBatch(partitions=8)
    batch.add(record(b"o-1", b"{not json"))
    batch.add(record(b"o-2", None))
    batch.add(record(None, order("o-3")))
    batch.add(record(b"other", order("o-4")))
    batch.add(record(b"o-5", orjson.dumps({"order_id": "o-5", "lines": []})))
    reasons = [reason for _, reason, _ in batch.dead_letters]
    assert reasons == [
        RejectReason.INVALID_JSON,
        RejectReason.INVALID_JSON,
        RejectReason.KEY_MISMATCH,
        RejectReason.KEY_MISMATCH,
        RejectReason.INVALID_SCHEMA,
    ]
    assert batch.envelopes == {}
    assert batch.dead_letters[0][0].value == b"{not json"  # the original bytes, to replay
