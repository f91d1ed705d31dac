"""The saga's clock: nudges orders past their reservation deadline or unpaid expiry.

A timer on every worker scans the orders it holds with the pure
:func:`cartloom.domain.saga.due_timeout` and sends a nudge on ``order.timeouts`` keyed
by order id; the orders agent (the only writer of the order) decides what the nudge
does, so a nudge that arrives twice, late, or from a worker holding a standby copy of
the partition changes nothing twice. An order is nudged again only once its version
changed or after a grace period, so a backlog does not multiply nudges.
"""

from __future__ import annotations

import time

import orjson

from cartloom import metrics
from cartloom.app import app, settings
from cartloom.clock import utc_now_iso
from cartloom.domain.saga import due_timeout
from cartloom.tables import order_by_id
from cartloom.topics import order_timeouts_topic

#: order id -> (version nudged, monotonic time of the nudge)
_nudged: dict[str, tuple[int, float]] = {}
_RENUDGE_AFTER = 30.0


@app.timer(interval=settings.saga_scan_interval_seconds)  # type: ignore[untyped-decorator]
async def nudge_overdue_orders() -> None:
    """Send a timeout nudge for every held order whose deadline or expiry has passed."""
    now, clock = utc_now_iso(), time.monotonic()
    topic = order_timeouts_topic.get_topic_name()
    for key, view in list(order_by_id.data.items()):
        order_id = key.decode() if isinstance(key, bytes) else str(key)
        kind = due_timeout(view, now)
        if kind is None:
            _nudged.pop(order_id, None)
            continue
        last = _nudged.get(order_id)
        if last is not None and last[0] == view["version"] and clock - last[1] < _RENUDGE_AFTER:
            continue
        _nudged[order_id] = (view["version"], clock)
        value = orjson.dumps({"order_id": order_id, "kind": kind.value, "at": now})
        await app.producer.send(
            topic, order_id.encode(), value, partition=None, timestamp=None, headers=None
        )
        metrics.SAGA_NUDGES.labels(kind=kind.value).inc()
