"""What the fault scenarios publish: stock levels, then a steady, seeded stream of orders.

Everything goes out through a plain aiokafka producer at its defaults, as a system that
CartLoom did not write would publish: default acks, no linger, default partitioner. The
stream is paced to a fixed rate (the sleeps here pace a producer, they wait for nothing),
bounded in count, and re-publishes some orders byte for byte later on (duplicates).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from cartloom.core.partitioning import key_partition

PARTITIONS = 8  # topics.yaml: every saga topic has the default partition count
PLENTIFUL_UNITS = 1_000_000


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def key_on_partition(stem: str, partition: int, partitions: int = PARTITIONS) -> str:
    """The first ``{stem}-{n}`` that Kafka's default partitioner puts on ``partition``."""
    for n in range(10_000):
        key = f"{stem}-{n}"
        if key_partition(key.encode(), partitions) == partition:
            return key
    raise AssertionError(f"no key {stem}-N on partition {partition}")  # pragma: no cover


@dataclass(frozen=True)
class Catalog:
    """The SKUs of a scenario: most plentiful, a few scarce, one probe SKU per partition."""

    plentiful: tuple[str, ...]
    scarce: tuple[str, ...]
    probes: tuple[str, ...]  # probes[p] is on partition p of inventory / inventory.commands
    scarce_units: int

    def levels(self) -> dict[str, int]:
        """The absolute stock level published for each SKU before any order."""
        levels = dict.fromkeys(self.plentiful, PLENTIFUL_UNITS)
        levels.update(dict.fromkeys(self.scarce, self.scarce_units))
        levels.update(dict.fromkeys(self.probes, PLENTIFUL_UNITS))
        return levels


def make_catalog(
    tag: str, *, plentiful: int = 40, scarce: int = 6, scarce_units: int = 25
) -> Catalog:
    """SKUs named after the scenario ``tag`` (every scenario has a broker of its own)."""
    return Catalog(
        plentiful=tuple(f"{tag}-P{n:03d}" for n in range(plentiful)),
        scarce=tuple(f"{tag}-S{n:03d}" for n in range(scarce)),
        probes=tuple(key_on_partition(f"{tag}-probe", p) for p in range(PARTITIONS)),
        scarce_units=scarce_units,
    )


@dataclass
class OrderStream:
    """Seeded orders of one to three lines over the catalog (no probe SKUs)."""

    catalog: Catalog
    prefix: str
    rng: random.Random
    scarce_share: float = 0.15  # chance that a line asks for a scarce SKU

    def order(self, n: int) -> tuple[str, bytes]:
        """Order number ``n``: its id and the exact bytes published."""
        order_id = f"{self.prefix}-{n:06d}"
        skus: list[str] = []
        for _ in range(self.rng.choice((1, 1, 2, 2, 3))):
            pool = self.catalog.scarce if self.rng.random() < self.scarce_share else None
            sku = self.rng.choice(pool or self.catalog.plentiful)
            if sku not in skus:
                skus.append(sku)
        lines = [{"sku": sku, "quantity": self.rng.randint(1, 3)} for sku in skus]
        return order_id, order_bytes(order_id, lines)


def order_bytes(order_id: str, lines: list[dict[str, Any]], **extra: Any) -> bytes:
    """An order as the contract (docs/contract.md) has it."""
    body = {
        "order_id": order_id,
        "source": "chaos",
        "created_at": now_iso(),
        "lines": lines,
        "currency": "EUR",
        "total_price": "10.00",
        **extra,
    }
    return orjson.dumps(body)


@dataclass
class Published:
    """What the stream published and when (monotonic seconds)."""

    sent_at: dict[str, float] = field(default_factory=dict)  # order id -> first send
    messages: int = 0
    duplicates: int = 0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def orders(self) -> int:
        return len(self.sent_at)


class Publisher:
    """One default aiokafka producer for everything a scenario publishes."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # defaults, on purpose
        self._pending: list[asyncio.Future[Any]] = []
        self.published = Published()

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: str | bytes | None, value: bytes | None) -> Any:
        """Send one message and wait for the broker's answer (its RecordMetadata)."""
        raw_key = key.encode() if isinstance(key, str) else key
        return await self._producer.send_and_wait(topic, value, key=raw_key)

    async def stock(self, levels: dict[str, int]) -> None:
        """Publish an absolute level for every SKU (waits for every acknowledgement)."""
        at = now_iso()
        futures = [
            await self._producer.send(
                "inventory",
                orjson.dumps({"sku": sku, "on_hand": units, "updated_at": at}),
                key=sku.encode(),
            )
            for sku, units in levels.items()
        ]
        await asyncio.gather(*futures)

    async def order(self, order_id: str, value: bytes) -> None:
        """Publish one order now (not paced), remembering when."""
        self.published.sent_at.setdefault(order_id, time.monotonic())
        self.published.messages += 1
        self._pending.append(await self._producer.send("orders", value, key=order_id.encode()))

    async def stream(
        self,
        orders: OrderStream,
        count: int,
        rate: float,
        *,
        duplicate_share: float = 0.05,
        time_limit: float | None = None,
    ) -> Published:
        """Publish ``count`` orders at ``rate``/s, re-publishing ``duplicate_share`` of them.

        Stops early (and says so in the result) if ``time_limit`` seconds pass: a broker
        that stops taking messages cannot hold the scenario forever.
        """
        rng = orders.rng
        started = self.published.started_at = time.monotonic()
        limit = started + (time_limit if time_limit is not None else 3 * count / rate + 60)
        repeats: list[tuple[int, str, bytes]] = []  # (send at index, id, exact bytes)
        for n in range(count):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the producer, not waiting for a condition
            if time.monotonic() > limit:
                break
            order_id, value = orders.order(n)
            await self.order(order_id, value)
            if rng.random() < duplicate_share:
                heapq.heappush(repeats, (n + rng.randint(10, 400), order_id, value))
            while repeats and repeats[0][0] <= n:
                _, dup_id, dup_value = heapq.heappop(repeats)
                await self._resend(dup_id, dup_value)
            if len(self._pending) >= 500:
                await self.flush()
        for _, dup_id, dup_value in repeats:
            await self._resend(dup_id, dup_value)
        await self.flush()
        self.published.finished_at = time.monotonic()
        return self.published

    async def _resend(self, order_id: str, value: bytes) -> None:
        self.published.duplicates += 1
        self.published.messages += 1
        self._pending.append(await self._producer.send("orders", value, key=order_id.encode()))

    async def flush(self) -> None:
        """Wait for the broker to acknowledge everything sent so far."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)
