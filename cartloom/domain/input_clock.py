"""How far an input partition has been read, in event time: the clock of the saga's decisions.

A deadline or an expiry must not be decided while a record that could change it waits
unread: a ``paid`` queued behind a backlog, answers on a partition whose worker was away
for a session timeout. So each decision reads the clock of the input that could change
it, for the order's partition: the time before which every record of that partition has
been processed.

- **Caught up** (the agent's next offset has reached the log end the last fetch reported):
  every record the broker had when that fetch answered has been processed, so the clock is
  the time of that fetch. Not the wall clock: after a pause (a stopped process, a broker
  that does not answer) the last fetch is old, and so is what it says.
- **Behind**: the Kafka timestamp of the last record processed. Records are appended in
  about the order of their timestamps, so every record stamped before it was read.
- Both less ``grace``: a record stamped a moment before may still be on its way to the
  log (a producer's linger, clocks of different hosts).
- The clock never goes back: what was read stays read, even when new records arrive
  and the partition is behind again.

Pure: the caller passes what it observed of the partition; times are POSIX seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputState:
    """What a worker knows of one input partition it is assigned.

    ``next_offset`` is the next offset its agent will process (after the last one it
    processed, or the group's committed offset); ``last_timestamp`` the Kafka timestamp of
    the last record it processed since it got the partition (None: none yet);
    ``highwater`` the log end and ``fetched_at`` the time of the last fetch answer (None:
    no fetch answered yet).
    """

    next_offset: int
    last_timestamp: float | None
    highwater: int | None
    fetched_at: float | None

    @property
    def caught_up(self) -> bool:
        """Whether nothing the last fetch saw is left to process."""
        return self.highwater is not None and self.next_offset >= self.highwater


def input_clock(state: InputState, *, grace: float, previous: float | None) -> float | None:
    """The time before which every record of the partition was processed; None if unknown.

    ``previous`` is the clock computed before for the same partition (None: none); the
    result is never earlier than it.
    """
    read_until: float | None = None
    if state.fetched_at is not None:
        if state.caught_up:
            read_until = state.fetched_at
        elif state.last_timestamp is not None:
            read_until = min(state.last_timestamp, state.fetched_at)
    clock = None if read_until is None else read_until - grace
    if previous is None or (clock is not None and clock > previous):
        return clock
    return previous
