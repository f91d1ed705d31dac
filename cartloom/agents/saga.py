"""The saga's clock: nudges each order past its reservation deadline or unpaid expiry, once.

The orders agent holds every order it changes until its next due time
(:func:`schedule_order`), on the clock of the input that could still change the outcome,
for the order's partition: the answers on ``reservation.results`` for a deadline, the
lifecycle events on ``order.events`` for an expiry. That clock is how far the agent has
read the partition, in event time (:mod:`cartloom.stream.clocks`), so an order is not
nudged while a record that could change its fate waits unread, however late the wall
clock. A timer on every worker pops the orders whose clock has passed their due time
(:class:`~cartloom.domain.schedule.NudgeSchedule`) and sends one nudge each on
``order.timeouts``, keyed by order id. The orders agent (the only writer of the order)
decides on the same clock (:func:`decision_clock`), which never goes back, so the nudge
finds the order due.

A nudge the broker acknowledged is not sent again: the schedule remembers it. Only a
nudge that changed nothing (:func:`nudge_ignored`: it came from an earlier owner of the
partition, or the order changed meanwhile) or that could not be written puts the order
back. A worker holds only the orders of the partitions it is assigned: when a partition
goes to another worker, its orders are dropped here, and after each recovery the timer
seeds the schedule with the orders of the partitions it owns. A new owner may therefore
nudge an order once more; nothing else does.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import TP

from cartloom.core import metrics
from cartloom.core.clock import utc_now_iso
from cartloom.domain.instants import posix
from cartloom.domain.orders import OrderView
from cartloom.domain.saga import Timeout, next_timeout, timeout_json
from cartloom.domain.schedule import NudgeSchedule
from cartloom.stream.app import app, settings
from cartloom.stream.batching import partition_for, topic_facts
from cartloom.stream.clocks import InputClocks
from cartloom.stream.tables import ReseedAfterRecovery, order_by_id
from cartloom.stream.topics import (
    order_events_topic,
    order_timeouts_topic,
    reservation_results_topic,
)

log = logging.getLogger(__name__)

#: Most nudges one tick sends; the rest wait for the next tick.
NUDGES_PER_TICK = 5_000
#: The timer hands the event loop back this often (orders seeded or nudges sent).
YIELD_EVERY = 500

#: The input whose clock decides each kind of nudge.
DECIDED_BY = {Timeout.DEADLINE: reservation_results_topic, Timeout.EXPIRE: order_events_topic}

inputs = InputClocks(app, grace=settings.saga_clock_grace_seconds)
overdue: NudgeSchedule[tuple[Timeout, int]] = NudgeSchedule()
reseed = ReseedAfterRecovery(order_by_id)


def schedule_order(view: OrderView) -> None:
    """Hold ``view``'s order until its next due time (called by the orders agent on change)."""
    order_id, due = view["order_id"], next_timeout(view)
    if due is None:
        overdue.hold(order_id, None, None)
        return
    kind, at = due
    overdue.hold(order_id, (kind, _partition(order_id)), posix(at))


def nudge_ignored(view: OrderView) -> None:
    """A nudge changed nothing: hold the order again, so its own due time gets a nudge."""
    overdue.rearm(view["order_id"])
    schedule_order(view)


def decision_clock(kind: Timeout, partition: int) -> str | None:
    """The clock ``kind`` is decided on for ``partition`` (ISO-8601); None while unknown."""
    clock = inputs.clock(_deciding_tp(kind, partition))
    if clock is None:
        return None
    return datetime.fromtimestamp(clock, UTC).isoformat(timespec="milliseconds")


@app.timer(interval=settings.saga_scan_interval_seconds)  # type: ignore[untyped-decorator]
async def nudge_overdue_orders() -> None:
    """Send one nudge for every held order whose deciding clock has passed its due time."""
    if reseed.due():
        await _seed()
    now, topic = utc_now_iso(), order_timeouts_topic.get_topic_name()
    sent: list[tuple[str, Timeout, Any]] = []
    for key in overdue.clocks():
        kind, partition = key
        clock = inputs.clock(_deciding_tp(kind, partition))
        if clock is None:
            if not inputs.owns(_deciding_tp(kind, partition)):
                overdue.drop(key)  # another worker's now; a recovery seeds what comes back
            continue
        for order_id, due in overdue.pop_due(key, clock, NUDGES_PER_TICK - len(sent)):
            view: OrderView | None = order_by_id.data.get(order_id)
            current = None if view is None else next_timeout(view)
            if current is None or current[0] is not kind or posix(current[1]) != due:
                if view is not None:  # changed since it was held: hold it for what it needs now
                    nudge_ignored(view)
                continue
            value = orjson.dumps(timeout_json(order_id, kind, now))
            sent.append((order_id, kind, await _send(topic, order_id, value)))
            if len(sent) % YIELD_EVERY == 0:
                await asyncio.sleep(0)
    await _confirm_sent(sent)


async def _send(topic: str, order_id: str, value: bytes) -> Any:
    """Hand a nudge to the producer: its delivery, or the exception that refused it."""
    try:
        return await app.producer.send(
            topic, order_id.encode(), value, partition=None, timestamp=None, headers=None
        )
    except Exception as exc:  # reported with the deliveries' outcomes
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refused.set_exception(exc)
        return refused


async def _confirm_sent(sent: list[tuple[str, Timeout, Any]]) -> None:
    """Wait until the broker has every nudge; one it refused puts its order back."""
    outcomes = await asyncio.gather(*(delivery for _, _, delivery in sent), return_exceptions=True)
    for (order_id, kind, _), outcome in zip(sent, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("nudge for order %s not written (%r); trying again", order_id, outcome)
            view: OrderView | None = order_by_id.data.get(order_id)
            if view is not None:
                nudge_ignored(view)
            continue
        metrics.SAGA_NUDGES.labels(kind=kind.value).inc()


async def _seed() -> None:
    """Hold every open order of the partitions this worker owns (after a recovery)."""
    views: list[OrderView] = list(order_by_id.data.values())
    for n, view in enumerate(views, start=1):
        due = next_timeout(view)
        if due is not None and inputs.owns(_deciding_tp(due[0], _partition(view["order_id"]))):
            schedule_order(view)
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)


def _partition(order_id: str) -> int:
    return partition_for(order_id, topic_facts(order_timeouts_topic)[1])


def _deciding_tp(kind: Timeout, partition: int) -> TP:
    return TP(topic_facts(DECIDED_BY[kind])[0], partition)
