"""Events that overtook their order: holding, the bound, the expiry, and applying them once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cartloom.domain.early_events import (
    EventOrigin,
    HeldEventsView,
    HoldOutcome,
    apply_held_events,
    expired_events,
    held_due_at,
    hold_event,
    over_limit,
    parse_held_nudge,
    without_events,
)
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.ledger import Release, ReleaseReason, ReserveOutcome, ReserveResult
from cartloom.domain.lifecycle import StepOutcome, parse_order_event
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.saga import apply_reservation_result

T0 = "2026-11-25T10:00:00.000+00:00"
T1 = "2026-11-25T10:00:01.000+00:00"
T2 = "2026-11-25T10:00:02.000+00:00"
LATER = "2026-11-25T10:00:05.000+00:00"
HOLD = 60.0


def origin(offset: int) -> EventOrigin:
    return EventOrigin(topic="order.events", partition=3, offset=offset)


def held(*events: dict[str, Any], at: str = T0) -> HeldEventsView:
    """The held record after each of ``events`` arrived (at ``at``), in that order."""
    record: HeldEventsView | None = None
    for offset, body in enumerate(events):
        payload = {"order_id": "o-1", **body}
        step = hold_event(
            record, parse_order_event(payload), orjson.dumps(payload).decode(), origin(offset), at
        )
        record = step.held
    assert record is not None
    return record


def new_order() -> OrderView:
    payload = {
        "order_id": "o-1",
        "source": "pos",
        "created_at": T0,
        "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
    }
    return new_order_view(parse_order(payload), T1, deadline_seconds=30)


def reserved(view: OrderView) -> OrderView:
    """``view`` once both lines were granted (the reservation resolves)."""
    for line, sku, quantity in ((0, "A", 2), (1, "B", 1)):
        result = ReserveResult("o-1", line, sku, quantity, quantity, 10, ReserveOutcome.RESERVED)
        view = apply_reservation_result(view, result, T2, ttl_seconds=600).view
    return view


def test_holding_keeps_the_bytes_the_origin_and_arrival_order() -> None:
    record = held({"event": "paid", "at": T1}, {"event": "fulfilled", "at": T2})
    assert record["order_id"] == "o-1"
    assert [e["key"] for e in record["events"]] == [
        "paid@" + T1 + "#None",
        "fulfilled@" + T2 + "#None",
    ]
    first = record["events"][0]
    assert orjson.loads(first["raw"]) == {"order_id": "o-1", "event": "paid", "at": T1}
    assert first["origin"] == {"topic": "order.events", "partition": 3, "offset": 0}
    assert first["held_at"] == T0


def test_a_redelivered_event_is_held_once() -> None:
    record = held({"event": "paid", "at": T1})
    payload = {"order_id": "o-1", "event": "paid", "at": T1}
    again = hold_event(
        record, parse_order_event(payload), orjson.dumps(payload).decode(), origin(9), LATER
    )
    assert again.outcome is HoldOutcome.DUPLICATE
    assert again.held == record


def test_over_the_limit_the_oldest_are_given_up() -> None:
    record = held(
        *(
            {
                "event": "partially_fulfilled",
                "at": T1,
                "version": v,
                "lines": [{"sku": "A", "quantity": 1}],
            }
            for v in range(5)
        )
    )
    assert over_limit(record, 5) == ()
    assert [e["origin"]["offset"] for e in over_limit(record, 3)] == [0, 1]


def test_each_event_expires_hold_seconds_after_it_was_held() -> None:
    record = held({"event": "paid", "at": T1}, at=T0)
    later = hold_event(
        record,
        parse_order_event({"order_id": "o-1", "event": "cancelled", "at": T2}),
        "{}",
        origin(1),
        "2026-11-25T10:00:30.000+00:00",
    ).held
    assert held_due_at(later, HOLD) == "2026-11-25T10:01:00.000+00:00"  # the oldest decides
    assert expired_events(later, "2026-11-25T10:00:59.999+00:00", HOLD) == ()
    [gone] = expired_events(later, "2026-11-25T10:01:00.000+00:00", HOLD)  # due at the instant
    assert gone["key"].startswith("paid@")
    assert len(expired_events(later, "2026-11-25T10:01:30.000+00:00", HOLD)) == 2
    assert held_due_at(None, HOLD) is None


def test_without_events_removes_by_key_and_empties_to_none() -> None:
    record = held({"event": "paid", "at": T1}, {"event": "fulfilled", "at": T2})
    first, second = (e["key"] for e in record["events"])
    remaining = without_events(record, {first})
    assert remaining is not None and [e["key"] for e in remaining["events"]] == [second]
    assert without_events(record, {first, second}) is None
    assert without_events(record, set()) == record


def test_a_paid_before_its_order_is_deferred_then_applied_when_the_reservation_resolves() -> None:
    order = new_order()
    applied = apply_held_events(order, held({"event": "paid", "at": T1}), T1)
    assert applied.step.outcome is StepOutcome.APPLIED
    assert applied.outcomes == (StepOutcome.DEFERRED,)
    view = applied.step.view
    assert view["status"] == "received" and view["version"] == order["version"] + 1
    assert [d["event"] for d in view["deferred"]] == ["paid"]
    done = reserved(view)
    assert done["status"] == "paid"
    assert [h["status"] for h in done["history"]] == ["received", "reserved", "paid"]


def test_held_events_apply_in_event_order_as_one_change() -> None:
    order = reserved(new_order())
    record = held(
        {"event": "fulfilled", "at": T2, "version": 2},  # arrived first, happened later
        {"event": "paid", "at": T1, "version": 1},
    )
    applied = apply_held_events(order, record, LATER)
    assert applied.outcomes == (StepOutcome.APPLIED, StepOutcome.APPLIED)
    assert applied.step.view["status"] == "fulfilled"
    assert applied.step.view["version"] == order["version"] + 1
    assert [h["status"] for h in applied.step.view["history"]][-2:] == ["paid", "fulfilled"]


def test_a_held_cancel_applies_at_once_and_releases_every_line() -> None:
    applied = apply_held_events(new_order(), held({"event": "cancelled", "at": T1}), T1)
    assert applied.step.view["status"] == "cancelled"
    assert applied.step.commands == (
        Release("o-1", 0, "A", ReleaseReason.CANCELLED, None),
        Release("o-1", 1, "B", ReleaseReason.CANCELLED, None),
    )


@pytest.mark.parametrize("resolve", [False, True], ids=["still-received", "reserved"])
def test_applying_the_held_events_again_changes_nothing(resolve: bool) -> None:
    """A crash between writing the order and clearing its held events: applied again, no-op."""
    record = held(
        {"event": "paid", "at": T1, "version": 1}, {"event": "fulfilled", "at": T2, "version": 2}
    )
    first = apply_held_events(new_order(), record, T1).step.view
    view = reserved(first) if resolve else first
    again = apply_held_events(view, record, LATER)
    assert again.step.outcome is StepOutcome.DUPLICATE
    assert again.step.view is view
    assert again.step.commands == ()
    assert set(again.outcomes) <= {StepOutcome.DUPLICATE, StepOutcome.STALE}


def test_an_illegal_held_event_is_refused_and_recorded() -> None:
    order = reserved(new_order())
    record = held({"event": "refunded", "at": T1})  # reserved, never paid
    applied = apply_held_events(order, record, LATER)
    assert applied.step.outcome is StepOutcome.DUPLICATE  # nothing changed
    assert applied.outcomes == (StepOutcome.ILLEGAL,)
    assert applied.step.refused and "refunded is not allowed" in applied.step.refused[0]


def test_a_held_event_the_order_cannot_take_is_returned_as_invalid() -> None:
    order = reserved(new_order())
    record = held(
        {"event": "partially_fulfilled", "at": T1, "lines": [{"sku": "A", "quantity": 9}]}
    )
    applied = apply_held_events(order, record, LATER)
    [(entry, error)] = applied.invalid
    assert entry["key"] == record["events"][0]["key"]
    assert error.reason is RejectReason.INVALID_SCHEMA
    assert applied.step.view is order


def test_the_nudge_names_its_order() -> None:
    assert parse_held_nudge({"order_id": "o-1", "kind": "held_events"}, key="o-1") == "o-1"
    with pytest.raises(InvalidInput) as error:
        parse_held_nudge({"order_id": "o-1", "kind": "held_events"}, key="o-2")
    assert error.value.reason is RejectReason.KEY_MISMATCH
