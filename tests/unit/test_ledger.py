"""The reservation ledger and the stock model: every operation, its idempotence, its edges."""

from __future__ import annotations

from typing import Any

import pytest

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.inventory import (
    InventoryView,
    StockAdjustment,
    StockLevel,
    StockOutcome,
    apply_stock,
    empty_inventory,
    parse_stock_message,
)
from cartloom.domain.ledger import (
    Commit,
    Fence,
    FencePassed,
    LedgerEntry,
    Release,
    ReleaseReason,
    Reserve,
    ReserveOutcome,
    apply_command,
    command_to_json,
    parse_command,
    parse_result,
    pass_fence,
    reserve_result,
    result_to_json,
)

NOW = "2026-11-25T10:00:00+00:00"


def stock(on_hand: int) -> InventoryView:
    view, _ = apply_stock(empty_inventory("A", NOW), StockLevel("A", on_hand), offset=0, now=NOW)
    return view


def reserve(qty: int, *, line: int = 0, shortfall: bool = False) -> Reserve:
    return Reserve("o-1", line, "A", qty, allow_shortfall=shortfall)


def counts(view: InventoryView) -> tuple[int, int, int]:
    return view["on_hand"], view["reserved"], view["available"]


def test_reserve_takes_units_and_repeats_the_same_answer() -> None:
    step = apply_command(stock(10), None, reserve(4), NOW)
    assert counts(step.stock) == (10, 4, 6)
    assert step.result is not None and step.result.outcome is ReserveOutcome.RESERVED
    again = apply_command(step.stock, step.entry, reserve(4), NOW)
    assert not again.changed
    assert counts(again.stock) == (10, 4, 6)
    assert again.result == step.result


def test_reserve_short_takes_nothing_without_shortfall() -> None:
    step = apply_command(stock(3), None, reserve(5), NOW)
    assert counts(step.stock) == (3, 0, 3)
    assert step.result is not None
    assert (step.result.outcome, step.result.granted, step.result.available) == (
        ReserveOutcome.SHORT,
        0,
        3,
    )


def test_reserve_with_shortfall_takes_what_there_is_and_counts_oversold() -> None:
    step = apply_command(stock(3), None, reserve(5, shortfall=True), NOW)
    assert counts(step.stock) == (3, 3, 0)
    assert step.stock["oversold"] == 2
    assert step.result is not None and step.result.outcome is ReserveOutcome.PARTIAL
    assert step.result.short_by == 2


def test_commit_drops_on_hand_and_reserved_idempotently() -> None:
    taken = apply_command(stock(10), None, reserve(4), NOW)
    part = apply_command(taken.stock, taken.entry, Commit("o-1", 0, "A", 1), NOW)
    assert counts(part.stock) == (9, 3, 6)
    assert part.committed == 1
    full = apply_command(part.stock, part.entry, Commit("o-1", 0, "A", 4), NOW)
    assert counts(full.stock) == (6, 0, 6)
    again = apply_command(full.stock, full.entry, Commit("o-1", 0, "A", 4), NOW)
    assert not again.changed
    assert counts(again.stock) == (6, 0, 6)
    beyond = apply_command(full.stock, full.entry, Commit("o-1", 0, "A", 9), NOW)
    assert not beyond.changed, "never commits more than was granted"


@pytest.mark.parametrize("reason", list(ReleaseReason))
def test_release_gives_units_back_once(reason: ReleaseReason) -> None:
    taken = apply_command(stock(10), None, reserve(4), NOW)
    released = apply_command(taken.stock, taken.entry, Release("o-1", 0, "A", reason), NOW)
    assert counts(released.stock) == (10, 0, 10)
    assert released.released == 4
    assert released.entry["reason"] == reason.value
    again = apply_command(released.stock, released.entry, Release("o-1", 0, "A", reason), NOW)
    assert not again.changed


def test_partial_release_is_an_absolute_total() -> None:
    taken = apply_command(stock(10), None, reserve(4), NOW)
    one = apply_command(
        taken.stock, taken.entry, Release("o-1", 0, "A", ReleaseReason.REFUNDED, 1), NOW
    )
    assert counts(one.stock) == (10, 3, 7)
    same = apply_command(
        one.stock, one.entry, Release("o-1", 0, "A", ReleaseReason.REFUNDED, 1), NOW
    )
    assert not same.changed


def test_release_after_commit_only_frees_what_did_not_ship() -> None:
    taken = apply_command(stock(10), None, reserve(4), NOW)
    shipped = apply_command(taken.stock, taken.entry, Commit("o-1", 0, "A", 3), NOW)
    released = apply_command(
        shipped.stock, shipped.entry, Release("o-1", 0, "A", ReleaseReason.CANCELLED), NOW
    )
    assert counts(released.stock) == (7, 0, 7)


def test_release_before_reserve_leaves_a_tombstone_that_refuses_the_late_reserve() -> None:
    tomb = apply_command(stock(10), None, Release("o-1", 0, "A", ReleaseReason.DEADLINE), NOW)
    assert tomb.changed and counts(tomb.stock) == (10, 0, 10)
    late = apply_command(tomb.stock, tomb.entry, reserve(4), NOW)
    assert counts(late.stock) == (10, 0, 10)
    assert late.result is not None and late.result.outcome is ReserveOutcome.REFUSED
    again = apply_command(late.stock, late.entry, reserve(4), NOW)
    assert not again.changed and again.result == late.result


def test_commit_without_reservation_changes_no_stock() -> None:
    step = apply_command(stock(5), None, Commit("o-1", 0, "A", 2), NOW)
    assert counts(step.stock) == (5, 0, 5)


def test_commands_and_results_round_trip_through_json() -> None:
    for command in (
        reserve(2, shortfall=True),
        Commit("o-1", 1, "A", 3),
        Release("o-1", 2, "A", ReleaseReason.EXPIRED),
        Release("o-1", 2, "A", ReleaseReason.REFUNDED, 1),
        Fence("o-1", 2, "A"),
    ):
        assert parse_command(command_to_json(command), key="A") == command
    entry: LedgerEntry = apply_command(stock(1), None, reserve(2), NOW).entry
    result = reserve_result(entry)
    assert parse_result(result_to_json(result), key="o-1") == result
    passed = pass_fence(Fence("o-1", 2, "A"))
    assert passed == FencePassed("o-1", 2, "A")
    assert parse_result(result_to_json(passed), key="o-1") == passed


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"type": "reserve", "order_id": "o", "line": 0, "sku": "A"}, "quantity"),
        ({"type": "steal", "order_id": "o", "line": 0, "sku": "A"}, "unknown command"),
        ({"type": "release", "order_id": "o", "line": 0, "sku": "A", "reason": "x"}, "reason"),
        ({"type": "commit", "order_id": "o", "line": -1, "sku": "A", "total": 1}, "line"),
    ],
)
def test_invalid_commands_are_refused(payload: dict[str, Any], detail: str) -> None:
    with pytest.raises(InvalidInput, match=detail):
        parse_command(payload, key="A")


# --- stock messages -------------------------------------------------------------------


def test_absolute_level_replaces_on_hand_and_keeps_reservations() -> None:
    taken = apply_command(stock(10), None, reserve(4), NOW).stock
    view, outcome = apply_stock(taken, StockLevel("A", 6), offset=1, now=NOW)
    assert outcome is StockOutcome.APPLIED
    assert counts(view) == (6, 4, 2)
    assert view["version"] == taken["version"] + 1


def test_adjustment_adds_and_never_drops_on_hand_below_zero() -> None:
    view, _ = apply_stock(stock(2), StockAdjustment("A", 5), offset=1, now=NOW)
    assert view["on_hand"] == 7
    view, _ = apply_stock(view, StockAdjustment("A", -10), offset=2, now=NOW)
    assert view["on_hand"] == 0


def test_redelivered_stock_message_changes_nothing() -> None:
    view, _ = apply_stock(stock(2), StockAdjustment("A", 5), offset=7, now=NOW)
    again, outcome = apply_stock(view, StockAdjustment("A", 5), offset=7, now=NOW)
    assert outcome is StockOutcome.DUPLICATE and again is view


def test_a_forwarded_adjustment_forwarded_again_after_a_crash_applies_once() -> None:
    # The copy from partition 3 offset 40 landed at offset 7; the forwarder crashed before
    # committing and forwarded offset 40 again (offset 9), then offset 41 (offset 10).
    view, _ = apply_stock(
        stock(2), StockAdjustment("A", 5), offset=7, now=NOW, forwarded_from=(3, 40)
    )
    again, outcome = apply_stock(
        view, StockAdjustment("A", 5), offset=9, now=NOW, forwarded_from=(3, 40)
    )
    assert outcome is StockOutcome.DUPLICATE and again is view
    later, outcome = apply_stock(
        view, StockAdjustment("A", 1), offset=10, now=NOW, forwarded_from=(3, 41)
    )
    assert outcome is StockOutcome.APPLIED and later["on_hand"] == 8


def test_forwarded_copies_from_other_partitions_and_direct_messages_count_apart() -> None:
    view, _ = apply_stock(
        stock(2), StockAdjustment("A", 5), offset=7, now=NOW, forwarded_from=(3, 40)
    )
    other, outcome = apply_stock(
        view, StockAdjustment("A", 5), offset=8, now=NOW, forwarded_from=(5, 12)
    )
    assert outcome is StockOutcome.APPLIED and other["on_hand"] == 12
    direct, outcome = apply_stock(other, StockAdjustment("A", 1), offset=9, now=NOW)
    assert outcome is StockOutcome.APPLIED and direct["on_hand"] == 13
    assert direct["forwarded_offsets"] == {"3": 40, "5": 12}


def test_older_level_is_stale_per_location() -> None:
    base = empty_inventory("A", NOW)
    new, _ = apply_stock(base, StockLevel("A", 5, "wh1", "2026-11-25T10:00:00Z"), offset=1, now=NOW)
    other, _ = apply_stock(
        new, StockLevel("A", 3, "wh2", "2026-11-25T09:00:00Z"), offset=2, now=NOW
    )
    assert other["locations"] == {"wh1": 5, "wh2": 3}
    assert other["on_hand"] == 8
    old, outcome = apply_stock(
        other, StockLevel("A", 1, "wh1", "2026-11-25T09:59:00Z"), offset=3, now=NOW
    )
    assert outcome is StockOutcome.STALE and old is other


def test_level_below_reservations_shows_negative_available() -> None:
    taken = apply_command(stock(10), None, reserve(8), NOW).stock
    view, _ = apply_stock(taken, StockLevel("A", 5), offset=1, now=NOW)
    assert counts(view) == (5, 8, -3)
    refused = apply_command(view, None, reserve(1, line=1), NOW)
    assert refused.result is not None and refused.result.outcome is ReserveOutcome.SHORT


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        ({"sku": "A"}, RejectReason.INVALID_SCHEMA, "exactly one"),
        ({"sku": "A", "on_hand": 1, "delta": 1}, RejectReason.INVALID_SCHEMA, "exactly one"),
        ({"sku": "A", "on_hand": -1}, RejectReason.INVALID_SCHEMA, "on_hand"),
        ({"sku": "A", "delta": 0}, RejectReason.INVALID_SCHEMA, "delta"),
        ({"sku": "A", "delta": 1.5}, RejectReason.INVALID_SCHEMA, "delta"),
        (
            {"sku": "A", "on_hand": 1, "updated_at": "today"},
            RejectReason.INVALID_SCHEMA,
            "updated_at",
        ),
        ({"sku": "B", "on_hand": 1}, RejectReason.KEY_MISMATCH, "B"),
        ({"on_hand": 1}, RejectReason.INVALID_SCHEMA, "sku"),
    ],
)
def test_invalid_stock_messages_are_refused(
    payload: dict[str, Any], reason: RejectReason, detail: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_stock_message(payload, key="A")
    assert caught.value.reason is reason
    assert detail in caught.value.detail


def test_stock_messages_parse() -> None:
    assert parse_stock_message({"sku": "A", "on_hand": 4, "location": "wh1"}) == StockLevel(
        "A", 4, "wh1"
    )
    assert parse_stock_message({"sku": "A", "delta": -2}) == StockAdjustment("A", -2)


def test_replayed_level_is_a_duplicate_even_after_stock_moved() -> None:
    level = StockLevel("A", 10, None, "2026-11-25T10:00:00Z")
    view, _ = apply_stock(empty_inventory("A", NOW), level, offset=1, now=NOW)
    taken = apply_command(view, None, reserve(4), NOW)
    shipped = apply_command(taken.stock, taken.entry, Commit("o-1", 0, "A", 4), NOW).stock
    again, outcome = apply_stock(shipped, level, offset=9, now=NOW)
    assert outcome is StockOutcome.DUPLICATE and again is shipped
    _, outcome = apply_stock(stock(5), StockLevel("A", 5), offset=9, now=NOW)
    assert outcome is StockOutcome.DUPLICATE


def test_replayed_adjustment_with_an_id_is_a_duplicate() -> None:
    update = parse_stock_message({"sku": "A", "delta": 5, "adjustment_id": "restock-7"})
    view, outcome = apply_stock(stock(2), update, offset=5, now=NOW)
    assert outcome is StockOutcome.APPLIED and view["on_hand"] == 7
    again, outcome = apply_stock(view, update, offset=12, now=NOW)
    assert outcome is StockOutcome.DUPLICATE and again is view
