"""Views benchmark: what keeping DynamoDB and Redis up to date costs, and how far they lag.

Two parts, each on a fresh embedded local stack per run (broker, redis-server, moto;
bench/benchlib.py), every figure taken from outside the processes under test:

1. **Cost** (``--orders``, ``--rounds``): the same backlog of orders, published at once with
   confluent-kafka at its defaults to processes that are ready and idle, through each form
   in turn, the forms taking turns for ``--rounds`` rounds:

   - ``off``: one ``cartloom worker`` with ``CARTLOOM_SINKS_ENABLED=false``, counted until
     every order is resolved (reserved or rejected) in the ``order_by_id`` changelog, read
     by this bench as bench/orders.py reads it;
   - ``worker``: one worker with its sinks on, counted until DynamoDB and Redis hold every
     order in its final state, read from the stores (a sample of 1 in ``--sample-every``
     each second, then every order not yet seen final, until none is left);
   - ``split``: a worker with its sinks off and one ``cartloom sink`` process, counted the
     same way;
   - ``stores`` (not in the default ``--forms``): as ``split`` with one sink process per
     store (``cartloom sink --store dynamodb`` and ``--store redis``), each store's cost.

   CPU per order of each process from ``/proc/<pid>/stat``. The figure the issue asks for is
   the ratio of the worker's CPU per order with sinks on to sinks off (target: within 2x),
   per round and as the median of the rounds.

2. **Lag** (``--rate`` orders/s for ``--seconds``, each form of ``--lag-forms``): a load
   generator process (confluent-kafka, defaults) publishes orders at a steady rate, each
   stamped with the moment it was handed to the producer (``created_at``). This bench reads
   1 in ``--sample-every`` of them from DynamoDB (``BatchGetItem``, at most
   ``--dynamodb-keys-per-read`` keys per read) and Redis (one pipeline) four times a second
   until each is there in its final state: lag = the read that first found it - created_at,
   as p50/p99 per store, both for the first version (``received``) and the final one. Also:
   the rate achieved, the backlog when publishing ends (records the sink groups and the
   order intake had not yet committed, from the broker; sampled orders not yet in each
   store), and every process's CPU over the phase (worker, sink, broker, redis-server,
   the DynamoDB server (moto), the load generator, this bench). After publishing it waits up to
   ``--drain`` seconds for the rest.

    python bench/views.py [--orders 10000] [--rounds 3] [--rate 2000] [--seconds 60]
    python bench/views.py --orders 2000 --rounds 1 --rate 200 --seconds 10   # a quick look

Results: bench/results/views.json and bench/results/views.png (matplotlib, the docs extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from benchlib import (
    FINAL,
    ROOT,
    CpuMeter,
    Form,
    Stack,
    StoreProbe,
    backlog_run,
    cleanup,
    fresh_stack,
    group_lag,
    machine,
    percentiles,
    progress,
    publish,
    stock,
    wait_quiet,
    workdir,
    write_report,
)

FORMS = {
    "off": Form(1, "off"),
    "worker": Form(1, "worker"),
    "split": Form(1, "split", sink_processes=1),
    "stores": Form(1, "split", sink_processes=1, per_store=True),
}
LABELS = {
    "off": "sinks off",
    "worker": "sinks in worker",
    "split": "worker + sink",
    "stores": "worker + sink\nper store",
}
TARGET_RATIO = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000, help="backlog per run (cost)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every form (cost)")
    parser.add_argument("--forms", default="off,worker,split", help="cost: forms, in turn")
    parser.add_argument("--rate", type=float, default=2000.0, help="orders/s (lag)")
    parser.add_argument("--seconds", type=float, default=60.0, help="publishing time (lag)")
    parser.add_argument("--lag-forms", default="worker,split", help="lag: forms, in turn")
    parser.add_argument("--drain", type=float, default=120.0, help="lag: wait after publishing")
    parser.add_argument("--sample-every", type=int, default=50, help="read 1 order in N")
    parser.add_argument("--dynamodb-keys-per-read", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per cost run, seconds")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/views.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/views.png")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from --out")
    args = parser.parse_args(argv)
    for name in (*args.forms.split(","), *args.lag_forms.split(",")):
        if name and name not in FORMS:
            parser.error(f"unknown form {name!r}: {', '.join(FORMS)}")
    if args.orders < 1 or args.rounds < 1 or args.rate <= 0 or args.sample_every < 1:
        parser.error("--orders, --rounds, --rate and --sample-every must be positive")
    return args


# -- part 1: cost per order ----------------------------------------------------------------


def worker_us(result: dict[str, Any]) -> float | None:
    """The worker's CPU per order: until resolved (sinks off) or stored (sinks on)."""
    phase = result.get("resolved" if result["sinks"] == "off" else "stored")
    return phase["cpu_us_per_order"]["worker-1"] if phase else None


def views_us(result: dict[str, Any]) -> float | None:
    """CartLoom's CPU per order: the worker and its sink processes, until stored."""
    phase = result.get("resolved" if result["sinks"] == "off" else "stored")
    if not phase:
        return None
    cpu = phase["cpu_us_per_order"]
    return round(sum(v for k, v in cpu.items() if k.startswith(("worker", "sink"))), 1)


async def cost(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    forms = [name for name in args.forms.split(",") if name]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in forms}
    for turn in range(1, args.rounds + 1):
        for name in forms:
            print(f"cost, round {turn}/{args.rounds}: {FORMS[name].label}", flush=True)
            async with fresh_stack(work, f"cost-{turn}-{name}") as stack:
                with progress() as display:
                    result = await backlog_run(
                        stack,
                        FORMS[name],
                        args.orders,
                        limit=args.timeout,
                        sample_every=args.sample_every,
                        display=display,
                    )
            rounds[name].append(result)
            print(f"  {line(result)}", flush=True)
    ratios = []
    if "off" in rounds and "worker" in rounds:
        for off, on in zip(rounds["off"], rounds["worker"], strict=True):
            a, b = worker_us(off), worker_us(on)
            ratios.append(round(b / a, 2) if a and b else None)
    split_ratios = []
    if "off" in rounds and "split" in rounds:
        for off, split in zip(rounds["off"], rounds["split"], strict=True):
            a, b = worker_us(off), views_us(split)
            split_ratios.append(round(b / a, 2) if a and b else None)
    medians = {
        name: {
            "worker_cpu_us_per_order": _median([worker_us(r) for r in each]),
            "cartloom_cpu_us_per_order": _median([views_us(r) for r in each]),
            "rounds_worker_cpu_us_per_order": [worker_us(r) for r in each],
        }
        for name, each in rounds.items()
    }
    return {
        "orders": args.orders,
        "rounds": rounds,
        "median": medians,
        "worker_on_over_off": {"rounds": ratios, "median": _median(ratios)},
        "split_worker_and_sink_over_off": {"rounds": split_ratios, "median": _median(split_ratios)},
        "target_ratio": TARGET_RATIO,
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def line(result: dict[str, Any]) -> str:
    parts = []
    for phase in ("resolved", "stored"):
        if phase in result:
            figures = result[phase]
            cpu = ", ".join(f"{k} {v:,.0f}" for k, v in figures["cpu_us_per_order"].items())
            parts.append(
                f"{phase} in {figures['seconds']:.1f}s ({figures['orders_per_s']:,.0f}/s); "
                f"CPU µs/order: {cpu}"
            )
    if result["timed_out"]:
        parts.append("TIMED OUT")
    return "\n  ".join(parts)


# -- part 2: end-to-end lag at a sustained rate --------------------------------------------


class Sampled:
    """One sampled order's visibility in one store."""

    __slots__ = ("created", "final", "gap", "last_check", "visible")

    def __init__(self) -> None:
        self.created: float | None = None
        self.visible: float | None = None
        self.final: float | None = None
        self.last_check: float | None = None
        # between the last read that missed it and the one that found it
        self.gap: float | None = None


async def lag_run(stack: Stack, form: Form, args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.rate * args.seconds)
    publish(stack.bootstrap, "inventory", stock(10 * total))
    stack.start(form)
    await stack.ready()
    meter = stack.meter()
    await wait_quiet(meter, [p.name for p in stack.procs])
    loadgen = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("benchlib.py")),
        "loadgen",
        "--bootstrap",
        stack.bootstrap,
        "--rate",
        str(args.rate),
        "--seconds",
        str(args.seconds),
        "--prefix",
        "lag",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    meter.add("loadgen", loadgen.pid)
    cpu0, mono0, wall0 = meter.read(), time.monotonic(), time.time()
    state: dict[str, Any] = {"sent": 0, "summary": None}

    async def read_loadgen() -> None:
        assert loadgen.stdout is not None
        async for raw in loadgen.stdout:
            text = raw.decode().strip()
            if text.startswith("sent "):
                state["sent"] = int(text.split()[1])
            elif text.startswith("{"):
                state["summary"] = orjson.loads(text)

    reader = asyncio.create_task(read_loadgen())
    samples: dict[str, dict[int, Sampled]] = {"dynamodb": {}, "redis": {}}
    cursor = {"dynamodb": 0, "redis": 0}
    budget = {"dynamodb": args.dynamodb_keys_per_read, "redis": 5000}
    phase_end: dict[str, Any] = {}
    display = progress()
    with display:
        sent_task = display.add_task("  published", total=total)
        store_tasks = {
            s: display.add_task(f"  final in {s} (1 in {args.sample_every})", total=None)
            for s in samples
        }
        async with StoreProbe(stack.settings()) as probe:
            while True:
                stack.check_alive()
                await asyncio.sleep(0.25)
                sent = state["sent"]
                display.update(sent_task, completed=sent)
                for store, known in samples.items():
                    for n in range(0, sent, args.sample_every):
                        known.setdefault(n, Sampled())
                    waiting = sorted(n for n, s in known.items() if s.final is None)
                    if not waiting:
                        continue
                    start = cursor[store] if cursor[store] < len(waiting) else 0
                    chunk = waiting[start : start + budget[store]]
                    cursor[store] = start + len(chunk)
                    read = probe.dynamodb if store == "dynamodb" else probe.redis
                    issued = time.time()
                    seen = await read([f"lag-{n}" for n in chunk])
                    for n in chunk:
                        sample = known[n]
                        found = seen.get(f"lag-{n}")
                        if found is not None:
                            status, created = found
                            if sample.created is None and created:
                                sample.created = datetime.fromisoformat(created).timestamp()
                            if sample.visible is None:
                                sample.visible = issued
                            if status in FINAL:
                                sample.final = issued
                                if sample.last_check is not None:
                                    sample.gap = issued - sample.last_check
                        sample.last_check = issued
                    done = sum(1 for s in known.values() if s.final is not None)
                    display.update(store_tasks[store], completed=done, total=len(known))
                if loadgen.returncode is not None and state["summary"] is None:
                    raise RuntimeError(f"the load generator exited with {loadgen.returncode}")
                if time.monotonic() - mono0 > args.seconds + args.drain + 300:
                    raise TimeoutError("the load generator did not finish publishing")
                if state["summary"] is not None and not phase_end:
                    phase_end = await end_of_phase(stack, meter, samples, state)
                if phase_end:
                    everything = all(
                        s.final is not None for known in samples.values() for s in known.values()
                    )
                    if everything or time.monotonic() - phase_end["at"] > args.drain:
                        break
        calls = dict(probe.calls)
    cpu_end, mono_end = meter.read(), time.monotonic()
    assert loadgen.stdin is not None
    loadgen.stdin.close()
    await reader
    await loadgen.wait()
    phase_seconds = phase_end["at"] - mono0
    phase_cpu = CpuMeter.used(cpu0, phase_end["cpu"])
    drain_cpu = CpuMeter.used(cpu0, cpu_end)
    stores: dict[str, Any] = {}
    end_wall = time.time()

    def lags(known: dict[int, Sampled], kind: str) -> dict[str, Any]:
        """p50/p99 with the orders never seen counted at the time waited (lower bounds)."""
        values, censored = [], []
        for n, sample in known.items():
            at = sample.final if kind == "final" else sample.visible
            if at is not None and sample.created is not None:
                values.append(at - sample.created)
            else:  # not there by the end: it took longer than we waited
                created = sample.created or wall0 + n / args.rate
                censored.append(end_wall - created)
        figures: dict[str, Any] = percentiles(values + censored)
        figures["not_there_by_the_end"] = len(censored)
        if censored:
            floor = min(censored) * 1000
            for name in ("p50_ms", "p99_ms"):
                value = figures[name]
                figures[f"{name}_is_a_lower_bound"] = value is not None and value >= floor
        return figures

    for store, known in samples.items():
        gaps = [s.gap for s in known.values() if s.gap is not None]
        stores[store] = {
            "sampled": len(known),
            "visible": lags(known, "visible"),
            "final": lags(known, "final"),
            "not_final_at_the_end": sum(1 for s in known.values() if s.final is None),
            "read_gap_ms": {
                "median": round(statistics.median(gaps) * 1000) if gaps else None,
                "max": round(max(gaps) * 1000) if gaps else None,
            },
        }
    return {
        "form": form.label,
        "sinks": form.sinks,
        "target_rate": args.rate,
        "seconds": args.seconds,
        "loadgen": state["summary"],
        "sample_every": args.sample_every,
        "stores": stores,
        "backlog_when_publishing_ended": phase_end["backlog"],
        "phase_seconds": round(phase_seconds, 3),
        "cpu_seconds_phase": phase_cpu,
        "cores_phase": {k: round(v / phase_seconds, 3) for k, v in phase_cpu.items()},
        "drain_seconds": round(mono_end - phase_end["at"], 3),
        "cpu_seconds_until_the_end": drain_cpu,
        "store_reads": calls,
    }


async def end_of_phase(
    stack: Stack, meter: CpuMeter, samples: dict[str, dict[int, Any]], state: dict[str, Any]
) -> dict[str, Any]:
    """CPU and backlog at the moment the load generator finished publishing."""
    from cartloom.sinks.materialiser import sink_group_id

    at, cpu = time.monotonic(), meter.read()
    changelog = "cartloom-order_by_id-changelog"
    backlog: dict[str, Any] = {
        "orders_not_taken_by_the_intake": await group_lag(
            stack.bootstrap, "cartloom-intake", "orders"
        ),
    }
    for store, known in samples.items():
        backlog[f"{store}_sink_changelog_records_uncommitted"] = await group_lag(
            stack.bootstrap, sink_group_id("cartloom", store), changelog
        )
        missing = sum(1 for s in known.values() if s.final is None)
        backlog[f"{store}_sampled_not_final"] = f"{missing} of {len(known)}"
        backlog[f"{store}_orders_not_final_estimated"] = round(
            missing / max(1, len(known)) * state["sent"]
        )
    print(f"  publishing ended: {state['summary']}; backlog {backlog}", flush=True)
    return {"at": at, "cpu": cpu, "backlog": backlog}


async def lag(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs = {}
    for name in [n for n in args.lag_forms.split(",") if n]:
        print(
            f"lag: {FORMS[name].label}, {args.rate:,.0f} orders/s for {args.seconds:.0f}s",
            flush=True,
        )
        async with fresh_stack(work, f"lag-{name}") as stack:
            runs[name] = await lag_run(stack, FORMS[name], args)
        for store, figures in runs[name]["stores"].items():
            final = figures["final"]
            print(
                f"  {store}: final p50 {fmt_ms(final['p50_ms'], final, 'p50_ms')},"
                f" p99 {fmt_ms(final['p99_ms'], final, 'p99_ms')}"
                f" ({figures['sampled']} sampled, {final['not_there_by_the_end']} not there"
                " by the end: counted as the time waited, so a figure at or above it is a"
                " lower bound)",
                flush=True,
            )
        cores = ", ".join(f"{k} {v:.2f}" for k, v in runs[name]["cores_phase"].items())
        print(f"  cores used over the phase: {cores}", flush=True)
    return runs


def fmt_ms(value: float | None, figures: dict[str, Any] | None = None, name: str = "") -> str:
    if value is None:
        return "-"
    bound = ">= " if figures and figures.get(f"{name}_is_a_lower_bound") else ""
    return f"{bound}{value:,.0f} ms"


# -- report --------------------------------------------------------------------------------


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part, runs = summary.get("cost"), summary.get("lag")
    panels = int(bool(part)) + int(bool(runs))
    fig, axes = plt.subplots(1, max(1, panels), figsize=(5 * max(1, panels), 3.8), squeeze=False)
    left = axes[0][0]
    right = axes[0][-1]
    if part:
        names = list(part["median"])
        worker = [part["median"][n]["worker_cpu_us_per_order"] or 0 for n in names]
        total = [part["median"][n]["cartloom_cpu_us_per_order"] or 0 for n in names]
        left.bar(names, worker, color="#3b7dd8", label="worker")
        sinks = [t - w for t, w in zip(total, worker, strict=True)]
        bars = left.bar(names, sinks, bottom=worker, color="#8fb8ec", label="sink process")
        left.bar_label(bars, labels=[f"{t:,.0f} µs" for t in total], padding=2)
        for index, name in enumerate(names):  # every round's worker figure
            each = part["median"][name]["rounds_worker_cpu_us_per_order"]
            left.scatter([index] * len(each), each, color="#222222", s=9, zorder=3)
        if "off" in part["median"] and part["median"]["off"]["worker_cpu_us_per_order"]:
            target = TARGET_RATIO * part["median"]["off"]["worker_cpu_us_per_order"]
            left.axhline(target, color="#222222", linestyle="--", linewidth=1)
            left.annotate("target: 2x sinks off", (0, target), va="bottom", ha="center")
        left.set_ylim(0, max(total) * 1.15)
        left.set_xticks(
            range(len(names)),
            [LABELS.get(n, n) for n in names],
        )
        left.set_ylabel("CPU µs per order (until resolved / stored)")
        ratio = part["worker_on_over_off"]["median"]
        if ratio is not None:
            headline = f"worker CPU per order, sinks on / off: {ratio}x"
        elif "off" in names and len(names) > 1 and total[names.index("off")]:
            headline = f"{LABELS.get(names[-1], names[-1])} / sinks off: ".replace("\n", " ")
            headline += f"{total[-1] / total[names.index('off')]:.2f}x"
        else:
            headline = ""
        left.set_title(
            f"{part['orders']:,} orders, median of {len(part['rounds'][names[0]])} rounds "
            f"(dots: each round)\n{headline}",
            fontsize=9,
        )
        left.legend(fontsize=8)
    if runs:
        labels, p50, p99, p50_bound, p99_bound = [], [], [], [], []
        for name, run in runs.items():
            for store, figures in run["stores"].items():
                final = figures["final"]
                labels.append(f"{name}\n{store}")
                p50.append((final["p50_ms"] or 0) / 1000)
                p99.append((final["p99_ms"] or 0) / 1000)
                p50_bound.append(bool(final.get("p50_ms_is_a_lower_bound")))
                p99_bound.append(bool(final.get("p99_ms_is_a_lower_bound")))
        xs = range(len(labels))
        for offset, values, bounds, name, colour in (
            (-0.2, p50, p50_bound, "p50", "#3b7dd8"),
            (0.2, p99, p99_bound, "p99", "#d98c4a"),
        ):
            bars = right.bar([x + offset for x in xs], values, 0.4, label=name, color=colour)
            right.bar_label(
                bars,
                labels=[
                    f"{'≥' if bound else ''}{v:,.1f}s"
                    for v, bound in zip(values, bounds, strict=True)
                ],
                fontsize=7,
            )
        right.set_xticks(list(xs), labels, fontsize=8)
        right.set_yscale("log")
        right.set_ylabel("published -> final in the store, s (log)")
        first = next(iter(runs.values()))
        achieved = (first["loadgen"] or {}).get("achieved_per_s", 0)
        right.set_title(
            f"{first['target_rate']:,.0f} orders/s asked for {first['seconds']:.0f} s "
            f"(achieved {achieved:,.0f}/s)\n1 in {first['sample_every']} orders read",
            fontsize=9,
        )
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = workdir("cartloom-bench-views-")
    summary: dict[str, Any] = {"machine_before": machine()}
    failed = True
    try:
        if not args.skip_cost:
            summary["cost"] = await cost(args, work)
            part = summary["cost"]
            print(
                f"worker CPU per order, sinks on / off: {part['worker_on_over_off']} "
                f"(target {TARGET_RATIO}x); worker + sink process / off: "
                f"{part['split_worker_and_sink_over_off']}",
                flush=True,
            )
            # kept at once: a failure in the lag part must not lose the cost part
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"partial": True, **summary}, indent=2) + "\n")
        if not args.skip_lag:
            summary["lag"] = await lag(args, work)
        failed = False
    finally:
        cleanup(work, failed)
    summary["machine_after"] = machine()
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        print(f"written {args.plot}")
        return
    started = datetime.now(UTC)
    summary = asyncio.run(run(args))
    summary = {
        "measured_at": started.isoformat(timespec="seconds"),
        "settings": {
            k: (str(v.relative_to(ROOT)) if v.is_relative_to(ROOT) else v.name)
            if isinstance(v, Path)
            else v
            for k, v in vars(args).items()
        },
        **summary,
    }
    write_report(summary, args.out, args.plot, lambda path: plot(summary, path))


if __name__ == "__main__":
    main()
