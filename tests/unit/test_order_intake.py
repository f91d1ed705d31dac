"""The order intake's sorting of raw records: envelopes per partition, dead letters with reasons."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord

from cartloom.agents.intake import IntakeBatch
from cartloom.domain.errors import RejectReason
from cartloom.stream.batching import partition_for
from cartloom.stream.envelopes import ENVELOPE_MAX, ENVELOPE_MAX_BYTES


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


def order(order_id: str, customer_bytes: int = 0) -> bytes:
    body: dict[str, Any] = {
        "order_id": order_id,
        "source": "pos",
        "created_at": "2026-11-25T10:00:00+00:00",
        "lines": [{"sku": "SKU-1", "quantity": 1}],
    }
    if customer_bytes:
        body["customer"] = {"note": "x" * customer_bytes}
    return orjson.dumps(body)


def test_valid_orders_are_grouped_by_the_partition_their_id_hashes_to() -> None:
    batch = IntakeBatch(partitions=8)
    ids = [f"o-{n}" for n in range(40)]
    for n, order_id in enumerate(ids):
        batch.add(record(order_id.encode(), order(order_id), offset=n, ts=1_000 + n))
    assert not batch.dead_letters
    for partition, orders in batch.envelopes.items():
        assert {partition_for(order_id, 8) for order_id, _ in orders} == {partition}
        assert all(orjson.loads(body)["order_id"] == order_id for order_id, body in orders)
    assert sorted(i for orders in batch.envelopes.values() for i, _ in orders) == sorted(ids)
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


def test_envelopes_are_capped_by_bytes_and_keep_every_order_once_in_order() -> None:
    batch = IntakeBatch(partitions=1)
    ids = [f"big-{n}" for n in range(600)]  # 600 orders of ~2 KB: over 1 MB in one partition
    for n, order_id in enumerate(ids):
        batch.add(record(order_id.encode(), order(order_id, customer_bytes=2_000), offset=n))
    bodies = list(batch.bodies())
    assert len(bodies) > 1
    forwarded = []
    for partition, key, body in bodies:
        assert partition == 0
        assert len(body) <= ENVELOPE_MAX_BYTES
        orders = orjson.loads(body)["orders"]
        assert len(orders) <= ENVELOPE_MAX
        assert key == orders[0]["order_id"].encode()
        forwarded.extend(o["order_id"] for o in orders)
    assert forwarded == ids


def test_an_order_too_large_for_an_envelope_alone_is_dead_lettered_as_too_large() -> None:
    batch = IntakeBatch(partitions=8)
    huge = order("huge", customer_bytes=2_000_000)
    batch.add(record(b"huge", huge))
    batch.add(record(b"small", order("small")))
    assert [(r.value, reason) for r, reason, _ in batch.dead_letters] == [
        (huge, RejectReason.TOO_LARGE)
    ]
    assert "huge" in batch.dead_letters[0][2] and "bytes" in batch.dead_letters[0][2]
    assert [i for orders in batch.envelopes.values() for i, _ in orders] == ["small"]
