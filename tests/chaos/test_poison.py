"""Poison on every topic a worker reads, and a ``paid`` event that overtakes its order.

Poison: on each input and internal topic, a message of raw bytes, one of the wrong
schema, an envelope with a wrong item (on the envelope topics) and one near the size a
default client may send (~1 MB). No worker may crash, each poison message must land in
its topic's dead-letter topic (the Shopify streams share ``shopify.webhooks.dlq``) with a
reason and its origin, and every partition must keep moving: canary orders, their
``paid`` events and stock levels published after the poison must all be applied.

``paid`` first: Shopify emits an order and its ``paid`` from one webhook, and orders take
one hop more (the intake) than events, so an event routinely arrives before its order.
The order must end ``paid``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cartloom.core.topology import load_topology
from devstack.stack import StackState
from tests.chaos.load import PARTITIONS, key_on_partition, now_iso
from tests.chaos.load import order_bytes as make_order
from tests.chaos.observer import APP_ID
from tests.chaos.scenario import Scale, Scenario
from tests.harness import eventually

pytestmark = pytest.mark.chaos

#: The topics a worker reads. Poison lands in the topic's own ``.dlq`` where topics.yaml
#: declares one, else (the Shopify streams) in ``shopify.webhooks.dlq``.
READ_TOPICS = (
    "orders",
    "orders.accepted",
    "order.events",
    "inventory",
    "inventory.commands",
    "reservation.results",
    "order.timeouts",
    "shopify.webhooks",
    "shopify.catalog",
    "shopify.inventory_items",
    "shopify.redactions",
)
_DECLARED = load_topology(None).topics
DEAD_LETTERS = {
    topic: f"{topic}.dlq" if f"{topic}.dlq" in _DECLARED else "shopify.webhooks.dlq"
    for topic in READ_TOPICS
}
ENVELOPES = {
    "orders.accepted": "orders",
    "inventory.commands": "commands",
    "reservation.results": "results",
}
#: Near the most a default aiokafka producer sends in one request (1 MiB).
OVERSIZED = 1_000_000
CANARY_ON_HAND = 999_999


def poison_for(topic: str) -> dict[str, bytes]:
    """The poison messages of ``topic`` by kind."""
    kinds = {
        "bytes": b"\x00\xff\xfe poison \x80\x81 not json",
        "schema": orjson.dumps({"chaos": "wrong schema", "n": [1, 2, 3]}),
        "oversized": orjson.dumps({"chaos": "x" * (OVERSIZED - 20)}),
    }
    if topic in ENVELOPES:
        kinds["envelope-item"] = orjson.dumps({ENVELOPES[topic]: [{"chaos": "item"}]})
    return kinds


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in record.headers or ()}


async def test_poison_lands_in_dead_letters_and_partitions_keep_moving(
    chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    dlqs = tuple(sorted(set(DEAD_LETTERS.values())))
    async with Scenario("poison", chaos_stack, tmp_path, scale, base_seed, raw_topics=dlqs) as s:
        await s.start_workers(["w1"])
        s.supervise()
        await s.stock(dict.fromkeys(s.catalog.probes, 1_000_000))
        sent: list[dict[str, Any]] = []

        def landed(item: dict[str, Any]) -> dict[str, str] | None:
            for record in s.observer.raw[item["dlq"]]:
                h = headers_of(record)
                if (
                    h.get("cartloom-origin-topic") == item["topic"]
                    and h.get("cartloom-origin-partition") == str(item["partition"])
                    and h.get("cartloom-origin-offset") == str(item["offset"])
                ):
                    return h
            return None

        async def dead_lettered(items: list[dict[str, Any]], phase: str) -> None:
            expected = [p for p in items if p["offset"] is not None and p["kind"] != "order"]

            async def all_landed() -> bool:
                return all(landed(p) for p in expected)

            started = time.monotonic()
            with contextlib.suppress(AssertionError):  # reported below, poison by poison
                await eventually(all_landed, timeout=30, interval=0.5, what=f"{phase} poison")
            s.figures[f"{phase}_dead_lettered_s"] = round(time.monotonic() - started, 1)

        # Small poison first, then the ~1 MB kind: a crash on the one must not hide the other.
        small = []
        for topic, dlq in DEAD_LETTERS.items():
            for kind, value in poison_for(topic).items():
                if kind != "oversized":
                    small.append(await publish(s, topic, dlq, kind, f"poison-{kind}", value))
        await dead_lettered(small, "small")
        large = []
        for topic, dlq in DEAD_LETTERS.items():
            value = poison_for(topic)["oversized"]
            large.append(await publish(s, topic, dlq, "oversized", "poison-oversized", value))
        big_id = key_on_partition(f"poison{base_seed}-big-order", 3)
        customer = {"note": "x" * (OVERSIZED - 400)}
        line = [{"sku": s.catalog.probes[0], "quantity": 1}]
        big = make_order(big_id, line, customer=customer)
        large.append(await publish(s, "orders", "orders.dlq", "order", big_id, big))
        await dead_lettered(large, "oversized")
        sent = small + large
        s.figures["poison_published"] = sum(1 for p in sent if p["offset"] is not None)
        started = time.monotonic()
        canaries = await s.probes("canary")
        for sku in s.catalog.probes:
            level = {"sku": sku, "on_hand": CANARY_ON_HAND, "updated_at": now_iso()}
            await s.publisher.send("inventory", sku, orjson.dumps(level))
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        for order_id in canaries:
            event = {"order_id": order_id, "event": "paid", "at": now_iso(), "version": 1}
            await s.publisher.send("order.events", order_id, orjson.dumps(event))
        await s.settle()
        s.figures["canaries_s"] = round(time.monotonic() - started, 1)

        outcome: dict[str, Any] = {}
        for item in sent:
            name = f"{item['topic']}/{item['kind']}"
            if item["offset"] is None:
                outcome[name] = f"not published: {item['error']}"
                continue
            if item["kind"] == "order":  # a valid order of ~1 MB
                status = s.observer.status(big_id)
                h = landed(item)
                outcome["orders/oversized-order"] = (
                    status or (h and h.get("cartloom-reason")) or "nowhere"
                )
                if outcome["orders/oversized-order"] == "nowhere":
                    s.problems.append(
                        f"an order of ~1 MB on orders (partition {item['partition']} offset "
                        f"{item['offset']}) was neither processed nor dead-lettered"
                    )
                continue
            h = landed(item)
            outcome[name] = h.get("cartloom-reason", "") if h else "missing"
            if h is None:
                s.problems.append(
                    f"poison {item['kind']} on {item['topic']} (partition {item['partition']}, "
                    f"offset {item['offset']}) is not in {item['dlq']}"
                )
            elif not h.get("cartloom-reason"):
                s.problems.append(f"poison {name} reached {item['dlq']} without a reason")
        s.figures["poison"] = outcome
        for order_id in canaries:
            if s.observer.status(order_id) != "paid":
                status = s.observer.status(order_id)
                s.problems.append(f"canary order {order_id} ended {status}, not paid")
        stock = s.observer.tables["inventory_by_sku"]
        stale = [
            k for k in s.catalog.probes if (stock.get(k) or {}).get("on_hand") != CANARY_ON_HAND
        ]
        if stale:
            s.problems.append(f"canary stock levels not applied for {stale}")
        s.figures["dead_letters"] = {t: len(r) for t, r in s.observer.raw.items()}
        s.workers()
        s.finish()


async def publish(
    s: Scenario, topic: str, dlq: str, kind: str, key: str, value: bytes
) -> dict[str, Any]:
    item: dict[str, Any] = {"topic": topic, "dlq": dlq, "kind": kind, "offset": None}
    try:
        meta = await s.publisher.send(topic, key, value)
    except Exception as exc:  # the broker or the client refused it: not CartLoom's doing
        item["error"] = f"{type(exc).__name__}: {exc}"[:200]
        return item
    item.update(partition=meta.partition, offset=meta.offset)
    return item


async def test_paid_before_its_order_ends_paid(
    chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    raw = ("order.events.dlq",)
    async with Scenario("paid-first", chaos_stack, tmp_path, scale, base_seed, raw_topics=raw) as s:
        await s.start_workers(["w1"])
        s.supervise()
        await s.stock(dict.fromkeys(s.catalog.probes, 1_000_000))
        order_id = key_on_partition(f"early{base_seed}", base_seed % PARTITIONS)
        event = {"order_id": order_id, "event": "paid", "at": now_iso(), "version": 1}
        meta = await s.publisher.send("order.events", order_id, orjson.dumps(event))

        async def taken() -> bool:  # the worker consumed the event (held or dead-lettered)
            return await s.lag.committed(APP_ID, "order.events", meta.partition) > meta.offset

        await eventually(taken, timeout=60, what="the early paid event consumed")
        line = [{"sku": s.catalog.probes[meta.partition], "quantity": 1}]
        await s.publisher.order(order_id, make_order(order_id, line))
        await s.publisher.flush()
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        await s.settle()
        s.judge(expected=frozenset({"paid"}))
        status = s.observer.status(order_id)
        dead = [
            headers_of(r) for r in s.observer.raw["order.events.dlq"] if r.key == order_id.encode()
        ]
        reason = dead[0].get("cartloom-reason") if dead else None
        if status != "paid":
            where = f"went to order.events.dlq ({reason})" if dead else "was not dead-lettered"
            s.problems.append(
                f"order {order_id} ended {status}, not paid: the early paid event {where}"
            )
        s.workers()
        s.finish(final_status=status, early_event_dead_lettered=reason)
