"""Local DynamoDB servers side by side: moto (two ways) against dynalite, for the sinks' calls.

The servers: ``moto`` as the local stack runs it (moto's application behind waitress,
keep-alive: ``devstack/dynamodb_server.py``), ``moto-werkzeug`` (``python -m
moto.server``, werkzeug's development server, which closes the connection after every
answer; what the local stack ran until 2026-12-04), and dynalite.

Which DynamoDB-compatible server the local stack and the tests should run is a question of
cost and of faithfulness to what the sinks rely on. This starts each candidate on a free
loopback port in turn (three rounds, the contenders taking turns, so a slow moment of the
machine hits both) and drives it from this process with CartLoom's own clients:

- ``conditional_put``: ``DynamoDBSink.write`` (the DynamoDB sink's write path: conditional
  ``PutItem``, ``attribute_not_exists(version) OR version < :v``, ``--concurrency`` in flight);
- ``batch_write``: ``BatchWriteItem`` of 25 (unconditional; the audit and rebuilds load this way);
- ``scan``: a full ``Scan`` of the table just written, page by page (the audit reads so);
- the server's own CPU seconds per operation, from ``/proc/<pid>/stat`` (the kernel's
  accounting of the server process, read from outside it).

Then what the sinks depend on, checked on each server: an older version refused with
``ConditionalCheckFailedException`` and the newer one kept; the TTL attribute accepted
(``UpdateTimeToLive``, ``DescribeTimeToLive``); and an item over 400 KB refused.

dynalite comes from the npm registry (``npm install dynalite``, into ``~/.cache/cartloom``);
moto from PyPI (the ``local`` extra). Results: ``bench/results/dynamodb_servers.json`` and
the plot ``bench/results/dynamodb_servers.png`` (matplotlib, the ``docs`` extra).

    python bench/dynamodb_servers.py [--items 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from benchlib import write_report
from botocore.exceptions import ClientError

from cartloom.core.settings import Settings
from cartloom.sinks.base import ViewChange
from cartloom.sinks.dynamodb import DynamoDBSink, dynamodb_client_config, to_item
from cartloom.sinks.dynamodb_tables import ensure_tables
from devstack.processes import ServerProcess, free_port, spawn, stop, wait_until
from devstack.stack import LOCAL_AWS_ENV, moto_argv

ROOT = Path(__file__).resolve().parent.parent
DYNALITE_VERSION = "4.0.0"
DYNALITE_HOME = Path.home() / ".cache" / "cartloom" / f"dynalite-{DYNALITE_VERSION}"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="items per operation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="puts in flight")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "dynamodb_servers.json"
    )
    args = parser.parse_args(argv)
    if args.items < 1 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--items, --rounds and --concurrency must be at least 1")
    return args


def dynalite_argv(port: int) -> list[str]:
    """dynalite's command line, installing it from the npm registry the first time."""
    script = DYNALITE_HOME / "node_modules" / "dynalite" / "cli.js"
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("dynalite needs Node.js and npm (Debian: apt-get install nodejs npm)")
        DYNALITE_HOME.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--silent",
                "--prefix",
                str(DYNALITE_HOME),
                f"dynalite@{DYNALITE_VERSION}",
            ],
            check=True,
        )
    return [shutil.which("node") or "node", str(script), "--port", str(port)]


def moto_werkzeug_argv(port: int) -> list[str]:
    """moto's own server (werkzeug's development server: ``Connection: close`` on every answer)."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


#: ``moto`` is the local stack's endpoint (moto behind waitress, keep-alive).
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "moto-werkzeug": moto_werkzeug_argv,
    "moto": moto_argv,
    "dynalite": dynalite_argv,
}


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def changes(prefix: str, count: int, version: int = 1) -> list[ViewChange]:
    return [
        ViewChange(
            "inventory",
            f"{prefix}-{n:06d}",
            version,
            {"sku": f"{prefix}-{n:06d}", "on_hand": 10, "reserved": n % 7, "version": version},
        )
        for n in range(count)
    ]


async def measured(
    server: ServerProcess, operation: Callable[[], Awaitable[int]]
) -> dict[str, float]:
    """Run ``operation`` (it returns how many items it handled); seconds, rate, server CPU."""
    cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
    count = await operation()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    return {
        "items": count,
        "seconds": round(seconds, 3),
        "items_per_s": round(count / seconds, 1),
        "server_cpu_ms_per_item": round(1000 * cpu / max(1, count), 3),
    }


async def one_round(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start ``name``, measure the three operations and check the semantics; then stop it."""
    port = free_port()
    server = spawn(name, SERVERS[name](port), work, port)
    settings = Settings(
        dynamodb_endpoint=f"http://127.0.0.1:{port}",
        table_prefix=f"bench-{name}-",
        sink_concurrency=args.concurrency,
    )
    try:
        await wait_until(server, lambda: _tables(settings), within=60)
        table = settings.dynamodb_table("inventory")
        config = dynamodb_client_config(settings)
        async with get_session().create_client(
            "dynamodb", endpoint_url=settings.dynamodb_endpoint, config=config
        ) as client:
            sink = DynamoDBSink(settings)
            await sink.start()
            try:
                await sink.write(changes("warm", 100))

                async def conditional_put() -> int:
                    batch = changes("put", args.items)
                    await sink.write(batch)
                    return len(batch)

                put = await measured(server, conditional_put)
            finally:
                await sink.stop()

            async def batch_write() -> int:
                items = changes("batch", args.items)
                in_flight = asyncio.Semaphore(max(1, args.concurrency // 25))

                async def chunk(part: list[ViewChange]) -> None:
                    request = {
                        table: [{"PutRequest": {"Item": to_item(c.entity, c)}} for c in part]
                    }
                    async with in_flight:
                        while request:
                            answer = await client.batch_write_item(RequestItems=request)
                            request = answer.get("UnprocessedItems") or {}

                await asyncio.gather(*(chunk(items[i : i + 25]) for i in range(0, len(items), 25)))
                return len(items)

            batch = await measured(server, batch_write)

            async def scan() -> int:
                seen, start = 0, None
                while True:
                    page = await client.scan(
                        TableName=table, **({"ExclusiveStartKey": start} if start else {})
                    )
                    seen += len(page.get("Items", []))
                    start = page.get("LastEvaluatedKey")
                    if not start:
                        return seen

            scanned = await measured(server, scan)
            semantics = await check_semantics(client, settings, table)
    finally:
        stop(server)
    return {"conditional_put": put, "batch_write": batch, "scan": scanned, "semantics": semantics}


async def check_semantics(client: Any, settings: Settings, table: str) -> dict[str, bool]:
    """What the sinks rely on, as DynamoDB behaves: each True where the server agrees."""
    sink = DynamoDBSink(settings)
    await sink.start()
    try:
        await sink.write(changes("sem", 1, version=5))
        await sink.write(changes("sem", 1, version=3))  # older: must be refused, not applied
    finally:
        await sink.stop()
    held = await client.get_item(TableName=table, Key={"sku": {"S": "sem-000000"}})
    older_refused = held.get("Item", {}).get("version", {}).get("N") == "5"
    direct_refusal = False
    try:
        await client.put_item(
            TableName=table,
            Item={"sku": {"S": "sem-000000"}, "version": {"N": "4"}},
            ConditionExpression="attribute_not_exists(version) OR version < :v",
            ExpressionAttributeValues={":v": {"N": "4"}},
        )
    except ClientError as exc:
        direct_refusal = exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
    ttl = False
    try:
        await client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl_epoch"},
        )
        described = await client.describe_time_to_live(TableName=table)
        ttl = described["TimeToLiveDescription"].get("AttributeName") == "ttl_epoch"
    except ClientError:
        ttl = False
    too_large_refused = False
    try:
        await client.put_item(
            TableName=table, Item={"sku": {"S": "big"}, "doc": {"S": "x" * 410_000}}
        )
    except ClientError as exc:
        too_large_refused = exc.response["Error"]["Code"] == "ValidationException"
    return {
        "older_version_refused_by_the_sink": older_refused,
        "condition_failure_is_ConditionalCheckFailedException": direct_refusal,
        "ttl_attribute_accepted": ttl,
        "item_over_400kb_refused": too_large_refused,
    }


async def _tables(settings: Settings) -> bool:
    await ensure_tables(settings)
    return True


def summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per server and operation the median round; per operation dynalite's ratio to moto."""
    medians: dict[str, dict[str, Any]] = {}
    for server, results in rounds.items():
        medians[server] = {
            op: {
                "items_per_s": statistics.median(r[op]["items_per_s"] for r in results),
                "server_cpu_ms_per_item": statistics.median(
                    r[op]["server_cpu_ms_per_item"] for r in results
                ),
                "rounds_items_per_s": [r[op]["items_per_s"] for r in results],
            }
            for op in ("conditional_put", "batch_write", "scan")
        }
        medians[server]["semantics"] = results[-1]["semantics"]
    ratios = {
        server: {
            op: round(
                medians[server][op]["items_per_s"] / medians["moto-werkzeug"][op]["items_per_s"], 2
            )
            for op in ("conditional_put", "batch_write", "scan")
        }
        for server in medians
        if server != "moto-werkzeug"
    }
    return {"median": medians, "over_moto_werkzeug_items_per_s": ratios}


def print_table(result: dict[str, Any]) -> None:
    print(f"{'operation':<16} {'server':<14} {'items/s (rounds)':<34} {'server CPU ms/item':>18}")
    for op in ("conditional_put", "batch_write", "scan"):
        for server, figures in result["median"].items():
            rounds = ", ".join(f"{r:,.0f}" for r in figures[op]["rounds_items_per_s"])
            rate = f"{figures[op]['items_per_s']:,.0f} ({rounds})"
            print(f"{op:<16} {server:<14} {rate:<34} {figures[op]['server_cpu_ms_per_item']:>18}")
        for server, ratio in result["over_moto_werkzeug_items_per_s"].items():
            print(f"{'':<16} {server} / moto-werkzeug: {ratio[op]}x")
    for server, figures in result["median"].items():
        print(f"semantics {server}: {figures['semantics']}")


async def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    for name, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(name, value)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory(prefix="cartloom-bench-dynamodb-") as tmp:
        for number in range(1, args.rounds + 1):
            for name in SERVERS:
                print(f"round {number}/{args.rounds}: {name}", flush=True)
                rounds[name].append(await one_round(name, args, Path(tmp)))
    return rounds


def plot(result: dict[str, Any], path: Path) -> None:
    """Items per second per operation and server (log scale), each round a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    operations = ("conditional_put", "batch_write", "scan")
    colours = {"moto-werkzeug": "#c9c9c9", "moto": "#d98c4a", "dynalite": "#3b7dd8"}
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    servers = len(result["median"])
    width = 0.8 / servers
    for offset, (server, figures) in enumerate(result["median"].items()):
        xs = [i + (offset - (servers - 1) / 2) * width for i in range(len(operations))]
        rates = [figures[op]["items_per_s"] for op in operations]
        bars = ax.bar(xs, rates, width, label=server, color=colours.get(server, "#999999"))
        ax.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=8)
        for x, op in zip(xs, operations, strict=True):
            each = figures[op]["rounds_items_per_s"]
            ax.scatter([x] * len(each), each, color="#222222", s=8, zorder=3)
    ax.set_xticks(range(len(operations)), [op.replace("_", " ") for op in operations])
    ax.set_yscale("log")
    ax.set_ylabel("items per second (log)")
    ax.set_title("Local DynamoDB servers, median of the rounds (dots: each round)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _shown(value: Any) -> Any:
    """A path inside the repository as a relative one (results files name no machine)."""
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rounds = asyncio.run(run(args))
    result = summary(rounds)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "args": {k: _shown(v) for k, v in vars(args).items()},
        "versions": {"dynalite": DYNALITE_VERSION},
        **result,
        "rounds": rounds,
    }
    write_report(report, args.out, args.out.with_suffix(".png"), lambda path: plot(result, path))
    print_table(result)


if __name__ == "__main__":
    main()
