"""What a worker may commit: only offsets acknowledged one after another from the committed one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartloom.stream.offsets import (
    HandOut,
    InOrder,
    StallWatch,
    advance,
    missed,
    waiting_for_records,
)


def test_a_run_from_the_committed_offset_is_committed() -> None:
    assert advance(10, [10, 11, 12]) == (13, 3)


def test_a_hole_at_the_committed_offset_commits_nothing() -> None:
    # Faust bridges a hole of one offset after the committed one; CartLoom does not.
    assert advance(10, [11, 12, 13]) == (None, 0)


def test_the_run_stops_at_the_first_hole() -> None:
    assert advance(10, [10, 11, 13, 14]) == (12, 2)


def test_offsets_below_the_committed_one_are_used_up() -> None:
    assert advance(10, [8, 9, 10]) == (11, 3)
    assert advance(10, [8, 9]) == (None, 2)
    assert advance(10, [8, 12]) == (None, 1)


def test_without_a_committed_offset_nothing_is_committed_and_no_ack_used() -> None:
    # Faust forgets the committed offset of a revoked partition until recovery ends, and
    # keeps -1 for one its group never committed. The records before the lowest ack may
    # have been dropped at the rebalance: committing from it lost an envelope of orders.
    assert advance(None, [151, 152, 153]) == (None, 0)
    assert advance(-1, [0, 1, 2, 3, 4]) == (None, 0)
    assert advance(None, []) == (None, 0)
    # Once the consumer learnt the base from the broker, the same acks commit strictly.
    assert advance(140, [151, 152, 153]) == (None, 0)
    assert advance(0, [0, 1, 2, 3, 4]) == (5, 5)


@given(
    committed=st.integers(0, 50),
    acked=st.sets(st.integers(0, 80), max_size=40).map(sorted),
)
def test_never_commits_past_an_offset_that_was_not_acknowledged(
    committed: int, acked: list[int]
) -> None:
    offset, used = advance(committed, acked)
    if offset is not None:
        assert all(n in acked for n in range(committed, offset))
        assert acked[:used] == [n for n in acked if n < offset]
    else:
        assert committed not in acked


def test_a_stall_is_reported_after_the_patience() -> None:
    watch = StallWatch(patience=5.0)
    assert not watch.stalled("p0", 10, now=100.0)
    assert not watch.stalled("p0", 10, now=104.9)
    assert watch.stalled("p0", 10, now=105.0)


def test_a_moving_commit_is_no_stall() -> None:
    watch = StallWatch(patience=5.0)
    watch.stalled("p0", 10, now=100.0)
    assert not watch.stalled("p0", 11, now=106.0)
    assert not watch.stalled("p0", 11, now=110.0)
    assert watch.stalled("p0", 11, now=111.0)


def test_revoked_partitions_are_forgotten() -> None:
    watch = StallWatch(patience=5.0)
    watch.stalled("p0", 10, now=100.0)
    watch.stalled("p1", 10, now=100.0)
    watch.keep_only({"p1"})
    assert not watch.stalled("p0", 10, now=106.0)
    assert watch.stalled("p1", 10, now=106.0)


def test_missed_only_when_handed_out_and_unacknowledged() -> None:
    assert missed(10, read=12, acked=False)
    assert missed(10, read=10, acked=False)
    assert not missed(10, read=9, acked=False)  # all done, nothing newer
    assert not missed(10, read=None, acked=False)  # nothing handed out
    assert not missed(10, read=12, acked=True)  # commits at the next round


def test_a_record_still_in_flight_gets_the_longer_patience_not_forever() -> None:
    # Before, a record Faust still counted as being processed stopped the watch for good:
    # one dropped at a rebalance and never acknowledged left its partition unprocessed.
    watch = StallWatch(patience=5.0)
    assert not watch.stalled("p0", 10, now=100.0, patience=30.0)
    assert not watch.stalled("p0", 10, now=110.0, patience=30.0)
    assert watch.stalled("p0", 10, now=130.0, patience=30.0)


@pytest.mark.parametrize(
    ("committed", "read", "waiting"),
    [
        (0, None, True),  # nothing handed out since the last seek
        (15, 14, True),  # everything handed out is committed
        (14, 14, False),  # the record at the committed offset is out: the stall check's
        (14, 20, False),
    ],
)
def test_waiting_for_records(committed: int, read: int | None, waiting: bool) -> None:
    assert waiting_for_records(committed, read) is waiting


def test_records_are_taken_in_offset_order_from_the_last_seek() -> None:
    order = InOrder()
    tp = ("orders.accepted", 0)
    assert order.judge(tp, 17, (1, 17)) is HandOut.TAKE
    assert order.judge(tp, 18, (1, 17)) is HandOut.TAKE
    # 19-121 dropped on their way to the stream: what comes after them is refused
    assert order.judge(tp, 122, (1, 17)) is HandOut.AHEAD
    assert order.judge(tp, 123, (1, 17)) is HandOut.AHEAD
    assert order.judge(tp, 18, (1, 17)) is HandOut.SEEN  # handled already
    # read again from the first one never handled
    assert order.judge(tp, 19, (2, 19)) is HandOut.TAKE
    assert order.judge(tp, 20, (2, 19)) is HandOut.TAKE


def test_a_seek_back_takes_the_records_again_and_unknown_starts_take_the_first() -> None:
    order = InOrder()
    tp = ("inventory.commands", 5)
    assert order.judge(tp, 40, (0, None)) is HandOut.TAKE  # no seek yet: the first sets it
    assert order.judge(tp, 41, (0, None)) is HandOut.TAKE
    assert order.judge(tp, 30, (3, 30)) is HandOut.TAKE  # a rebalance read from the commit
    assert order.judge(tp, 29, (3, 30)) is HandOut.SEEN  # fetched before that seek
    assert order.judge(tp, 33, (3, 30)) is HandOut.AHEAD
    assert order.judge(("inventory.commands", 6), 7, (3, None)) is HandOut.TAKE  # its own
