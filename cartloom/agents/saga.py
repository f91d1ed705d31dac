"""The saga's clock: nudges orders past their reservation deadline or unpaid expiry.

The orders agent schedules every order it changes at its next due time
(:func:`schedule_order`); a timer on every worker pops what is due from that
:class:`~cartloom.domain.schedule.DueSchedule`, checks the order's current view with the
pure :func:`cartloom.domain.saga.due_timeout` and sends a nudge on ``order.timeouts``
keyed by order id. The orders agent (the only writer of the order) decides what the
nudge does, so a nudge that arrives twice, late, or from a worker holding a standby copy
of the partition changes nothing twice. A nudged order is held again for a grace period,
so a lost nudge is repeated and a backlog does not multiply them.

Orders recovered from the changelog after a rebalance did not pass through this worker's
agent: after each recovery the timer seeds the schedule with one pass over the table.
"""

from __future__ import annotations

import time

import orjson

from cartloom import metrics
from cartloom.app import app, settings
from cartloom.clock import utc_now_iso
from cartloom.domain.instants import posix
from cartloom.domain.orders import OrderView
from cartloom.domain.saga import due_at, due_timeout
from cartloom.domain.schedule import DueSchedule
from cartloom.tables import order_by_id
from cartloom.topics import order_timeouts_topic

RENUDGE_AFTER_SECONDS = 30.0
#: Most nudges one tick sends; the rest wait for the next tick.
NUDGES_PER_TICK = 10_000

overdue = DueSchedule()
_seed_needed = True


def schedule_order(view: OrderView) -> None:
    """Hold ``view``'s order until its next due time (called by the orders agent on change)."""
    due = due_at(view)
    overdue.schedule(view["order_id"], None if due is None else posix(due))


@order_by_id.on_recover
async def _recovered() -> None:
    global _seed_needed
    _seed_needed = True


@app.timer(interval=settings.saga_scan_interval_seconds)  # type: ignore[untyped-decorator]
async def nudge_overdue_orders() -> None:
    """Send a timeout nudge for every held order whose deadline or expiry has passed."""
    global _seed_needed
    if _seed_needed:
        _seed_needed = False
        for held in list(order_by_id.data.values()):
            schedule_order(held)
    now, clock = utc_now_iso(), time.time()
    topic = order_timeouts_topic.get_topic_name()
    for order_id in overdue.pop_due(clock, NUDGES_PER_TICK):
        view: OrderView | None = order_by_id.data.get(order_id)
        if view is None:
            continue
        kind = due_timeout(view, now)
        if kind is None:  # changed without this worker's agent (a standby copy): hold it again
            schedule_order(view)
            continue
        overdue.schedule(order_id, clock + RENUDGE_AFTER_SECONDS)  # before the agent can answer
        value = orjson.dumps({"order_id": order_id, "kind": kind.value, "at": now})
        await app.producer.send(
            topic, order_id.encode(), value, partition=None, timestamp=None, headers=None
        )
        metrics.SAGA_NUDGES.labels(kind=kind.value).inc()
