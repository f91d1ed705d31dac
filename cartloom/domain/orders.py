"""Orders as they enter CartLoom: the contract of the ``orders`` topic and the stored view.

``parse_order`` turns a decoded message into a :class:`PlacedOrder` or refuses it with a
reason; ``new_order_view`` builds the document kept in the orders table and materialised
to DynamoDB and Redis. Both are pure: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.instants import instant_after
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


class ReservationLineView(TypedDict):
    """What the saga knows about one line: units granted, shipped, refunded and released.

    ``granted`` is None and ``outcome`` ``pending`` until the SKU's partition answered;
    ``released`` counts refunded units that had not shipped (given back to stock).
    """

    line: int
    sku: str
    requested: int
    granted: int | None
    outcome: str
    fulfilled: int
    refunded: int
    released: int


class RejectionView(TypedDict):
    """Why an order was rejected: which SKU, how many asked for, available, how short."""

    reason: str
    sku: str
    requested: int
    available: int | None
    short_by: int | None


class OversoldView(TypedDict):
    """A line of an order Shopify already accepted that CartLoom could not fully reserve."""

    line: int
    sku: str
    short_by: int


class OrderView(TypedDict):
    """The stored and materialised form of an order.

    Beyond the public fields (``order_id``, ``status``, ``lines``, ``version``,
    ``history``), it carries the saga's bookkeeping: per-line ``reservations``, the
    ``deadline_at`` by which they resolve, the ``expires_at`` of an unpaid reservation,
    lifecycle events waiting for the reservation outcome (``deferred``) and the keys of
    recently applied events (``recent_events``, ``last_event_*``) that make replays no-ops.
    """

    order_id: str
    source: str
    created_at: str
    status: str
    lines: list[OrderLineView]
    version: int
    updated_at: str
    history: list[TransitionView]
    accepted_upstream: bool
    reservations: list[ReservationLineView]
    deadline_at: str | None
    expires_at: str | None
    rejection: RejectionView | None
    oversold: list[OversoldView]
    deferred: list[dict[str, Any]]
    recent_events: list[str]
    last_event_version: int | None
    last_event_at: str | None
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
    accepted_upstream: bool = False


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
    accepted_upstream = payload.get("accepted_upstream", False)
    if not isinstance(accepted_upstream, bool):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "accepted_upstream must be a boolean")
    return PlacedOrder(
        order_id=order_id,
        source=require_str(payload, "source", max_len=64),
        created_at=require_timestamp(payload, "created_at"),
        lines=lines,
        currency=optional_str(payload, "currency", max_len=3),
        total_price=_optional_price(payload),
        customer=customer,
        accepted_upstream=accepted_upstream,
    )


def accepted_order_json(order: PlacedOrder) -> dict[str, Any]:
    """The form the order intake forwards a validated order in (``orders.accepted``).

    Only the fields :class:`PlacedOrder` keeps, so it is also valid input for
    :func:`parse_order` (an item dead-lettered from an envelope is replayed as one order).
    """
    body: dict[str, Any] = {
        "order_id": order.order_id,
        "source": order.source,
        "created_at": order.created_at,
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in order.lines],
        "accepted_upstream": order.accepted_upstream,
    }
    for field in ("currency", "total_price", "customer"):
        value = getattr(order, field)
        if value is not None:
            body[field] = value
    return body


def read_accepted_order(item: dict[str, Any]) -> PlacedOrder:
    """An order of an intake envelope, from :func:`accepted_order_json`.

    The intake validated it with :func:`parse_order` before forwarding it, and only the
    intake writes envelopes, so it is read, not checked again (that was a tenth of the
    order path). A missing field raises ``KeyError``: a bug, which the agent dead-letters.
    """
    return PlacedOrder(
        order_id=item["order_id"],
        source=item["source"],
        created_at=item["created_at"],
        lines=tuple(OrderLine(line["sku"], line["quantity"]) for line in item["lines"]),
        currency=item.get("currency"),
        total_price=item.get("total_price"),
        customer=item.get("customer"),
        accepted_upstream=item.get("accepted_upstream", False),
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


def new_order_view(order: PlacedOrder, now: str, *, deadline_seconds: float = 30.0) -> OrderView:
    """The first stored version of ``order``: status ``received``, version 1.

    Every line starts ``pending``; the saga must resolve them by ``deadline_at``.
    """
    return OrderView(
        order_id=order.order_id,
        source=order.source,
        created_at=order.created_at,
        status="received",
        lines=[OrderLineView(sku=line.sku, quantity=line.quantity) for line in order.lines],
        version=1,
        updated_at=now,
        history=[TransitionView(status="received", at=now, reason=None)],
        accepted_upstream=order.accepted_upstream,
        reservations=[
            ReservationLineView(
                line=index,
                sku=line.sku,
                requested=line.quantity,
                granted=None,
                outcome="pending",
                fulfilled=0,
                refunded=0,
                released=0,
            )
            for index, line in enumerate(order.lines)
        ],
        deadline_at=instant_after(now, deadline_seconds),
        expires_at=None,
        rejection=None,
        oversold=[],
        deferred=[],
        recent_events=[],
        last_event_version=None,
        last_event_at=None,
        currency=order.currency,
        total_price=order.total_price,
        customer=order.customer,
    )
