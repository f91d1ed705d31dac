"""Scale-out benchmark: 1, 2 and 3 workers (and sink processes) against the same backlog.

For each form and each worker count, a fresh embedded local stack (bench/benchlib.py),
the processes started and left to become ready and idle, then ``--orders`` orders
published at once with confluent-kafka at its defaults. Measured from outside:

- throughput: orders resolved (reserved or rejected in the ``order_by_id`` changelog,
  read by this bench) per second, and, with the sinks on, orders in their final state in
  both DynamoDB and Redis (read from the stores) per second;
- CPU per order of every process (each worker, each sink process, the broker,
  redis-server, the local DynamoDB server (moto) and this bench) from ``/proc/<pid>/stat``;
- Kafka records per order (every topic's records after the run, from the broker).

Forms (``--forms``): ``off`` (workers with their sinks off: the order path alone),
``worker`` (sinks in each worker, the local stack's default), ``split`` (workers with
sinks off and ``--sink-processes`` ``cartloom sink`` processes; 0: as many as workers).

This machine has 2 cores shared by every process of the stack: it cannot show linear
scaling beyond 2 processes, and the figures say what one more process costs and brings
here, not what it would on a core of its own (docs/scaling.md has the model).

    python bench/scaleout.py [--orders 10000] [--workers 1,2,3] [--forms off,worker,split]

Results: bench/results/scaleout.json and bench/results/scaleout.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import (
    ROOT,
    Form,
    backlog_run,
    cleanup,
    fresh_stack,
    machine,
    progress,
    workdir,
    write_report,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000, help="backlog per run")
    parser.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    parser.add_argument("--forms", default="off,worker,split", help="off, worker, split")
    parser.add_argument("--sink-processes", type=int, default=1, help="split: 0 = one per worker")
    parser.add_argument("--rounds", type=int, default=1, help="turns of every configuration")
    parser.add_argument("--sample-every", type=int, default=50, help="store progress sample")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/scaleout.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/scaleout.png")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from --out")
    args = parser.parse_args(argv)
    args.worker_counts = [int(n) for n in args.workers.split(",") if n]
    args.form_names = [f for f in args.forms.split(",") if f]
    unknown = set(args.form_names) - {"off", "worker", "split"}
    if unknown:
        parser.error(f"unknown forms: {', '.join(sorted(unknown))}")
    if args.orders < 1 or not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--orders and --workers must be positive")
    return args


def form(name: str, workers: int, args: argparse.Namespace) -> Form:
    if name == "split":
        return Form(workers, "split", args.sink_processes or workers)
    return Form(workers, name)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run the table and plot use."""
    phase = result.get("stored") or result.get("resolved") or {}
    cpu = phase.get("cpu_us_per_order", {})
    groups = {"workers": 0.0, "sinks": 0.0}
    for name, value in cpu.items():
        if name.startswith("worker"):
            groups["workers"] += value
        elif name.startswith("sink"):
            groups["sinks"] += value
        else:
            groups[name] = value
    return {
        "resolved_per_s": result.get("resolved", {}).get("orders_per_s"),
        "stored_per_s": result.get("stored", {}).get("orders_per_s"),
        "cpu_us_per_order": {k: round(v, 1) for k, v in groups.items()},
        "counted_until": "stored" if "stored" in result else "resolved",
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = workdir("cartloom-bench-scaleout-")
    runs: list[dict[str, Any]] = []
    failed = True
    try:
        for turn in range(1, args.rounds + 1):
            for name in args.form_names:
                for workers in args.worker_counts:
                    shape = form(name, workers, args)
                    print(f"round {turn}/{args.rounds}: {shape.label}", flush=True)
                    async with fresh_stack(work, f"{turn}-{name}-{workers}") as stack:
                        with progress() as display:
                            result = await backlog_run(
                                stack,
                                shape,
                                args.orders,
                                limit=args.timeout,
                                sample_every=args.sample_every,
                                display=display,
                            )
                    result["round"] = turn
                    result["summary"] = summarise(result)
                    runs.append(result)
                    print(f"  {row(result)}", flush=True)
        failed = False
    finally:
        cleanup(work, failed)
    return {"runs": runs}


def row(result: dict[str, Any]) -> str:
    summary = result["summary"]
    rates = f"resolved {summary['resolved_per_s'] or 0:,.0f}/s"
    if summary["stored_per_s"]:
        rates += f", stored {summary['stored_per_s']:,.0f}/s"
    cpu = ", ".join(f"{k} {v:,.0f}" for k, v in summary["cpu_us_per_order"].items())
    late = " TIMED OUT" if result["timed_out"] else ""
    return f"{rates}; CPU µs/order (until {summary['counted_until']}): {cpu}{late}"


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        f"{'form':<8} {'workers':>7} {'sinks':>5} {'resolved/s':>10} {'stored/s':>9}  CPU µs/order"
    )
    for result in runs:
        summary = result["summary"]
        cpu = ", ".join(f"{k} {v:,.0f}" for k, v in summary["cpu_us_per_order"].items())
        print(
            f"{result['sinks']:<8} {result['workers']:>7} {result['sink_processes']:>5} "
            f"{summary['resolved_per_s'] or 0:>10,.0f} {summary['stored_per_s'] or 0:>9,.0f}  {cpu}"
        )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if r["round"] == 1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"off": "#999999", "worker": "#d98c4a", "split": "#3b7dd8"}
    for name in dict.fromkeys(r["sinks"] for r in runs):
        mine = [r for r in runs if r["sinks"] == name]
        xs = [r["workers"] for r in mine]
        resolved = [r["summary"]["resolved_per_s"] or 0 for r in mine]
        left.plot(xs, resolved, "o-", color=colours[name], label=f"{name}: resolved")
        if name != "off":
            stored = [r["summary"]["stored_per_s"] or 0 for r in mine]
            left.plot(xs, stored, "s--", color=colours[name], label=f"{name}: in both stores")
    left.set_xlabel("workers")
    left.set_xticks(sorted({r["workers"] for r in runs}))
    left.set_yscale("log")
    left.set_ylabel("orders per second (log)")
    left.set_title(
        f"{report['settings']['orders']:,} orders, one 2-core machine\n"
        "(the whole stack shares the cores)",
        fontsize=9,
    )
    left.legend(fontsize=7)
    labels = [f"{r['sinks']}\n{r['workers']}w" for r in runs]
    groups = ["workers", "sinks", "broker", "dynamodb-server", "redis-server", "bench"]
    palette = ["#3b7dd8", "#8fb8ec", "#d98c4a", "#a05a2c", "#c44e52", "#999999"]
    bottom = [0.0] * len(runs)
    for group, colour in zip(groups, palette, strict=True):
        values = [r["summary"]["cpu_us_per_order"].get(group, 0) / 1000 for r in runs]
        right.bar(labels, values, bottom=bottom, label=group, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_ylabel("CPU ms per order, every process")
    right.set_title("CPU per order (sinks on: until both stores hold every order)", fontsize=9)
    right.tick_params(axis="x", labelsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        print(f"written {args.plot}")
        return
    started = datetime.now(UTC)
    before = machine()
    result = asyncio.run(run(args))
    report = {
        "measured_at": started.isoformat(timespec="seconds"),
        "machine_before": before,
        "machine_after": machine(),
        "settings": {
            "orders": args.orders,
            "workers": args.worker_counts,
            "forms": args.form_names,
            "sink_processes": args.sink_processes,
            "rounds": args.rounds,
        },
        **result,
    }
    print_table(report["runs"])
    write_report(report, args.out, args.plot, lambda path: plot(report, path))


if __name__ == "__main__":
    main()
