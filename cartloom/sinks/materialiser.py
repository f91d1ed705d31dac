"""Reads table changelogs and feeds one sink: batch, coalesce, write, then commit offsets.

Each store has its own consumer group, so a Redis outage never holds back DynamoDB (or
order processing: the changelog is already written). Offsets are committed only after the
sink took every change of the batch, or the change was set aside to the dead-letter topic
``sinks.dlq`` and the broker acknowledged it.

Failures are told apart (:meth:`cartloom.sinks.base.Sink.store_unavailable`): while the
store as a whole is failing (unreachable, throttling) the batch is retried with capped,
jittered back-off (``CARTLOOM_SINK_RETRY_MAX_SECONDS``) for as long as it takes, and the
backlog is the group's consumer lag (``cartloom_sink_lag_records``). A change that fails
on its own (the store refuses it for good, or it still fails after
``CARTLOOM_SINK_MAX_ATTEMPTS`` attempts) is set aside with the reason in headers and
counted, so one bad key never stops the stream. The version rule in the store makes
every retry harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from cartloom.core import metrics
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.sinks.base import (
    ChangeRefused,
    PartialWrite,
    SetAside,
    Sink,
    ViewChange,
    WriteOutcome,
    coalesce,
    document_version,
)
from cartloom.stream.deadletter import (
    DEAD_LETTER_MAX_REQUEST_BYTES,
    STORE_HEADER,
    queue_dead_letter,
)
from cartloom.stream.deliveries import Deliveries
from cartloom.stream.kafka_clients import KafkaConnection

log = logging.getLogger(__name__)

#: Where the materialisers set aside what no store write will take (``topics.yaml``).
SINK_DEAD_LETTER_TOPIC = "sinks.dlq"
#: Attempts a change gets when it fails on its own, unless configured otherwise.
DEFAULT_MAX_ATTEMPTS = 5


class MaterialiserStopped(Exception):  # noqa: N818 - a state, not an error
    """The worker is stopping: the batch in hand is left uncommitted, to be re-read."""


def sink_group_id(app_id: str, store: str) -> str:
    """The consumer group that feeds ``store``; the audit reads its committed offsets."""
    return f"{app_id}-sink-{store}"


def decode_change(entity: str, record: ConsumerRecord[bytes, bytes]) -> ViewChange:
    """The :class:`ViewChange` a changelog record carries; raises :class:`InvalidInput`."""
    if record.key is None:
        raise InvalidInput(RejectReason.KEY_MISMATCH, "changelog record without a key")
    key = record.key.decode(errors="replace")
    if record.value is None:
        return ViewChange(entity=entity, key=key, version=0, document=None)
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(RejectReason.INVALID_JSON, f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(RejectReason.INVALID_JSON, "not a JSON object")
    return ViewChange(entity, key, document_version(document), document)


@dataclass(frozen=True, slots=True)
class Unusable:
    """A changelog record no store can be given (no key, no JSON object)."""

    record: ConsumerRecord[Any, Any]
    reason: RejectReason
    detail: str


class Materialiser:
    """One consumer group feeding one sink from the changelogs in ``entities``."""

    def __init__(
        self,
        sink: Sink,
        *,
        kafka: KafkaConnection,
        group_id: str,
        entities: Mapping[str, str],
        batch_max: int,
        retry_max_seconds: float,
        batch_within_seconds: float = 0.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        dead_letter_topic: str = SINK_DEAD_LETTER_TOPIC,
        fetch_max_wait_ms: int,
    ) -> None:
        self.sink = sink
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._entities = dict(entities)  # changelog topic -> entity
        self._retry_max = retry_max_seconds
        self._max_attempts = max(1, max_attempts)
        self._dead_letter_topic = dead_letter_topic
        self._batch_max = batch_max
        self._batch_within = batch_within_seconds
        self._kafka = kafka
        self._group_id = group_id
        self._consumer: Any = None  # created by run(): construction does no I/O
        self._producer: Any = None
        self._stopping = asyncio.Event()
        self._next_offsets: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        """Consume until :meth:`stop`; call from a task."""
        self._consumer = self._kafka.consumer(
            *self._entities,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_max,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        self._producer = self._kafka.producer(
            acks="all",
            max_request_size=DEAD_LETTER_MAX_REQUEST_BYTES,
        )
        await self.sink.start()
        await self._producer.start()
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self._batch_max)
                if batch and self._batch_within > 0:
                    batch = await self._fill(batch)
                if batch:
                    await self._write_batch(batch)
                self._export_lag()
        except MaterialiserStopped:
            log.info("%s sink stopped with a batch unwritten; it is re-read on start", self.name)
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            await self.sink.stop()

    async def _fill(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Keep reading for up to ``batch_within_seconds`` or until the batch is full.

        Changes of one key that arrive within the window are coalesced into one write: an
        order that goes from received to reserved in a few milliseconds costs one store call
        instead of two. Records stay in offset order per partition, as the commit expects.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._batch_within
        filled = {tp: list(records) for tp, records in batch.items()}
        count = sum(len(records) for records in filled.values())
        while count < self._batch_max and not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            more = await self._consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)), max_records=self._batch_max - count
            )
            for tp, records in more.items():
                filled.setdefault(tp, []).extend(records)
                count += len(records)
        return filled

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
        changes: list[ViewChange] = []
        origins: dict[tuple[str, str], list[tuple[ViewChange, ConsumerRecord[Any, Any]]]] = {}
        unusable: list[Unusable] = []
        for tp, records in batch.items():
            self._decode(tp.topic, records, changes, origins, unusable)
        coalesced = coalesce(changes)
        store = self.name
        metrics.SINK_COALESCED.labels(store=store).inc(len(changes) - len(coalesced))
        outcome = WriteOutcome()
        if coalesced:
            started = time.perf_counter()
            outcome = await self.write_until_taken(coalesced)
            metrics.SINK_BATCH_SECONDS.labels(store=store).observe(time.perf_counter() - started)
            for name in ("written", "stale", "deleted", "rejected"):
                metrics.SINK_WRITES.labels(store=store, outcome=name).inc(getattr(outcome, name))
        await self._dead_letter(outcome.set_aside, origins, unusable)
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        self._next_offsets.update(offsets)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner re-reads and re-writes (no-ops).
            log.warning("%s sink could not commit after a write: %s", store, exc)

    def _decode(
        self,
        topic: str,
        records: Iterable[ConsumerRecord[Any, Any]],
        changes: list[ViewChange],
        origins: dict[tuple[str, str], list[tuple[ViewChange, ConsumerRecord[Any, Any]]]],
        unusable: list[Unusable],
    ) -> None:
        entity = self._entities[topic]
        for record in records:
            try:
                change = decode_change(entity, record)
            except InvalidInput as exc:
                metrics.SINK_UNUSABLE.labels(store=self.name).inc()
                log.error(
                    "%s sink sets aside an unusable changelog record at %s:%s:%s: %s",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                unusable.append(Unusable(record, exc.reason, exc.detail))
                continue
            changes.append(change)
            origins.setdefault((entity, change.key), []).append((change, record))

    async def _dead_letter(
        self,
        set_aside: list[SetAside],
        origins: Mapping[tuple[str, str], list[tuple[ViewChange, ConsumerRecord[Any, Any]]]],
        unusable: list[Unusable],
    ) -> None:
        """Copy what was set aside to the dead-letter topic; return once the broker has it.

        Raises :class:`~cartloom.stream.deliveries.DeliveryFailed` (the batch is then not
        committed: the materialiser crashes and its supervisor starts it again).
        """
        letters = [(u.record, u.reason, u.detail) for u in unusable]
        for aside in set_aside:
            record = _origin(aside.change, origins[(aside.change.entity, aside.change.key)])
            letters.append((record, aside.reason, aside.detail))
            log.error(
                "%s sink sets aside %s %s v%s (%s): %s",
                self.name,
                aside.change.entity,
                aside.change.key,
                aside.change.version,
                aside.reason.value,
                aside.detail,
            )
        if not letters:
            return
        deliveries = Deliveries(self._producer)
        extra = {STORE_HEADER: self.name.encode()}
        for record, reason, detail in letters:
            await queue_dead_letter(
                deliveries, self._dead_letter_topic, record, reason, detail, extra
            )
        await deliveries.acknowledged()
        for record, reason, _ in letters:
            metrics.SINK_DEAD_LETTERS.labels(store=self.name, reason=reason.value).inc()
            metrics.DEAD_LETTERS.labels(topic=record.topic, reason=reason.value).inc()

    async def write_until_taken(self, changes: list[ViewChange]) -> WriteOutcome:
        """Write ``changes`` until each is taken or set aside (or the worker stops).

        While the store as a whole fails, everything left is retried without bound. A
        change that fails on its own is charged an attempt and set aside after
        ``max_attempts`` (reason ``retries_exhausted``); one the store refuses for good
        is set aside at once (``refused``). Raises :class:`MaterialiserStopped` when
        :meth:`stop` is called while changes are left.
        """
        total = WriteOutcome()
        pending = list(changes)
        charged: dict[int, int] = {}  # id(change) -> attempts that failed on the change
        failed_attempts = 0
        while pending:
            failures = await self._attempt(pending, total)
            pending = []
            for change, error in failures:
                if isinstance(error, ChangeRefused):
                    total.rejected += 1
                    total.set_aside.append(SetAside(change, RejectReason.REFUSED, str(error)))
                elif self.sink.store_unavailable(error):
                    pending.append(change)
                else:
                    count = charged[id(change)] = charged.get(id(change), 0) + 1
                    if count < self._max_attempts:
                        pending.append(change)
                        continue
                    detail = f"{count} attempts failed, the last with {type(error).__name__}: "
                    total.set_aside.append(
                        SetAside(change, RejectReason.RETRIES_EXHAUSTED, f"{detail}{error}")
                    )
            if pending:
                failed_attempts += 1
                self._on_failure(failed_attempts, failures[0][1])
                await self._back_off(failed_attempts)
        return total

    async def _attempt(
        self, pending: list[ViewChange], total: WriteOutcome
    ) -> list[tuple[ViewChange, BaseException]]:
        """Offer ``pending`` to the store once; the changes not taken, each with its error."""
        try:
            total.add(await self.sink.write(pending))
            return []
        except PartialWrite as exc:
            total.add(exc.outcome)
            return list(zip(exc.remaining, exc.errors, strict=True))
        except Exception as exc:
            if len(pending) == 1 or self.sink.store_unavailable(exc):
                return [(change, exc) for change in pending]
        # The whole write failed and named no change: offer each alone to find which.
        failures: list[tuple[ViewChange, BaseException]] = []
        for change in pending:
            failures.extend(await self._attempt([change], total))
        return failures

    async def _back_off(self, failed_attempts: int) -> None:
        """Wait a capped, jittered exponential time; end at once if the worker stops."""
        ceiling = min(self._retry_max, 0.1 * 2 ** min(failed_attempts, 30))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._stopping.wait(),
                timeout=random.uniform(0, ceiling),  # noqa: S311 - jitter, not security
            )
        if self._stopping.is_set():
            raise MaterialiserStopped

    def _on_failure(self, attempt: int, error: BaseException) -> None:
        metrics.SINK_FAILURES.labels(store=self.name).inc()
        self._export_lag()
        log.warning("%s sink write failed (attempt %d), retrying: %r", self.name, attempt, error)

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


def _origin(
    change: ViewChange, candidates: list[tuple[ViewChange, ConsumerRecord[Any, Any]]]
) -> ConsumerRecord[Any, Any]:
    """The record that carried ``change`` (the last one of its key with the same version)."""
    for candidate, record in reversed(candidates):
        same_kind = (candidate.document is None) == (change.document is None)
        if same_kind and candidate.version == change.version:
            return record
    return candidates[-1][1]
