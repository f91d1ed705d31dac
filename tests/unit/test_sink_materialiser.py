"""The materialiser's retry loop: only what is left is retried, failures count, stop is prompt."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from cartloom.sinks.base import PartialWrite, ViewChange, WriteOutcome
from cartloom.sinks.materialiser import Materialiser, MaterialiserStopped
from cartloom.sinks.memory import MemorySink


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
        bootstrap_servers="127.0.0.1:9",
        group_id="unit",
        entities={"cartloom-order_by_id-changelog": "orders"},
        batch_max=100,
        retry_max_seconds=retry_max,
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
