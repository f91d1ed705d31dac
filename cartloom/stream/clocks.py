"""The event-time clocks of an agent's input partitions, from what it read and Faust's consumer.

The agent notes the last record of each partition it processed (:meth:`InputClocks.processed`,
after each batch); the clock of a partition (:func:`cartloom.domain.input_clock.input_clock`)
compares that with the log end the consumer's latest fetch reported, dated by the fetch
answer observed before that one (:func:`~cartloom.domain.input_clock.fetch_sent_after`):
the latest answer may have been read long after the broker gave it (a stopped process).

These come from the Kafka consumer inside Faust's consumer thread (aiokafka's public
``assignment``, ``highwater`` and ``last_poll_timestamp``; the fetch highwater, which the
embedded broker reports right, unlike its ListOffsets end offsets) and, for a partition
nothing was processed of since it was assigned, the committed offset Faust sought to.
Two hops are private to Faust (``Consumer._thread``, ``Consumer._committed_offset``):
``tests/unit/test_input_clocks.py`` pins them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust
from faust.types import TP

from cartloom.domain.input_clock import InputState, fetch_sent_after, input_clock


class InputClocks:
    """Per input partition of one agent: the last record processed and the clock it gives."""

    def __init__(self, app: faust.App, *, grace: float) -> None:
        self._app = app
        self._grace = grace
        self._processed: dict[TP, tuple[int, float | None]] = {}
        self._answers: dict[TP, tuple[float, float | None]] = {}
        self._clocks: dict[TP, float] = {}

    def processed(self, events: Sequence[faust.EventT[Any]]) -> None:
        """Note the last record of each partition in ``events``; call once they are handled."""
        last: dict[TP, Any] = {}
        for event in events:
            last[event.message.tp] = event.message
        for tp, message in last.items():
            known = self._processed.get(tp)
            if known is None or message.offset > known[0]:
                stamp = message.timestamp
                self._processed[tp] = (message.offset, stamp if stamp and stamp > 0 else None)

    def owns(self, tp: TP) -> bool:
        """Whether this worker is assigned ``tp`` (actively: standbys read changelogs only)."""
        kafka = self._kafka()
        return kafka is not None and tp in kafka.assignment()

    def clock(self, tp: TP) -> float | None:
        """``tp``'s clock (POSIX seconds) now; None while unknown or not assigned here."""
        kafka = self._kafka()
        if kafka is None or tp not in kafka.assignment():
            self.forget(tp)
            return None
        highwater, answered_ms = kafka.highwater(tp), kafka.last_poll_timestamp(tp)
        answers = fetch_sent_after(
            self._answers.get(tp), None if answered_ms is None else answered_ms / 1000.0
        )
        if answers is not None:
            self._answers[tp] = answers
        processed, committed = self._processed.get(tp), self._committed(tp)
        state = InputState(
            next_offset=committed if processed is None else max(processed[0] + 1, committed),
            last_timestamp=None if processed is None else processed[1],
            highwater=highwater,
            fetched_after=None if answers is None else answers[1],
        )
        clock = input_clock(state, grace=self._grace, previous=self._clocks.get(tp))
        if clock is not None:
            self._clocks[tp] = clock
        return clock

    def forget(self, tp: TP) -> None:
        """Drop what is known of ``tp`` (it went to another worker)."""
        self._processed.pop(tp, None)
        self._answers.pop(tp, None)
        self._clocks.pop(tp, None)

    def _committed(self, tp: TP) -> int:
        """The offset Faust sought ``tp`` to on assignment, or committed since (0: none)."""
        offsets: dict[TP, int | None] = getattr(self._app.consumer, "_committed_offset", {})
        return offsets.get(tp) or 0

    def _kafka(self) -> Any:
        """The Kafka consumer in Faust's consumer thread; None before the worker started it."""
        thread = getattr(self._app.consumer, "_thread", None)
        return None if thread is None else getattr(thread, "_consumer", None)
