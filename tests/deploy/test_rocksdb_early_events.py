"""Held early events on the RocksDB store, on real servers.

The orders agent clears held events after its batch (``settle_held_events``), outside the
event Faust is handling; RocksDB picks a partition's database from the current event, so
the agent sets it (Faust's private ``_current_event``, as ``handle_batch`` does). This pins
that: with ``CARTLOOM_STORE=rocksdb://`` an event before its order is applied and cleared,
and an event whose order never comes is dead-lettered and cleared, without a failed event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import WorkerProcess, eventually, start_worker, wait_ready
from tests.integration.saga_helpers import read_topic

pytestmark = pytest.mark.integration

FAILED_EVENT = "] event at TopicPartition"  # what the agents log for an event they dead-letter


async def held_values(bootstrap: str, app_id: str, key: str) -> list[Any]:
    """Every changelog value of ``key`` in ``app_id``'s early_events_by_order (None: deleted)."""
    topic = f"{app_id}-early_events_by_order-changelog"
    return [
        orjson.loads(r.value) if r.value is not None else None
        for r in await read_topic(bootstrap, topic)
        if r.key == key.encode()
    ]


async def status(worker: WorkerProcess, order_id: str) -> str | None:
    if FAILED_EVENT in worker.log.read_text(errors="replace"):
        raise AssertionError(f"the worker failed events:\n{worker.log_tail(60)}")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{worker.url}/orders/{order_id}", headers=worker.auth) as response,
    ):
        if response.status in (404, 503):  # not there (yet), or its owner is recovering
            return None
        assert response.status == 200, (response.status, await response.text())
        return str((await response.json())["status"])


async def test_held_events_are_applied_and_expired_on_rocksdb(
    deploy_stack: dict[str, str], deploy_stack_dir: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    app_id = f"rocks-early-{tag}"
    env = {
        "CARTLOOM_APP_ID": app_id,
        "CARTLOOM_STORE": "rocksdb://",
        "CARTLOOM_SINKS_ENABLED": "false",
        "CARTLOOM_EARLY_EVENT_HOLD_SECONDS": "5",
    }
    bootstrap = deploy_stack["CARTLOOM_BROKER_URL"].split("://", 1)[1]
    early, never, sku = f"rearly-{tag}", f"rnever-{tag}", f"RSKU-{tag}"
    now = datetime.now(UTC).isoformat()
    worker = start_worker(deploy_stack, deploy_stack_dir, f"rocks-early-{tag}", env)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await wait_ready(worker)

        async def send(topic: str, key: str, value: dict[str, Any]) -> None:
            await producer.send_and_wait(topic, orjson.dumps(value), key=key.encode())

        await send("inventory", sku, {"sku": sku, "on_hand": 3})
        for order_id, kind in ((early, "paid"), (never, "cancelled")):
            await send("order.events", order_id, {"order_id": order_id, "event": kind, "at": now})
        for order_id in (early, never):

            async def held(order_id: str = order_id) -> bool:
                return any(await held_values(bootstrap, app_id, order_id))

            await eventually(held, what=f"{order_id} held")
        order = {"order_id": early, "source": "pos", "created_at": now, "lines": []}
        order["lines"] = [{"sku": sku, "quantity": 1}]
        await send("orders", early, order)

        async def paid() -> bool:
            return await status(worker, early) == "paid"

        await eventually(paid, timeout=120, what="the early paid applied to its order")

        async def dead_lettered() -> bool:
            records = await read_topic(bootstrap, "order.events.dlq")
            return any(r.key == never.encode() for r in records)

        await eventually(dead_lettered, timeout=90, what="the orphan event dead-lettered")
        for order_id in (early, never):

            async def cleared(order_id: str = order_id) -> bool:
                values = await held_values(bootstrap, app_id, order_id)
                return bool(values) and values[-1] is None

            await eventually(cleared, what=f"{order_id}'s held record deleted")
        assert await status(worker, never) is None
        assert FAILED_EVENT not in worker.log.read_text(errors="replace"), worker.log_tail(60)
    finally:
        await producer.stop()
        worker.stop()
    assert list((deploy_stack_dir / f"rocks-early-{tag}-data").rglob("CURRENT")), "no RocksDB"
