"""The clock of an input partition: how far it was read, in event time (table-driven)."""

from __future__ import annotations

import pytest

from cartloom.domain.input_clock import InputState, input_clock

GRACE = 1.0
FETCHED = 1_000.0  # when the last fetch answered


@pytest.mark.parametrize(
    ("case", "state", "previous", "clock"),
    [
        (
            "caught up: the last fetch's time, less the grace",
            InputState(next_offset=10, last_timestamp=900.0, highwater=10, fetched_at=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "caught up on an empty partition",
            InputState(next_offset=0, last_timestamp=None, highwater=0, fetched_at=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "caught up from the committed offset, nothing processed since assignment",
            InputState(next_offset=42, last_timestamp=None, highwater=42, fetched_at=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "behind: the last processed record's timestamp, less the grace",
            InputState(next_offset=10, last_timestamp=900.0, highwater=15, fetched_at=FETCHED),
            None,
            900.0 - GRACE,
        ),
        (
            "behind a record stamped in the future: never past the fetch",
            InputState(next_offset=10, last_timestamp=5_000.0, highwater=15, fetched_at=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "behind with nothing processed since assignment: unknown",
            InputState(next_offset=0, last_timestamp=None, highwater=3, fetched_at=FETCHED),
            None,
            None,
        ),
        (
            "no fetch answered yet: unknown, however much was processed",
            InputState(next_offset=10, last_timestamp=900.0, highwater=None, fetched_at=None),
            None,
            None,
        ),
        (
            "behind again after being caught up: the clock does not go back",
            InputState(next_offset=10, last_timestamp=900.0, highwater=15, fetched_at=FETCHED),
            FETCHED - 5.0,
            FETCHED - 5.0,
        ),
        (
            "unknown now (a new fetch is pending): the clock keeps what it had",
            InputState(next_offset=0, last_timestamp=None, highwater=None, fetched_at=None),
            950.0,
            950.0,
        ),
        (
            "a later fetch moves it on",
            InputState(next_offset=15, last_timestamp=990.0, highwater=15, fetched_at=FETCHED),
            950.0,
            FETCHED - GRACE,
        ),
    ],
)
def test_input_clock(
    case: str, state: InputState, previous: float | None, clock: float | None
) -> None:
    assert input_clock(state, grace=GRACE, previous=previous) == clock, case


def test_a_stale_fetch_after_a_pause_holds_the_clock_however_late_the_wall_clock() -> None:
    """A stopped worker resumes: its last fetch is from before the stop, records came since."""
    before_stop = InputState(next_offset=10, last_timestamp=None, highwater=10, fetched_at=100.0)
    stale = input_clock(before_stop, grace=GRACE, previous=None)
    assert stale == 99.0, "what the old fetch proves, not the time the worker woke up"
    after_fetch = InputState(next_offset=10, last_timestamp=None, highwater=12, fetched_at=160.0)
    assert input_clock(after_fetch, grace=GRACE, previous=stale) == 99.0
    processed = InputState(next_offset=12, last_timestamp=130.0, highwater=12, fetched_at=161.0)
    assert input_clock(processed, grace=GRACE, previous=99.0) == 160.0
