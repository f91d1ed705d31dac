"""Dead letters of order.events and inventory, and `cartloom dlq replay` sending them back once."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.ops.dlq import REPLAYED_FROM_HEADER, replay_dead_letters
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, run_cartloom
from tests.integration.saga_helpers import (
    now_iso,
    order_message,
    read_topic,
    send_json,
    table_values,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


async def dead_letter(bootstrap: str, topic: str, key: str) -> dict[str, Any] | None:
    for record in await read_topic(bootstrap, f"{topic}.dlq"):
        if record.key == key.encode():
            return {**{k: v.decode() for k, v in record.headers}, "value": record.value}
    return None


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        ("order.events", {"event": "shipped", "at": "2026-11-25T10:00:00Z"}, "invalid_schema"),
        ("order.events", {"event": "paid"}, "invalid_schema"),
        # held for its order, which never comes: dead-lettered once the hold (8 s here) is over
        ("order.events", {"event": "paid", "at": "2026-11-25T10:00:00Z"}, "unknown_order"),
        ("inventory", {"on_hand": 3, "delta": 1}, "invalid_schema"),
        ("inventory", {"on_hand": -2}, "invalid_schema"),
        ("inventory", b"{oops", "invalid_json"),
    ],
)
async def test_invalid_messages_go_to_the_topics_dead_letters_with_a_reason(
    worker: WorkerProcess,
    producer: AIOKafkaProducer,
    bootstrap: str,
    topic: str,
    value: dict[str, Any] | bytes,
    reason: str,
) -> None:
    key = f"bad-{uuid.uuid4().hex[:8]}"
    field = "order_id" if topic == "order.events" else "sku"
    raw = value if isinstance(value, bytes) else orjson.dumps({field: key, **value})
    sent = await producer.send_and_wait(topic, raw, key=key.encode())
    found = await eventually(lambda: dead_letter(bootstrap, topic, key), what=f"{topic}.dlq")
    assert found["cartloom-reason"] == reason
    assert found["cartloom-origin-topic"] == topic
    assert found["cartloom-origin-offset"] == str(sent.offset)
    assert found["value"] == raw


async def test_replay_applies_an_event_that_came_before_its_order_once(
    worker: WorkerProcess, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    """An event whose order came only after the hold expired: dead-lettered, replayed once."""
    tag = uuid.uuid4().hex[:8]
    order_id, sku = f"early-{tag}", f"early-sku-{tag}"
    paid = {"order_id": order_id, "event": "paid", "at": now_iso()}
    await send_json(producer, "order.events", order_id, paid)
    await eventually(lambda: dead_letter(bootstrap, "order.events", order_id), what="dead letter")
    await send_json(producer, "inventory", sku, {"sku": sku, "on_hand": 5})
    await eventually(lambda: _stocked(bootstrap, sku), what="stock")
    await send_json(producer, "orders", order_id, order_message(order_id, [(sku, 2)]))
    await eventually(lambda: _status(bootstrap, order_id, "reserved"), what="reserved")

    group = f"test-replay-{tag}"
    first = await replay_dead_letters(
        KafkaConnection.plaintext(bootstrap), "order.events", group_id=group
    )
    assert first.replayed >= 1
    view = await eventually(lambda: _status(bootstrap, order_id, "paid"), what="paid by replay")
    assert [h["status"] for h in view["history"]] == ["received", "reserved", "paid"]

    await replay_dead_letters(KafkaConnection.plaintext(bootstrap), "order.events", group_id=group)
    # What failed again was dead-lettered anew and may go back once more; no dead letter
    # is ever sent back twice, and the order does not change again.
    sources = [
        dict(record.headers).get(REPLAYED_FROM_HEADER)
        for record in await read_topic(bootstrap, "order.events")
    ]
    replayed_from = [source for source in sources if source is not None]
    assert len(replayed_from) == len(set(replayed_from))
    await wait_caught_up(bootstrap)
    final = (await table_values(bootstrap, "order_by_id", [order_id]))[order_id]
    assert final["version"] == view["version"]


def test_dlq_replay_command_reports_and_refuses_unknown_topics(
    stack: StackState, stack_dir: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cartloom(stack_dir, stack.env, *args, timeout=120)

    done = run("dlq", "replay", "inventory")
    assert done.returncode == 0, done.stderr
    assert "from inventory.dlq to inventory" in done.stdout
    unknown = run("dlq", "replay", "no-such-topic")
    assert unknown.returncode == 2
    assert "not declared" in unknown.stdout + unknown.stderr


async def _stocked(bootstrap: str, sku: str) -> bool:
    return bool(await table_values(bootstrap, "inventory_by_sku", [sku]))


async def _status(bootstrap: str, order_id: str, status: str) -> dict[str, Any] | None:
    view = (await table_values(bootstrap, "order_by_id", [order_id])).get(order_id)
    return view if view and view["status"] == status else None
