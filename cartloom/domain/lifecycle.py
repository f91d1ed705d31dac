"""The order state machine: every allowed transition in one table, and lifecycle events.

``TRANSITIONS`` is the whole machine (``docs/orders.md`` draws it); anything not in it is
refused, never applied. External events arrive on ``order.events``; the saga's own
triggers (reservation confirmed or failed, expiry) come from :mod:`cartloom.domain.saga`.
:func:`apply_order_event` also decides what the inventory must do (commit shipped units,
release what is no longer needed) and returns those ledger commands. Pure: callers pass
``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.fields import (
    Choice,
    Field,
    Integer,
    Items,
    ItemsRequiredWhen,
    MessageContract,
    Record,
    Timestamp,
)
from cartloom.domain.ledger import Command, Commit, Release, ReleaseReason
from cartloom.domain.orders import (
    HISTORY_LIMIT,
    LINE,
    ORDER_ID,
    OrderLine,
    OrderView,
    ReservationLineView,
    TransitionView,
)

RECENT_EVENTS_LIMIT = 20


class Status(StrEnum):
    """Every status an order can be in."""

    RECEIVED = "received"
    RESERVED = "reserved"
    REJECTED = "rejected"
    PAID = "paid"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    FULFILLED = "fulfilled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Trigger(StrEnum):
    """What moves an order: lifecycle events from outside, and the saga's own outcomes."""

    PAID = "paid"
    FULFILLED = "fulfilled"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    RESERVATION_CONFIRMED = "reservation_confirmed"
    RESERVATION_FAILED = "reservation_failed"
    EXPIRED = "expired"


#: Triggers that arrive on ``order.events``.
EXTERNAL = frozenset(
    {
        Trigger.PAID,
        Trigger.FULFILLED,
        Trigger.PARTIALLY_FULFILLED,
        Trigger.CANCELLED,
        Trigger.REFUNDED,
        Trigger.PARTIALLY_REFUNDED,
    }
)

#: External events that say which units they concern, in ``lines``.
PARTIAL = frozenset({Trigger.PARTIALLY_FULFILLED, Trigger.PARTIALLY_REFUNDED})

EVENT = Field(
    "event",
    Choice(tuple(sorted(t.value for t in EXTERNAL))),
    "What happened to the order. The partial events need lines.",
    required=True,
)
EVENT_AT = Field(
    "at",
    Timestamp(),
    "When it happened, with a time zone (RFC 3339). With version, it identifies the event: "
    "the same event, at and version again is a duplicate.",
    required=True,
)
EVENT_VERSION = Field(
    "version",
    Integer(minimum=0),
    "The sender's version of the order, growing with each change: an event below the last "
    "one applied is stale and changes nothing. Leave it out if the sender has none.",
)
EVENT_LINES = Field(
    "lines",
    Items(LINE),
    "The units concerned, spread over the order's lines of each SKU: required, and not "
    "empty, for partially_fulfilled and partially_refunded; optional for fulfilled and "
    "refunded (without lines: every unit left); not used by paid and cancelled.",
    nullable=True,
)
PARTIAL_NEEDS_LINES = ItemsRequiredWhen("lines", "event", tuple(sorted(t.value for t in PARTIAL)))

#: The ``order.events`` topic's contract: what :func:`parse_order_event` accepts.
ORDER_EVENT_MESSAGE = MessageContract(
    topic="order.events",
    title="CartLoom order.events message",
    description="A lifecycle change of an order CartLoom holds (or will: an event that "
    "arrives before its order is held until the order comes). The state machine decides "
    "whether it applies: an event it forbids is refused and counted, not an error.",
    key=ORDER_ID,
    record=Record((ORDER_ID, EVENT, EVENT_AT, EVENT_VERSION, EVENT_LINES)),
    rules=(PARTIAL_NEEDS_LINES,),
    examples=(
        {"order_id": "pos-1001", "event": "paid", "at": "2026-11-25T10:05:00+00:00"},
        {
            "order_id": "pos-1001",
            "event": "partially_fulfilled",
            "at": "2026-11-26T08:30:00Z",
            "version": 3,
            "lines": [{"sku": "MUG-RED", "quantity": 1}],
        },
    ),
)

S, T = Status, Trigger
#: The state machine: (status, trigger) -> next status. A partial fulfilment or refund
#: that completes the order moves to the full status instead (see :func:`apply_order_event`).
TRANSITIONS: dict[tuple[Status, Trigger], Status] = {
    (S.RECEIVED, T.RESERVATION_CONFIRMED): S.RESERVED,
    (S.RECEIVED, T.RESERVATION_FAILED): S.REJECTED,
    (S.RECEIVED, T.CANCELLED): S.CANCELLED,
    (S.RESERVED, T.PAID): S.PAID,
    (S.RESERVED, T.FULFILLED): S.FULFILLED,
    (S.RESERVED, T.PARTIALLY_FULFILLED): S.PARTIALLY_FULFILLED,
    (S.RESERVED, T.CANCELLED): S.CANCELLED,
    (S.RESERVED, T.EXPIRED): S.EXPIRED,
    (S.PAID, T.FULFILLED): S.FULFILLED,
    (S.PAID, T.PARTIALLY_FULFILLED): S.PARTIALLY_FULFILLED,
    (S.PAID, T.CANCELLED): S.CANCELLED,
    (S.PAID, T.REFUNDED): S.REFUNDED,
    (S.PAID, T.PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED,
    (S.PARTIALLY_FULFILLED, T.PARTIALLY_FULFILLED): S.PARTIALLY_FULFILLED,
    (S.PARTIALLY_FULFILLED, T.FULFILLED): S.FULFILLED,
    (S.PARTIALLY_FULFILLED, T.CANCELLED): S.CANCELLED,
    (S.PARTIALLY_FULFILLED, T.REFUNDED): S.REFUNDED,
    (S.PARTIALLY_FULFILLED, T.PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED,
    (S.FULFILLED, T.REFUNDED): S.REFUNDED,
    (S.FULFILLED, T.PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED,
    (S.PARTIALLY_REFUNDED, T.PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED,
    (S.PARTIALLY_REFUNDED, T.REFUNDED): S.REFUNDED,
    (S.PARTIALLY_REFUNDED, T.PARTIALLY_FULFILLED): S.PARTIALLY_FULFILLED,
    (S.PARTIALLY_REFUNDED, T.FULFILLED): S.FULFILLED,
    (S.PARTIALLY_REFUNDED, T.CANCELLED): S.CANCELLED,
}
del S, T

#: Statuses no trigger leaves.
TERMINAL = frozenset(
    status for status in Status if not any(src is status for src, _ in TRANSITIONS)
)


#: Statuses after which nothing a storefront does depends on a fresh copy of the order:
#: the terminal ones, and ``fulfilled``, which only a refund (whole or partial) leaves
#: (each writes a new version). The sinks expire cached copies of these
#: (``docs/sinks.md``); a later change writes the order again.
CLOSED = TERMINAL | {Status.FULFILLED}


def next_status(status: Status, trigger: Trigger) -> Status | None:
    """The status ``trigger`` moves ``status`` to, or None when the machine forbids it."""
    return TRANSITIONS.get((status, trigger))


class StepOutcome(StrEnum):
    """What handling one input did to an order; bounded, safe as a metric label."""

    APPLIED = "applied"  # the order changed (status or bookkeeping)
    DEFERRED = "deferred"  # kept until the reservation outcome is known
    DUPLICATE = "duplicate"  # seen before: nothing changed
    STALE = "stale"  # older than what the order already reflects: nothing changed
    ILLEGAL = "illegal"  # the state machine forbids it: refused, nothing changed
    IGNORED = "ignored"  # not relevant any more (e.g. a late saga answer)


@dataclass(frozen=True, slots=True)
class OrderStep:
    """The new order view, the ledger commands to send, and what happened."""

    view: OrderView
    outcome: StepOutcome
    commands: tuple[Command, ...] = ()
    detail: str = ""
    refused: tuple[str, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        """True when ``view`` must be written back."""
        return self.outcome in (StepOutcome.APPLIED, StepOutcome.DEFERRED)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """A validated ``order.events`` message."""

    order_id: str
    kind: Trigger
    at: str
    lines: tuple[OrderLine, ...] = ()
    version: int | None = None

    @property
    def key(self) -> str:
        """Identity of the event, to recognise a redelivery or a replay."""
        return f"{self.kind.value}@{self.at}#{self.version}"

    def to_json(self) -> dict[str, Any]:
        """The event as ``order.events`` carries it (kept in ``deferred``)."""
        body: dict[str, Any] = {"order_id": self.order_id, "event": self.kind.value, "at": self.at}
        if self.lines:
            body["lines"] = [{"sku": ln.sku, "quantity": ln.quantity} for ln in self.lines]
        if self.version is not None:
            body["version"] = self.version
        return body


def parse_order_event(payload: dict[str, Any], *, key: str | None = None) -> OrderEvent:
    """Validate an ``order.events`` message; raise :class:`InvalidInput` naming the problem."""
    order_id: str = ORDER_ID.read(payload)
    ORDER_EVENT_MESSAGE.check_key(key, order_id)
    kind = Trigger(EVENT.read(payload))
    at: str = EVENT_AT.read(payload)
    version: int | None = EVENT_VERSION.read(payload)
    lines = tuple(OrderLine(sku, quantity) for sku, quantity in EVENT_LINES.read(payload) or ())
    PARTIAL_NEEDS_LINES.check(kind.value, lines)
    return OrderEvent(order_id, kind, at, lines, version)


def transitioned(view: OrderView, status: Status, now: str, reason: str | None) -> OrderView:
    """A copy of ``view`` in ``status``, one version later, with the transition in history."""
    changed = touched(view, now)
    record_transition(changed, status, now, reason)
    return changed


def record_transition(view: OrderView, status: Status, now: str, reason: str | None) -> None:
    """Set ``status`` on a copy made by :func:`touched` and note it in the history."""
    view["status"] = status.value
    history = [*view["history"], TransitionView(status=status.value, at=now, reason=reason)]
    view["history"] = history[-HISTORY_LIMIT:]


def touched(view: OrderView, now: str) -> OrderView:
    """A copy of ``view`` one version later (deep enough for the lists the saga edits)."""
    changed = view.copy()
    changed["reservations"] = [line.copy() for line in view["reservations"]]
    changed["version"] = view["version"] + 1
    changed["updated_at"] = now
    return changed


def apply_order_event(view: OrderView, event: OrderEvent, now: str) -> OrderStep:
    """Apply one lifecycle event to ``view``.

    Duplicates and events older than the last one applied change nothing; while the
    reservation is in flight (``received``) events other than ``cancelled`` are deferred
    and applied once it resolves; a transition the machine forbids is refused (ILLEGAL).
    Raises :class:`InvalidInput` for a partial event that names SKUs or quantities the
    order does not have.
    """
    if event.key in view["recent_events"] or any(
        deferred_key(item) == event.key for item in view["deferred"]
    ):
        return OrderStep(view, StepOutcome.DUPLICATE)
    if _is_stale(view, event):
        return OrderStep(view, StepOutcome.STALE, detail=f"{event.kind.value} is older")
    status = Status(view["status"])
    if status is Status.RECEIVED and event.kind is not Trigger.CANCELLED:
        deferred = touched(view, now)
        deferred["deferred"] = [*view["deferred"], event.to_json()]
        return OrderStep(deferred, StepOutcome.DEFERRED)
    target = next_status(status, event.kind)
    if target is None:
        detail = f"{event.kind.value} is not allowed in status {status.value}"
        return OrderStep(view, StepOutcome.ILLEGAL, detail=detail)
    changed = touched(view, now)
    commands, target = _inventory_effects(changed, event, target)
    reason = f"event {event.kind.value}" + (f" v{event.version}" if event.version else "")
    record_transition(changed, target, now, reason)
    changed["recent_events"] = [*view["recent_events"], event.key][-RECENT_EVENTS_LIMIT:]
    changed["last_event_at"] = _latest(view["last_event_at"], event.at)
    if event.version is not None:
        changed["last_event_version"] = max(event.version, view["last_event_version"] or 0)
    if target is not Status.RESERVED:
        changed["expires_at"] = None  # paid, shipped or closed: the reservation cannot expire
    return OrderStep(changed, StepOutcome.APPLIED, tuple(commands))


def deferred_key(item: dict[str, Any]) -> str:
    """The :attr:`OrderEvent.key` of an event kept in ``deferred``."""
    return f"{item['event']}@{item['at']}#{item.get('version')}"


def _is_stale(view: OrderView, event: OrderEvent) -> bool:
    last_version = view["last_event_version"]
    if event.version is not None and last_version is not None:
        return event.version <= last_version
    last_at = view["last_event_at"]
    return last_at is not None and _time(event.at) < _time(last_at)


def _latest(current: str | None, candidate: str) -> str:
    if current is None or _time(candidate) > _time(current):
        return candidate
    return current


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _inventory_effects(
    view: OrderView, event: OrderEvent, target: Status
) -> tuple[list[Command], Status]:
    """Update the lines' shipped/refunded units in ``view``; the commands and final status.

    Refunds take unshipped units first: those are released back to stock (``released``);
    refunding goods already shipped changes no stock (a restock is an inventory event).
    """
    order_id, lines = view["order_id"], view["reservations"]
    kind = event.kind
    if kind in (Trigger.FULFILLED, Trigger.PARTIALLY_FULFILLED):
        wanted = _per_line(lines, event, _ship_room) if event.lines else _all(lines, _ship_room)
        for line, quantity in wanted:
            line["fulfilled"] += quantity
        if all(ln["fulfilled"] + ln["released"] >= ln["requested"] for ln in lines):
            target = Status.FULFILLED
        commands: list[Command] = [
            Commit(order_id, ln["line"], ln["sku"], ln["fulfilled"])
            for ln, _ in wanted
            if ln["granted"]
        ]
        return commands, target
    if kind in (Trigger.REFUNDED, Trigger.PARTIALLY_REFUNDED):
        wanted = _per_line(lines, event, _refund_room) if event.lines else _all(lines, _refund_room)
        for line, quantity in wanted:
            line["released"] += min(quantity, _ship_room(line))
            line["refunded"] += quantity
        if all(ln["refunded"] >= ln["requested"] for ln in lines):
            target = Status.REFUNDED
        commands = [
            Release(order_id, ln["line"], ln["sku"], ReleaseReason.REFUNDED, ln["released"])
            for ln, _ in wanted
            if ln["released"] and ln["granted"] != 0
        ]
        return commands, target
    if kind is Trigger.CANCELLED:
        return release_all(view, ReleaseReason.CANCELLED), target
    return [], target


def release_all(view: OrderView, reason: ReleaseReason) -> list[Command]:
    """Release every unit still held (or pending) on the order's lines."""
    return [
        Release(view["order_id"], ln["line"], ln["sku"], reason, None)
        for ln in view["reservations"]
        if ln["granted"] is None or ln["granted"] > ln["fulfilled"]
    ]


def _ship_room(line: ReservationLineView) -> int:
    return line["requested"] - line["fulfilled"] - line["released"]


def _refund_room(line: ReservationLineView) -> int:
    return line["requested"] - line["refunded"]


def _all(
    lines: list[ReservationLineView], room: Callable[[ReservationLineView], int]
) -> list[tuple[ReservationLineView, int]]:
    return [(line, room(line)) for line in lines if room(line) > 0]


def _per_line(
    lines: list[ReservationLineView],
    event: OrderEvent,
    room: Callable[[ReservationLineView], int],
) -> list[tuple[ReservationLineView, int]]:
    """Spread the event's per-SKU quantities over the order's lines of that SKU."""
    wanted: dict[int, int] = {}
    for item in event.lines:
        left = item.quantity
        for line in lines:
            if line["sku"] == item.sku and left:
                taken = min(room(line) - wanted.get(line["line"], 0), left)
                if taken > 0:
                    wanted[line["line"]] = wanted.get(line["line"], 0) + taken
                    left -= taken
        if left:
            raise InvalidInput(
                RejectReason.INVALID_SCHEMA,
                f"{event.kind.value}: {item.quantity} x {item.sku} exceeds what the order has left",
            )
    return [(lines[index], quantity) for index, quantity in sorted(wanted.items())]
