"""Helpers for the Shopify integration tests: reading topics as an outside consumer would."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from tests.harness import eventually


class TopicReader:
    """Reads a topic from the beginning and keeps every record whose key is wanted."""

    def __init__(self, bootstrap: str, topic: str, keys: set[bytes]) -> None:
        self.keys = keys
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> list[Any]:
        batch = await self._consumer.getmany(timeout_ms=300)
        for records in batch.values():
            self.records.extend(r for r in records if r.key in self.keys)
        return self.records

    async def until(self, done: Any, what: str, timeout: float = 90.0) -> list[Any]:
        async def probe() -> bool:
            return bool(done(await self.poll()))

        await eventually(probe, timeout=timeout, what=what)
        return self.records

    def values(self) -> list[tuple[bytes, dict[str, Any]]]:
        return [(r.key, orjson.loads(r.value)) for r in self.records]
