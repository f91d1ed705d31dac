"""Write-back's pure rules: what a ledger entry asks of Shopify, which failures wait, and
which progress records can be trusted."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable
from cartloom.shopify.writeback import LineTake, UnknownSku, line_take, unavailable
from cartloom.shopify.writeback_progress import LineProgress, parse_progress


def entry(**fields: object) -> dict[str, object]:
    return {"order_id": "pos-1", "sku": "SKU-1", "granted": 3, "released": 1, **fields}


def test_a_channel_line_takes_what_it_holds_and_shopify_orders_take_nothing() -> None:
    assert line_take("pos-1#0", entry()) == LineTake("pos-1#0", "pos-1", "SKU-1", 2)
    assert line_take("pos-1#0", entry(released=5)).taken == 0  # type: ignore[union-attr]
    assert line_take("shopify-9#0", entry(order_id="shopify-9")) is None


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        "text",
        entry(order_id=None),
        entry(sku=None),
        entry(granted="3"),
        entry(released=None),
    ],
)
def test_what_is_not_a_ledger_entry_is_refused_with_a_reason(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        line_take("pos-1#0", value)
    assert refused.value.reason is RejectReason.INVALID_SCHEMA


@pytest.mark.parametrize(
    ("error", "waits"),
    [
        (AdminApiUnavailable("no answer after 8 tries"), True),
        (RedisConnectionError("refused"), True),
        (ConnectionResetError(), True),
        (KafkaTimeoutError(), True),  # a progress write the broker did not acknowledge
        (NotEnoughReplicasError(), True),
        (UnknownSku("no Shopify inventory item has SKU 'X'"), False),
        (AdminApiError("query failed: [...]"), False),
        (ResponseError("WRONGTYPE Operation against a key"), False),
        (ValueError("invalid literal for int()"), False),
    ],
)
def test_only_an_unavailable_shopify_broker_or_redis_makes_the_whole_batch_wait(
    error: Exception, waits: bool
) -> None:
    assert unavailable(error) is waits


@pytest.mark.parametrize(
    ("raw", "progress"),
    [
        (b'{"pushed":3,"pending":null}', LineProgress(3)),
        (
            b'{"pushed":1,"pending":{"target":3,"compare":9,"quantity":7}}',
            LineProgress(1, {"target": 3, "compare": 9, "quantity": 7}),
        ),
        (b"not json", None),
        (b'{"pushed":"3"}', None),
        (b"[3]", None),
    ],
)
def test_a_progress_record_is_trusted_only_when_it_says_what_was_pushed(
    raw: bytes, progress: LineProgress | None
) -> None:
    assert parse_progress(raw) == progress
