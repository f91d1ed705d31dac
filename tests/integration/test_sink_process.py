"""``cartloom sink``: the sinks in a process of their own, beside workers that run none.

A deployment of its own (a namespace): one worker with ``CARTLOOM_SINKS_ENABLED=false``
and one ``cartloom sink`` process. An order published by a plain producer must reach
DynamoDB and Redis through the sink process alone (the worker writes no view), the
process must say it is ready and count its writes on ``/metrics``, and SIGTERM must stop
it cleanly (exit 0) once its batch in hand is written.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, run_cartloom, start_worker, wait_ready
from tests.integration.saga_helpers import now_iso, order_message

pytestmark = pytest.mark.integration


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


def written_stores(exposition: str) -> set[str]:
    """The stores ``cartloom_sink_writes_total{outcome="written"}`` counts writes for."""
    return {
        sample.labels["store"]
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "cartloom_sink_writes_total"
        and sample.labels.get("outcome") == "written"
        and sample.value > 0
    }


async def test_a_sink_process_materialises_what_workers_without_sinks_decide(
    stack: StackState,
    stack_dir: Path,
    producer: AIOKafkaProducer,
    redis: Redis,
    dynamodb: Any,
) -> None:
    namespace = f"sinkproc{uuid.uuid4().hex[:6]}"
    env = {**stack.env, "CARTLOOM_NAMESPACE": namespace}
    created = run_cartloom(stack_dir, env, "dynamodb", "create-tables")
    assert created.returncode == 0, created.stdout + created.stderr

    # The sink process first, alone, as on a deployment whose workers start later: it creates
    # the topics before its materialisers subscribe (the broker would otherwise create the
    # changelogs on the subscription, with its own partition count, and the worker could
    # not write them: "Unrecognized partition", seen in CI before the sink process did so).
    def start(role: str, settings: dict[str, str], **how: Any) -> WorkerProcess:
        extra = {"CARTLOOM_NAMESPACE": namespace, **settings}
        return start_worker(stack.env, stack_dir, f"{namespace}-{role}", extra_env=extra, **how)

    sinks = start("sink", {}, command=("sink",), port_setting="CARTLOOM_SINK_PORT")
    worker: WorkerProcess | None = None

    def logs() -> str:
        worker_log = worker.log_tail() if worker is not None else "(not started)"
        return f"\n--- sink process log\n{sinks.log_tail()}\n--- worker log\n{worker_log}"

    try:
        await wait_ready(sinks)
        topics = run_cartloom(stack_dir, env, "topics", "check")
        assert topics.returncode == 0, topics.stdout + topics.stderr
        worker = start("worker", {"CARTLOOM_SINKS_ENABLED": "false"})
        await wait_ready(worker)
        sku, order_id = f"SINKP-{namespace}", f"sinkp-{namespace}"
        level = {"sku": sku, "on_hand": 5, "updated_at": now_iso()}
        await producer.send_and_wait(
            f"{namespace}.inventory", orjson.dumps(level), key=sku.encode()
        )

        async def stocked() -> bool:
            # The stock reaches Redis through the sink process only once the worker holds
            # it; an order sent before then could be judged against no stock (another
            # topic, no order between the two) and rejected.
            cached = await redis.hget(f"{namespace}:cartloom:inventory:{sku}", "doc")
            return cached is not None and orjson.loads(cached)["on_hand"] == 5

        try:
            await eventually(stocked, timeout=120, what="the stock level in Redis")
        except AssertionError as exc:
            raise AssertionError(f"{exc}{logs()}") from exc
        order = orjson.dumps(order_message(order_id, [(sku, 2)]))
        await producer.send_and_wait(f"{namespace}.orders", order, key=order_id.encode())

        async def statuses() -> dict[str, str | None]:
            """The order's status in each store (None: not there)."""
            cached = await redis.hget(f"{namespace}:cartloom:order:{order_id}", "doc")
            item = (
                await dynamodb.get_item(
                    TableName=f"{namespace}-cartloom-orders",
                    Key={"order_id": {"S": order_id}},
                    ConsistentRead=True,
                )
            ).get("Item")
            return {
                "redis": orjson.loads(cached)["status"] if cached is not None else None,
                "dynamodb": orjson.loads(item["doc"]["S"])["status"] if item else None,
            }

        async def reserved_in_both_stores() -> bool:
            return set((await statuses()).values()) == {"reserved"}

        try:
            await eventually(reserved_in_both_stores, timeout=120, what="the order in both stores")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {await statuses()}{logs()}") from exc

        assert written_stores(await get_text(f"{sinks.url}/metrics")) == {"dynamodb", "redis"}
        assert written_stores(await get_text(f"{worker.url}/metrics")) == set(), (
            "the worker has its sinks off: it must write no view"
        )

        sinks.process.send_signal(signal.SIGTERM)
        assert sinks.process.wait(timeout=60) == 0, sinks.log_tail()
    finally:
        sinks.stop()
        if worker is not None:
            worker.stop()
