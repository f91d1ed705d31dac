"""DynamoDB clients side by side: the CPU each spends per conditional put, read from outside.

The DynamoDB sink makes one conditional ``PutItem`` per view change, so the client's cost per
call is most of what the views cost a worker. This measures two clients on the same calls
(``to_item`` items, the sink's version guard, ``--concurrency`` in flight):

- ``aiobotocore``: ``put_item`` on an aiobotocore client (the sink's write path until
  2026-12-04, and still what the table tools, the reader and the audit use);
- ``cartloom``: ``DynamoDBSink.write`` with ``dynamodb_write_group=1`` (one ``PutItem`` per
  change) through the sink's own write client: the body encoded with orjson, signed by
  botocore's ``SigV4Auth`` with botocore's credentials, posted over one keep-alive aiohttp
  session. Until 2026-12-05 that client was aiodynamo's ``send_request``.

Each client runs in a child process of its own, twice per round: once making no call (its
start-up: imports, session, credentials) and once making ``--items`` calls. The child's CPU
comes from the kernel's accounting of it (``os.wait4``), never from inside it; the difference
of the two runs divided by the calls is the client's CPU per call. The server's CPU per call
is read from ``/proc`` the same way. Rounds alternate the clients, so a slow moment of the
machine hits both; the medians and their ratio are what to compare.

Servers: the local stack's ``moto_server`` (it answers every request with
``Connection: close``, so each call also pays a TCP connect), and with ``--server dynalite``
dynalite (npm, keeps connections alive, as DynamoDB does).

    python bench/dynamodb_clients.py [--items 2000] [--rounds 3] [--server moto]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import machine, write_report
from dynamodb_servers import cpu_seconds, dynalite_argv

from cartloom.core.settings import Settings
from cartloom.sinks.base import ViewChange
from cartloom.sinks.dynamodb_tables import ensure_tables
from devstack.processes import ServerProcess, free_port, spawn, stop, wait_until
from devstack.stack import LOCAL_AWS_ENV, moto_argv

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("aiobotocore", "cartloom")
SERVERS = {"moto": moto_argv, "dynalite": dynalite_argv}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="conditional puts per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="puts in flight")
    parser.add_argument("--server", choices=sorted(SERVERS), default="moto")
    parser.add_argument(
        "--out", type=Path, help="default: bench/results/dynamodb_clients-<server>.json"
    )
    # The child's side: one client, one run (internal).
    parser.add_argument("--drive", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="put", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "bench" / "results" / f"dynamodb_clients-{args.server}.json"
    if args.items < 0 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--items must be at least 0, --rounds and --concurrency at least 1")
    return args


def changes(prefix: str, count: int) -> list[ViewChange]:
    return [
        ViewChange(
            "inventory",
            f"{prefix}-{n:06d}",
            1,
            {"sku": f"{prefix}-{n:06d}", "on_hand": 10, "reserved": n % 7, "version": 1},
        )
        for n in range(count)
    ]


async def drive_aiobotocore(settings: Settings, items: list[ViewChange]) -> None:
    """The former write path: ``put_item`` with the guard on an aiobotocore client."""
    from aiobotocore.session import get_session

    from cartloom.sinks.dynamodb import GUARD, dynamodb_client_config, to_item

    limit = asyncio.Semaphore(settings.sink_concurrency)
    table = settings.dynamodb_table("inventory")
    async with get_session().create_client(
        "dynamodb",
        endpoint_url=settings.dynamodb_endpoint,
        config=dynamodb_client_config(settings),
    ) as client:

        async def put(change: ViewChange) -> None:
            async with limit:
                await client.put_item(
                    TableName=table,
                    Item=to_item(change.entity, change),
                    ConditionExpression=GUARD,
                    ExpressionAttributeNames={"#v": "version"},
                    ExpressionAttributeValues={":v": {"N": str(change.version)}},
                )

        await asyncio.gather(*(put(change) for change in items))


async def drive_cartloom(settings: Settings, items: list[ViewChange]) -> None:
    """The sink's write path as it is: ``DynamoDBSink.write``, one ``PutItem`` per change."""
    from cartloom.sinks.dynamodb import DynamoDBSink

    sink = DynamoDBSink(settings)
    await sink.start()
    try:
        outcome = await sink.write(items)
        if outcome.written != len(items):
            raise SystemExit(f"wrote {outcome.written} of {len(items)}")
    finally:
        await sink.stop()


def child(args: argparse.Namespace) -> None:
    settings = Settings(
        dynamodb_endpoint=args.endpoint,
        table_prefix="bench-clients-",
        sink_concurrency=args.concurrency,
        dynamodb_write_group=1,
    )
    drive = drive_aiobotocore if args.drive == "aiobotocore" else drive_cartloom
    asyncio.run(drive(settings, changes(args.prefix, args.items)))


def run_child(
    client: str, args: argparse.Namespace, endpoint: str, items: int, prefix: str
) -> float:
    """CPU seconds of one child run, from the kernel's accounting (``os.wait4``)."""
    command = [
        sys.executable,
        __file__,
        "--drive",
        client,
        "--endpoint",
        endpoint,
        "--items",
        str(items),
        "--concurrency",
        str(args.concurrency),
        "--prefix",
        prefix,
    ]
    process = subprocess.Popen(command, env={**os.environ, **LOCAL_AWS_ENV})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{client} run failed with exit code {process.returncode}")
    return usage.ru_utime + usage.ru_stime


def one_round(
    number: int, args: argparse.Namespace, server: ServerProcess, endpoint: str
) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for client in CLIENTS:
        start_up = run_child(client, args, endpoint, 0, "none")
        server_before, started = cpu_seconds(server.pid), time.perf_counter()
        total = run_child(client, args, endpoint, args.items, f"r{number}-{client}")
        seconds = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - server_before
        figures[client] = {
            "client_cpu_us_per_put": round(1e6 * (total - start_up) / args.items, 1),
            "server_cpu_us_per_put": round(1e6 * server_cpu / args.items, 1),
            "puts_per_s_with_start_up": round(args.items / seconds, 1),
            "start_up_cpu_s": round(start_up, 3),
        }
        print(
            f"round {number}/{args.rounds} {client:<12} "
            f"client {figures[client]['client_cpu_us_per_put']:>7,.0f} µs/put  "
            f"server {figures[client]['server_cpu_us_per_put']:>7,.0f} µs/put",
            flush=True,
        )
    return figures


async def _tables(settings: Settings) -> bool:
    await ensure_tables(settings)
    return True


def summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    median = {
        client: {
            figure: statistics.median(r[client][figure] for r in rounds)
            for figure in rounds[0][client]
        }
        for client in CLIENTS
    }
    cost = "client_cpu_us_per_put"
    per_round = [round(r["aiobotocore"][cost] / r["cartloom"][cost], 2) for r in rounds]
    return {
        "median": median,
        "aiobotocore_over_cartloom_client_cpu": round(
            median["aiobotocore"]["client_cpu_us_per_put"]
            / median["cartloom"]["client_cpu_us_per_put"],
            2,
        ),
        "ratio_per_round": per_round,
    }


def plot(result: dict[str, Any], rounds: list[dict[str, dict[str, float]]], path: Path) -> None:
    """Client CPU per put for each client (bars: medians; dots: rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    colours = {"aiobotocore": "#d98c4a", "cartloom": "#3b7dd8"}
    values = [result["median"][c]["client_cpu_us_per_put"] for c in CLIENTS]
    bars = ax.bar(CLIENTS, values, color=[colours[c] for c in CLIENTS], width=0.55)
    ax.bar_label(bars, labels=[f"{v:,.0f} µs" for v in values], fontsize=9)
    for x, client in enumerate(CLIENTS):
        each = [r[client]["client_cpu_us_per_put"] for r in rounds]
        ax.scatter([x] * len(each), each, color="#222222", s=10, zorder=3)
    ratio = result["aiobotocore_over_cartloom_client_cpu"]
    ax.set_ylabel("client CPU per conditional put (µs)")
    ax.set_title(f"DynamoDB clients: aiobotocore / CartLoom's client = {ratio}x", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.drive:
        child(args)
        return
    for name, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(name, value)
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="cartloom-bench-clients-") as tmp:
        port = free_port()
        server = spawn(args.server, SERVERS[args.server](port), Path(tmp), port)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            settings = Settings(dynamodb_endpoint=endpoint, table_prefix="bench-clients-")
            asyncio.run(wait_until(server, lambda: _tables(settings), within=60))
            for number in range(1, args.rounds + 1):
                rounds.append(one_round(number, args, server, endpoint))
        finally:
            stop(server)
    result = summary(rounds)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {
            "items": args.items,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "server": args.server,
        },
        **result,
        "rounds": rounds,
    }
    write_report(
        report, args.out, args.out.with_suffix(".png"), lambda path: plot(result, rounds, path)
    )
    print(
        f"client CPU per conditional put, median of {args.rounds} rounds on {args.server}: "
        f"aiobotocore {result['median']['aiobotocore']['client_cpu_us_per_put']:,.0f} µs, "
        f"cartloom {result['median']['cartloom']['client_cpu_us_per_put']:,.0f} µs "
        f"({result['aiobotocore_over_cartloom_client_cpu']}x; rounds {result['ratio_per_round']})"
    )


if __name__ == "__main__":
    main()
