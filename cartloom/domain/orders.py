"""Orders as they enter CartLoom: the contract of the ``orders`` topic and the stored view.

``parse_order`` turns a decoded message into a :class:`PlacedOrder` or refuses it with a
reason; ``new_order_view`` builds the document kept in the orders table and materialised
to DynamoDB and Redis. Both are pure: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from cartloom.domain.fields import (
    Amount,
    AnyObject,
    Boolean,
    Field,
    Integer,
    Items,
    MessageContract,
    Record,
    Text,
    Timestamp,
)
from cartloom.domain.instants import instant_after

#: Longest order id and SKU (characters).
ID_MAX_LEN = 128
MAX_LINES = 500
HISTORY_LIMIT = 20

#: The order id field: ``orders`` and ``order.events`` both key by it.
ORDER_ID = Field(
    "order_id",
    Text(ID_MAX_LEN),
    "The order's id, unique across channels (prefix it with the channel if ids may clash). "
    "The message's Kafka key must be the same text.",
    required=True,
)
LINE = Record(
    (
        Field("sku", Text(ID_MAX_LEN), "The SKU, as `inventory` messages name it.", required=True),
        Field("quantity", Integer(minimum=1), "Units of the SKU.", required=True),
    )
)
ORDER_LINES = Field(
    "lines",
    Items(LINE, min_items=1, max_items=MAX_LINES),
    "What was ordered, one entry per line; a SKU may appear on several lines.",
    required=True,
)
SOURCE = Field(
    "source", Text(64), "The channel the order came from (pos, web, marketplace...).", required=True
)
CREATED_AT = Field(
    "created_at",
    Timestamp(),
    "When the order was placed, with a time zone (RFC 3339).",
    required=True,
)
CURRENCY = Field("currency", Text(3), "ISO 4217 code of total_price, e.g. EUR.", nullable=True)
TOTAL_PRICE = Field(
    "total_price",
    Amount(),
    'The order\'s total, kept as given: a decimal string ("30.00") keeps its exact digits.',
    nullable=True,
)
CUSTOMER = Field(
    "customer",
    AnyObject(),
    "Who ordered, as the channel describes them; kept with the order and removed by "
    "Shopify's privacy requests.",
    nullable=True,
)
ACCEPTED_UPSTREAM = Field(
    "accepted_upstream",
    Boolean(),
    "true when the channel already accepted the order (Shopify): CartLoom never rejects it, "
    "and records lines short of stock as oversold. Default false.",
)

#: The ``orders`` topic's contract: what :func:`parse_order` accepts.
ORDER_MESSAGE = MessageContract(
    topic="orders",
    title="CartLoom orders message",
    description="A new order from a sales channel. Sent once per order; re-sending the same "
    "order_id changes nothing.",
    key=ORDER_ID,
    record=Record(
        (
            ORDER_ID,
            SOURCE,
            CREATED_AT,
            ORDER_LINES,
            CURRENCY,
            TOTAL_PRICE,
            CUSTOMER,
            ACCEPTED_UPSTREAM,
        )
    ),
    examples=(
        {
            "order_id": "pos-1001",
            "source": "pos",
            "created_at": "2026-11-25T10:00:00+00:00",
            "lines": [{"sku": "MUG-RED", "quantity": 2}, {"sku": "TEE-M", "quantity": 1}],
            "currency": "EUR",
            "total_price": "42.00",
        },
    ),
)


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
    order_id, source, created_at, lines, currency, total_price, customer, accepted_upstream = (
        ORDER_MESSAGE.read(payload, key)  # in the order ORDER_MESSAGE declares the fields
    )
    return PlacedOrder(
        order_id=order_id,
        source=source,
        created_at=created_at,
        lines=tuple(OrderLine(sku, quantity) for sku, quantity in lines),
        currency=currency,
        total_price=total_price,
        customer=customer,
        accepted_upstream=accepted_upstream or False,
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
