"""The materialiser's retry loop: only what is left is retried, failures count, stop is prompt,
a store outage is retried without bound and one bad change is set aside."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from unittest.mock import patch

import pytest
from prometheus_client import REGISTRY

from cartloom.core.settings import Settings
from cartloom.core.topology import load_topology
from cartloom.domain.errors import RejectReason
from cartloom.sinks.base import ChangeRefused, PartialWrite, ViewChange, WriteOutcome
from cartloom.sinks.materialiser import Materialiser, MaterialiserStopped
from cartloom.sinks.runner import build_materialiser
from cartloom.stream.kafka_clients import KafkaConnection
from tests.harness import eventually
from tests.memory_sink import MemorySink


def change(key: str, version: int) -> ViewChange:
    return ViewChange("orders", key, version, {"order_id": key, "version": version})


class FlakySink(MemorySink):
    """Takes every other change for the first ``flaky_calls`` calls, then everything."""

    name = "flaky"

    def __init__(self, flaky_calls: int) -> None:
        super().__init__()
        self.flaky_calls = flaky_calls
        self.offered: list[list[str]] = []

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        self.offered.append([c.key for c in changes])
        if len(self.offered) > self.flaky_calls:
            return await super().write(changes)
        taken, left = list(changes[::2]), list(changes[1::2])
        outcome = await super().write(taken)
        raise PartialWrite(outcome, left, ConnectionError("store went away"))


class DownSink(MemorySink):
    name = "down"

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        raise ConnectionError("connection refused")


def materialiser(sink: MemorySink, retry_max: float = 0.05) -> Materialiser:
    return Materialiser(
        sink,
        kafka=KafkaConnection.plaintext("127.0.0.1:9"),
        group_id="unit",
        entities={"cartloom-order_by_id-changelog": "orders"},
        batch_max=100,
        retry_max_seconds=retry_max,
        fetch_max_wait_ms=500,
    )


def failures(store: str) -> float:
    return REGISTRY.get_sample_value("cartloom_sink_failures_total", {"store": store}) or 0.0


async def test_a_partial_write_retries_only_the_changes_left() -> None:
    sink = FlakySink(flaky_calls=2)
    before = failures("flaky")
    batch = [change(f"k{i}", 1) for i in range(8)]
    outcome = await materialiser(sink).write_until_taken(batch)
    assert [len(keys) for keys in sink.offered] == [8, 4, 2]
    assert outcome.written == 8
    assert {key for (_, key) in sink.items} == {f"k{i}" for i in range(8)}
    assert failures("flaky") == before + 2


async def test_stop_ends_a_long_back_off_at_once_without_taking_the_batch() -> None:
    feeder = materialiser(DownSink(), retry_max=60.0)
    task = asyncio.create_task(feeder.write_until_taken([change("k", 1)]))

    async def failed_twice() -> None:
        while failures("down") < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(failed_twice(), timeout=10)
    feeder.stop()
    with pytest.raises(MaterialiserStopped):
        await asyncio.wait_for(task, timeout=5)


class PoisonSink(MemorySink):
    """Fails one key on its own (``error``); every other change is taken."""

    name = "poison"

    def __init__(self, poison: str, error: Exception) -> None:
        super().__init__()
        self.poison = poison
        self.error = error
        self.offered: list[list[str]] = []

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        self.offered.append([c.key for c in changes])
        bad = [c for c in changes if c.key == self.poison]
        outcome = await super().write([c for c in changes if c.key != self.poison])
        if bad:
            raise PartialWrite(outcome, bad, self.error)
        return outcome


class CrashingSink(MemorySink):
    """Raises for the whole write whenever the poison key is in it (a bug on one value)."""

    name = "crashing"

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        if any(c.key == "bad" for c in changes):
            raise TypeError("cannot encode the document of 'bad'")
        return await super().write(changes)


def feeder(sink: MemorySink, max_attempts: int = 3) -> Materialiser:
    return Materialiser(
        sink,
        kafka=KafkaConnection.plaintext("127.0.0.1:9"),
        group_id="unit",
        entities={"cartloom-order_by_id-changelog": "orders"},
        batch_max=100,
        retry_max_seconds=0.01,
        max_attempts=max_attempts,
        fetch_max_wait_ms=500,
    )


async def test_a_change_failing_on_its_own_is_set_aside_after_the_bounded_attempts() -> None:
    sink = PoisonSink("bad", ValueError("WRONGTYPE Operation against a key"))
    batch = [change("a", 1), change("bad", 1), change("b", 1)]
    outcome = await feeder(sink, max_attempts=3).write_until_taken(batch)
    assert sink.offered == [["a", "bad", "b"], ["bad"], ["bad"]]
    assert outcome.written == 2
    [aside] = outcome.set_aside
    assert (aside.change.key, aside.reason) == ("bad", RejectReason.RETRIES_EXHAUSTED)
    assert "3 attempts" in aside.detail and "WRONGTYPE" in aside.detail


async def test_a_change_the_store_refuses_for_good_is_set_aside_at_once() -> None:
    sink = PoisonSink("bad", ChangeRefused("DynamoDB ValidationException: item too large"))
    outcome = await feeder(sink).write_until_taken([change("bad", 1), change("a", 1)])
    assert sink.offered == [["bad", "a"]]
    assert (outcome.written, outcome.rejected) == (1, 1)
    assert [(s.change.key, s.reason) for s in outcome.set_aside] == [("bad", RejectReason.REFUSED)]


async def test_a_store_outage_is_retried_without_bound_and_sets_nothing_aside() -> None:
    sink = PoisonSink("bad", ConnectionError("connection refused"))
    task = asyncio.create_task(feeder(sink, max_attempts=2).write_until_taken([change("bad", 1)]))

    async def still_retrying_far_beyond_max_attempts() -> bool:
        if task.done():  # set aside or failed: it stopped retrying
            raise AssertionError(f"the write ended after {len(sink.offered)} attempts: {task}")
        return len(sink.offered) >= 10

    try:
        await eventually(
            still_retrying_far_beyond_max_attempts, timeout=10, interval=0.01, what="10 attempts"
        )
    except AssertionError:
        task.cancel()  # no write left retrying behind the failure
        raise
    sink.poison = "none"  # the store is back
    outcome = await asyncio.wait_for(task, timeout=10)
    assert (outcome.written, outcome.set_aside) == (1, [])


async def test_a_whole_write_failing_on_one_value_is_narrowed_to_that_change() -> None:
    sink = CrashingSink()
    batch = [change("a", 1), change("bad", 1), change("b", 1)]
    outcome = await feeder(sink, max_attempts=2).write_until_taken(batch)
    assert {key for (_, key) in sink.items} == {"a", "b"}
    assert [(s.change.key, s.reason) for s in outcome.set_aside] == [
        ("bad", RejectReason.RETRIES_EXHAUSTED)
    ]
    assert "TypeError" in outcome.set_aside[0].detail


class RecordingConnection(KafkaConnection):
    """A connection that records the options of the consumer it is asked for, then refuses."""

    def consumer(self, *topics: str, **options: object) -> Any:
        self.asked.append(options)  # type: ignore[attr-defined]
        raise ConnectionRefusedError("recorded")


def test_the_sinks_consumers_wait_on_fetches_as_long_as_every_other_consumer() -> None:
    settings = Settings(broker_fetch_max_wait_ms=50)
    connection = RecordingConnection("127.0.0.1:9")
    object.__setattr__(connection, "asked", [])
    with patch("cartloom.sinks.runner.kafka_connection", return_value=connection):
        built = build_materialiser(settings, load_topology(), MemorySink())
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(built.run())
    (options,) = connection.asked  # type: ignore[attr-defined]
    assert options["fetch_max_wait_ms"] == 50, "the embedded broker waits this long per fetch"
