"""The stock agent under crashes: a batch's ledger and stock writes, cut anywhere, then replayed.

A batch of ledger commands changes two changelog topics, the reservation ledger and the
SKU's stock. A worker can die after the first write and before the second; the commands
were not acknowledged, so a worker that rebuilt its tables from the changelogs reads them
again. Whatever the cut, the stock and the entries it counts must end as if every
command had been applied exactly once (no unit oversold, none leaked). The handler is
driven with in-memory tables whose "durable" copy is what the changelogs would hold.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cartloom.agents.inventory import StockHandler
from cartloom.domain.inventory import empty_inventory, with_counts
from cartloom.domain.ledger import (
    Command,
    Commit,
    Release,
    ReleaseReason,
    Reserve,
    command_to_json,
    effective_entry,
    held,
)
from cartloom.stream.app import topology
from cartloom.stream.batching import partition_for

SKU = "A"
NOW = "2026-12-03T10:00:00+00:00"


class ChangelogTable:
    """A table as one worker sees it: its durable changelog, and the batch's writes on top."""

    def __init__(self, durable: dict[str, Any]) -> None:
        self.durable = durable
        self.written: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.written.get(key, self.durable.get(key))

    def put(self, key: str, value: Any, partition: int) -> None:
        self.written[key] = value

    def land(self) -> None:
        """The batch's changelog write reached the broker."""
        self.durable.update(self.written)


class Answers:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def add_to_envelope(self, topic: Any, key: str, field: str, item: dict[str, Any]) -> None:
        self.results.append(item)

    def add(self, topic: Any, key: str, value: dict[str, Any]) -> None:
        pass


def command_event(command: Command, offset: int) -> Any:
    message = SimpleNamespace(topic="inventory.commands", partition=0, offset=offset, tp=None)
    return SimpleNamespace(
        key=command.sku.encode(), value=orjson.dumps(command_to_json(command)), message=message
    )


def envelope_event(commands: list[Command], offset: int) -> Any:
    """One ``inventory.commands`` record carrying several commands (the saga's envelope)."""
    if len(commands) == 1:
        return command_event(commands[0], offset)
    partition = partition_for(SKU, topology.topic("inventory.commands").partitions)
    message = SimpleNamespace(
        topic="inventory.commands", partition=partition, offset=offset, tp=None
    )
    body = {"commands": [command_to_json(command) for command in commands]}
    return SimpleNamespace(key=SKU.encode(), value=orjson.dumps(body), message=message)


def run_batch(
    events: list[Any], ledger: dict[str, Any], stock: dict[str, Any], cut: str
) -> list[dict[str, Any]]:
    """Handle ``events`` as one batch over the durable tables; ``cut`` says what lands."""
    ledger_table, stock_table, answers = ChangelogTable(ledger), ChangelogTable(stock), Answers()
    handler = StockHandler(stock_table, ledger_table, answers)  # type: ignore[arg-type]
    for event in events:
        handler.handle(event)
    assert not handler.failed_items
    if cut in ("after_ledger", "none"):
        ledger_table.land()  # the ledger is written, and acknowledged, first
    if cut == "none":
        stock_table.land()
        return answers.results
    return []  # the worker died: its answers were never sent


def counted_state(ledger: dict[str, Any], stock: dict[str, Any]) -> tuple[Any, ...]:
    view = stock[SKU]
    entries = {k: effective_entry(e, view) for k, e in ledger.items()}
    counted = {
        k: (e["granted"], e["committed"], e["released"], e["outcome"])
        for k, e in entries.items()
        if e is not None
    }
    assert view["reserved"] == sum(held(e) for e in entries.values() if e is not None)
    return (view["on_hand"], view["reserved"], view["available"], view["oversold"], counted)


def initial_stock(units: int) -> dict[str, Any]:
    return {SKU: with_counts(empty_inventory(SKU, NOW), on_hand=units, reserved=0, now=NOW)}


orders = st.integers(min_value=0, max_value=4)
lines = st.integers(min_value=0, max_value=1)
commands = st.one_of(
    st.builds(
        lambda o, line, q, s: Reserve(f"o{o}", line, SKU, q, allow_shortfall=s),
        orders,
        lines,
        st.integers(1, 4),
        st.booleans(),
    ),
    st.builds(lambda o, line, t: Commit(f"o{o}", line, SKU, t), orders, lines, st.integers(0, 4)),
    st.builds(
        lambda o, line, t: Release(f"o{o}", line, SKU, ReleaseReason.CANCELLED, t),
        orders,
        lines,
        st.one_of(st.none(), st.integers(0, 4)),
    ),
)
# Each round: how many events the batch takes, what of its writes lands, whether the
# consumer then commits (a crash re-reads everything since the last commit).
rounds = st.lists(
    st.tuples(
        st.integers(1, 4), st.sampled_from(["none", "after_ledger", "nothing"]), st.booleans()
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(commands, min_size=1, max_size=3), min_size=1, max_size=10),
    rounds,
    st.integers(0, 10),
)
def test_any_cut_between_the_two_writes_ends_as_one_clean_run(
    sequence: list[list[Command]], plan: list[tuple[int, str, bool]], units: int
) -> None:
    # Each record carries one to three commands: the saga sends a SKU's lines as one envelope.
    events = [envelope_event(group, offset) for offset, group in enumerate(sequence)]
    reference_ledger: dict[str, Any] = {}
    reference_stock = initial_stock(units)
    run_batch(events, reference_ledger, reference_stock, "none")

    ledger: dict[str, Any] = {}
    stock = initial_stock(units)
    committed = position = 0
    for size, cut, commits in plan:
        if position >= len(events):
            break
        run_batch(events[position : position + size], ledger, stock, cut)
        if cut == "none":
            position += size
            committed = position if commits else committed
        else:  # the worker died: the next one starts from the last committed offset
            position = committed
    run_batch(events[position:], ledger, stock, "none")

    assert counted_state(ledger, stock) == counted_state(reference_ledger, reference_stock)


def test_a_reserve_whose_stock_write_was_lost_is_held_when_read_again() -> None:
    """The case of finding 2: on the old path the replayed reserve counted as done."""
    ledger: dict[str, Any] = {}
    stock = initial_stock(5)
    reserve = command_event(Reserve("o1", 0, SKU, 3), offset=7)

    assert run_batch([reserve], ledger, stock, "after_ledger") == []
    answers = run_batch([reserve], ledger, stock, "none")

    assert [a["outcome"] for a in answers] == ["reserved"]
    assert (stock[SKU]["reserved"], stock[SKU]["available"]) == (3, 2)
    assert counted_state(ledger, stock)[1] == 3


def test_every_line_of_an_envelope_whose_stock_write_was_lost_is_held_when_read_again() -> None:
    """Seen under SIGKILL: after the first line of a replayed envelope moved the stock's
    offset, the other lines' entries (written before the crash) looked counted, and the
    stock went on without their units while the ledger and the orders held them."""
    ledger: dict[str, Any] = {}
    stock = initial_stock(10)
    envelope = envelope_event(
        [Reserve("o1", 0, SKU, 3), Reserve("o2", 0, SKU, 2), Reserve("o3", 1, SKU, 1)], offset=4
    )

    assert run_batch([envelope], ledger, stock, "after_ledger") == []
    answers = run_batch([envelope], ledger, stock, "none")

    assert [a["outcome"] for a in answers] == ["reserved"] * 3
    assert (stock[SKU]["reserved"], stock[SKU]["available"]) == (6, 4)
    assert counted_state(ledger, stock)[1] == 6


def test_a_duplicate_writes_both_records_again_for_a_store_ahead_of_its_changelog() -> None:
    """Finding 3: RocksDB kept a change its changelog never got; the replay re-emits it."""
    ledger: dict[str, Any] = {}
    stock = initial_stock(5)
    reserve = command_event(Reserve("o1", 0, SKU, 2), offset=3)
    run_batch([reserve], ledger, stock, "none")  # the store holds it ...

    ledger_table, stock_table = ChangelogTable(ledger), ChangelogTable(stock)
    handler = StockHandler(stock_table, ledger_table, Answers())  # type: ignore[arg-type]
    handler.handle(reserve)  # ... and the redelivered command finds it there

    assert ledger_table.written == {"o1#0": ledger["o1#0"]}
    assert stock_table.written == {SKU: stock[SKU]}
