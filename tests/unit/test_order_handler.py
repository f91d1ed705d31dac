"""The orders agent's handler on one batch, without Kafka: tables are plain dicts.

What the handler decides within a batch: privacy jobs and order changes go through the
same per-batch table access (``order_by_id`` has one writer), an event that overtook its
order is held and applied when the order arrives, and a duplicate writes the view again.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from cartloom.agents import orders as orders_agent
from cartloom.agents.orders import OrderHandler
from cartloom.domain.errors import RejectReason
from cartloom.stream.batching import TableBatch, partition_for

PARTITIONS = 8
T0 = "2026-11-25T10:00:00.000+00:00"


class Store(dict[str, Any]):
    """A table's store: remembers every write, as the changelog would get it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append((key, value))
        super().__setitem__(key, value)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        pass


class Table:
    partitions = PARTITIONS

    def __init__(self) -> None:
        self.data = Store()


@dataclass
class Outbox:
    sent: list[tuple[str, str, Any]] = field(default_factory=list)

    def add(self, topic: Any, key: str, value: Any) -> None:
        self.sent.append((topic.get_topic_name(), key, value))

    def add_to_envelope(self, topic: Any, key: str, name: str, item: Any) -> None:
        self.sent.append((topic.get_topic_name(), key, item))

    def add_copy(self, message: Any, partition: int, headers: list[tuple[str, bytes]]) -> None:
        self.copies.append((message, partition, headers))

    copies: list[tuple[Any, int, list[tuple[str, bytes]]]] = field(default_factory=list)


@dataclass
class Batch:
    orders: Table = field(default_factory=Table)
    held: Table = field(default_factory=Table)
    offset: int = 0

    def handler(self) -> tuple[OrderHandler, Outbox]:
        outbox = Outbox()
        orders = TableBatch(self.orders, producer=None)
        held = TableBatch(self.held, producer=None)
        return OrderHandler(orders, outbox, held), outbox  # type: ignore[arg-type]

    def event(self, topic: str, key: str, value: dict[str, Any]) -> Any:
        self.offset += 1
        partition = partition_for(key, PARTITIONS) if key != "*" else 0
        raw = orjson.dumps(value)
        message = SimpleNamespace(
            topic=topic,
            partition=partition,
            offset=self.offset,
            key=key.encode(),
            value=raw,
            headers=[],
            timestamp=1.0,
        )
        return SimpleNamespace(message=message, key=key.encode(), value=raw)

    def run(self, *events: Any, now: str | None = None) -> tuple[OrderHandler, Outbox]:
        handler, outbox = self.handler()
        if now is not None:
            handler.now = now
        for event in events:
            handler.handle(event)
        return handler, outbox


def order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "source": "web",
        "created_at": T0,
        "lines": [{"sku": "SKU-1", "quantity": 1}],
        **extra,
    }


def lifecycle(order_id: str, kind: str, at: str = T0, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "event": kind, "at": at, **extra}


def reserved(batch: Batch, order_id: str, **extra: Any) -> dict[str, Any]:
    """Place ``order_id`` and grant its line: the order is ``reserved``."""
    batch.run(batch.event("orders.accepted", order_id, order(order_id, **extra)))
    answer = {
        "order_id": order_id,
        "line": 0,
        "sku": "SKU-1",
        "requested": 1,
        "granted": 1,
        "available": 5,
        "outcome": "reserved",
    }
    batch.run(batch.event("reservation.results", order_id, answer))
    view: dict[str, Any] = batch.orders.data[order_id]
    assert view["status"] == "reserved"
    return view


# -- finding 8: order_by_id has one writer, the orders agent ----------------------------


def test_a_redaction_and_order_changes_in_one_batch_both_survive() -> None:
    batch = Batch()
    customer = {"id": "7", "email": "grace@example.com"}
    before = reserved(batch, "o-priv", source="shopify", customer=customer)
    redact = {"kind": "redact", "order_id": "o-priv", "shop": "s.myshopify.com"}
    batch.run(
        batch.event("order.events", "o-priv", lifecycle("o-priv", "paid", version=1)),
        batch.event("shopify.redactions", "o-priv", redact),
        batch.event("order.events", "o-priv", lifecycle("o-priv", "fulfilled", version=2)),
    )
    view = batch.orders.data["o-priv"]
    assert view["status"] == "fulfilled"  # the lifecycle changes kept
    assert view["customer"] is None and "grace@example.com" not in orjson.dumps(view).decode()
    assert view["redacted_at"]  # the redaction kept
    assert view["version"] == before["version"] + 3  # one version after the other


def test_the_orders_agent_is_the_only_reader_of_privacy_jobs() -> None:
    """No agent of the worker but ``process_orders`` consumes ``shopify.redactions``."""
    from cartloom.stream.app import AUTODISCOVER, app

    for module in AUTODISCOVER:  # what the worker imports: every agent is registered
        importlib.import_module(module)
    readers = {
        name.rsplit(".", 1)[-1]
        for name, agent in app.agents.items()
        if "shopify.redactions" in getattr(agent.channel, "topics", ())
    }
    assert readers == {"process_orders"}


def test_a_data_request_is_answered_from_the_current_view() -> None:
    batch = Batch()
    reserved(batch, "o-exp", source="shopify", customer={"id": "8", "email": "ada@example.com"})
    job = {"kind": "export", "order_id": "o-exp", "request_id": "9999", "shop": "s"}
    _, outbox = batch.run(batch.event("shopify.redactions", "o-exp", job))
    [(_, key, report)] = [s for s in outbox.sent if s[0] == "shopify.data_exports"]
    assert key == "o-exp"
    assert report["request_id"] == "9999"
    assert report["data"] == {
        "order_id": "o-exp",
        "customer": {"id": "8", "email": "ada@example.com"},
    }


def test_a_shop_redaction_redacts_the_shops_orders_on_its_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = Batch()
    monkeypatch.setattr(orders_agent, "order_by_id", batch.orders)
    ids = [f"shopify-{n}" for n in range(40)]
    for order_id in ids:
        reserved(batch, order_id, source="shopify", customer={"id": "1", "email": "c@example.com"})
    reserved(batch, "pos-1", source="pos", customer={"id": "2", "email": "d@example.com"})
    job = {"kind": "redact_shop", "shop": "s.myshopify.com", "requested_at": T0}
    event = batch.event("shopify.redactions", "*", job)
    event.message.partition = 3
    batch.run(event)
    on_3 = {i for i in ids if partition_for(i, PARTITIONS) == 3}
    assert on_3  # 40 ids spread over 8 partitions
    redacted = {i for i in ids if batch.orders.data[i]["customer"] is None}
    assert redacted == on_3
    assert batch.orders.data["pos-1"]["customer"] is not None


def test_an_unknown_privacy_job_is_refused() -> None:
    batch = Batch()
    with pytest.raises(Exception, match="kind must be") as error:
        batch.run(batch.event("shopify.redactions", "o-1", {"kind": "erase", "order_id": "o-1"}))
    assert getattr(error.value, "reason", None) is RejectReason.INVALID_SCHEMA


# -- #12: an event a producer put on another partition than its order's -----------------


def test_an_event_on_another_partition_is_forwarded_to_its_orders_not_held() -> None:
    batch = Batch()
    reserved(batch, "o-crc")
    event = batch.event("order.events", "o-crc", lifecycle("o-crc", "paid", version=1))
    owner = event.message.partition
    event.message.partition = (owner + 1) % PARTITIONS  # as librdkafka's CRC32 might
    event.message.headers = [("trace", b"t-1")]
    _, outbox = batch.run(event)
    assert batch.orders.data["o-crc"]["status"] == "reserved"  # untouched here
    assert batch.held.data.get("o-crc") is None  # and not held as an early event
    [(copied, partition, headers)] = outbox.copies
    assert copied is event.message and partition == owner
    assert headers == [
        ("trace", b"t-1"),
        ("cartloom-forwarded-from", f"{owner + 1}:{event.message.offset}".encode()),
    ]


def test_a_forwarded_copy_still_on_another_partition_is_refused_not_sent_round() -> None:
    batch = Batch()
    event = batch.event("order.events", "o-loop", lifecycle("o-loop", "paid", version=1))
    event.message.partition = (event.message.partition + 1) % PARTITIONS
    event.message.headers = [("cartloom-forwarded-from", b"2:17")]
    with pytest.raises(Exception, match="partition count") as error:
        batch.run(event)
    assert getattr(error.value, "reason", None) is RejectReason.KEY_MISMATCH


def test_an_event_on_its_orders_partition_is_applied_there() -> None:
    batch = Batch()
    reserved(batch, "o-m2")
    _, outbox = batch.run(batch.event("order.events", "o-m2", lifecycle("o-m2", "paid", version=1)))
    assert outbox.copies == []
    assert batch.orders.data["o-m2"]["status"] == "paid"


# -- finding 4: events that overtake their order -----------------------------------------


def test_an_event_before_its_order_is_held_and_applied_when_the_order_arrives() -> None:
    batch = Batch()
    handler, _ = batch.run(batch.event("order.events", "o-early", lifecycle("o-early", "paid")))
    assert "o-early" not in batch.orders.data  # no order view is made up
    [entry] = batch.held.data["o-early"]["events"]
    assert entry["key"].startswith("paid@")
    assert handler.settled == {}

    handler, _ = batch.run(batch.event("orders.accepted", "o-early", order("o-early")))
    view = batch.orders.data["o-early"]
    assert [d["event"] for d in view["deferred"]] == ["paid"]  # applied when reserved
    assert handler.settled["o-early"].keys == {entry["key"]}  # cleared after the batch
    assert handler.settled["o-early"].dead_letters == []


def test_a_crash_before_the_held_events_are_cleared_applies_nothing_twice() -> None:
    batch = Batch()
    batch.run(batch.event("order.events", "o-crash", lifecycle("o-crash", "paid")))
    placed = batch.event("orders.accepted", "o-crash", order("o-crash"))
    batch.run(placed)  # the order is written; the worker dies before the held record is cleared
    first = batch.orders.data["o-crash"]
    handler, _ = batch.run(placed)  # the order is redelivered
    assert batch.orders.data["o-crash"] == first  # same version, same content
    assert handler.settled["o-crash"].keys  # cleared this time
    answer = {
        "order_id": "o-crash",
        "line": 0,
        "sku": "SKU-1",
        "requested": 1,
        "granted": 1,
        "available": 5,
        "outcome": "reserved",
    }
    batch.run(batch.event("reservation.results", "o-crash", answer))
    paid = batch.orders.data["o-crash"]
    assert [h["status"] for h in paid["history"]] == ["received", "reserved", "paid"]
    batch.run(placed)  # and again once resolved: still nothing applied twice
    assert batch.orders.data["o-crash"] == paid


def test_held_events_over_the_limit_give_up_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = orders_agent.settings.model_copy(update={"early_events_max_per_order": 2})
    monkeypatch.setattr(orders_agent, "settings", limited)
    batch = Batch()
    events = [
        batch.event("order.events", "o-many", lifecycle("o-many", "paid", version=v))
        for v in range(4)
    ]
    handler, _ = batch.run(*events)
    given_up = handler.settled["o-many"].dead_letters
    assert [reason for _, reason, _ in given_up] == [RejectReason.HELD_OVER_LIMIT] * 2
    assert [entry["origin"]["offset"] for entry, _, _ in given_up] == [
        events[0].message.offset,
        events[1].message.offset,
    ]
    # Until their dead letters are on the broker (after the batch), the table keeps them.
    assert len(batch.held.data["o-many"]["events"]) == 4


def test_a_nudge_after_the_hold_dead_letters_the_event_as_unknown_order() -> None:
    batch = Batch()
    paid = batch.event("order.events", "o-never", lifecycle("o-never", "paid"))
    batch.run(paid, now=T0)
    nudge = {"order_id": "o-never", "kind": "held_events", "at": T0}
    early, _ = batch.run(batch.event("order.timeouts", "o-never", nudge), now=T0)
    assert early.settled == {}  # not due yet: still held
    due = "2026-11-25T11:00:00.000+00:00"  # the default hold is an hour
    handler, _ = batch.run(batch.event("order.timeouts", "o-never", nudge), now=due)
    [(entry, reason, detail)] = handler.settled["o-never"].dead_letters
    assert reason is RejectReason.UNKNOWN_ORDER
    assert "did not arrive" in detail
    assert entry["raw"].encode() == paid.message.value  # byte for byte, for dlq replay
    assert entry["origin"] == {
        "topic": "order.events",
        "partition": paid.message.partition,
        "offset": paid.message.offset,
    }


# -- finding 3: a duplicate writes the current view again --------------------------------


def test_duplicates_write_the_current_view_again_unchanged() -> None:
    batch = Batch()
    view = reserved(batch, "o-dup")
    paid = batch.event("order.events", "o-dup", lifecycle("o-dup", "paid"))
    batch.run(paid)
    current = batch.orders.data["o-dup"]
    for duplicate in (paid, batch.event("orders.accepted", "o-dup", order("o-dup"))):
        batch.orders.data.writes.clear()
        batch.run(duplicate)
        assert batch.orders.data.writes == [("o-dup", current)]  # re-emitted, not changed
    assert current["version"] == view["version"] + 1
