"""``cartloom loadgen``: publishes sample orders to the ``orders`` topic with a plain producer."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cartloom.stream.kafka_clients import KafkaConnection


@dataclass(frozen=True)
class LoadPlan:
    """What to publish: how many orders, over which SKUs, and how many of them broken."""

    orders: int
    skus: int = 50
    max_lines: int = 3
    invalid_share: float = 0.0
    prefix: str = "load"
    seed: int = 7
    sku_prefix: str = "SKU-"

    def __post_init__(self) -> None:
        """Refuse a plan that cannot be published (the CLI refuses it before, as usage)."""
        if self.orders < 0:
            raise ValueError(f"orders must not be negative (got {self.orders})")
        if self.skus < 1 or self.max_lines < 1:
            raise ValueError(
                f"skus and max_lines must be at least 1 (got {self.skus}, {self.max_lines})"
            )
        if not 0.0 <= self.invalid_share <= 1.0:
            raise ValueError(f"invalid_share must be within 0..1 (got {self.invalid_share})")

    def sku(self, n: int) -> str:
        """The SKU number ``n`` of this plan."""
        return f"{self.sku_prefix}{n:05d}"


def sample_orders(plan: LoadPlan) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` pairs per ``plan``; every ``1/invalid_share``-th order is malformed."""
    rng = random.Random(plan.seed)  # noqa: S311 - load shape, not security
    now = datetime.now(UTC).isoformat()
    invalid_every = round(1 / plan.invalid_share) if plan.invalid_share > 0 else 0
    for n in range(plan.orders):
        order_id = f"{plan.prefix}-{n:07d}"
        lines = [
            {"sku": plan.sku(rng.randrange(plan.skus)), "quantity": rng.randint(1, 3)}
            for _ in range(rng.randint(1, plan.max_lines))
        ]
        order: dict[str, Any] = {
            "order_id": order_id,
            "source": "loadgen",
            "created_at": now,
            "lines": lines,
            "currency": "EUR",
            "total_price": f"{rng.randint(5, 500)}.00",
        }
        if invalid_every and n % invalid_every == invalid_every - 1:
            order["lines"] = []  # breaks the contract: lines must be non-empty
        yield order_id, orjson.dumps(order)


def sample_stock(plan: LoadPlan, on_hand: int) -> Iterator[tuple[str, bytes]]:
    """An absolute stock level of ``on_hand`` for every SKU of ``plan`` (key = SKU)."""
    for n in range(plan.skus):
        sku = plan.sku(n)
        yield sku, orjson.dumps({"sku": sku, "on_hand": on_hand, "location": "demo-warehouse"})


def is_valid_index(plan: LoadPlan, n: int) -> bool:
    """Whether order ``n`` of ``plan`` is a valid one."""
    if plan.invalid_share <= 0:
        return True
    invalid_every = round(1 / plan.invalid_share)
    return n % invalid_every != invalid_every - 1


async def publish(
    kafka: KafkaConnection,
    topic: str,
    messages: Iterator[tuple[str, bytes]],
    on_sent: Callable[[int], None] = lambda _: None,
) -> int:
    """Send every message (key = its entity id) and wait for the broker to take them all."""
    producer = kafka.producer(
        linger_ms=5,
        max_batch_size=256 * 1024,
        acks="all",
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a producer that failed to start still holds its client
        raise
    sent = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value=value, key=key.encode()))
            sent += 1
            if len(pending) >= 1000:
                for future in pending:
                    await future
                on_sent(len(pending))
                pending.clear()
        for future in pending:
            await future
        on_sent(len(pending))
    finally:
        await producer.stop()
    return sent
