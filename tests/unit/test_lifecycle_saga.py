"""The saga on the order's side: gather per-line answers, all-or-nothing, deadlines, expiry."""

from __future__ import annotations

from typing import Any

from cartloom.domain.ledger import (
    Fence,
    FencePassed,
    Release,
    ReleaseReason,
    Reserve,
    ReserveOutcome,
    ReserveResult,
)
from cartloom.domain.lifecycle import StepOutcome, Trigger, apply_order_event, parse_order_event
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.saga import (
    Timeout,
    apply_reservation_result,
    next_timeout,
    parse_timeout,
    reserve_commands,
    resolve_timeout,
    settle_commands,
)

NOW = "2026-11-25T10:00:00.000+00:00"
SOON = "2026-11-25T10:00:01.000+00:00"
AFTER_DEADLINE = "2026-11-25T10:00:31.000+00:00"
TTL = 600.0


def new_order(*, upstream: bool = False) -> OrderView:
    payload: dict[str, Any] = {
        "order_id": "o-1",
        "source": "shopify" if upstream else "pos",
        "created_at": NOW,
        "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}],
        "accepted_upstream": upstream,
    }
    return new_order_view(parse_order(payload), NOW, deadline_seconds=30)


def answer(line: int, sku: str, requested: int, granted: int, available: int) -> ReserveResult:
    if granted == requested:
        outcome = ReserveOutcome.RESERVED
    else:
        outcome = ReserveOutcome.SHORT if granted == 0 else ReserveOutcome.PARTIAL
    return ReserveResult("o-1", line, sku, requested, granted, available, outcome)


def test_new_order_sends_one_reserve_per_line() -> None:
    assert reserve_commands(new_order()) == (
        Reserve("o-1", 0, "A", 2, allow_shortfall=False),
        Reserve("o-1", 1, "B", 3, allow_shortfall=False),
    )
    assert all(c.allow_shortfall for c in reserve_commands(new_order(upstream=True)))  # type: ignore[union-attr]


def test_all_lines_reserved_confirms_with_an_expiry() -> None:
    first = apply_reservation_result(new_order(), answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL)
    assert first.outcome is StepOutcome.APPLIED and first.view["status"] == "received"
    done = apply_reservation_result(first.view, answer(1, "B", 3, 3, 5), SOON, ttl_seconds=TTL)
    assert done.view["status"] == "reserved"
    assert done.view["expires_at"] == "2026-11-25T10:10:01.000+00:00"
    assert done.view["deadline_at"] is None
    assert done.commands == ()


def test_one_short_line_rejects_and_releases_the_others() -> None:
    first = apply_reservation_result(new_order(), answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL)
    step = apply_reservation_result(first.view, answer(1, "B", 3, 0, 1), SOON, ttl_seconds=TTL)
    assert step.view["status"] == "rejected"
    assert step.view["rejection"] == {
        "reason": "insufficient_stock",
        "sku": "B",
        "requested": 3,
        "available": 1,
        "short_by": 2,
    }
    assert step.view["history"][-1]["reason"] == (
        "insufficient stock: B short by 2 (requested 3, available 1)"
    )
    assert step.commands == (Release("o-1", 0, "A", ReleaseReason.REJECTED, None),)


def test_short_line_first_rejects_at_once_and_releases_the_pending_line() -> None:
    step = apply_reservation_result(new_order(), answer(1, "B", 3, 0, 0), SOON, ttl_seconds=TTL)
    assert step.view["status"] == "rejected"
    assert step.commands == (Release("o-1", 0, "A", ReleaseReason.REJECTED, None),)
    late = apply_reservation_result(step.view, answer(0, "A", 2, 2, 8), SOON, ttl_seconds=TTL)
    assert late.view["status"] == "rejected", "a late answer never revives a rejected order"
    assert late.commands == ()


def test_duplicate_answer_changes_nothing() -> None:
    first = apply_reservation_result(new_order(), answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL)
    again = apply_reservation_result(first.view, answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL)
    assert again.outcome is StepOutcome.DUPLICATE and again.view is first.view


def test_upstream_order_takes_what_there_is_and_records_oversold() -> None:
    first = apply_reservation_result(
        new_order(upstream=True), answer(0, "A", 2, 1, 1), SOON, ttl_seconds=TTL
    )
    done = apply_reservation_result(first.view, answer(1, "B", 3, 3, 3), SOON, ttl_seconds=TTL)
    assert done.view["status"] == "reserved"
    assert done.view["oversold"] == [{"line": 0, "sku": "A", "short_by": 1}]
    assert done.view["expires_at"] is None, "Shopify owns the life of orders it accepted"
    assert "oversold by 1" in (done.view["history"][-1]["reason"] or "")


def test_deadline_fences_a_channel_order_and_a_fence_answer_rejects_what_is_still_pending() -> None:
    view = new_order()
    assert next_timeout(view) == (Timeout.DEADLINE, view["deadline_at"])
    half = apply_reservation_result(view, answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL).view
    early = resolve_timeout(half, Timeout.DEADLINE, AFTER_DEADLINE, clock=SOON, ttl_seconds=TTL)
    assert early.outcome is StepOutcome.IGNORED
    step = resolve_timeout(
        half, Timeout.DEADLINE, AFTER_DEADLINE, clock=AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert step.view["status"] == "received", "a late answer is not a missing one"
    assert step.view["deadline_at"] is None and next_timeout(step.view) is None
    assert step.commands == (Reserve("o-1", 1, "B", 3), Fence("o-1", 1, "B"))
    again = resolve_timeout(
        step.view, Timeout.DEADLINE, AFTER_DEADLINE, clock=AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert again.outcome is StepOutcome.DUPLICATE  # the agent repeats the fence (settle)
    assert settle_commands(step.view) == step.commands
    passed = apply_reservation_result(
        step.view, FencePassed("o-1", 1, "B"), AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert passed.view["status"] == "rejected"
    assert passed.view["rejection"]["reason"] == "deadline"  # type: ignore[index]
    assert passed.view["history"][-1]["reason"] == (
        "reservation deadline passed and B never answered line 1"
    )
    assert passed.commands == (
        Release("o-1", 0, "A", ReleaseReason.DEADLINE, None),
        Release("o-1", 1, "B", ReleaseReason.DEADLINE, None),
    )


def test_a_late_answer_before_the_fence_answer_reserves_the_fenced_order() -> None:
    view = apply_reservation_result(new_order(), answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL)
    fenced = resolve_timeout(
        view.view, Timeout.DEADLINE, AFTER_DEADLINE, clock=AFTER_DEADLINE, ttl_seconds=TTL
    ).view
    late = apply_reservation_result(
        fenced, answer(1, "B", 3, 3, 5), AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert late.view["status"] == "reserved"
    after = apply_reservation_result(
        late.view, FencePassed("o-1", 1, "B"), AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert after.outcome is StepOutcome.IGNORED and after.view is late.view


def test_deadline_confirms_an_upstream_order_and_sends_its_unanswered_reserves_again() -> None:
    view = new_order(upstream=True)
    half = apply_reservation_result(view, answer(0, "A", 2, 2, 10), SOON, ttl_seconds=TTL).view
    step = resolve_timeout(
        half, Timeout.DEADLINE, AFTER_DEADLINE, clock=AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert step.view["status"] == "reserved"
    assert step.commands == (Reserve("o-1", 1, "B", 3, allow_shortfall=True),)
    assert "1 line(s) unanswered" in (step.view["history"][-1]["reason"] or "")
    assert settle_commands(step.view) == step.commands, "repeated until the answer comes"
    late = apply_reservation_result(
        step.view, answer(1, "B", 3, 3, 3), AFTER_DEADLINE, ttl_seconds=TTL
    )
    assert late.view["reservations"][1]["granted"] == 3 and settle_commands(late.view) == ()


def test_unpaid_reservation_expires_on_its_clock_and_is_released() -> None:
    view = new_order()
    for result in (answer(0, "A", 2, 2, 9), answer(1, "B", 3, 3, 9)):
        view = apply_reservation_result(view, result, NOW, ttl_seconds=60).view
    expires = view["expires_at"]
    assert expires is not None and next_timeout(view) == (Timeout.EXPIRE, expires)
    later = "2026-11-25T10:01:00.001+00:00"
    for clock in (None, SOON):  # the lifecycle events are read only up to before the expiry
        held = resolve_timeout(view, Timeout.EXPIRE, later, clock=clock, ttl_seconds=60)
        assert held.outcome is StepOutcome.IGNORED and held.view is view
    step = resolve_timeout(view, Timeout.EXPIRE, later, clock=later, ttl_seconds=60)
    assert step.view["status"] == "expired"
    assert step.commands == (
        Release("o-1", 0, "A", ReleaseReason.EXPIRED, None),
        Release("o-1", 1, "B", ReleaseReason.EXPIRED, None),
    )
    assert next_timeout(step.view) is None


def test_paid_reservation_never_expires() -> None:
    view = new_order()
    for result in (answer(0, "A", 2, 2, 9), answer(1, "B", 3, 3, 9)):
        view = apply_reservation_result(view, result, NOW, ttl_seconds=60).view
    paid = apply_order_event(
        view, parse_order_event({"order_id": "o-1", "event": "paid", "at": SOON}), SOON
    )
    assert paid.view["expires_at"] is None and next_timeout(paid.view) is None
    late = "2026-11-26T00:00:00+00:00"
    step = resolve_timeout(paid.view, Timeout.EXPIRE, late, clock=late, ttl_seconds=60)
    assert step.outcome is StepOutcome.IGNORED


def test_events_deferred_during_reservation_apply_once_it_resolves() -> None:
    paid_event = parse_order_event({"order_id": "o-1", "event": Trigger.PAID.value, "at": SOON})
    waiting = apply_order_event(new_order(), paid_event, SOON).view
    view = apply_reservation_result(waiting, answer(0, "A", 2, 2, 9), SOON, ttl_seconds=TTL).view
    done = apply_reservation_result(view, answer(1, "B", 3, 3, 9), SOON, ttl_seconds=TTL)
    assert done.view["status"] == "paid"
    assert [h["status"] for h in done.view["history"]] == ["received", "reserved", "paid"]
    assert done.view["deferred"] == []
    assert done.view["version"] == view["version"] + 1


def test_events_deferred_then_rejected_are_refused_and_reported() -> None:
    paid_event = parse_order_event({"order_id": "o-1", "event": "paid", "at": SOON})
    waiting = apply_order_event(new_order(), paid_event, SOON).view
    step = apply_reservation_result(waiting, answer(0, "A", 2, 0, 0), SOON, ttl_seconds=TTL)
    assert step.view["status"] == "rejected"
    assert step.refused == ("o-1: paid is not allowed in status rejected",)


def test_timeout_messages_parse() -> None:
    assert parse_timeout({"order_id": "o-1", "kind": "expire"}, key="o-1") == (
        "o-1",
        Timeout.EXPIRE,
    )


def test_settle_commands_repeat_what_the_state_implies() -> None:
    from cartloom.domain.ledger import Commit

    fresh = new_order()
    assert settle_commands(fresh) == reserve_commands(fresh)
    half = apply_reservation_result(fresh, answer(0, "A", 2, 2, 9), NOW, ttl_seconds=TTL).view
    assert settle_commands(half) == (Reserve("o-1", 1, "B", 3, allow_shortfall=False),)
    reserved = apply_reservation_result(half, answer(1, "B", 3, 3, 9), NOW, ttl_seconds=TTL).view
    assert settle_commands(reserved) == ()
    shipped = apply_order_event(
        reserved,
        parse_order_event(
            {
                "order_id": "o-1",
                "event": "partially_fulfilled",
                "at": SOON,
                "lines": [{"sku": "A", "quantity": 1}],
            }
        ),
        SOON,
    ).view
    assert settle_commands(shipped) == (Commit("o-1", 0, "A", 1),)
    cancelled = apply_order_event(
        shipped, parse_order_event({"order_id": "o-1", "event": "cancelled", "at": SOON}), SOON
    ).view
    assert settle_commands(cancelled) == (
        Commit("o-1", 0, "A", 1),
        Release("o-1", 0, "A", ReleaseReason.CANCELLED, None),
        Release("o-1", 1, "B", ReleaseReason.CANCELLED, None),
    )


def test_next_timeout_is_the_deadline_then_the_expiry_then_never() -> None:
    view = new_order()
    assert next_timeout(view) == (Timeout.DEADLINE, view["deadline_at"])
    for result in (answer(0, "A", 2, 2, 9), answer(1, "B", 3, 3, 9)):
        view = apply_reservation_result(view, result, NOW, ttl_seconds=60).view
    assert next_timeout(view) == (Timeout.EXPIRE, view["expires_at"])
    later = "2026-11-25T10:01:00.001+00:00"
    expired = resolve_timeout(view, Timeout.EXPIRE, later, clock=later, ttl_seconds=60)
    assert next_timeout(expired.view) is None
