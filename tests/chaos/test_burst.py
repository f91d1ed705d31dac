"""A burst on top of a steady stream: two workers absorb it and return to their level.

Two workers take a steady trickle of orders; part way, 1,500 orders arrive at once, and
the scarce SKUs run out during it. Afterwards the trickle goes on. What a user notices:
the delay of the trickle's orders after the burst returns to what it was before it, no
group is left behind, every order is resolved (the scarce ones rejected for stock, not
for a deadline), and ``order.timeouts`` carries at most one nudge per order and kind
(a backlog used to multiply them: about eight per order of such a burst).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack.stack import StackState
from tests.chaos.load import OrderStream
from tests.chaos.scenario import Scale, Scenario, percentiles

pytestmark = pytest.mark.chaos

BURST = 1500
TRICKLE_RATE = 15.0  # orders per second, before, during and after the burst
#: Seconds of trickle before the burst, and after it (short form; doubled at full scale).
BEFORE_S, AFTER_S = 20.0, 60.0
#: The trickle's delay after the burst counts as back to its level within this margin.
LEVEL_MARGIN_S = 3.0


async def test_two_workers_absorb_a_burst_and_return_to_their_level(
    chaos_stack: StackState,
    tmp_path: Path,
    scale: Scale,
    base_seed: int,
    pytestconfig: pytest.Config,
) -> None:
    factor = 2 if scale.name == "full" else 1
    before_s, after_s = BEFORE_S * factor, AFTER_S * factor
    async with Scenario(
        "burst", chaos_stack, tmp_path, scale, base_seed, raw_topics=("order.timeouts",)
    ) as s:
        await s.start_workers(["w1", "w2"])
        s.supervise()
        await s.stock()
        trickle = OrderStream(s.catalog, f"t{base_seed}", s.order_rng)
        burst = OrderStream(s.catalog, f"b{base_seed}", s.order_rng, scarce_share=0.3)
        count = int((before_s + after_s) * TRICKLE_RATE)
        s.stream_started = time.monotonic()
        stream = s.background(s.publisher.stream(trickle, count, TRICKLE_RATE))
        await s.until_stream_time(before_s)
        burst_at = time.monotonic()
        for n in range(BURST):
            await s.publisher.order(*burst.order(n))
        await s.publisher.flush()
        await stream
        s.figures["drain_s"] = await s.drain(scale.drain_timeout)
        await s.settle()
        s.judge()
        s.workers()
        await s.audit()

        trickle_delay = trickle_delays(s, trickle.prefix, burst_at, after_s)
        s.figures["trickle_delay_s"] = trickle_delay
        before, last = trickle_delay["before_burst"], trickle_delay["last_quarter"]
        if not before.get("n") or not last.get("n"):
            s.problems.append(f"too few trickle orders resolved to compare: {trickle_delay}")
        elif last["p99"] > before["p99"] + LEVEL_MARGIN_S:
            s.problems.append(
                f"the trickle's p99 delay did not return to its level: {last['p99']} s "
                f"in the last quarter against {before['p99']} s before the burst"
            )
        nudges = nudge_counts(s)
        s.figures["nudges"] = {
            "records": sum(nudges.values()),
            "orders": len(nudges),
            "most_per_order_and_kind": max(nudges.values(), default=0),
        }
        repeated = sorted(f"{o} {k} x{n}" for (o, k), n in nudges.items() if n > 1)
        if repeated:
            s.problems.append(
                f"{len(repeated)} order(s) nudged more than once for one kind: {repeated[:10]}"
            )
        rejected = s.figures.get("rejected_by_reason", {})
        if rejected.get("deadline"):
            s.problems.append(f"{rejected['deadline']} order(s) rejected at the deadline")
        dashboard = pytestconfig.getoption("--chaos-dashboard")
        if dashboard is not None:
            minutes = (time.monotonic() - s.stream_started) / 60 + 1
            draw_dashboard(chaos_stack, dashboard, minutes, s.figures)
        s.finish(burst=BURST, trickle_rate=TRICKLE_RATE)


def draw_dashboard(stack: StackState, out: Path, minutes: float, figures: dict[str, Any]) -> None:
    """The Grafana dashboard's panels, from the run's Prometheus (scripts/render_dashboard.py)."""
    port = stack.servers["prometheus"].port
    delay = figures.get("trickle_delay_s", {})
    note = (
        f"chaos burst: 2 workers, {TRICKLE_RATE:.0f} orders/s, {BURST} at once; "
        f"trickle p99 {delay.get('before_burst', {}).get('p99')} s before, "
        f"{delay.get('last_quarter', {}).get('p99')} s in the last quarter"
    )
    script = Path(__file__).resolve().parents[2] / "scripts" / "render_dashboard.py"
    argv = [sys.executable, str(script), "--prometheus", f"http://127.0.0.1:{port}"]
    argv += ["--minutes", f"{minutes:.1f}", "--out", str(out), "--note", note]
    subprocess.run(argv, check=True, timeout=300)


def trickle_delays(s: Scenario, prefix: str, burst_at: float, after_s: float) -> dict[str, dict]:
    """Publish-to-resolved seconds of the trickle: before the burst, and its last quarter."""
    sent = s.publisher.published.sent_at
    last_from = burst_at + 0.75 * after_s
    before, last = [], []
    for order_id, at in sent.items():
        done = s.observer.resolved_at.get(order_id)
        if not order_id.startswith(prefix) or done is None:
            continue
        if done < burst_at:
            before.append(done - at)
        elif at >= last_from:
            last.append(done - at)
    return {"before_burst": percentiles(before), "last_quarter": percentiles(last)}


def nudge_counts(s: Scenario) -> Counter[tuple[str, str]]:
    """Records on ``order.timeouts`` per (order id, kind), read from outside the workers."""
    counts: Counter[tuple[str, str]] = Counter()
    for record in s.observer.raw["order.timeouts"]:
        try:
            nudge = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(nudge, dict) and nudge.get("kind") != "held_events":
            counts[(str(nudge.get("order_id")), str(nudge.get("kind")))] += 1
    return counts
