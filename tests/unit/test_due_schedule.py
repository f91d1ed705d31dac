"""The saga timer's schedules: only what is due comes out, once, newest time wins."""

from cartloom.domain.instants import posix
from cartloom.domain.schedule import DueSchedule, NudgeSchedule


def test_only_due_orders_come_out_earliest_first_and_once() -> None:
    schedule = DueSchedule()
    schedule.schedule("late", 30.0)
    schedule.schedule("early", 10.0)
    schedule.schedule("middle", 20.0)
    assert schedule.pop_due(5.0, 100) == []
    assert schedule.pop_due(25.0, 100) == ["early", "middle"]
    assert schedule.pop_due(25.0, 100) == []
    assert len(schedule) == 1


def test_rescheduling_replaces_the_earlier_time() -> None:
    schedule = DueSchedule()
    schedule.schedule("o-1", 10.0)
    schedule.schedule("o-1", 50.0)  # the order changed: due later
    assert schedule.pop_due(20.0, 100) == []
    assert schedule.pop_due(60.0, 100) == ["o-1"]


def test_none_forgets_the_order() -> None:
    schedule = DueSchedule()
    schedule.schedule("o-1", 10.0)
    schedule.schedule("o-1", None)  # resolved: never due again
    assert schedule.pop_due(100.0, 100) == []
    assert len(schedule) == 0


def test_limit_leaves_the_rest_for_the_next_tick() -> None:
    schedule = DueSchedule()
    for n in range(5):
        schedule.schedule(f"o-{n}", float(n))
    assert schedule.pop_due(10.0, 2) == ["o-0", "o-1"]
    assert schedule.pop_due(10.0, 10) == ["o-2", "o-3", "o-4"]


def test_superseded_entries_are_compacted() -> None:
    schedule = DueSchedule()
    for n in range(10_000):
        schedule.schedule("hot", float(n))
    assert len(schedule) == 1
    assert len(schedule._heap) < 2_000
    assert schedule.pop_due(1e9, 10) == ["hot"]


def test_posix_reads_the_views_timestamps() -> None:
    assert posix("1970-01-01T00:01:00.000+00:00") == 60.0
    assert posix("1970-01-01T01:01:00.000+01:00") == 60.0


def test_an_order_is_popped_once_for_its_clock_and_due_time() -> None:
    schedule: NudgeSchedule[str] = NudgeSchedule()
    schedule.hold("o-1", "events-3", 10.0)
    assert schedule.pop_due("events-3", 9.0, 100) == [], "its clock has not reached it"
    assert schedule.pop_due("events-3", 10.0, 100) == [("o-1", 10.0)]
    schedule.hold("o-1", "events-3", 10.0)  # rewritten (a deferred event) while its nudge is out
    assert schedule.pop_due("events-3", 1e9, 100) == [], "one nudge per order and due time"
    assert len(schedule) == 0


def test_a_nudge_that_changed_nothing_is_rearmed() -> None:
    schedule: NudgeSchedule[str] = NudgeSchedule()
    schedule.hold("o-1", "events-3", 10.0)
    assert schedule.pop_due("events-3", 10.0, 100) == [("o-1", 10.0)]
    schedule.rearm("o-1")
    schedule.hold("o-1", "events-3", 10.0)
    assert schedule.pop_due("events-3", 10.0, 100) == [("o-1", 10.0)]


def test_a_new_due_time_or_clock_holds_the_order_again() -> None:
    schedule: NudgeSchedule[str] = NudgeSchedule()
    schedule.hold("o-1", "results-3", 10.0)
    assert schedule.pop_due("results-3", 10.0, 100) == [("o-1", 10.0)]
    schedule.hold("o-1", "events-3", 50.0)  # reserved after its deadline nudge: now it may expire
    assert schedule.clocks() == ["events-3"]
    assert schedule.pop_due("events-3", 50.0, 100) == [("o-1", 50.0)]


def test_moving_an_order_to_another_clock_or_forgetting_it_leaves_nothing_behind() -> None:
    schedule: NudgeSchedule[str] = NudgeSchedule()
    schedule.hold("o-1", "results-3", 10.0)
    schedule.hold("o-1", "events-3", 50.0)
    assert schedule.pop_due("results-3", 1e9, 100) == []
    schedule.hold("o-1", None, None)
    assert schedule.pop_due("events-3", 1e9, 100) == [] and len(schedule) == 0


def test_dropping_a_clock_forgets_its_orders_and_nudges() -> None:
    schedule: NudgeSchedule[str] = NudgeSchedule()
    schedule.hold("o-1", "events-3", 10.0)
    schedule.hold("o-2", "events-3", 20.0)
    schedule.hold("o-3", "events-4", 10.0)
    assert schedule.pop_due("events-3", 10.0, 100) == [("o-1", 10.0)]
    schedule.drop("events-3")  # the partition went to another worker
    assert schedule.clocks() == ["events-4"] and len(schedule) == 1
    schedule.hold("o-1", "events-3", 10.0)  # it came back: a recovery seeds it again
    assert schedule.pop_due("events-3", 10.0, 100) == [("o-1", 10.0)]
