"""Sends whose acknowledgement is awaited before the offsets of what caused them may move.

A plain aiokafka loop (the order intake, the materialisers, Shopify write-back,
``cartloom dlq replay``) reads a batch, sends what it makes of it, and commits the
batch's offsets. ``producer.send`` only queues a record: its future fails later if the
broker refuses the record (too large, topic gone) or cannot be reached in time, and
``producer.flush()`` waits without raising. :class:`Deliveries` keeps every future of a
step and :meth:`Deliveries.acknowledged` raises :class:`DeliveryFailed` unless the broker
acknowledged all of them, so a caller that commits after it never commits past a record
that was not written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka.errors import KafkaError


class DeliveryFailed(RuntimeError):  # noqa: N818 - reads better at the raise and in logs
    """The broker did not acknowledge a record: the offsets of its cause must not move."""

    def __init__(self, topic: str, failed: int, total: int, cause: BaseException) -> None:
        super().__init__(
            f"{failed} of {total} record(s) not written; first to {topic}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.topic = topic
        self.failed = failed
        self.total = total
        self.cause = cause


async def acknowledged_all(deliveries: Sequence[Awaitable[Any]], what: str) -> list[Any]:
    """Wait for every delivery; return their results, or raise :class:`DeliveryFailed`.

    For sends made through Faust's producer (the agents), whose futures come without
    their topic: ``what`` names them in the error.
    """
    results = await asyncio.gather(*deliveries, return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        raise DeliveryFailed(what, len(failures), len(results), failures[0]) from failures[0]
    return results


class Deliveries:
    """The records one step sends through ``producer``, awaited together."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []

    def __len__(self) -> int:
        return len(self._pending)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record; a record the producer refuses at once fails here, not later."""
        try:
            future = await self._producer.send(
                topic,
                value,
                key=key,
                partition=partition,
                timestamp_ms=timestamp_ms,
                headers=list(headers) if headers else None,
            )
        except KafkaError as exc:  # too large for the producer, no metadata in time...
            await self._settle()
            raise DeliveryFailed(topic, 1, len(self._pending) + 1, exc) from exc
        self._pending.append((topic, future))

    async def acknowledged(self) -> int:
        """Wait for every queued record; return how many, or raise :class:`DeliveryFailed`.

        Waits for all of them, not just the first failure, so nothing is still in flight
        when the caller gives up on the batch.
        """
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        failures = [
            (topic, result)
            for (topic, _), result in zip(pending, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failures:
            topic, cause = failures[0]
            raise DeliveryFailed(topic, len(failures), len(pending), cause) from cause
        return len(pending)

    async def _settle(self) -> None:
        """Let what is already queued finish before giving up (the caller commits nothing)."""
        await asyncio.gather(*(future for _, future in self._pending), return_exceptions=True)
