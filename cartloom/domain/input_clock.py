"""How far an input partition has been read, in event time: the clock of the saga's decisions.

A deadline or an expiry must not be decided while a record that could change it waits
unread: a ``paid`` queued behind a backlog, answers on a partition whose worker was away
for a session timeout. So each decision reads the clock of the input that could change
it, for the order's partition: the time before which every record of that partition has
been processed.

- **Caught up** (the agent's next offset has reached the log end a fetch reported):
  every record the broker had when it answered that fetch has been processed. The
  broker answered after the fetch was sent, so the clock is a time the fetch was known to
  be sent after: the time the consumer had handled the fetch before it (one request per
  partition is in flight at a time). Not the time the answer was read, and never the
  wall clock: a worker that was stopped, or starved of CPU, reads after it resumes an
  answer the broker gave before, and that answer knows nothing of what came since.
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
    ``highwater`` the log end the latest fetch answer reported, and ``fetched_after`` a
    time that fetch was sent after (None: not known yet).
    """

    next_offset: int
    last_timestamp: float | None
    highwater: int | None
    fetched_after: float | None

    @property
    def caught_up(self) -> bool:
        """Whether nothing the latest fetch saw is left to process."""
        return self.highwater is not None and self.next_offset >= self.highwater


def input_clock(state: InputState, *, grace: float, previous: float | None) -> float | None:
    """A time before which every record of the partition was processed; None if unknown.

    ``previous`` is the clock computed before for the same partition (None: none); the
    result is never earlier than it.
    """
    read_until: float | None = None
    if state.fetched_after is not None:
        if state.caught_up:
            read_until = state.fetched_after
        elif state.last_timestamp is not None:
            read_until = min(state.last_timestamp, state.fetched_after)
    clock = None if read_until is None else read_until - grace
    if previous is None or (clock is not None and clock > previous):
        return clock
    return previous


def fetch_sent_after(
    seen: tuple[float, float | None] | None, answered: float | None
) -> tuple[float, float | None] | None:
    """Track a partition's fetch answers to know a time its latest fetch was sent after.

    ``seen`` is what this returned last time (None at first): the latest answer time
    observed and the one observed before it. ``answered`` is the time the consumer handled
    its latest fetch answer for the partition (None: none yet). The second element of the
    result is the time the latest answer's fetch was sent after: it was sent once an
    answer observed earlier had been handled, since a partition has one fetch in flight.
    """
    if answered is None:
        return seen
    if seen is None:
        return answered, None
    latest, _ = seen
    if answered > latest:
        return answered, latest
    return seen
