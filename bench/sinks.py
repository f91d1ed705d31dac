"""Sink benchmark: items/s into Redis and DynamoDB, PutItem vs TransactWriteItems, coalescing.

Starts its own redis-server and moto_server (devstack, temporary directory) and
drives CartLoom's sinks directly, without Kafka, so the figures are the stores' cost:

- redis: ``RedisSink.write`` (one pipeline of version-checking Lua calls per batch).
- dynamodb_putitem: ``DynamoDBSink.write`` with ``dynamodb_write_group=1`` (one conditional
  PutItem per change, ``--concurrency`` in flight).
- dynamodb_transact: ``DynamoDBSink.write`` as configured by default: the same condition in
  ``TransactWriteItems`` of 100 puts, ``--concurrency`` of them in flight. The endpoint is
  the local stack's (``devstack/dynamodb_server.py``), whose transactions roll back by their
  own items; on AWS a transactional write costs two write units per item.
  Each contender writes into its own fresh table. For both, the DynamoDB server's CPU per
  item is read from ``/proc`` (outside it).
- dynamodb_batchwrite_unconditional: ``BatchWriteItem`` of 25, for reference only: it
  cannot carry the version condition, so the sinks never use it.
- coalescing: a hot-key (Zipf) stream of versioned changes, cut into batches as the
  materialiser reads them; how many writes coalescing saves, and the Redis time with and
  without it.

moto_server is an in-memory Python emulator on this 2-core machine: its figures rank the
two DynamoDB write styles against each other; they say nothing about AWS latency.

    python bench/sinks.py [--items 20000] [--out bench/results/sinks.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from benchlib import cpu_seconds
from redis.asyncio import Redis

from cartloom.core.settings import Settings
from cartloom.sinks.base import ViewChange, coalesce
from cartloom.sinks.dynamodb import DynamoDBSink, dynamodb_client_config, to_item
from cartloom.sinks.dynamodb_tables import ensure_tables
from cartloom.sinks.redis import RedisSink
from devstack.processes import free_port, spawn, stop, wait_until
from devstack.stack import LOCAL_AWS_ENV, moto_argv, redis_argv

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items into Redis")
    parser.add_argument(
        "--dynamodb-items", type=int, default=2_000, help="items per DynamoDB contender"
    )
    parser.add_argument("--batch", type=int, default=1_000, help="changes per sink batch")
    parser.add_argument("--concurrency", type=int, default=32, help="DynamoDB items in flight")
    parser.add_argument("--skewed-changes", type=int, default=100_000)
    parser.add_argument("--skus", type=int, default=10_000, help="distinct keys, skewed stream")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of key choice")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sinks.json")
    return parser.parse_args(argv)


def changes(prefix: str, count: int, version: int = 1) -> list[ViewChange]:
    return [
        ViewChange(
            "inventory",
            f"{prefix}-{i}",
            version,
            {"sku": f"{prefix}-{i}", "on_hand": i % 97, "reserved": i % 7, "version": version},
        )
        for i in range(count)
    ]


def batches(items: Sequence[ViewChange], size: int) -> list[Sequence[ViewChange]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def timed(
    write: Callable[[Sequence[ViewChange]], Awaitable[Any]], items: list[ViewChange], size: int
) -> dict[str, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches(items, size):
        await write(batch)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    return {
        "items": len(items),
        "seconds": round(seconds, 3),
        "items_per_s": round(len(items) / seconds),
        "client_cpu_us_per_item": round(client_cpu / len(items) * 1e6, 1),
    }


async def bench_redis(settings: Settings, args: argparse.Namespace) -> dict[str, float]:
    sink = RedisSink(settings)
    await sink.start()
    try:
        await sink.write(changes("warm-r", 200))
        return await timed(sink.write, changes("redis", args.items), args.batch)
    finally:
        await sink.stop()


async def bench_dynamodb(
    settings: Settings, args: argparse.Namespace, server_pid: int, prefix: str
) -> dict[str, float]:
    """The DynamoDB sink's ``write`` as ``settings`` configure it; the server's CPU beside."""
    sink = DynamoDBSink(settings)
    await sink.start()
    try:
        await sink.write(changes(f"warm-{prefix}", 200))
        cpu_before = cpu_seconds(server_pid)
        result = await timed(sink.write, changes(prefix, args.dynamodb_items), args.batch)
        server_cpu = cpu_seconds(server_pid) - cpu_before
    finally:
        await sink.stop()
    result["server_cpu_us_per_item"] = round(server_cpu / args.dynamodb_items * 1e6)
    result["changes_per_request"] = settings.dynamodb_write_group
    return result


async def bench_batchwrite(settings: Settings, args: argparse.Namespace) -> dict[str, float]:
    """Reference only: ``BatchWriteItem`` (25 per request) cannot refuse a stale version."""
    in_flight = asyncio.Semaphore(max(1, args.concurrency // 25))
    table = settings.dynamodb_table("inventory")
    async with get_session().create_client(
        "dynamodb", endpoint_url=settings.dynamodb_endpoint, config=dynamodb_client_config(settings)
    ) as client:

        async def put(chunk: Sequence[ViewChange]) -> None:
            request = {table: [{"PutRequest": {"Item": to_item(c.entity, c)}} for c in chunk]}
            async with in_flight:
                while request:
                    response = await client.batch_write_item(RequestItems=request)
                    request = response.get("UnprocessedItems") or {}

        async def write(batch: Sequence[ViewChange]) -> None:
            await asyncio.gather(*(put(chunk) for chunk in batches(batch, 25)))

        await write(changes("warm-b", 200))
        return await timed(write, changes("batch", args.dynamodb_items), args.batch)


def skewed_stream(args: argparse.Namespace) -> list[ViewChange]:
    """Hot-SKU stream: keys drawn by Zipf rank, each change the key's next version."""
    rng = random.Random(7)
    weights = [1 / (rank**args.zipf) for rank in range(1, args.skus + 1)]
    keys = rng.choices(range(args.skus), weights=weights, k=args.skewed_changes)
    version: Counter[int] = Counter()
    stream = []
    for key in keys:
        version[key] += 1
        sku = f"hot-{key}"
        stream.append(
            ViewChange("inventory", sku, version[key], {"sku": sku, "version": version[key]})
        )
    return stream


async def bench_coalescing(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    stream = skewed_stream(args)
    coalesced = [coalesce(batch) for batch in batches(stream, args.batch)]
    writes = sum(len(batch) for batch in coalesced)
    hottest = Counter(change.key for change in stream).most_common(1)[0]
    sink = RedisSink(settings)
    await sink.start()
    try:
        started = time.perf_counter()
        for batch in batches(stream, args.batch):
            await sink.write(batch)
        raw_seconds = time.perf_counter() - started
        await sink._client.flushdb()  # type: ignore[union-attr]
        started = time.perf_counter()
        for batch in coalesced:
            await sink.write(batch)
        coalesced_seconds = time.perf_counter() - started
    finally:
        await sink.stop()
    return {
        "changes": len(stream),
        "distinct_keys": len({c.key for c in stream}),
        "hottest_key_share": round(hottest[1] / len(stream), 3),
        "batch": args.batch,
        "writes_after_coalescing": writes,
        "writes_saved_share": round(1 - writes / len(stream), 3),
        "redis_seconds_without": round(raw_seconds, 3),
        "redis_seconds_with": round(coalesced_seconds, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for name, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="cartloom-bench-sinks-") as tmp:
        ports = {"redis": free_port(), "dynamodb": free_port()}
        servers = {
            "redis": spawn("redis", redis_argv(ports["redis"]), Path(tmp), ports["redis"]),
            "dynamodb": spawn("moto", moto_argv(ports["dynamodb"]), Path(tmp), ports["dynamodb"]),
        }
        try:
            await wait_until(servers["redis"], lambda: _ping(ports["redis"]))
            settings = {
                name: Settings(
                    redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
                    dynamodb_endpoint=f"http://127.0.0.1:{ports['dynamodb']}",
                    table_prefix=f"bench-{name}-",
                    sink_concurrency=args.concurrency,
                    dynamodb_write_group=1 if name == "put" else 100,
                )
                for name in ("put", "transact", "batch")
            }
            for one in settings.values():
                await wait_until(servers["dynamodb"], lambda one=one: _tables(one))
            moto = servers["dynamodb"].pid
            return {
                "redis": await bench_redis(settings["put"], args),
                "dynamodb_putitem": await bench_dynamodb(settings["put"], args, moto, "put"),
                "dynamodb_transact": await bench_dynamodb(
                    settings["transact"], args, moto, "transact"
                ),
                "dynamodb_batchwrite_unconditional": await bench_batchwrite(
                    settings["batch"], args
                ),
                "coalescing": await bench_coalescing(settings["put"], args),
            }
        finally:
            for server in servers.values():
                stop(server)


async def _ping(port: int) -> bool:
    client = Redis(host="127.0.0.1", port=port)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def _tables(settings: Settings) -> bool:
    await ensure_tables(settings)
    return True


def _shown(value: Any) -> Any:
    """A path inside the repository as a relative one (results files name no machine)."""
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return value


def main() -> None:
    args = parse_args()
    results = asyncio.run(run(args))
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {k: _shown(v) for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
