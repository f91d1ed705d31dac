"""Events that overtook their order: the held events' timer, and giving held events up safely.

The orders agent holds an ``order.events`` event whose order it does not know yet in
``early_events_by_order`` (the rules: :mod:`cartloom.domain.early_events`) and applies
it when the order arrives. Two things here complete that:

- **The timer.** The agent schedules every order whose events it holds at the first
  expiry (a :class:`~cartloom.domain.schedule.DueSchedule`, seeded from the table after
  each recovery, as the saga's timer does); ``nudge_held_events`` sends a nudge of kind
  ``held_events`` on ``order.timeouts`` when one falls due, and the agent, which alone
  writes the table, decides: the order has arrived (apply, clear) or the expired events go
  to ``order.events.dlq`` as ``unknown_order``. A nudge is repeated until the events are
  gone, so nothing stays held silently, and a nudge that comes twice changes nothing twice.
- **Settling after the batch** (:func:`settle_held_events`). Held events leave the table
  only once what replaces them is on the broker: their dead letters (expired, or pushed
  out by the per-order limit), or the order they were applied to. The agent records what
  a batch settled; after the batch's own writes this awaits the producer's flush and only
  then writes the smaller (or deleted) held record. A crash in between leaves the events
  held: applied again to their order they are duplicates, dead-lettered again they are a
  duplicate dead letter, which a replay turns into a duplicate event.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from cartloom.core import metrics
from cartloom.core.clock import utc_now_iso
from cartloom.domain.early_events import (
    HELD_NUDGE,
    EventOrigin,
    HeldEventsView,
    HeldEventView,
    held_due_at,
    held_nudge_json,
    without_events,
)
from cartloom.domain.errors import RejectReason
from cartloom.domain.instants import is_before, posix
from cartloom.domain.schedule import DueSchedule
from cartloom.stream.app import app, settings
from cartloom.stream.batching import TableBatch
from cartloom.stream.deadletter import dead_letter_headers, dead_letter_topic_name
from cartloom.stream.deliveries import acknowledged_all
from cartloom.stream.tables import ReseedAfterRecovery, early_events_by_order
from cartloom.stream.topics import order_timeouts_topic

RENUDGE_AFTER_SECONDS = 30.0
#: Most nudges one tick sends; the rest wait for the next tick.
NUDGES_PER_TICK = 10_000
#: Dead-letter reason -> outcome of ``cartloom_early_events_total``.
GIVEN_UP = {RejectReason.UNKNOWN_ORDER: "expired", RejectReason.HELD_OVER_LIMIT: "evicted"}

held_due = DueSchedule()
reseed = ReseedAfterRecovery(early_events_by_order)


def schedule_held(order_id: str, held: HeldEventsView | None) -> None:
    """Nudge ``order_id`` when the first of its held events expires (``None``: forget it)."""
    due = held_due_at(held, settings.early_event_hold_seconds)
    held_due.schedule(order_id, None if due is None else posix(due))


@dataclass
class HeldSettlement:
    """What a batch decided about one order's held events, done once it is on the broker."""

    event: faust.EventT[Any]  # the input that settled them: its partition owns the order
    keys: set[str] = field(default_factory=set)  # held events to remove
    dead_letters: list[tuple[HeldEventView, RejectReason, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Origin:
    """The held event's source record, as :func:`dead_letter_headers` reads it."""

    topic: str
    partition: int
    offset: int


async def settle_held_events(settled: dict[str, HeldSettlement]) -> None:
    """Dead-letter what a batch gave up, wait until the broker has it all, then drop it.

    Runs in the orders agent after :func:`~cartloom.stream.batching.handle_batch` (so
    after the batch's order writes were handed to the producer), before the batch's
    offsets are acknowledged. Raises if a dead letter could not be delivered: the held
    events stay, the batch is not acknowledged.
    """
    if not settled:
        return
    producer = app.producer
    dlq = dead_letter_topic_name(settings.topic_name("order.events"))
    deliveries = []
    for order_id, settlement in settled.items():
        for entry, reason, detail in settlement.dead_letters:
            headers = dead_letter_headers(_Origin(**entry["origin"]), reason, detail)
            deliveries.append(
                await producer.send(
                    dlq,
                    order_id.encode(),
                    entry["raw"].encode(),
                    partition=None,
                    timestamp=None,
                    headers=headers,
                )
            )
    await producer.flush()  # the dead letters, and the orders the batch applied events to
    for delivery in deliveries:
        await delivery  # raises if the broker refused it: nothing is dropped below
    for settlement in settled.values():
        for _, reason, _ in settlement.dead_letters:
            metrics.labelled(metrics.DEAD_LETTERS, "order.events", reason.value).inc()
            metrics.labelled(metrics.EARLY_EVENTS, GIVEN_UP[reason]).inc()
    await _drop(settled)


async def _drop(settled: dict[str, HeldSettlement]) -> None:
    """Write each order's held events without the settled ones (a tombstone when none is left)."""
    table = early_events_by_order
    held = TableBatch(table, app.producer)
    deleted: list[tuple[str, int]] = []
    try:
        for order_id, settlement in settled.items():
            # The store (RocksDB) picks the partition's database from the current event.
            _current_event.set(weakref.ref(settlement.event))
            partition = settlement.event.message.partition
            current: HeldEventsView | None = held.get(order_id)
            remaining = without_events(current, settlement.keys) if current is not None else None
            if remaining is not None:
                held.put(order_id, remaining, partition)
            elif current is not None:
                deleted.append((order_id, partition))
            schedule_held(order_id, remaining)
    finally:
        _current_event.set(None)
    await held.flush()
    changelog = table.changelog_topic.get_topic_name()
    tombstones = []
    for order_id, partition in deleted:
        del table.data[order_id]
        tombstones.append(
            await app.producer.send(
                changelog,
                order_id.encode(),
                None,
                partition=partition,
                timestamp=None,
                headers=None,
            )
        )
    await acknowledged_all(tombstones, f"changelog {changelog}")


def origin_of(event: faust.EventT[Any]) -> EventOrigin:
    """Where ``event`` was read, kept with a held event for its dead letter's headers."""
    message = event.message
    return EventOrigin(
        topic=str(message.topic), partition=int(message.partition), offset=int(message.offset)
    )


@app.timer(interval=settings.saga_scan_interval_seconds)  # type: ignore[untyped-decorator]
async def nudge_held_events() -> None:
    """Nudge every order whose first held event has expired; the orders agent decides."""
    if reseed.due():
        for key, value in list(early_events_by_order.data.items()):
            if value is not None:
                schedule_held(_text(key), value)
    now, clock = utc_now_iso(), time.time()
    topic = order_timeouts_topic.get_topic_name()
    for order_id in held_due.pop_due(clock, NUDGES_PER_TICK):
        held: HeldEventsView | None = early_events_by_order.data.get(order_id)
        due = held_due_at(held, settings.early_event_hold_seconds)
        if due is None:
            continue
        if is_before(now, due):  # changed without this worker's agent (a standby copy)
            schedule_held(order_id, held)
            continue
        held_due.schedule(order_id, clock + RENUDGE_AFTER_SECONDS)  # repeated until settled
        value = orjson.dumps(held_nudge_json(order_id, now))
        await app.producer.send(
            topic, order_id.encode(), value, partition=None, timestamp=None, headers=None
        )
        metrics.labelled(metrics.SAGA_NUDGES, HELD_NUDGE).inc()


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
