"""A worker frozen past its session timeout (a zombie) cannot undo the new owner's work.

The zombie handled a batch from the changelog as it stood, then froze; the group moved
its partition to a new owner, which recovered that same state and went on. When the
zombie wakes it writes its batch's records after the new owner's. Read back as a
recovering worker reads it (:func:`cartloom.stream.faust_types.newest_records`), the changelog
must give the state one clean run gives: no unit oversold, none leaked.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cartloom.agents.inventory import StockHandler
from cartloom.domain.changelog_order import changelog_rank
from cartloom.domain.ledger import Command, Release, ReleaseReason, Reserve
from cartloom.stream.faust_types import newest_records
from tests.unit.test_stock_crash_safety import (
    SKU,
    Answers,
    ChangelogTable,
    commands,
    counted_state,
    envelope_event,
    initial_stock,
)

Changelog = list[tuple[str, Any]]


def handle(events: list[Any], ledger: dict[str, Any], stock: dict[str, Any]) -> tuple[Any, ...]:
    """One batch over the durable tables; the records it writes, per table, in order."""
    ledger_table, stock_table = ChangelogTable(ledger), ChangelogTable(stock)
    handler = StockHandler(stock_table, ledger_table, Answers())  # type: ignore[arg-type]
    for event in events:
        handler.handle(event)
    ledger_table.land()
    stock_table.land()
    return list(ledger_table.written.items()), list(stock_table.written.items())


def read_back(start: dict[str, Any], records: Changelog) -> dict[str, Any]:
    """``records`` applied over ``start`` as a recovering worker with a memory store does."""
    table = dict(start)
    events = [
        SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=b"x"))
        for key, value in records
    ]
    held = lambda key: changelog_rank(table[key]) if key in table else 0  # noqa: E731
    for event in newest_records(events, held):  # type: ignore[arg-type]
        table[event.key] = event.value
    return table


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(commands, min_size=1, max_size=3), min_size=2, max_size=12),
    st.data(),
    st.integers(0, 10),
)
def test_a_zombies_late_batch_never_outranks_the_new_owner(
    sequence: list[list[Command]], data: st.DataObject, units: int
) -> None:
    split = data.draw(st.integers(0, len(sequence) - 1), label="committed before the freeze")
    frozen = data.draw(st.integers(split + 1, len(sequence)), label="the zombie's batch ends")
    zombie_events = [
        envelope_event(group, offset)
        for offset, group in enumerate(sequence)
        if split <= offset < frozen
    ]
    owner_events = [
        envelope_event(group, offset) for offset, group in enumerate(sequence) if offset >= split
    ]

    # What the partition's changelog holds when the zombie freezes: its earlier batches.
    ledger: dict[str, Any] = {}
    stock = initial_stock(units)
    before = [envelope_event(group, offset) for offset, group in enumerate(sequence)]
    handle(before[:split], ledger, stock)
    durable_ledger, durable_stock = dict(ledger), dict(stock)

    # The zombie handles its batch on its own copy; the new owner recovers the changelog
    # as it stands and goes on from the last commit.
    zombie_ledger, zombie_stock = handle(zombie_events, dict(ledger), dict(stock))
    owner_ledger, owner_stock = handle(owner_events, ledger, stock)

    # The zombie's records land last.
    recovered_ledger = read_back(durable_ledger, owner_ledger + zombie_ledger)
    recovered_stock = read_back(durable_stock, owner_stock + zombie_stock)

    reference_ledger: dict[str, Any] = {}
    reference_stock = initial_stock(units)
    handle(
        [envelope_event(group, offset) for offset, group in enumerate(sequence)],
        reference_ledger,
        reference_stock,
    )
    assert counted_state(recovered_ledger, recovered_stock) == counted_state(
        reference_ledger, reference_stock
    )


def test_a_zombies_late_reserve_does_not_outlive_the_new_owners_release() -> None:
    """The shape the fault suite saw: the ledger held a unit its SKU's stock did not."""
    reserve = envelope_event([Reserve("o1", 0, SKU, 1)], offset=0)
    release = envelope_event([Release("o1", 0, SKU, ReleaseReason.CANCELLED, None)], offset=1)
    ledger: dict[str, Any] = {}
    stock = initial_stock(5)
    zombie = handle([reserve], dict(ledger), dict(stock))
    owner = handle([reserve], ledger, stock)
    owner_release = handle([release], ledger, stock)

    recovered_ledger = read_back({}, owner[0] + owner_release[0] + zombie[0])
    recovered_stock = read_back(initial_stock(5), owner[1] + owner_release[1] + zombie[1])

    assert recovered_ledger["o1#0"]["released"] == 1
    assert counted_state(recovered_ledger, recovered_stock)[:3] == (5, 0, 5)


def test_the_rank_of_views_and_ledger_entries() -> None:
    assert changelog_rank({"version": 5, "command_offset": 9}) == 5
    assert changelog_rank({"command_offset": 0}) == 1
    assert changelog_rank({"note": "no rank"}) == 0
    assert changelog_rank({"version": True}) == 0
