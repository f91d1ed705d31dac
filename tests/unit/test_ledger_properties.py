"""Hypothesis: ledger invariants under random commands, duplicates and stock changes,
and the whole saga (orders + ledger) never overselling."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from cartloom.domain.inventory import (
    InventoryView,
    StockAdjustment,
    StockLevel,
    apply_stock,
    empty_inventory,
)
from cartloom.domain.ledger import (
    Command,
    Commit,
    LedgerEntry,
    Release,
    ReleaseReason,
    Reserve,
    apply_command,
    entry_key,
    held,
)
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.saga import apply_reservation_result, reserve_commands

NOW = "2026-11-25T10:00:00+00:00"

orders = st.integers(min_value=0, max_value=5)
commands = st.one_of(
    st.builds(
        lambda o, q, s: Reserve(f"o{o}", 0, "A", q, allow_shortfall=s),
        orders,
        st.integers(1, 6),
        st.booleans(),
    ),
    st.builds(lambda o, t: Commit(f"o{o}", 0, "A", t), orders, st.integers(0, 6)),
    st.builds(
        lambda o, r, t: Release(f"o{o}", 0, "A", r, t),
        orders,
        st.sampled_from(list(ReleaseReason)),
        st.one_of(st.none(), st.integers(0, 6)),
    ),
)
stock_changes = st.one_of(
    st.builds(lambda n: StockLevel("A", n), st.integers(0, 20)),
    st.builds(lambda d: StockAdjustment("A", d), st.integers(-5, 10).filter(bool)),
)


def check(stock: InventoryView, entries: dict[str, LedgerEntry]) -> None:
    assert stock["reserved"] == sum(held(e) for e in entries.values())
    assert stock["reserved"] >= 0
    assert all(held(e) >= 0 for e in entries.values())
    assert all(e["granted"] <= e["requested"] for e in entries.values())
    assert stock["available"] == stock["on_hand"] - stock["reserved"]
    assert stock["on_hand"] >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(commands, stock_changes), max_size=40), st.integers(0, 20))
def test_ledger_invariants_hold_and_every_command_is_idempotent(
    steps: list[Command | StockLevel | StockAdjustment], initial: int
) -> None:
    stock, _ = apply_stock(empty_inventory("A", NOW), StockLevel("A", initial), offset=0, now=NOW)
    entries: dict[str, LedgerEntry] = {}
    for offset, step in enumerate(steps, start=1):
        if isinstance(step, StockLevel | StockAdjustment):
            stock, _ = apply_stock(stock, step, offset=offset, now=NOW)
            check(stock, entries)
            continue
        key = entry_key(step.order_id, step.line)
        before = stock["available"]
        first = apply_command(stock, entries.get(key), step, NOW)
        again = apply_command(first.stock, first.entry, step, NOW)
        assert not again.changed, "the same command twice changes nothing"
        assert again.stock == first.stock and again.entry == first.entry
        assert again.result == first.result
        stock, entries[key] = first.stock, first.entry
        check(stock, entries)
        if isinstance(step, Reserve) and not step.allow_shortfall and before >= 0:
            assert stock["available"] >= 0, "a channel reserve never makes available negative"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from("AB"), st.integers(1, 4)), min_size=1, max_size=2),
        max_size=12,
    ),
    st.integers(0, 10),
    st.randoms(use_true_random=False),
)
def test_saga_never_oversells_and_rejected_orders_hold_nothing(
    order_lines: list[list[tuple[str, int]]], units: int, rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    stocks = {
        sku: apply_stock(empty_inventory(sku, NOW), StockLevel(sku, units), offset=0, now=NOW)[0]
        for sku in "AB"
    }
    entries: dict[str, LedgerEntry] = {}
    views: dict[str, OrderView] = {}
    queues: dict[str, deque[Command]] = {"A": deque(), "B": deque()}
    answers: list[object] = []
    for n, lines in enumerate(order_lines):
        payload = {
            "order_id": f"o{n}",
            "source": "pos",
            "created_at": NOW,
            "lines": [{"sku": s, "quantity": q} for s, q in lines],
        }
        views[f"o{n}"] = new_order_view(parse_order(payload), NOW)
        for command in reserve_commands(views[f"o{n}"]):
            queues[command.sku].append(command)
            if rnd.random() < 0.3:
                queues[command.sku].append(command)  # a redelivery
    while any(queues.values()) or answers:
        choices = [s for s in queues if queues[s]] + (["answers"] if answers else [])
        pick = rnd.choice(choices)
        if pick == "answers":
            result = answers.pop(rnd.randrange(len(answers)))
            step = apply_reservation_result(views[result.order_id], result, NOW, ttl_seconds=0)  # type: ignore[attr-defined]
            views[step.view["order_id"]] = step.view
            for command in step.commands:
                queues[command.sku].append(command)
            continue
        command = queues[pick].popleft()
        key = entry_key(command.order_id, command.line)
        ledger = apply_command(stocks[pick], entries.get(key), command, NOW)
        stocks[pick], entries[key] = ledger.stock, ledger.entry
        if ledger.result is not None:
            answers.append(ledger.result)
    for sku, stock in stocks.items():
        assert stock["reserved"] <= units, "never more reserved than there is"
        assert stock["available"] >= 0
        held_by_reserved = sum(
            line["granted"] or 0
            for view in views.values()
            if view["status"] == "reserved"
            for line in view["reservations"]
            if line["sku"] == sku
        )
        assert stock["reserved"] == held_by_reserved, "only reserved orders hold stock"
    for view in views.values():
        assert view["status"] in ("reserved", "rejected")
        if view["status"] == "reserved":
            assert all(line["granted"] == line["requested"] for line in view["reservations"])
