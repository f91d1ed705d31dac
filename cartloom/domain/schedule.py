"""Which orders fall due when: a min-heap of due times, so the saga's timer never scans.

The timer used to look at every order it held once a second, a cost that grows with the
table (at a few thousand orders a second, a minute of traffic is hundreds of thousands of
orders). Instead the orders agent schedules each order it changes at its next due time
(:func:`cartloom.domain.saga.due_at`) and the timer pops only what is due. Rescheduling an
order replaces its earlier time; the superseded heap entry is skipped when it surfaces.
Pure: times are POSIX seconds passed in by the caller.
"""

from __future__ import annotations

import heapq


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
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(due) < limit:
            at, order_id = heapq.heappop(heap)
            if self._due.get(order_id) == at:
                del self._due[order_id]
                due.append(order_id)
        return due
