"""Orders as they enter CartLoom: the contract of the ``orders`` topic and the stored view.

``parse_order`` turns a decoded message into a :class:`PlacedOrder` or refuses it with a
reason; ``new_order_view`` builds the document kept in the orders table and materialised
to DynamoDB and Redis. Both are pure: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.payloads import (
    optional_str,
    require_int,
    require_str,
    require_timestamp,
)

MAX_LINES = 500
HISTORY_LIMIT = 20


class OrderLineView(TypedDict):
    """One line of an order: a SKU and how many units."""

    sku: str
    quantity: int


class TransitionView(TypedDict):
    """One entry of an order's history: what it became, when, and why."""

    status: str
    at: str
    reason: str | None


class OrderView(TypedDict):
    """The stored and materialised form of an order."""

    order_id: str
    source: str
    created_at: str
    status: str
    lines: list[OrderLineView]
    version: int
    updated_at: str
    history: list[TransitionView]
    currency: NotRequired[str | None]
    total_price: NotRequired[str | None]
    customer: NotRequired[dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class OrderLine:
    """A validated order line."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """A validated order from the ``orders`` topic."""

    order_id: str
    source: str
    created_at: str
    lines: tuple[OrderLine, ...]
    currency: str | None = None
    total_price: str | None = None
    customer: dict[str, Any] | None = None


def parse_order(payload: dict[str, Any], *, key: str | None = None) -> PlacedOrder:
    """Validate an ``orders`` message; raise :class:`InvalidInput` naming the first problem.

    ``key`` is the Kafka message key; when given it must equal ``order_id`` so the order
    lands on the partition that owns it.
    """
    order_id = require_str(payload, "order_id", max_len=128)
    if key is not None and key != order_id:
        raise InvalidInput(
            RejectReason.KEY_MISMATCH, f"message key {key!r} differs from order_id {order_id!r}"
        )
    raw_lines = payload.get("lines")
    if not isinstance(raw_lines, list) or not raw_lines:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "lines must be a non-empty list")
    if len(raw_lines) > MAX_LINES:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"more than {MAX_LINES} lines")
    lines = tuple(_parse_line(index, line) for index, line in enumerate(raw_lines))
    customer = payload.get("customer")
    if customer is not None and not isinstance(customer, dict):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "customer must be an object")
    return PlacedOrder(
        order_id=order_id,
        source=require_str(payload, "source", max_len=64),
        created_at=require_timestamp(payload, "created_at"),
        lines=lines,
        currency=optional_str(payload, "currency", max_len=3),
        total_price=_optional_price(payload),
        customer=customer,
    )


def _parse_line(index: int, line: Any) -> OrderLine:
    if not isinstance(line, dict):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"lines[{index}] must be an object")
    try:
        return OrderLine(
            sku=require_str(line, "sku", max_len=128),
            quantity=require_int(line, "quantity", minimum=1),
        )
    except InvalidInput as exc:
        raise InvalidInput(exc.reason, f"lines[{index}].{exc.detail}") from None


def _optional_price(payload: dict[str, Any]) -> str | None:
    value = payload.get("total_price")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "total_price must be a decimal string")
    return str(value)


def new_order_view(order: PlacedOrder, now: str) -> OrderView:
    """The first stored version of ``order``: status ``received``, version 1."""
    return OrderView(
        order_id=order.order_id,
        source=order.source,
        created_at=order.created_at,
        status="received",
        lines=[OrderLineView(sku=line.sku, quantity=line.quantity) for line in order.lines],
        version=1,
        updated_at=now,
        history=[TransitionView(status="received", at=now, reason=None)],
        currency=order.currency,
        total_price=order.total_price,
        customer=order.customer,
    )
