"""The clock of an input partition: how far it was read, in event time (table-driven)."""

from __future__ import annotations

import pytest

from cartloom.domain.input_clock import InputState, fetch_sent_after, input_clock

GRACE = 1.0
FETCHED = 1_000.0  # the latest fetch was sent after this


@pytest.mark.parametrize(
    ("case", "state", "previous", "clock"),
    [
        (
            "caught up: when the latest fetch was sent, less the grace",
            InputState(next_offset=10, last_timestamp=900.0, highwater=10, fetched_after=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "caught up on an empty partition",
            InputState(next_offset=0, last_timestamp=None, highwater=0, fetched_after=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "caught up from the committed offset, nothing processed since assignment",
            InputState(next_offset=42, last_timestamp=None, highwater=42, fetched_after=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "behind: the last processed record's timestamp, less the grace",
            InputState(next_offset=10, last_timestamp=900.0, highwater=15, fetched_after=FETCHED),
            None,
            900.0 - GRACE,
        ),
        (
            "behind a record stamped in the future: never past the fetch",
            InputState(next_offset=10, last_timestamp=5_000.0, highwater=15, fetched_after=FETCHED),
            None,
            FETCHED - GRACE,
        ),
        (
            "behind with nothing processed since assignment: unknown",
            InputState(next_offset=0, last_timestamp=None, highwater=3, fetched_after=FETCHED),
            None,
            None,
        ),
        (
            "no fetch answered yet: unknown, however much was processed",
            InputState(next_offset=10, last_timestamp=900.0, highwater=None, fetched_after=None),
            None,
            None,
        ),
        (
            "behind again after being caught up: the clock does not go back",
            InputState(next_offset=10, last_timestamp=900.0, highwater=15, fetched_after=FETCHED),
            FETCHED - 5.0,
            FETCHED - 5.0,
        ),
        (
            "unknown now (a new fetch is pending): the clock keeps what it had",
            InputState(next_offset=0, last_timestamp=None, highwater=None, fetched_after=None),
            950.0,
            950.0,
        ),
        (
            "a later fetch moves it on",
            InputState(next_offset=15, last_timestamp=990.0, highwater=15, fetched_after=FETCHED),
            950.0,
            FETCHED - GRACE,
        ),
    ],
)
def test_input_clock(
    case: str, state: InputState, previous: float | None, clock: float | None
) -> None:
    assert input_clock(state, grace=GRACE, previous=previous) == clock, case


@pytest.mark.parametrize(
    ("case", "seen", "answered", "tracked"),
    [
        ("no answer yet", None, None, None),
        ("a first answer: its fetch's sending time is unknown", None, 100.0, (100.0, None)),
        (
            "a new answer: its fetch went out after the one before",
            (100.0, None),
            100.5,
            (100.5, 100.0),
        ),
        ("the same answer again changes nothing", (100.5, 100.0), 100.5, (100.5, 100.0)),
        ("answers not observed in between do not matter", (100.5, 100.0), 160.0, (160.0, 100.5)),
        (
            "an answer gone (partition reassigned) keeps what was known",
            (100.5, 100.0),
            None,
            (100.5, 100.0),
        ),
    ],
)
def test_fetch_sent_after(
    case: str,
    seen: tuple[float, float | None] | None,
    answered: float | None,
    tracked: tuple[float, float | None] | None,
) -> None:
    assert fetch_sent_after(seen, answered) == tracked, case


def test_an_answer_read_after_a_pause_does_not_move_the_clock_past_the_pause() -> None:
    """A stopped worker resumes: it reads an answer the broker gave before records came in."""
    before_stop = fetch_sent_after(fetch_sent_after(None, 99.5), 100.0)
    assert before_stop == (100.0, 99.5)
    clock = input_clock(InputState(10, None, 10, before_stop[1]), grace=GRACE, previous=None)
    assert clock == 98.5
    # Resumed at 160: the answer in the socket says "offset 10 is the end", stale since 100.
    stale = fetch_sent_after(before_stop, 160.0)
    assert stale == (160.0, 100.0)
    clock = input_clock(InputState(10, None, 10, stale[1]), grace=GRACE, previous=clock)
    assert clock == 99.0, "not 159: that answer says nothing of the minute it was stopped"
    # The next answer comes from a fetch sent after 160: it sees the records.
    fresh = fetch_sent_after(stale, 160.2)
    assert fresh == (160.2, 160.0)
    behind = InputState(10, None, 12, fresh[1])
    assert input_clock(behind, grace=GRACE, previous=clock) == 99.0
    read = InputState(12, 130.0, 12, fresh[1])
    assert input_clock(read, grace=GRACE, previous=clock) == 159.0
