"""Lifecycle events that overtook their order: held until it arrives, bounded, with an expiry.

An order reaches the orders agent through the intake hop (``orders``, then
``orders.accepted``); its lifecycle events on ``order.events`` do not, so a ``paid`` sent
right after its order (Shopify emits both from one webhook) routinely arrives first. Such
an event is held per order (the table ``early_events_by_order``, never materialised) and,
when the order arrives, applied through the ordinary state machine
(:func:`cartloom.domain.lifecycle.apply_order_event`) in event order. An order holds at
most ``max_events`` events (over that, the oldest is given up) and each waits at most
``hold_seconds`` (then it is given up as an event for an unknown order); the agent sends
what is given up to ``order.events.dlq``, from where ``cartloom dlq replay`` can send it
back.

Applying is idempotent: every held event is recognised by the order it was applied to
(its key is kept in ``deferred`` or ``recent_events``, or it is older than what the order
reflects), so applying the same held events to that order again changes nothing.
Pure: callers pass ``now`` and the limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from cartloom.domain.errors import InvalidInput
from cartloom.domain.instants import instant_after, is_before, parse_instant
from cartloom.domain.ledger import Command
from cartloom.domain.lifecycle import (
    OrderEvent,
    OrderStep,
    StepOutcome,
    apply_order_event,
    parse_order_event,
)
from cartloom.domain.orders import OrderView
from cartloom.domain.payloads import decode_json_object, keyed_id

#: ``kind`` of the ``order.timeouts`` nudge that asks the orders agent to look at held events.
HELD_NUDGE = "held_events"


class EventOrigin(TypedDict):
    """Where a held event was read: the origin headers of its dead letter, if it gets one."""

    topic: str
    partition: int
    offset: int


class HeldEventView(TypedDict):
    """One held event: its identity, its bytes as received, and since when it is held."""

    key: str  # OrderEvent.key: a redelivered event is recognised by it
    raw: str  # the order.events value as received (dead-lettered byte for byte)
    held_at: str
    origin: EventOrigin


class HeldEventsView(TypedDict):
    """What ``early_events_by_order`` keeps for one order id: its held events, oldest first."""

    order_id: str
    events: list[HeldEventView]


class HoldOutcome(StrEnum):
    """What holding one event did; bounded, safe as a metric label."""

    HELD = "held"
    DUPLICATE = "duplicate"  # already held: nothing changed


@dataclass(frozen=True, slots=True)
class HoldStep:
    """The held events after holding one more, and whether it was new."""

    held: HeldEventsView
    outcome: HoldOutcome


@dataclass(frozen=True, slots=True)
class HeldApplication:
    """An order with its held events applied, and what became of each event."""

    step: OrderStep  # APPLIED when the order changed, else DUPLICATE (all seen before)
    outcomes: tuple[StepOutcome, ...]  # per event handed to the state machine, in order
    invalid: tuple[tuple[HeldEventView, InvalidInput], ...]  # events the order cannot take


def hold_event(
    held: HeldEventsView | None, event: OrderEvent, raw: str, origin: EventOrigin, now: str
) -> HoldStep:
    """``held`` with ``event`` appended (held since ``now``); a repeated event changes nothing."""
    if held is not None and any(entry["key"] == event.key for entry in held["events"]):
        return HoldStep(held, HoldOutcome.DUPLICATE)
    entry = HeldEventView(key=event.key, raw=raw, held_at=now, origin=origin)
    events = [*held["events"], entry] if held is not None else [entry]
    return HoldStep(HeldEventsView(order_id=event.order_id, events=events), HoldOutcome.HELD)


def over_limit(held: HeldEventsView, max_events: int) -> tuple[HeldEventView, ...]:
    """The oldest held events beyond ``max_events`` (what must be given up to keep the bound)."""
    excess = len(held["events"]) - max_events
    return tuple(held["events"][:excess]) if excess > 0 else ()


def expired_events(
    held: HeldEventsView, now: str, hold_seconds: float
) -> tuple[HeldEventView, ...]:
    """The held events whose order did not arrive within ``hold_seconds`` of their arrival."""
    return tuple(
        entry
        for entry in held["events"]
        if not is_before(now, instant_after(entry["held_at"], hold_seconds))
    )


def held_due_at(held: HeldEventsView | None, hold_seconds: float) -> str | None:
    """When the first of ``held`` expires (the timer nudges the order then), if any is held."""
    if held is None or not held["events"]:
        return None
    oldest = min(held["events"], key=lambda entry: parse_instant(entry["held_at"]))
    return instant_after(oldest["held_at"], hold_seconds)


def without_events(held: HeldEventsView, keys: set[str] | frozenset[str]) -> HeldEventsView | None:
    """``held`` without the events whose key is in ``keys``; None when nothing is left."""
    events = [entry for entry in held["events"] if entry["key"] not in keys]
    return HeldEventsView(order_id=held["order_id"], events=events) if events else None


def apply_held_events(view: OrderView, held: HeldEventsView, now: str) -> HeldApplication:
    """Apply the held events to ``view`` in event order (version, then time), as one change.

    Each goes through :func:`apply_order_event`, exactly as if it had arrived after its
    order: while the order is ``received`` it is deferred until the reservation resolves,
    ``cancelled`` applies at once, a transition the machine forbids is refused. Applying
    the same held events to the result again changes nothing (each is a duplicate, stale or
    refused). An event the order cannot take (a partial event naming more than the order
    has) is returned in ``invalid`` and changes nothing.
    """
    current, commands = view, list[Command]()
    outcomes: list[StepOutcome] = []
    refused: list[str] = []
    parsed, invalid = _parsed(held, view["order_id"])
    for entry, event in sorted(parsed, key=_event_order):
        try:
            result = apply_order_event(current, event, now)
        except InvalidInput as exc:
            invalid.append((entry, exc))
            continue
        outcomes.append(result.outcome)
        if result.outcome is StepOutcome.ILLEGAL:
            refused.append(f"{view['order_id']}: {result.detail}")
        if result.changed:
            current = result.view
            current["version"] = view["version"] + 1  # one change for all of them
            commands.extend(result.commands)
    outcome = StepOutcome.APPLIED if current is not view else StepOutcome.DUPLICATE
    step = OrderStep(current, outcome, tuple(commands), refused=tuple(refused))
    return HeldApplication(step, tuple(outcomes), tuple(invalid))


def held_nudge_json(order_id: str, at: str) -> dict[str, Any]:
    """A held-events nudge on ``order.timeouts``, as :func:`parse_held_nudge` reads it."""
    return {"order_id": order_id, "kind": HELD_NUDGE, "at": at}


def parse_held_nudge(payload: dict[str, Any], *, key: str | None = None) -> str:
    """The order id of a held-events nudge on ``order.timeouts``."""
    return keyed_id(payload, "order_id", key)


def _parsed(
    held: HeldEventsView, order_id: str
) -> tuple[list[tuple[HeldEventView, OrderEvent]], list[tuple[HeldEventView, InvalidInput]]]:
    """Each held event with its parsed form (validated when it was held, so none should fail)."""
    parsed, invalid = [], []
    for entry in held["events"]:
        try:
            parsed.append(
                (entry, parse_order_event(decode_json_object(entry["raw"]), key=order_id))
            )
        except InvalidInput as exc:
            invalid.append((entry, exc))
    return parsed, invalid


def _event_order(item: tuple[HeldEventView, OrderEvent]) -> tuple[int, Any]:
    event = item[1]
    return (event.version or 0, parse_instant(event.at))
