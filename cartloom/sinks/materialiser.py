"""Reads table changelogs and feeds one sink: batch, coalesce, write, then commit offsets.

Each store has its own consumer group, so a Redis outage never holds back DynamoDB (or
order processing: the changelog is already written). Offsets are committed only after the
sink took the batch; a batch that fails is retried whole with capped, jittered back-off,
and the version rule in the store makes the retry harmless. The backlog during an outage
is the group's consumer lag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from cartloom import metrics
from cartloom.sinks.base import Sink, ViewChange, coalesce, document_version

log = logging.getLogger(__name__)


def decode_change(entity: str, record: ConsumerRecord[bytes, bytes]) -> ViewChange | None:
    """The :class:`ViewChange` a changelog record carries, or None for an unusable record."""
    if record.key is None:
        return None
    key = record.key.decode(errors="replace")
    if record.value is None:
        return ViewChange(entity=entity, key=key, version=0, document=None)
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        log.error("undecodable changelog value at %s:%s", record.topic, record.offset)
        return None
    if not isinstance(document, dict):
        return None
    return ViewChange(entity, key, document_version(document), document)


class Materialiser:
    """One consumer group feeding one sink from the changelogs in ``entities``."""

    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap_servers: str,
        group_id: str,
        entities: Mapping[str, str],
        batch_max: int,
        retry_max_seconds: float,
    ) -> None:
        self.sink = sink
        self._entities = dict(entities)  # changelog topic -> entity
        self._retry_max = retry_max_seconds
        self._batch_max = batch_max
        self._consumer = AIOKafkaConsumer(
            *self._entities,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_max,
        )
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until :meth:`stop`; call from a task."""
        await self.sink.start()
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self._batch_max)
                if batch:
                    await self._write_batch(batch)
        finally:
            await self._consumer.stop()
            await self.sink.stop()

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the batch in hand."""
        self._stopping.set()

    async def _write_batch(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        changes = [
            change for tp, records in batch.items() for change in self._decode(tp.topic, records)
        ]
        coalesced = coalesce(changes)
        store = self.sink.name
        metrics.SINK_COALESCED.labels(store=store).inc(len(changes) - len(coalesced))
        if coalesced:
            started = time.perf_counter()
            outcome = await self._write_until_taken(coalesced)
            metrics.SINK_BATCH_SECONDS.labels(store=store).observe(time.perf_counter() - started)
            metrics.SINK_WRITES.labels(store=store, outcome="written").inc(outcome.written)
            metrics.SINK_WRITES.labels(store=store, outcome="stale").inc(outcome.stale)
            metrics.SINK_WRITES.labels(store=store, outcome="deleted").inc(outcome.deleted)
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner re-reads and re-writes (no-ops).
            log.warning("%s sink could not commit after a write: %s", store, exc)

    def _decode(self, topic: str, records: Iterable[ConsumerRecord[Any, Any]]) -> list[ViewChange]:
        entity = self._entities[topic]
        return [c for c in (decode_change(entity, r) for r in records) if c is not None]

    async def _write_until_taken(self, changes: list[ViewChange]) -> Any:
        """Retry the whole batch until the store takes it (or the worker stops)."""
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.1, max=self._retry_max),
            retry=retry_if_exception_type(Exception),
            before_sleep=self._on_failure,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.sink.write(changes)
        raise AssertionError("unreachable: AsyncRetrying retries forever")

    def _on_failure(self, state: Any) -> None:
        metrics.SINK_FAILURES.labels(store=self.sink.name).inc()
        log.warning(
            "%s sink write failed (attempt %d), retrying: %r",
            self.sink.name,
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        )
