"""Which orders fall due when: a min-heap of due times, so the saga's timer never scans.

The timer used to look at every order it held once a second, a cost that grows with the
table (at a few thousand orders a second, a minute of traffic is hundreds of thousands of
orders). Instead the orders agent schedules each order it changes at its next due time
(:func:`cartloom.domain.saga.next_timeout`) and the timer pops only what is due. Rescheduling
an order replaces its earlier time; the superseded heap entry is skipped when it surfaces.
:class:`NudgeSchedule` keeps one such heap per deciding clock (an input's event time, not the
wall clock) and remembers what it popped, so an order is nudged once per due time.
Pure: times are POSIX seconds passed in by the caller.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DueSchedule:
    """Order ids by due time; each order is held at most once (its newest time)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, order_id: str, due: float | None) -> None:
        """Hold ``order_id`` until ``due`` (replacing any earlier time); ``None`` forgets it."""
        if due is None:
            self._due.pop(order_id, None)
            return
        if self._due.get(order_id) == due:
            return
        self._due[order_id] = due
        heapq.heappush(self._heap, (due, order_id))
        if len(self._heap) > 2 * len(self._due) + 1024:  # superseded entries pile up: compact
            self._heap = [(t, o) for o, t in self._due.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` orders due at ``now``, earliest first; they are no longer held."""
        return [order_id for order_id, _ in self.pop_due_with_times(now, limit)]

    def pop_due_with_times(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Like :meth:`pop_due`, with each order's due time."""
        due: list[tuple[str, float]] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(due) < limit:
            at, order_id = heapq.heappop(heap)
            if self._due.get(order_id) == at:
                del self._due[order_id]
                due.append((order_id, at))
        return due

    def order_ids(self) -> list[str]:
        """Every order held."""
        return list(self._due)


class NudgeSchedule(Generic[K]):
    """Orders held per deciding clock ``K`` until that clock reaches their due time.

    The saga's timer keeps one per worker. Each clock key names the input whose event
    time decides (e.g. the lifecycle events of one partition for an expiry); the timer
    pops an order only when that input's clock has passed its due time, so the order's
    nudge is sent once. A popped order is remembered with its (clock, due): holding it
    again for the same pair is a no-op, so an order the agent rewrites while its nudge is
    on the way (a deferred event, a redelivery) is not nudged twice. :meth:`rearm` forgets
    that memory (the nudge changed nothing, or it could not be sent); :meth:`drop` forgets
    everything of a clock (the worker no longer owns that input). Pure.
    """

    def __init__(self) -> None:
        self._held: dict[K, DueSchedule] = {}
        self._clock_of: dict[str, K] = {}
        self._nudged: dict[str, tuple[K, float]] = {}

    def __len__(self) -> int:
        return len(self._clock_of)

    def clocks(self) -> list[K]:
        """The clocks some order waits on."""
        return [clock for clock, held in self._held.items() if len(held)]

    def hold(self, order_id: str, clock: K | None, due: float | None) -> None:
        """Hold ``order_id`` until ``clock`` reaches ``due``; ``None`` forgets it.

        Nothing happens if the order was already nudged for this very clock and due time.
        """
        nudged = self._nudged.get(order_id)
        if nudged is not None:
            if nudged == (clock, due):
                return
            del self._nudged[order_id]
        before = self._clock_of.get(order_id)
        if before is not None:
            if before == clock and due is not None:  # a new due time on the same clock
                self._held[before].schedule(order_id, due)
                return
            self._held[before].schedule(order_id, None)
            del self._clock_of[order_id]
        if clock is None or due is None:
            return
        self._clock_of[order_id] = clock
        held = self._held.get(clock)
        if held is None:
            held = self._held[clock] = DueSchedule()
        held.schedule(order_id, due)

    def pop_due(self, clock: K, reached: float, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` orders whose due time ``clock`` has reached, as (order id, due).

        They count as nudged from now on (see :meth:`rearm`).
        """
        held = self._held.get(clock)
        if held is None:
            return []
        popped = held.pop_due_with_times(reached, limit)
        for order_id, due in popped:
            del self._clock_of[order_id]
            self._nudged[order_id] = (clock, due)
        return popped

    def rearm(self, order_id: str) -> None:
        """Forget that ``order_id`` was nudged, so holding it again schedules a new nudge."""
        self._nudged.pop(order_id, None)

    def drop(self, clock: K) -> None:
        """Forget every order held on ``clock`` and every nudge sent for it."""
        held = self._held.pop(clock, None)
        if held is not None:
            for order_id in held.order_ids():
                self._clock_of.pop(order_id, None)
        for order_id in [o for o, (k, _) in self._nudged.items() if k == clock]:
            del self._nudged[order_id]
