"""Hypothesis: deadlines that fire at any moment never reject an order whose answer is only late.

The whole saga is simulated: orders and their reserves, the stock side applying commands
in each SKU's partition order, answers travelling back in that order, and the deadline
nudge of any order arriving at any moment (a backlog, a stopped stock worker). Some
reserves are "poisoned": the stock side never answers them (a bug dead-letters the item).
"""

from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from cartloom.domain.inventory import InventoryView, StockLevel, apply_stock, empty_inventory
from cartloom.domain.ledger import (
    Answer,
    Command,
    Fence,
    LedgerEntry,
    Reserve,
    apply_command,
    entry_key,
    held,
    pass_fence,
)
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.saga import (
    Timeout,
    apply_reservation_result,
    reserve_commands,
    resolve_timeout,
)

NOW = "2026-11-25T10:00:00.000+00:00"
AFTER_DEADLINE = "2026-11-25T10:01:00.000+00:00"
SKUS = "AB"


class Saga:
    """One order partition, one partition per SKU, FIFO both ways."""

    def __init__(self, units: int, poisoned: set[tuple[str, int]]) -> None:
        self.stocks: dict[str, InventoryView] = {
            sku: apply_stock(empty_inventory(sku, NOW), StockLevel(sku, units), offset=0, now=NOW)[
                0
            ]
            for sku in SKUS
        }
        self.entries: dict[str, LedgerEntry] = {}
        self.views: dict[str, OrderView] = {}
        self.commands: dict[str, deque[Command]] = {sku: deque() for sku in SKUS}
        self.answers: dict[str, deque[Answer]] = {sku: deque() for sku in SKUS}
        self.poisoned = poisoned

    def place(self, order_id: str, lines: list[tuple[str, int]]) -> None:
        payload = {
            "order_id": order_id,
            "source": "pos",
            "created_at": NOW,
            "lines": [{"sku": s, "quantity": q} for s, q in lines],
        }
        view = self.views[order_id] = new_order_view(parse_order(payload), NOW, deadline_seconds=30)
        self.send(reserve_commands(view))

    def send(self, commands: tuple[Command, ...]) -> None:
        for command in commands:
            self.commands[command.sku].append(command)

    def stock_side(self, sku: str) -> None:
        command = self.commands[sku].popleft()
        if isinstance(command, Fence):
            self.answers[sku].append(pass_fence(command))
            return
        if isinstance(command, Reserve) and (command.order_id, command.line) in self.poisoned:
            return  # dead-lettered: no answer, no change
        key = entry_key(command.order_id, command.line)
        step = apply_command(self.stocks[sku], self.entries.get(key), command, NOW)
        self.stocks[sku], self.entries[key] = step.stock, step.entry
        if step.result is not None:
            self.answers[sku].append(step.result)

    def order_side(self, sku: str) -> None:
        answer = self.answers[sku].popleft()
        view = self.views[answer.order_id]
        step = apply_reservation_result(view, answer, AFTER_DEADLINE, ttl_seconds=0)
        self.views[answer.order_id] = step.view
        self.send(step.commands)

    def deadline(self, order_id: str) -> None:
        view = self.views[order_id]
        kind, now = Timeout.DEADLINE, AFTER_DEADLINE
        step = resolve_timeout(view, kind, now, clock=now, ttl_seconds=0)
        self.views[order_id] = step.view
        self.send(step.commands)

    def due(self) -> list[str]:
        return [o for o, v in self.views.items() if v["status"] == "received" and v["deadline_at"]]

    def run(self, rnd: random.Random) -> None:
        while True:
            moves = [("stock", s) for s in SKUS if self.commands[s]]
            moves += [("order", s) for s in SKUS if self.answers[s]]
            due = self.due()
            if due and (not moves or rnd.random() < 0.2):
                self.deadline(rnd.choice(due))  # the timer's nudge: at any moment
                continue
            if not moves:
                return
            side, sku = rnd.choice(moves)
            (self.stock_side if side == "stock" else self.order_side)(sku)


lines_of = st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 3)), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(lines_of, min_size=1, max_size=8),
    st.integers(0, 12),
    st.sets(st.tuples(st.integers(0, 7), st.integers(0, 2)), max_size=3),
    st.randoms(use_true_random=False),
)
def test_deadlines_reject_only_what_the_stock_side_never_answers(
    order_lines: list[list[tuple[str, int]]],
    units: int,
    poison: set[tuple[int, int]],
    rnd: random.Random,
) -> None:
    poisoned = {(f"o{n}", line) for n, line in poison if n < len(order_lines)}
    saga = Saga(units, poisoned)
    for n, lines in enumerate(order_lines):
        saga.place(f"o{n}", lines)
    saga.run(rnd)

    for order_id, view in saga.views.items():
        assert view["status"] in ("reserved", "rejected"), "no order waits forever"
        lines = {(order_id, ln["line"]) for ln in view["reservations"]}
        if view["status"] == "rejected" and view["rejection"]["reason"] == "deadline":  # type: ignore[index]
            assert lines & poisoned, "the deadline rejects only a line that never got an answer"
        if view["status"] == "reserved":
            assert not lines & poisoned
            assert all(ln["granted"] == ln["requested"] for ln in view["reservations"])
    for sku, stock in saga.stocks.items():
        assert stock["reserved"] == sum(held(e) for e in saga.entries.values() if e["sku"] == sku)
        held_by_reserved = sum(
            ln["granted"] or 0
            for view in saga.views.values()
            if view["status"] == "reserved"
            for ln in view["reservations"]
            if ln["sku"] == sku
        )
        assert stock["reserved"] == held_by_reserved, "no unit leaked, none oversold"
        assert stock["available"] >= 0
