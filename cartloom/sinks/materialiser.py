"""Reads table changelogs and feeds one sink: batch, coalesce, write, then commit offsets.

Each store has its own consumer group, so a Redis outage never holds back DynamoDB (or
order processing: the changelog is already written). Offsets are committed only after the
sink took every change of the batch; what a store did not take is retried with capped,
jittered back-off (``CARTLOOM_SINK_RETRY_MAX_SECONDS``), and the version rule in the
store makes a retry harmless. The backlog during an outage is the group's consumer lag,
exported as ``cartloom_sink_lag_records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity import wait_random_exponential as jittered

from cartloom import metrics
from cartloom.sinks.base import (
    PartialWrite,
    Sink,
    ViewChange,
    WriteOutcome,
    coalesce,
    document_version,
)

log = logging.getLogger(__name__)


class MaterialiserStopped(Exception):  # noqa: N818 - a state, not an error
    """The worker is stopping: the batch in hand is left uncommitted, to be re-read."""


def sink_group_id(app_id: str, store: str) -> str:
    """The consumer group that feeds ``store``; the audit reads its committed offsets."""
    return f"{app_id}-sink-{store}"


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
        self._bootstrap_servers = bootstrap_servers
        self._group_id = group_id
        self._consumer: Any = None  # created by run(): construction does no I/O
        self._stopping = asyncio.Event()
        self._next_offsets: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        """Consume until :meth:`stop`; call from a task."""
        self._consumer = AIOKafkaConsumer(
            *self._entities,
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_max,
        )
        await self.sink.start()
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self._batch_max)
                if batch:
                    await self._write_batch(batch)
                self._export_lag()
        except MaterialiserStopped:
            log.info("%s sink stopped with a batch unwritten; it is re-read on start", self.name)
        finally:
            await self._consumer.stop()
            await self.sink.stop()

    @property
    def name(self) -> str:
        """The store this materialiser feeds."""
        return self.sink.name

    def stop(self) -> None:
        """Ask :meth:`run` to finish: after the batch in hand, or at once during a back-off."""
        self._stopping.set()

    async def _write_batch(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        changes = [
            change for tp, records in batch.items() for change in self._decode(tp.topic, records)
        ]
        coalesced = coalesce(changes)
        store = self.name
        metrics.SINK_COALESCED.labels(store=store).inc(len(changes) - len(coalesced))
        if coalesced:
            started = time.perf_counter()
            outcome = await self.write_until_taken(coalesced)
            metrics.SINK_BATCH_SECONDS.labels(store=store).observe(time.perf_counter() - started)
            for name in ("written", "stale", "deleted", "rejected"):
                metrics.SINK_WRITES.labels(store=store, outcome=name).inc(getattr(outcome, name))
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        self._next_offsets.update(offsets)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner re-reads and re-writes (no-ops).
            log.warning("%s sink could not commit after a write: %s", store, exc)

    def _decode(self, topic: str, records: Iterable[ConsumerRecord[Any, Any]]) -> list[ViewChange]:
        entity = self._entities[topic]
        changes = []
        for record in records:
            change = decode_change(entity, record)
            if change is None:
                metrics.SINK_UNUSABLE.labels(store=self.name).inc()
                log.error(
                    "%s sink skips an unusable changelog record at %s:%s:%s",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                )
                continue
            changes.append(change)
        return changes

    async def write_until_taken(self, changes: list[ViewChange]) -> WriteOutcome:
        """Retry what the store has not taken until it has (or the worker stops)."""
        total = WriteOutcome()
        pending = changes
        retrying = AsyncRetrying(
            wait=jittered(multiplier=0.1, max=self._retry_max),
            retry=retry_if_exception_type(Exception),
            stop=self._stop_requested,
            sleep=self._sleep_unless_stopping,
            before_sleep=self._on_failure,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        total.add(await self.sink.write(pending))
                    except PartialWrite as exc:
                        total.add(exc.outcome)
                        pending = exc.remaining
                        raise
        except Exception as exc:
            if self._stopping.is_set():
                raise MaterialiserStopped from exc
            raise
        return total

    def _stop_requested(self, state: RetryCallState) -> bool:
        return self._stopping.is_set()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _on_failure(self, state: RetryCallState) -> None:
        metrics.SINK_FAILURES.labels(store=self.name).inc()
        self._export_lag()
        log.warning(
            "%s sink write failed (attempt %d), retrying: %r",
            self.name,
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        )

    def _export_lag(self) -> None:
        """Records in the changelogs not yet taken by this store (its consumer lag)."""
        if self._consumer is None:
            return
        lag = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            taken = self._next_offsets.get(tp)
            if highwater is not None and taken is not None:
                lag += max(0, highwater - taken)
        metrics.SINK_LAG.labels(store=self.name).set(lag)
