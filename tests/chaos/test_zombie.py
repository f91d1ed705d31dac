"""A zombie: one worker of three frozen (SIGSTOP) past its session timeout, then woken.

While it is stopped the group evicts it and the other two take its partitions; when it
wakes (SIGCONT) it still believes it owns them and may write before it learns otherwise.
It must do no harm: the same checks as the SIGKILL scenario, and the zombie itself must
not crash either (nothing was killed here).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devstack.stack import StackState
from tests.chaos.load import OrderStream
from tests.chaos.scenario import Scale, Scenario

pytestmark = pytest.mark.chaos

#: How long the zombie stays frozen, in session timeouts (the group evicts it after one).
PAUSE_SESSIONS = 2.5


async def test_zombie_worker_does_no_harm(
    chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    session = float(chaos_stack.env["CARTLOOM_BROKER_SESSION_TIMEOUT"])
    pause = PAUSE_SESSIONS * session
    async with Scenario("zombie", chaos_stack, tmp_path, scale, base_seed) as s:
        await s.start_workers(["w1", "w2", "w3"])
        s.supervise()
        await s.stock()
        orders = OrderStream(s.catalog, f"z{base_seed}", s.order_rng)
        s.stream_started = time.monotonic()
        stream = s.background(s.publisher.stream(orders, scale.orders, scale.rate))
        duration = scale.orders / scale.rate
        await s.until_stream_time(s.rng.uniform(0.1, 0.25) * duration)
        await s.ready_for_fault()
        victim = s.rng.choice(sorted(s.cluster.running()))
        zombie = s.cluster.current(victim).name
        await s.fault(1, "SIGSTOP", victim, s.cluster.pause)
        await asyncio.sleep(pause)  # how long the zombie stays frozen: the fault itself
        await s.fault(2, "SIGCONT", victim, s.cluster.resume)
        await stream
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        await s.settle()
        s.judge()
        s.workers()  # nobody was killed: every incarnation must still run, uncrashed
        await s.audit()
        s.finish(zombie=zombie, paused_s=pause)
