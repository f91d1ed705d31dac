"""Order-path benchmark: Faust's bare ceiling, the naive table agent, and CartLoom's order path.

One run on the embedded broker (started with devstack in a temporary state
directory). For each contender a worker process starts against a pre-filled topic of
``--orders`` messages; throughput is backlog size / (last - first event handled, on the
worker's clock). Then ``--paced-rate`` messages per second arrive for ``--paced-seconds``
and their latency (handled - sent) gives p50/p99. Peak RSS is the worker's VmHWM.
The contenders take turns for ``--rounds`` rounds (the machine's noise hits all of them
alike) and each reports its median round; every round's figure is kept in the results.

- bare: a Faust agent that only decodes each event.
- naive: a Faust agent that writes one table key per event (a changelog write each).
- cartloom: ``cartloom worker`` (sinks off) on the full order path: validate, reserve
  every line on its SKU's partition, gather the answers, update the order (reserved or
  rejected). Its figure is orders per second with all that work done.

    python bench/orders.py [--orders 40000] [--rounds 3] [--out bench/results/orders.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from benchlib import SKUS, ChangelogTail, order, peak_rss_mib, percentiles

from cartloom.core.topology import TopicSpec
from cartloom.ops.kafka_admin import apply_topics
from cartloom.stream.kafka_clients import KafkaConnection

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40_000, help="backlog per contender")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every contender")
    parser.add_argument("--paced-rate", type=int, default=400, help="messages/s, latency phase")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per contender, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/orders.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/orders.png")
    parser.add_argument(
        "--only", choices=["bare", "naive", "cartloom"], action="append", help="run a subset"
    )
    return parser.parse_args(argv)


async def produce(bootstrap: str, topic: str, messages: Iterator[tuple[str, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks=1
    )
    await producer.start()
    sent = 0
    try:
        futures = []
        for key, value in messages:
            futures.append(await producer.send(topic, value, key=key.encode()))
            sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def paced(
    bootstrap: str, topic: str, make: Callable[[int], tuple[str, bytes]], args: Any
) -> None:
    """Send ``paced_rate`` messages per second, each stamped with its send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    try:
        total = int(args.paced_rate * args.paced_seconds)
        start = time.monotonic()
        for n in range(total):
            delay = start + n / args.paced_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = make(n)
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for(probe: Callable[[], Any], limit: float, what: str, proc: Any) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: worker exited with {proc.returncode}")
        result = await probe()
        if result:
            return result
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{what} not reached within {limit:.0f}s")


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_baseline(mode: str, env: dict[str, str], work: Path, args: Any) -> dict[str, Any]:
    bootstrap = env["CARTLOOM_BROKER_URL"].split("://", 1)[1]
    run_id = uuid.uuid4().hex[:6]
    topic, stats_file = f"bench-{mode}-{run_id}", work / f"{mode}-{run_id}.json"
    rnd = random.Random(mode)
    # Same partitions as CartLoom's topics (and the table's changelog), created up front.
    await apply_topics(
        KafkaConnection.plaintext(bootstrap), [TopicSpec(topic, 8, 1, "delete", None)]
    )
    await produce(
        bootstrap,
        topic,
        ((f"o-{n}", orjson.dumps(order(f"o-{n}", rnd))) for n in range(args.orders)),
    )
    proc_env = {
        **os.environ,
        "BENCH_MODE": mode,
        "BENCH_TOPIC": topic,
        "BENCH_BACKLOG": str(args.orders),
        "BENCH_STATS": str(stats_file),
        "BENCH_APP_ID": f"bench-{mode}-{run_id}",
        "BENCH_BROKER_URL": env["CARTLOOM_BROKER_URL"],
        "BENCH_DATA_DIR": str(work / f"{mode}-{run_id}-data"),
    }
    argv = [sys.executable, str(ROOT / "bench/baselines.py"), "worker"]
    proc = start(argv, proc_env, work / f"{mode}-{run_id}.log")
    try:

        async def stats() -> dict[str, Any] | None:
            if not stats_file.exists():
                return None
            try:
                return orjson.loads(stats_file.read_bytes())  # type: ignore[no-any-return]
            except orjson.JSONDecodeError:
                return None

        async def backlog_done() -> dict[str, Any] | None:
            value = await stats()
            return value if value and value["last"] else None

        done = await wait_for(backlog_done, args.timeout, f"{mode} backlog", proc)
        paced_total = int(args.paced_rate * args.paced_seconds)
        await paced(
            bootstrap,
            topic,
            lambda n: (f"paced-{n}", orjson.dumps(order(f"paced-{n}", rnd))),
            args,
        )

        async def paced_done() -> dict[str, Any] | None:
            value = await stats()
            return value if value and len(value["latencies"]) >= paced_total else None

        final = await wait_for(paced_done, args.timeout, f"{mode} paced", proc)
        rss = peak_rss_mib(proc.pid)
    finally:
        stop(proc)
    seconds = done["last"] - done["first"]
    return {
        "events": args.orders,
        "seconds": seconds,
        "events_per_s": args.orders / seconds,
        "latency": percentiles(final["latencies"]),
        "peak_rss_mib": rss,
    }


def resolved_at(view: dict[str, Any]) -> float | None:
    for entry in reversed(view["history"]):
        if entry["status"] in ("reserved", "rejected"):
            return datetime.fromisoformat(entry["at"]).timestamp()
    return None


async def run_cartloom(env: dict[str, str], work: Path, args: Any) -> dict[str, Any]:
    from devstack.processes import free_port

    bootstrap = env["CARTLOOM_BROKER_URL"].split("://", 1)[1]
    rnd = random.Random("cartloom")
    levels = (
        (f"bench-sku-{n}", orjson.dumps({"sku": f"bench-sku-{n}", "on_hand": 10 * args.orders}))
        for n in range(SKUS)
    )
    await produce(bootstrap, "inventory", levels)
    backlog = ((f"o-{n}", orjson.dumps(order(f"o-{n}", rnd))) for n in range(args.orders))
    await produce(bootstrap, "orders", backlog)
    app_id, port = f"bench-{uuid.uuid4().hex[:6]}", free_port()
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    proc_env.update(env)
    proc_env.update(
        CARTLOOM_APP_ID=app_id,
        CARTLOOM_SINKS_ENABLED="false",
        CARTLOOM_WEB_PORT=str(port),
        CARTLOOM_DATA_DIR=str(work / f"{app_id}-data"),
        CARTLOOM_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        # A backlog of --orders waits longer than the default 30 s deadline; the bench
        # measures the order path, not the deadline rejecting a backlog.
        CARTLOOM_SAGA_DEADLINE_SECONDS="3600",
    )
    # BENCH_SET_CARTLOOM_X=v sets CARTLOOM_X=v for the worker under test (to compare tunings).
    prefix = "BENCH_SET_"
    proc_env.update({k[len(prefix) :]: v for k, v in os.environ.items() if k.startswith(prefix)})
    argv = [sys.executable, "-m", "cartloom", "--env-file", str(work / "none.env"), "worker"]
    proc = start(argv, proc_env, work / f"{app_id}.log")
    tail = ChangelogTail(bootstrap, f"{app_id}-order_by_id-changelog")
    await tail.start()
    try:

        async def resolved(prefix: bytes, count: int) -> dict[bytes, Any] | None:
            await tail.poll()
            done = sum(1 for k in tail.resolved if k.startswith(prefix))
            return tail.views(prefix) if done >= count else None

        views = await wait_for(
            lambda: resolved(b"o-", args.orders), args.timeout, "cartloom backlog", proc
        )
        paced_total = int(args.paced_rate * args.paced_seconds)
        await paced(
            bootstrap,
            "orders",
            lambda n: (f"paced-{n}", orjson.dumps(order(f"paced-{n}", rnd))),
            args,
        )
        paced_views = await wait_for(
            lambda: resolved(b"paced-", paced_total), args.timeout, "cartloom paced", proc
        )
        rss = peak_rss_mib(proc.pid)
    finally:
        await tail.stop()
        stop(proc)
    first = min(datetime.fromisoformat(v["history"][0]["at"]).timestamp() for v in views.values())
    last = max(resolved_at(v) or 0.0 for v in views.values())
    latencies = [
        (resolved_at(v) or 0.0) - datetime.fromisoformat(v["created_at"]).timestamp()
        for v in paced_views.values()
    ]
    # Where the latency goes: arrival (sent -> stored as received) and the saga (-> resolved).
    arrival = [
        datetime.fromisoformat(v["history"][0]["at"]).timestamp()
        - datetime.fromisoformat(v["created_at"]).timestamp()
        for v in paced_views.values()
    ]
    statuses = [v["status"] for v in views.values()]
    return {
        "events": args.orders,
        "seconds": last - first,
        "events_per_s": args.orders / (last - first),
        "latency": percentiles(latencies),
        "arrival_latency": percentiles(arrival),
        "peak_rss_mib": rss,
        "reserved": statuses.count("reserved"),
        "rejected": statuses.count("rejected"),
        "lines": sum(len(v["lines"]) for v in views.values()),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from devstack.stack import down, up

    contenders = args.only or ["bare", "naive", "cartloom"]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    work = Path(tempfile.mkdtemp(prefix="cartloom-bench-"))
    try:
        for turn in range(1, args.rounds + 1):
            # A fresh stack per round: a new worker would read the last round's topics too.
            stack = work / f"stack-{turn}"
            state, _ = await up(stack)
            try:
                for name in contenders:
                    print(f"round {turn}/{args.rounds}: {name} ...", flush=True)
                    if name == "cartloom":
                        result = await run_cartloom(state.env, work, args)
                    else:
                        result = await run_baseline(name, state.env, work, args)
                    rounds[name].append(result)
                    print(f"  {result['events_per_s']:,.0f} events/s", flush=True)
            finally:
                down(stack)
    except BaseException:
        print(f"failed; worker logs are kept in {work}", file=sys.stderr)
        raise
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"worker logs kept in {work}")
    return {name: median_round(results) for name, results in rounds.items()}


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, and every round's throughput beside it."""
    ordered = sorted(results, key=lambda result: result["events_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "rounds_events_per_s": [round(result["events_per_s"]) for result in results],
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ratios = {}
    if "cartloom" in results and "naive" in results:
        ratios["cartloom_vs_naive"] = (
            results["cartloom"]["events_per_s"] / results["naive"]["events_per_s"]
        )
    if "cartloom" in results and "bare" in results:
        ratios["cartloom_vs_bare"] = (
            results["cartloom"]["events_per_s"] / results["bare"]["events_per_s"]
        )
    if "naive" in results and "bare" in results:
        ratios["naive_vs_bare"] = results["naive"]["events_per_s"] / results["bare"]["events_per_s"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "settings": {
            "orders": args.orders,
            "rounds": args.rounds,
            "paced_rate": args.paced_rate,
            "paced_seconds": args.paced_seconds,
        },
        "results": results,
        "ratios": ratios,
    }


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'contender':<10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS MiB':>13}")
    for name, result in summary["results"].items():
        lat = result["latency"]
        p50 = f"{lat['p50_ms']:.1f}" if lat["p50_ms"] is not None else "-"
        p99 = f"{lat['p99_ms']:.1f}" if lat["p99_ms"] is not None else "-"
        rate, rss = result["events_per_s"], result["peak_rss_mib"]
        print(f"{name:<10} {rate:>10,.0f} {p50:>8} {p99:>8} {rss:>13.0f}")
    for name, ratio in summary["ratios"].items():
        print(f"{name}: {ratio:.2f}x")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["results"])
    rates = [summary["results"][n]["events_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(names, rates, color=["#999999", "#d98c4a", "#3b7dd8"][: len(names)])
    ax.bar_label(bars, labels=[f"{r:,.0f}/s" for r in rates])
    for index, name in enumerate(names):  # every round, the bar being the median
        each = summary["results"][name].get("rounds_events_per_s", [])
        ax.scatter([index] * len(each), each, color="#222222", s=9, zorder=3)
    if "naive" in summary["results"]:
        target = 2.5 * summary["results"]["naive"]["events_per_s"]
        ax.axhline(target, color="#3b7dd8", linestyle="--", linewidth=1)
        # over the naive bar, where the line crosses empty space
        ax.annotate("target: 2.5x naive", (names.index("naive"), target), ha="center", va="bottom")
    ax.set_ylim(
        0, max([*rates, 2.5 * summary["results"].get("naive", {}).get("events_per_s", 0)]) * 1.15
    )
    ax.set_ylabel("events (orders) per second")
    settings = summary["settings"]
    ax.set_title(
        f"One worker, embedded broker, {settings['orders']:,} events\n"
        f"median of {settings.get('rounds', 1)} rounds (dots: each round)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = report(asyncio.run(run(args)), args)
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written {args.out}")
    if args.plot:
        plot(summary, args.plot)
        print(f"written {args.plot}")


if __name__ == "__main__":
    main()
