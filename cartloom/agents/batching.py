"""The batched hot path shared by the orders and stock agents.

Faust's per-event machinery is the ceiling (FACTS.md), so the agents take events in
batches (``stream.take_events``) and do per-batch work once:

- :class:`TableBatch` reads through to the table and coalesces writes: a key changed by
  many events of a batch (a hot SKU, an order and its answers) is written to the
  changelog once, with Faust's ``send_changelog`` and the partition of the event that
  changed it (the same partition ``table[key] = value`` would use).
- :class:`Outbox` collects the batch's messages and hands them straight to the Kafka
  producer (not through Faust's one-message-at-a-time ``send_soon`` buffer, which stalls
  stream processing whenever it holds more than 100 messages). Faust flushes the
  producer before it commits offsets, so sends and changelog writes reach Kafka before
  the input is acknowledged (at-least-once; every consumer of them is idempotent).
- :func:`handle_batch` runs one handler per event and turns every failure into a dead
  letter with its reason, so no event of the batch is acknowledged silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import faust
import orjson

from cartloom import metrics
from cartloom.deadletter import send_to_dead_letter
from cartloom.domain.errors import InvalidInput, RejectReason

log = logging.getLogger(__name__)


class TableBatch:
    """Read-through, write-coalescing access to a table for one batch of events."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._dirty: dict[str, int] = {}

    def get(self, key: str) -> Any:
        """The key's current value, including changes made earlier in this batch."""
        return self._table.data.get(key)

    def put(self, key: str, value: Any, partition: int) -> None:
        """Change ``key`` now (later events of the batch see it); log it at :meth:`flush`."""
        self._table.data[key] = value
        self._dirty[key] = partition

    def flush(self) -> int:
        """Write each changed key to the changelog once; return how many were written."""
        data = self._table.data
        for key, partition in self._dirty.items():
            self._table.send_changelog(partition, key, data[key])
        written = len(self._dirty)
        self._dirty.clear()
        return written


class Outbox:
    """Messages produced while handling a batch, sent when the batch is done."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[tuple[str, bytes, bytes]] = []

    def add(self, topic: faust.TopicT, key: str, value: Mapping[str, Any]) -> None:
        """Queue ``value`` as JSON for ``topic`` keyed by ``key``."""
        self._pending.append((topic.get_topic_name(), key.encode(), orjson.dumps(value)))

    async def flush(self) -> int:
        """Hand every queued message to the producer (partitioned by key, like Faust).

        Returns once the producer has them; delivery is awaited by Faust's flush before
        the next offset commit.
        """
        send = self._producer.send
        for topic, key, value in self._pending:
            await send(topic, key, value, partition=None, timestamp=None, headers=None)
        sent = len(self._pending)
        self._pending.clear()
        return sent


def event_key(event: faust.EventT[Any]) -> str:
    """The event's key as text; keys are entity ids (order id, SKU)."""
    key = event.key
    if isinstance(key, bytes):
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise InvalidInput(RejectReason.KEY_MISMATCH, "message key is not UTF-8") from None
    if isinstance(key, str):
        return key
    raise InvalidInput(RejectReason.KEY_MISMATCH, "message has no key")


async def handle_batch(
    events: Sequence[faust.EventT[Any]],
    handler: Callable[[faust.EventT[Any]], None],
    writes: tuple[Iterable[TableBatch], Outbox],
    dead_letter_topic: Callable[[str], faust.TopicT],
    agent: str,
) -> None:
    """Run ``handler`` on each event, flush the batch's writes, dead-letter the failures.

    ``handler`` must be synchronous and make its changes through the batch's
    :class:`TableBatch` and :class:`Outbox` only after its checks passed, so an event that
    fails leaves nothing half-applied.
    """
    started = time.perf_counter()
    failed: list[tuple[faust.EventT[Any], RejectReason, str]] = []
    for event in events:
        try:
            handler(event)
        except InvalidInput as exc:
            failed.append((event, exc.reason, exc.detail))
        except Exception as exc:  # a bug must not drop the event: dead-letter it, keep moving
            log.exception("event at %s offset %s failed", event.message.tp, event.message.offset)
            failed.append((event, RejectReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"))
    tables, outbox = writes
    for table in tables:
        table.flush()
    await outbox.flush()
    for event, reason, detail in failed:
        await send_to_dead_letter(dead_letter_topic(event.message.topic), event, reason, detail)
    metrics.AGENT_BATCH_SECONDS.labels(agent=agent).observe(time.perf_counter() - started)
