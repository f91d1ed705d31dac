"""Idempotence on a real broker: replaying the input topics leaves every table as it was.

A replayed input is judged a duplicate and changes no value. The orders agent writes the
order's current view again for it (so a store that ran ahead of its changelog, RocksDB
after a kill, gets its changelog record): a replay may add changelog records, each
identical to the value the key already had.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import WorkerProcess, eventually
from tests.integration.saga_helpers import (
    changelog,
    now_iso,
    order_message,
    read_topic,
    send_json,
    table_values,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


async def snapshot(bootstrap: str, orders: list[str], skus: list[str]) -> dict[str, Any]:
    """Every changelog record of the orders, their SKUs and ledger entries, per table and key."""
    views = await table_values(bootstrap, "order_by_id", orders)
    entries = [f"{oid}#{line['line']}" for oid, v in views.items() for line in v["reservations"]]
    keys = {"order_by_id": orders, "inventory_by_sku": skus, "reservation_by_line": entries}
    return {table: await records_by_key(bootstrap, table, wanted) for table, wanted in keys.items()}


async def records_by_key(bootstrap: str, table: str, keys: list[str]) -> dict[str, list[Any]]:
    """The values ``table``'s changelog holds for each of ``keys``, oldest first."""
    wanted = {key.encode() for key in keys}
    found: dict[str, list[Any]] = {key: [] for key in keys}
    for record in await read_topic(bootstrap, changelog(table)):  # one key: one partition, in order
        if record.key in wanted:
            found[record.key.decode()].append(orjson.loads(record.value) if record.value else None)
    return found


def values(records: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, Any]]:
    """The tables' values: each key's newest record."""
    return {t: {k: v[-1] for k, v in by_key.items() if v} for t, by_key in records.items()}


def written_since(
    before: dict[str, dict[str, list[Any]]], after: dict[str, dict[str, list[Any]]]
) -> dict[str, dict[str, list[Any]]]:
    """The records each key got after ``before`` was taken."""
    return {
        table: {key: records[len(before[table][key]) :] for key, records in by_key.items()}
        for table, by_key in after.items()
    }


async def test_replaying_every_input_changes_no_table(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    scarce, plenty = f"scarce-{tag}", f"plenty-{tag}"
    for sku, on_hand in ((scarce, 4), (plenty, 100)):
        level = {"sku": sku, "on_hand": on_hand, "updated_at": now_iso()}
        await send_json(producer, "inventory", sku, level)
    restock = {"sku": plenty, "delta": 5, "adjustment_id": f"restock-{tag}"}
    await send_json(producer, "inventory", plenty, restock)
    await eventually(
        lambda: _stock_is(bootstrap, {scarce: 4, plenty: 105}), what="stock in inventory_by_sku"
    )
    orders = [f"idem-{tag}-{n}" for n in range(12)]
    for n, order_id in enumerate(orders):
        lines = [(scarce, 1), (plenty, 2)] if n % 2 else [(plenty, 3)]
        await send_json(producer, "orders", order_id, order_message(order_id, lines))
    await eventually(lambda: _all_resolved(bootstrap, orders), timeout=120, what="orders resolved")
    events = [(orders[0], "paid"), (orders[0], "fulfilled"), (orders[2], "cancelled")]
    for order_id, kind in events:
        body = {"order_id": order_id, "event": kind, "at": now_iso()}
        await send_json(producer, "order.events", order_id, body)
    await eventually(
        lambda: _status_is(bootstrap, {orders[0]: "fulfilled", orders[2]: "cancelled"}),
        what="lifecycle applied",
    )
    await wait_caught_up(bootstrap)
    before = await snapshot(bootstrap, orders, [scarce, plenty])

    counted = await duplicates_counted(worker)
    keys = {key.encode() for key in [*orders, scarce, plenty]}
    replayed = 0
    for topic in ("inventory", "orders", "order.events"):
        for record in await read_topic(bootstrap, topic):
            if record.key in keys:
                await producer.send_and_wait(topic, record.value, key=record.key)
                replayed += 1
    assert replayed == 2 + 1 + len(orders) + len(events)

    async def replay_seen() -> bool:  # the worker handled every replayed message
        now = await duplicates_counted(worker)
        return all(now[k] - counted[k] >= n for k, n in (("o", 12), ("e", 3), ("s", 3)))

    await eventually(replay_seen, timeout=120, what="replay handled as duplicates")
    await wait_caught_up(bootstrap)

    after = await snapshot(bootstrap, orders, [scarce, plenty])
    assert values(after) == values(before)  # same versions, same content: nothing changed
    held = values(before)
    for table, by_key in written_since(before, after).items():
        for key, records in by_key.items():  # a replay only re-emits what the key held
            assert all(record == held[table][key] for record in records), (table, key)
    # Every replayed order was written again, so a changelog behind its store catches up.
    rewritten = written_since(before, after)["order_by_id"]
    assert all(rewritten[order_id] for order_id in orders), rewritten
    statuses = {v["status"] for v in values(after)["order_by_id"].values()}
    assert {"reserved", "rejected", "fulfilled", "cancelled"} <= statuses


async def duplicates_counted(worker: WorkerProcess) -> dict[str, float]:
    """The worker's duplicate counters for orders, lifecycle events and stock messages."""
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as response:
        text = await response.text()
    wanted = {
        "o": 'cartloom_order_inputs_total{input="order",outcome="duplicate"}',
        "e": 'cartloom_order_inputs_total{input="event",outcome="duplicate"}',
        "s": 'cartloom_stock_updates_total{outcome="duplicate"}',
    }
    values = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        for name, series in wanted.items():
            if line.startswith(series + " "):
                values[name] = float(line.split()[-1])
    return values


async def _stock_is(bootstrap: str, levels: dict[str, int]) -> bool:
    values = await table_values(bootstrap, "inventory_by_sku", levels)
    return all(values.get(s, {}).get("on_hand") == n for s, n in levels.items())


async def _all_resolved(bootstrap: str, orders: list[str]) -> bool:
    views = await table_values(bootstrap, "order_by_id", orders)
    return len(views) == len(orders) and all(v["status"] != "received" for v in views.values())


async def _status_is(bootstrap: str, expected: dict[str, str]) -> bool:
    views = await table_values(bootstrap, "order_by_id", expected)
    return all(views.get(k, {}).get("status") == s for k, s in expected.items())
