"""The order state machine: every (status, event) pair, allowed and forbidden, and ordering."""

from __future__ import annotations

from typing import Any

import pytest

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.ledger import Commit, Release, ReleaseReason
from cartloom.domain.lifecycle import (
    EXTERNAL,
    TERMINAL,
    TRANSITIONS,
    OrderEvent,
    Status,
    StepOutcome,
    Trigger,
    apply_order_event,
    parse_order_event,
)
from cartloom.domain.orders import OrderLine, OrderView, new_order_view, parse_order

NOW = "2026-11-25T10:00:00+00:00"
LATER = "2026-11-25T10:05:00+00:00"


def order_in(status: Status, **fields: Any) -> OrderView:
    """An order with lines A x2 and B x1, both fully reserved, in ``status``."""
    order = parse_order(
        {
            "order_id": "o-1",
            "source": "pos",
            "created_at": NOW,
            "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
        }
    )
    view = new_order_view(order, NOW)
    for line in view["reservations"]:
        line["granted"], line["outcome"] = line["requested"], "reserved"
        if status is Status.FULFILLED:
            line["fulfilled"] = line["requested"]
    view["status"] = status.value
    view.update(fields)  # type: ignore[typeddict-item]
    return view


def event(kind: Trigger, at: str = LATER, **extra: Any) -> OrderEvent:
    lines = extra.pop("lines", None)
    if lines is None and kind in (Trigger.PARTIALLY_FULFILLED, Trigger.PARTIALLY_REFUNDED):
        lines = [{"sku": "A", "quantity": 1}]
    payload = {"order_id": "o-1", "event": kind.value, "at": at, **extra}
    if lines:
        payload["lines"] = lines
    return parse_order_event(payload, key="o-1")


PAIRS = [
    (status, trigger)
    for status in Status
    if status is not Status.RECEIVED
    for trigger in sorted(EXTERNAL)
]


@pytest.mark.parametrize(("status", "trigger"), PAIRS)
def test_every_status_and_event_pair_follows_the_table(status: Status, trigger: Trigger) -> None:
    view = order_in(status)
    step = apply_order_event(view, event(trigger), LATER)
    target = TRANSITIONS.get((status, trigger))
    if target is None:
        assert step.outcome is StepOutcome.ILLEGAL
        assert step.view is view and step.commands == ()
        assert f"not allowed in status {status.value}" in step.detail
        return
    assert step.outcome is StepOutcome.APPLIED
    assert step.view["status"] == target.value
    assert step.view["version"] == view["version"] + 1
    assert step.view["history"][-1]["status"] == target.value
    assert view["status"] == status.value, "the input view is never mutated"


@pytest.mark.parametrize("trigger", sorted(EXTERNAL - {Trigger.CANCELLED}))
def test_events_during_reservation_are_deferred_not_lost(trigger: Trigger) -> None:
    view = order_in(Status.RECEIVED)
    step = apply_order_event(view, event(trigger), LATER)
    assert step.outcome is StepOutcome.DEFERRED
    assert step.view["status"] == "received"
    assert step.view["deferred"][0]["event"] == trigger.value
    again = apply_order_event(step.view, event(trigger), LATER)
    assert again.outcome is StepOutcome.DUPLICATE


def test_cancel_while_reserving_releases_every_line_including_pending_ones() -> None:
    view = order_in(Status.RECEIVED)
    view["reservations"][1]["granted"], view["reservations"][1]["outcome"] = None, "pending"
    step = apply_order_event(view, event(Trigger.CANCELLED), LATER)
    assert step.view["status"] == "cancelled"
    assert step.commands == (
        Release("o-1", 0, "A", ReleaseReason.CANCELLED, None),
        Release("o-1", 1, "B", ReleaseReason.CANCELLED, None),
    )


def test_terminal_statuses_accept_nothing() -> None:
    assert {Status.REJECTED, Status.CANCELLED, Status.REFUNDED, Status.EXPIRED} == TERMINAL
    for status in TERMINAL:
        for trigger in Trigger:
            assert (status, trigger) not in TRANSITIONS


def test_fulfilment_commits_shipped_units_and_partial_then_full_completes() -> None:
    view = order_in(Status.PAID)
    partial = apply_order_event(view, event(Trigger.PARTIALLY_FULFILLED), LATER)
    assert partial.view["status"] == "partially_fulfilled"
    assert partial.commands == (Commit("o-1", 0, "A", 1),)
    rest = event(
        Trigger.PARTIALLY_FULFILLED,
        at="2026-11-25T10:06:00+00:00",
        lines=[{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}],
    )
    done = apply_order_event(partial.view, rest, LATER)
    assert done.view["status"] == "fulfilled", "a partial event that ships the rest completes"
    assert done.commands == (Commit("o-1", 0, "A", 2), Commit("o-1", 1, "B", 1))


def test_refund_before_shipping_releases_and_after_shipping_does_not() -> None:
    paid = order_in(Status.PAID)
    refunded = apply_order_event(paid, event(Trigger.REFUNDED), LATER)
    assert refunded.view["status"] == "refunded"
    assert refunded.commands == (
        Release("o-1", 0, "A", ReleaseReason.REFUNDED, 2),
        Release("o-1", 1, "B", ReleaseReason.REFUNDED, 1),
    )
    shipped = order_in(Status.FULFILLED)
    after = apply_order_event(shipped, event(Trigger.REFUNDED), LATER)
    assert after.view["status"] == "refunded"
    assert after.commands == ()


def test_partial_refund_then_full_refund() -> None:
    paid = order_in(Status.PAID)
    part = apply_order_event(paid, event(Trigger.PARTIALLY_REFUNDED), LATER)
    assert part.view["status"] == "partially_refunded"
    assert part.commands == (Release("o-1", 0, "A", ReleaseReason.REFUNDED, 1),)
    full = apply_order_event(
        part.view, event(Trigger.REFUNDED, at="2026-11-25T10:07:00+00:00"), LATER
    )
    assert full.view["status"] == "refunded"
    assert [line["refunded"] for line in full.view["reservations"]] == [2, 1]


def test_partial_event_for_more_than_the_order_has_is_invalid() -> None:
    too_many = event(Trigger.PARTIALLY_FULFILLED, lines=[{"sku": "A", "quantity": 3}])
    with pytest.raises(InvalidInput, match="exceeds"):
        apply_order_event(order_in(Status.PAID), too_many, LATER)
    unknown = event(Trigger.PARTIALLY_FULFILLED, lines=[{"sku": "Z", "quantity": 1}])
    with pytest.raises(InvalidInput, match="Z"):
        apply_order_event(order_in(Status.PAID), unknown, LATER)


def test_older_event_does_not_move_the_order_backwards() -> None:
    paid = apply_order_event(order_in(Status.RESERVED), event(Trigger.PAID, version=5), LATER)
    old = apply_order_event(paid.view, event(Trigger.CANCELLED, version=4), LATER)
    assert old.outcome is StepOutcome.STALE
    assert old.view["status"] == "paid"
    by_time = apply_order_event(
        paid.view, event(Trigger.CANCELLED, at="2026-11-25T09:00:00+00:00"), LATER
    )
    assert by_time.outcome is StepOutcome.STALE


def test_the_same_event_twice_changes_nothing() -> None:
    first = apply_order_event(order_in(Status.RESERVED), event(Trigger.PAID), LATER)
    second = apply_order_event(first.view, event(Trigger.PAID), LATER)
    assert second.outcome is StepOutcome.DUPLICATE
    assert second.view == first.view


def test_history_says_what_when_and_why() -> None:
    step = apply_order_event(order_in(Status.RESERVED), event(Trigger.PAID, version=3), LATER)
    assert step.view["history"][-1] == {"status": "paid", "at": LATER, "reason": "event paid v3"}


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        ({"event": "paid", "at": NOW}, RejectReason.INVALID_SCHEMA, "order_id"),
        ({"order_id": "o-1", "event": "shipped", "at": NOW}, RejectReason.INVALID_SCHEMA, "event"),
        ({"order_id": "o-1", "event": "paid"}, RejectReason.INVALID_SCHEMA, "at"),
        ({"order_id": "o-1", "event": "paid", "at": "noon"}, RejectReason.INVALID_SCHEMA, "at"),
        (
            {"order_id": "o-1", "event": "partially_fulfilled", "at": NOW},
            RejectReason.INVALID_SCHEMA,
            "needs lines",
        ),
        (
            {"order_id": "o-1", "event": "paid", "at": NOW, "version": "7"},
            RejectReason.INVALID_SCHEMA,
            "version",
        ),
        ({"order_id": "o-2", "event": "paid", "at": NOW}, RejectReason.KEY_MISMATCH, "o-2"),
    ],
)
def test_invalid_order_events_are_refused_with_a_reason(
    payload: dict[str, Any], reason: RejectReason, detail: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_order_event(payload, key="o-1")
    assert caught.value.reason is reason
    assert detail in caught.value.detail


def test_event_round_trips_through_json() -> None:
    parsed = event(Trigger.PARTIALLY_REFUNDED, version=2)
    assert parse_order_event(parsed.to_json()) == parsed
    assert parsed.lines == (OrderLine("A", 1),)
