"""A worker as a StatefulSet pod runs it, on real servers: RocksDB store, static membership id.

The Kubernetes manifests set ``CARTLOOM_STORE=rocksdb://`` on a volume per pod and
``CARTLOOM_GROUP_INSTANCE_ID`` to the pod name; a restarted pod comes back with both.
Restarting on a kept RocksDB volume is not tested here: the embedded broker (Tansu) returns
wrong offsets in produce responses that carry several partitions, so the offsets Faust
persists in RocksDB can exceed the changelog's end and recovery refuses them
(ConsistencyError); a real Kafka cluster returns the right ones. The lost-volume procedure of
docs/operations.md (an empty volume, rebuilt from the changelog) is tested instead.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import WorkerProcess, eventually, start_worker, wait_ready

pytestmark = pytest.mark.integration

FAILED_EVENT = "] event at TopicPartition"  # what the agents log for an event they dead-letter


async def publish_orders(bootstrap: str, order_ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for order_id in order_ids:
            value = orjson.dumps(
                {
                    "order_id": order_id,
                    "source": "pos",
                    "created_at": datetime.now(UTC).isoformat(),
                    "lines": [{"sku": "SKU-POD", "quantity": 1}],
                }
            )
            await producer.send_and_wait("orders", value, key=order_id.encode())
    finally:
        await producer.stop()


async def order_status(worker: WorkerProcess, order_id: str) -> str | None:
    """The order's status from the worker, or None; fails fast if the worker drops events."""
    if FAILED_EVENT in worker.log.read_text(errors="replace"):
        raise AssertionError(f"the worker failed events:\n{worker.log_tail(60)}")
    url = f"{worker.url}/orders/{order_id}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=worker.auth) as response:
        if response.status in (404, 503):  # not there (yet), or its owner is recovering
            return None
        assert response.status == 200, (response.status, await response.text())
        return str((await response.json())["status"])


async def restarted_pod_keeps_its_orders(
    stack: dict[str, str],
    state_dir: Path,
    name: str,
    pod_env: dict[str, str],
    lose_volume: bool = False,
) -> None:
    """Process orders, stop the "pod", start it again with the same id (and volume)."""
    bootstrap = stack["CARTLOOM_BROKER_URL"].split("://", 1)[1]
    order_ids = [f"{name}-{uuid.uuid4().hex[:8]}-{n}" for n in range(10)]
    # The same name twice: the same CARTLOOM_DATA_DIR, as a StatefulSet pod keeps its volume.
    first = start_worker(stack, state_dir, name, pod_env)
    try:
        await wait_ready(first)
        await publish_orders(bootstrap, order_ids)
        # Each order's saga settles first, so no table write is in flight at the stop.
        for oid in order_ids:

            async def settled(oid: str = oid) -> bool:
                return await order_status(first, oid) not in (None, "received")

            await eventually(settled, what=f"{oid} settled", timeout=120)
    finally:
        first.stop()

    if lose_volume:
        shutil.rmtree(state_dir / f"{name}-data")
    second = start_worker(stack, state_dir, name, pod_env)
    try:
        await wait_ready(second)
        statuses = [await order_status(second, oid) for oid in order_ids]
        assert None not in statuses, second.log_tail()
    finally:
        second.stop()


async def test_a_restarted_pod_with_static_membership_keeps_its_tables(
    deploy_stack: dict[str, str], deploy_stack_dir: Path
) -> None:
    pod_env = {
        "CARTLOOM_APP_ID": f"static-{uuid.uuid4().hex[:6]}",
        "CARTLOOM_GROUP_INSTANCE_ID": "cartloom-worker-0",
        "CARTLOOM_SINKS_ENABLED": "false",
    }
    await restarted_pod_keeps_its_orders(deploy_stack, deploy_stack_dir, "static", pod_env)


async def test_rocksdb_store_serves_orders_and_a_lost_volume_is_rebuilt(
    deploy_stack: dict[str, str], deploy_stack_dir: Path
) -> None:
    pod_env = {
        "CARTLOOM_APP_ID": f"rocks-{uuid.uuid4().hex[:6]}",
        "CARTLOOM_STORE": "rocksdb://",
        "CARTLOOM_GROUP_INSTANCE_ID": "cartloom-worker-0",
        "CARTLOOM_SINKS_ENABLED": "false",
    }
    await restarted_pod_keeps_its_orders(
        deploy_stack, deploy_stack_dir, "rocks", pod_env, lose_volume=True
    )
    assert list((deploy_stack_dir / "rocks-data").rglob("CURRENT")), "no RocksDB database"
