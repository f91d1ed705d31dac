"""Write-back progress per ledger line, kept in a compacted Kafka topic, not in Redis.

What write-back has already taken in Shopify for a line (``pushed``), and the request it
is about to make (``pending``), must outlive any cache: after a Redis restart without
persistence, progress kept there was gone, a redelivered ledger record took its units in
Shopify a second time, and a later release was judged already applied. The progress now
lives in ``shopify.writeback.progress`` (``topics.yaml``), one record per change, keyed by
the line, written with ``acks=all`` and awaited before and after each Shopify mutation.

The lines of the ledger changelog's partition ``p`` keep their progress in partition
``p % n`` of the progress topic. Only the runner that owns ledger partition ``p`` writes
those lines, so when its consumer is assigned ``p`` it reads progress partition ``p % n``
from the beginning to its end into memory (:class:`ProgressListener`) and from then on its
own writes keep that memory current; lines of other ledger partitions that share the
progress partition are read too and never used. The runner reads a partition's progress
before it pushes the first line of a batch from it (:meth:`WritebackProgress.ensure_loaded`),
and again after every revocation (:class:`ProgressListener`): aiokafka hands out records of
a new assignment while its assignment callback may still run, and only logs a callback
that fails, so the callback is not where the reading can happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition

from cartloom.stream.kafka_clients import KafkaConnection

log = logging.getLogger(__name__)
#: Seconds to read a progress partition to its end before giving up (the runner restarts).
LOAD_PATIENCE_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class LineProgress:
    """What was pushed for one line, and the compare-and-swap in flight, if any."""

    pushed: int = 0
    pending: dict[str, int] | None = None


NOTHING_YET = LineProgress()


def parse_progress(raw: bytes) -> LineProgress | None:
    """A stored record's progress; None for a record this code cannot use."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("pushed"), int):
        return None
    pending = value.get("pending")
    return LineProgress(value["pushed"], pending if isinstance(pending, dict) else None)


class WritebackProgress:
    """The progress of the lines of the ledger partitions this runner owns.

    ``producer`` is started and stopped by its owner (the runner's, ``acks="all"``).
    """

    def __init__(self, kafka: KafkaConnection, producer: Any, topic: str) -> None:
        self._kafka = kafka
        self._producer = producer
        self._topic = topic
        self._lines: dict[str, LineProgress] = {}
        self._unreadable: set[str] = set()
        self._partitions: int | None = None
        self._loaded: set[int] = set()  # ledger partitions read since the last revocation
        self._revocations = 0

    def get(self, key: str) -> LineProgress:
        """The line's progress (nothing pushed when the topic never heard of it).

        Raises ``ValueError`` when the line's newest record cannot be read: guessing
        "nothing pushed" could take its units twice, so the line is set aside instead.
        """
        if key in self._unreadable:
            raise ValueError(f"the progress of {key} in {self._topic} is unreadable")
        return self._lines.get(key, NOTHING_YET)

    async def record(self, key: str, ledger_partition: int, progress: LineProgress) -> None:
        """Write the line's progress and wait until the broker has it (raises if refused)."""
        partition = ledger_partition % await self._partition_count()
        value = orjson.dumps({"pushed": progress.pushed, "pending": progress.pending})
        await self._producer.send_and_wait(
            self._topic, value, key=key.encode(), partition=partition
        )
        self._lines[key] = progress
        self._unreadable.discard(key)

    async def ensure_loaded(self, ledger_partitions: Iterable[int]) -> None:
        """Read the progress of the ledger partitions not read since the last revocation."""
        missing = set(ledger_partitions) - self._loaded
        if not missing:
            return
        revocations = self._revocations
        await self.load(missing)
        if revocations == self._revocations:  # a revocation during the read: read again later
            self._loaded |= missing

    def invalidate(self) -> None:
        """The partitions were revoked: read each again before pushing from it."""
        self._revocations += 1
        self._loaded.clear()

    async def load(self, ledger_partitions: Iterable[int]) -> None:
        """Read the progress partitions of ``ledger_partitions`` from beginning to end."""
        count = await self._partition_count()
        wanted = sorted({p % count for p in ledger_partitions})
        if not wanted:
            return
        consumer = self._kafka.consumer(enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(self._topic, p) for p in wanted]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            read = await self._read_to_end(consumer, partitions)
        finally:
            await consumer.stop()
        log.info(
            "write-back progress: %d records read from %s partitions %s",
            read,
            self._topic,
            wanted,
        )

    async def _read_to_end(self, consumer: Any, partitions: list[TopicPartition]) -> int:
        """Apply records until each partition's position reaches its fetch high watermark.

        The high watermark of the fetch answers, not only ListOffsets: the embedded broker
        reports a partition's end as its last record batch's base offset plus one.
        """
        ends = await consumer.end_offsets(partitions)
        waiting, read = set(partitions), 0
        deadline = time.monotonic() + LOAD_PATIENCE_SECONDS
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._topic} not read to its end")
            got = await consumer.getmany(*waiting, timeout_ms=200, max_records=10_000)
            for records in got.values():
                for record in records:
                    read += 1
                    self._apply(record.key, record.value)
            for tp in list(waiting):
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue  # no fetch answered yet
                if await consumer.position(tp) >= max(ends[tp], highwater):
                    waiting.discard(tp)
        return read

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        line = key.decode(errors="replace")
        self._lines.pop(line, None)
        self._unreadable.discard(line)
        if value is None:
            return  # a tombstone: the line is gone
        progress = parse_progress(value)
        if progress is None:
            self._unreadable.add(line)
        else:
            self._lines[line] = progress

    async def _partition_count(self) -> int:
        if self._partitions is None:
            found = await self._kafka_partitions()
            if not found:
                raise RuntimeError(
                    f"{self._topic} does not exist: run `cartloom topics apply` (topics.yaml)"
                )
            self._partitions = found
        return self._partitions

    async def _kafka_partitions(self) -> int:
        consumer = self._kafka.consumer(enable_auto_commit=False)
        await consumer.start()
        try:
            if self._topic not in await consumer.topics():
                return 0
            return len(consumer.partitions_for_topic(self._topic) or ())
        finally:
            await consumer.stop()


class ProgressListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Marks every partition's progress as to be read again when partitions are revoked.

    aiokafka awaits this before the group rejoins, so no batch of the next assignment is
    pushed from progress read before another runner may have written to it.
    """

    def __init__(self, progress: WritebackProgress) -> None:
        self._progress = progress

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Read each partition's progress again before pushing from it."""
        self._progress.invalidate()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing: the runner reads a partition's progress before its first push."""
