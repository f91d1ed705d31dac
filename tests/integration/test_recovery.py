"""Tables survive a worker restart: state is rebuilt from the changelog, not lost."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.stack import StackState
from tests.harness import eventually, start_worker, wait_ready

pytestmark = pytest.mark.integration


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def test_restarted_worker_recovers_orders_from_the_changelog(
    stack: StackState, stack_dir: Path, producer: AIOKafkaProducer
) -> None:
    # Its own app id: its own consumer group and changelog, undisturbed by other tests.
    app_env = {
        "CARTLOOM_APP_ID": f"recovery-{uuid.uuid4().hex[:6]}",
        "CARTLOOM_SINKS_ENABLED": "false",
    }
    order_ids = [f"rec-{uuid.uuid4().hex[:8]}-{n}" for n in range(20)]
    first = start_worker(stack.env, stack_dir, "recovery-1", app_env)
    try:
        await wait_ready(first)
        for order_id in order_ids:
            value = orjson.dumps(
                {
                    "order_id": order_id,
                    "source": "pos",
                    "created_at": datetime.now(UTC).isoformat(),
                    "lines": [{"sku": "SKU-R", "quantity": 1}],
                }
            )
            await producer.send_and_wait("orders", value, key=order_id.encode())
        for order_id in order_ids:
            await eventually(
                lambda oid=order_id: _is_found(f"{first.url}/orders/{oid}"), what=order_id
            )
    finally:
        first.stop()

    second = start_worker(stack.env, stack_dir, "recovery-2", app_env)
    try:
        await wait_ready(second)
        statuses = [await status_of(f"{second.url}/orders/{oid}") for oid in order_ids]
        assert statuses == [200] * len(order_ids), second.log_tail()
        assert "Error in recovery" not in second.log.read_text()
    finally:
        second.stop()


async def _is_found(url: str) -> bool:
    return await status_of(url) == 200
