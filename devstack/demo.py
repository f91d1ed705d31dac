"""``python -m devstack demo``: the main job on the local stack, shown as it happens.

Starts the stack (if needed) and a worker, publishes stock for the demo's SKUs and then
sample orders with a plain Kafka producer (more demand than stock, so some orders are
rejected), follows them into DynamoDB and Redis with live progress bars, and prints how
the orders ended.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from aiobotocore.session import get_session
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings, load_settings
from cartloom.ops.loadgen import LoadPlan, is_valid_index, publish, sample_orders, sample_stock
from cartloom.sinks.dynamodb import dynamodb_client_config
from cartloom.sinks.redis import redis_client
from cartloom.stream.kafka_clients import kafka_connection
from devstack.processes import free_port
from devstack.stack import StackState, up


async def run_demo(state_dir: Path, orders: int, console: Console) -> bool:
    """Run the whole demo; True when every valid order reached both stores."""
    state, started = await up(state_dir)
    console.print(f"[bold]local stack[/] {'started' if started else 'already running'}")
    for name, value in state.env.items():
        if name.startswith("CARTLOOM_") and "TIMEOUT" not in name and "INTERVAL" not in name:
            console.print(f"  {name}={value}")
    os.environ.update({k: v for k, v in state.env.items() if k not in os.environ})
    web_port = free_port()
    worker = _start_worker(state, state_dir, web_port)
    try:
        await _wait_ready(web_port, worker, console, state_dir / "logs" / "worker.log")
        return await _publish_and_follow(load_settings(), web_port, orders, console)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        console.print("worker stopped; the stack keeps running: [bold]python -m devstack down[/]")


def _start_worker(state: StackState, state_dir: Path, web_port: int) -> subprocess.Popen[bytes]:
    log_path = state_dir / "logs" / "worker.log"
    env = {**os.environ, **state.env, "CARTLOOM_WEB_PORT": str(web_port)}
    env.setdefault("CARTLOOM_DATA_DIR", str(state_dir / "worker-data"))
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cartloom", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def _wait_ready(
    port: int, worker: subprocess.Popen[bytes], console: Console, log_path: Path
) -> None:
    with console.status("starting a worker (joining the consumer group)..."):
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited; see {log_path}")
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            console.print(f"worker ready on http://127.0.0.1:{port}")
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
    raise RuntimeError("the worker was not ready within 120 s")


async def _publish_and_follow(settings: Settings, port: int, count: int, console: Console) -> bool:
    prefix = f"demo-{uuid.uuid4().hex[:6]}"
    plan = LoadPlan(orders=count, invalid_share=0.02, prefix=prefix, sku_prefix=f"{prefix}-SKU-")
    # About 4 units per order over 50 SKUs: stock for roughly three orders in four.
    on_hand = max(1, count * 3 // plan.skus)
    valid = sum(is_valid_index(plan, n) for n in range(count))
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        stocked = progress.add_task("stock levels to inventory", total=plan.skus)
        kafka = kafka_connection(settings)
        await publish(
            kafka,
            settings.topic_name("inventory"),
            sample_stock(plan, on_hand),
            lambda n: progress.advance(stocked, n),
        )
        sent = progress.add_task("published to orders", total=count)
        in_dynamo = progress.add_task("in DynamoDB (orders table)", total=valid)
        in_redis = progress.add_task("in Redis (cartloom:order:*)", total=valid)
        await publish(
            kafka,
            settings.topic_name("orders"),
            sample_orders(plan),
            lambda n: progress.advance(sent, n),
        )
        deadline = time.monotonic() + 120
        done = (0, 0)
        while time.monotonic() < deadline and done != (valid, valid):
            done = (
                sum((await _status_counts(settings, plan.prefix)).values()),
                await _count_redis(settings, plan.prefix),
            )
            progress.update(in_dynamo, completed=done[0])
            progress.update(in_redis, completed=done[1])
            await asyncio.sleep(0.3)
    console.print(f"{count - valid} malformed orders were sent on purpose: they are in orders.dlq")
    statuses = await _status_counts(settings, plan.prefix)
    settle_by = time.monotonic() + 30
    while statuses.get("received") and time.monotonic() < settle_by:  # reservations in flight
        await asyncio.sleep(0.5)
        statuses = await _status_counts(settings, plan.prefix)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    console.print(f"orders by status: {summary} ({on_hand} units of each of {plan.skus} SKUs)")
    await _show_sample(settings, port, f"{plan.prefix}-0000000", console)
    return done == (valid, valid)


async def _status_counts(settings: Settings, prefix: str) -> dict[str, int]:
    """The demo's orders in DynamoDB, by status (one scan; their sum is how many arrived)."""
    session = get_session()
    counts: dict[str, int] = {}
    async with session.create_client(
        "dynamodb", endpoint_url=settings.dynamodb_endpoint, config=dynamodb_client_config(settings)
    ) as client:
        paginator = client.get_paginator("scan")
        async for page in paginator.paginate(
            TableName=settings.dynamodb_table("orders"),
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
            FilterExpression="begins_with(order_id, :p)",
            ExpressionAttributeValues={":p": {"S": prefix}},
        ):
            for item in page["Items"]:
                status = item.get("status", {}).get("S", "?")
                counts[status] = counts.get(status, 0) + 1
    return counts


async def _count_redis(settings: Settings, prefix: str) -> int:
    client = redis_client(settings)
    try:
        pattern = RedisKeys(settings.namespace).view("orders", f"{prefix}-*")
        return sum([1 async for _ in client.scan_iter(pattern, count=1000)])
    finally:
        await client.aclose()


async def _show_sample(settings: Settings, port: int, order_id: str, console: Console) -> None:
    token = settings.api_token
    auth = {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}
    client = redis_client(settings)
    try:
        cached = await client.hget(RedisKeys(settings.namespace).view("orders", order_id), "doc")
    finally:
        await client.aclose()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/orders/{order_id}", headers=auth) as response,
    ):
        live = await response.json()
    table = Table(title=f"order {order_id}")
    table.add_column("where")
    table.add_column("status")
    table.add_column("version")
    table.add_column("lines")
    for where, view in (("GET /orders/{id}", live), ("Redis", orjson.loads(cached or b"{}"))):
        table.add_row(
            where, str(view.get("status")), str(view.get("version")), str(view.get("lines"))
        )
    console.print(table)
