"""The orders contract: what is accepted, what is refused and why."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.orders import (
    accepted_order_json,
    new_order_view,
    parse_order,
    read_accepted_order,
)
from cartloom.domain.payloads import decode_json_object

VALID: dict[str, Any] = {
    "order_id": "o-1",
    "source": "pos",
    "created_at": "2026-11-25T10:00:00+00:00",
    "lines": [{"sku": "A", "quantity": 2}],
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def test_valid_order_parses_with_optional_fields() -> None:
    order = parse_order(with_(currency="EUR", total_price=12.5, customer={"id": 1}), key="o-1")
    assert order.order_id == "o-1"
    assert [(line.sku, line.quantity) for line in order.lines] == [("A", 2)]
    assert order.total_price == "12.5"
    assert order.customer == {"id": 1}


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (with_(order_id=""), RejectReason.INVALID_SCHEMA, "order_id"),
        (with_(order_id=7), RejectReason.INVALID_SCHEMA, "order_id"),
        (with_(lines=[]), RejectReason.INVALID_SCHEMA, "lines"),
        (with_(lines="A"), RejectReason.INVALID_SCHEMA, "lines"),
        (
            with_(lines=[{"sku": "A", "quantity": 0}]),
            RejectReason.INVALID_SCHEMA,
            "lines[0].quantity",
        ),
        (with_(lines=[{"sku": "A", "quantity": True}]), RejectReason.INVALID_SCHEMA, "quantity"),
        (with_(lines=[{"sku": "A", "quantity": 1.5}]), RejectReason.INVALID_SCHEMA, "quantity"),
        (with_(lines=[{"quantity": 1}]), RejectReason.INVALID_SCHEMA, "lines[0].sku"),
        (with_(lines=[1]), RejectReason.INVALID_SCHEMA, "lines[0]"),
        (with_(created_at="yesterday"), RejectReason.INVALID_SCHEMA, "created_at"),
        (with_(created_at="2026-11-25T10:00:00"), RejectReason.INVALID_SCHEMA, "time zone"),
        (with_(source=None), RejectReason.INVALID_SCHEMA, "source"),
        (with_(customer="bob"), RejectReason.INVALID_SCHEMA, "customer"),
        (with_(total_price=[1]), RejectReason.INVALID_SCHEMA, "total_price"),
    ],
)
def test_invalid_orders_are_refused_with_a_reason(
    payload: dict[str, Any], reason: RejectReason, detail: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_order(payload)
    assert caught.value.reason is reason
    assert detail in caught.value.detail


def test_key_must_equal_order_id() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_order(VALID, key="o-2")
    assert caught.value.reason is RejectReason.KEY_MISMATCH


@pytest.mark.parametrize("raw", [None, b"", b"{", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_non_object_json_is_invalid_json(raw: bytes | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_json_object(raw)
    assert caught.value.reason is RejectReason.INVALID_JSON


def test_new_order_view_is_received_version_one_with_history() -> None:
    view = new_order_view(parse_order(VALID), now="2026-11-25T10:00:01+00:00")
    assert view["status"] == "received"
    assert view["version"] == 1
    assert view["history"] == [
        {"status": "received", "at": "2026-11-25T10:00:01+00:00", "reason": None}
    ]
    assert orjson.loads(orjson.dumps(view)) == view  # stored as JSON without loss


@pytest.mark.parametrize(
    "payload",
    [
        VALID,
        with_(currency="EUR", total_price=12.5, customer={"id": 1}, accepted_upstream=True),
        with_(lines=[{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], extra="dropped"),
    ],
)
def test_the_intakes_form_reads_back_as_the_order_it_validated(payload: dict[str, Any]) -> None:
    order = parse_order(payload, key="o-1")
    forwarded = orjson.loads(orjson.dumps(accepted_order_json(order)))  # as on orders.accepted
    assert read_accepted_order(forwarded) == order
    assert parse_order(forwarded, key="o-1") == order  # a dead-lettered item replays as one
    assert "extra" not in forwarded
