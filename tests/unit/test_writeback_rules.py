"""Write-back's pure rules: what a ledger entry asks of Shopify, and which failures wait."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable
from cartloom.shopify.writeback import LineTake, UnknownSku, line_take, unavailable


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
        (UnknownSku("no Shopify inventory item has SKU 'X'"), False),
        (AdminApiError("query failed: [...]"), False),
        (ResponseError("WRONGTYPE Operation against a key"), False),
        (ValueError("invalid literal for int()"), False),
    ],
)
def test_only_an_unavailable_shopify_or_redis_makes_the_whole_batch_wait(
    error: Exception, waits: bool
) -> None:
    assert unavailable(error) is waits
