"""Scaling under load with no fault at all: 1 worker, then 2, then 3, then one SIGTERMed.

Plenty of stock for every SKU, so no order may be rejected. Each change of membership is
followed by a probe order per partition (how long until every partition answers again).
No worker may crash, the stopped one must exit 0, and the usual invariants must hold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack.stack import StackState
from tests.chaos.load import OrderStream
from tests.chaos.scenario import Scale, Scenario

pytestmark = pytest.mark.chaos


async def test_scaling_churn_under_load(
    chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    async with Scenario("churn", chaos_stack, tmp_path, scale, base_seed) as s:
        await s.start_workers(["w1"])
        s.supervise()
        levels = dict.fromkeys([*s.catalog.plentiful, *s.catalog.probes], 1_000_000)
        await s.stock(levels)
        orders = OrderStream(s.catalog, f"c{base_seed}", s.order_rng, scarce_share=0.0)
        count = scale.churn_orders
        s.stream_started = time.monotonic()
        stream = s.background(s.publisher.stream(orders, count, scale.rate))
        duration = count / scale.rate
        exit_codes: dict[str, int | None] = {}
        await s.until_stream_time(0.15 * duration)
        await s.fault(1, "start", "w2", s.cluster.start)
        await s.until_stream_time(0.3 * duration)
        await s.fault(2, "start", "w3", s.cluster.start)
        await s.until_stream_time(0.6 * duration)
        await s.ready_for_fault()
        victim = s.rng.choice(sorted(s.cluster.running()))

        async def stop(slot: str) -> None:
            exit_codes[s.cluster.current(slot).name] = await s.cluster.terminate(slot)

        await s.fault(3, "SIGTERM", victim, stop)
        await stream
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        await s.settle()
        s.judge(reject_plentiful=True)
        s.workers()
        for worker, code in exit_codes.items():
            if code != 0:
                s.problems.append(f"{worker} stopped with SIGTERM exited {code}, not 0")
        await s.audit()
        s.finish(sigterm_exit_codes=exit_codes)
