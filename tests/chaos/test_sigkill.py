"""SIGKILL a random worker of three, three times, while orders flow; then check everything.

Orders (one to three lines, some SKUs scarce, exact duplicates re-published) go to
``orders`` at a steady rate from a default aiokafka producer. At random moments of the
stream (seeded) a random worker is killed with SIGKILL and started again a moment later;
right after each kill one probe order per partition measures how long until the killed
worker's partitions answer again. Then every order must be ``reserved`` or ``rejected``,
the stock must add up, no worker that was not killed may have crashed, and
``cartloom audit --strict`` must be clean. The same runs with the RocksDB store, each
worker keeping its data directory across its kills.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack.stack import StackState
from tests.chaos.load import OrderStream
from tests.chaos.scenario import Scale, Scenario

pytestmark = pytest.mark.chaos

STORES = {"memory": {}, "rocksdb": {"CARTLOOM_STORE": "rocksdb://"}}


async def test_sigkill_memory_store(
    chaos_run: int, chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    await sigkill_scenario("memory", chaos_run, chaos_stack, tmp_path, scale, base_seed)


async def test_sigkill_rocksdb_store_keeping_volumes(
    chaos_run: int, chaos_stack: StackState, tmp_path: Path, scale: Scale, base_seed: int
) -> None:
    await sigkill_scenario("rocksdb", chaos_run, chaos_stack, tmp_path, scale, base_seed)


async def sigkill_scenario(
    store: str, run: int, stack: StackState, log_dir: Path, scale: Scale, base_seed: int
) -> None:
    """Three workers, ``scale.kills`` SIGKILLs at seeded moments, then every check."""
    seed = base_seed + run - 1
    name = f"sigkill-{store}" + (f"-run{run}" if scale.name == "full" or run > 1 else "")
    async with Scenario(name, stack, log_dir, scale, seed, STORES[store]) as s:
        await s.start_workers(["w1", "w2", "w3"])
        s.supervise()
        await s.stock()
        orders = OrderStream(s.catalog, f"o{seed}", s.order_rng)
        s.stream_started = time.monotonic()
        stream = s.background(s.publisher.stream(orders, scale.orders, scale.rate))
        duration = scale.orders / scale.rate
        start, end = 0.1 * duration, 0.8 * duration
        segment = (end - start) / scale.kills
        moments = [start + (n + s.rng.random()) * segment for n in range(scale.kills)]
        for number, at in enumerate(moments, 1):
            await s.until_stream_time(at)
            await s.ready_for_fault()
            victim = s.rng.choice(sorted(s.cluster.running()))
            await s.kill_and_restart(number, victim, restart_delay=s.rng.uniform(0.5, 2.0))
        await stream
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        await s.settle()
        s.judge()
        s.workers()
        await s.audit()
        s.finish(run=run)
