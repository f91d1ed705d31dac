"""Order envelopes fit the broker's message limit; an order too large alone is dead-lettered.

A private broker behind :class:`~tests.integration.kafka_proxy.SizeLimitingProxy` refuses
what Apache Kafka refuses: a record batch over a topic's ``max.message.bytes`` (Kafka's
default 1 MiB on every internal topic; 4 MiB on ``orders`` and ``orders.dlq``, as an operator
who takes large orders would configure them). The embedded broker alone takes any size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.core.partitioning import key_partition
from cartloom.core.topology import load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, serving, start_worker
from tests.integration.kafka_proxy import SizedBroker, sized_broker
from tests.integration.saga_helpers import read_topic, table_values

pytestmark = pytest.mark.integration

LARGE_TOPIC_LIMIT = 4 * 1024 * 1024
PARTITIONS = 8
BURST = 600


def order(order_id: str, customer_bytes: int) -> bytes:
    """An order whose ``customer`` object makes it about ``customer_bytes`` long."""
    return orjson.dumps(
        {
            "order_id": order_id,
            "source": "web",
            "created_at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": "SKU-SIZE", "quantity": 1}],
            "customer": {"id": order_id, "note": "n" * customer_bytes},
        }
    )


def ids_on_one_partition(prefix: str, count: int) -> list[str]:
    """Order ids that all hash to partition 0: every one of them goes in the same envelope."""
    ids: list[str] = []
    n = 0
    while len(ids) < count:
        candidate = f"{prefix}-{n}"
        if key_partition(candidate.encode(), PARTITIONS) == 0:
            ids.append(candidate)
        n += 1
    return ids


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SizedBroker]:
    limits = {"orders": LARGE_TOPIC_LIMIT, "orders.dlq": LARGE_TOPIC_LIMIT}
    async with sized_broker(tmp_path_factory.mktemp("sized-broker"), limits) as started:
        await apply_topics(
            KafkaConnection.plaintext(started.bootstrap), load_topology().all_topics("cartloom")
        )
        yield started


@pytest.fixture(scope="module")
async def producer(broker: SizedBroker) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", max_request_size=LARGE_TOPIC_LIMIT
    )
    await client.start()
    yield client
    await client.stop()


@pytest.fixture(scope="module")
async def burst(producer: AIOKafkaProducer) -> list[str]:
    """600 orders of ~2 KB for one envelope partition, published before any worker runs.

    They are spread over every partition of ``orders``, as a producer whose partitioner is
    not Kafka's murmur2 places them (librdkafka's CRC32), so the intake's first read holds
    them all and every one belongs in the same envelope partition.
    """
    ids = ids_on_one_partition("burst", BURST)
    sent = [
        await producer.send("orders", order(i, 2_200), key=i.encode(), partition=n % PARTITIONS)
        for n, i in enumerate(ids)
    ]
    for delivery in sent:
        await delivery
    return ids


@pytest.fixture(scope="module")
async def sized_worker(
    burst: list[str],
    broker: SizedBroker,
    stack: StackState,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[WorkerProcess]:
    env = {"CARTLOOM_SINKS_ENABLED": "false"}
    started = start_worker(
        broker.env(stack.env), tmp_path_factory.mktemp("sized-worker"), "worker", env
    )
    async with serving(started) as process:
        yield process


async def settled(bootstrap: str, ids: list[str]) -> dict[str, Any] | None:
    """The views of ``ids`` once every one is reserved or rejected, else None."""
    views = await table_values(bootstrap, "order_by_id", ids)
    done = [v for v in views.values() if v and v["status"] in ("reserved", "rejected")]
    return views if len(done) == len(ids) else None


async def test_a_burst_of_orders_over_a_message_of_envelopes_is_processed_in_full(
    broker: SizedBroker, burst: list[str], sized_worker: WorkerProcess
) -> None:
    await eventually(
        lambda: settled(broker.bootstrap, burst), timeout=240, what="every burst order settled"
    )
    assert not broker.proxy.refused, "the broker refused nothing"
    envelopes = await read_topic(broker.bootstrap, "orders.accepted")
    assert len(envelopes) > 1, "600 orders of ~2 KB do not fit one envelope"
    assert max(len(e.value) for e in envelopes) < 1_048_588
    forwarded = [o["order_id"] for e in envelopes for o in orjson.loads(e.value)["orders"]]
    assert sorted(forwarded) == sorted(burst), "each order forwarded once: no batch re-sent"


async def test_an_order_too_large_alone_is_dead_lettered_and_the_others_are_processed(
    broker: SizedBroker, producer: AIOKafkaProducer, sized_worker: WorkerProcess
) -> None:
    huge_id = "huge-1"
    huge = order(huge_id, 2 * 1024 * 1024)
    others = [f"beside-huge-{n}" for n in range(20)]
    await producer.send_and_wait("orders", huge, key=huge_id.encode())
    for order_id in others:
        await producer.send_and_wait("orders", order(order_id, 500), key=order_id.encode())

    await eventually(
        lambda: settled(broker.bootstrap, others), timeout=120, what="the other orders settled"
    )

    async def dead_letter() -> Any:
        letters = await read_topic(broker.bootstrap, "orders.dlq")
        return next((r for r in letters if r.key == huge_id.encode()), None)

    letter = await eventually(dead_letter, timeout=60, what="the huge order in orders.dlq")
    headers = dict(letter.headers)
    assert headers["cartloom-reason"] == b"too_large"
    assert b"bytes" in headers["cartloom-detail"]
    assert letter.value == huge, "the original bytes, to look at"
    assert huge_id not in await table_values(broker.bootstrap, "order_by_id", [huge_id])
    assert sized_worker.process.poll() is None
    assert not broker.proxy.refused
